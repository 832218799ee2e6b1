"""forkproxy in one command: three backends, one round-robin pool, six requests.

    python demo/run.py            # serves on http://127.0.0.1:8080/ until Ctrl-C
    python demo/run.py --once     # makes the six requests, stops everything, exits

It starts three demo backends (``demo/backend.py``), writes a config to a
temporary directory, runs ``python -m forkproxy -c FILE`` in the foreground
(as a child of this script), waits until the listener answers, shows which
backend answered each of six requests, and stops everything it started, by
pid, on Ctrl-C, SIGTERM or after ``--once``. Exit status: 0 when all went
well, 1 when something failed to start or a request failed.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
START_TIMEOUT = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class Child:
    """A process we started, in its own session, output in a log file."""

    def __init__(self, name, argv, logdir, env=None):
        self.name = name
        self.log = Path(logdir) / f"{name.replace(' ', '-')}.log"
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self, timeout=10):
        """TERM, wait, KILL; then KILL, by pid, anything left in its process group."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for pid in group_members(self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def tail(self, n=30):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def group_members(pgid):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(name))
    return out


def get(port, timeout=5):
    """One GET / on a fresh connection: (status, X-Backend, body text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        return r.status, r.getheader("X-Backend", "?"), r.read().decode(errors="replace").strip()
    finally:
        conn.close()


def wait_until_answers(port, proc, what):
    """Poll until port answers HTTP (any status); fail fast when proc died."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what} exited with status {proc.popen.returncode}")
        try:
            get(port, timeout=2)
            return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer on 127.0.0.1:{port} within {START_TIMEOUT}s")
        time.sleep(0.05)


CONFIG = """\
[server]
workers = {workers}
pidfile = "{d}/forkproxy.pid"
runtime_dir = "{d}/run"
error_log = "{d}/error.log"
access_log = "{d}/access.log"

[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
pool = "demo"

[pool.demo]
balance = "round_robin"
servers = [
{servers}
]
"""


class Stop(Exception):
    pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run forkproxy in front of three demo backends.")
    ap.add_argument("--port", type=int, default=8080, help="listener port (default 8080)")
    ap.add_argument("--workers", type=int, default=2, help="forkproxy worker processes (default 2)")
    ap.add_argument("--once", action="store_true", help="exit after the six demo requests")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (config and logs)")
    args = ap.parse_args(argv)

    if port_in_use(args.port):
        print(f"demo: 127.0.0.1:{args.port} is in use; pick another with --port", file=sys.stderr)
        return 1

    def on_term(signum, frame):
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="forkproxy-demo-"))
    env = dict(os.environ)
    # Works from a checkout too: the package next to this script comes first.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    children: list[Child] = []
    ok = False
    try:
        backends = []
        for i in (1, 2, 3):
            port = free_port()
            name = f"backend {i}"
            b = Child(name, [sys.executable, str(HERE / "backend.py"), "--port", str(port), "--name", name], workdir)
            children.append(b)
            backends.append((b, port))
        for b, port in backends:
            wait_until_answers(port, b, b.name)

        servers = ",\n".join(f'  {{ addr = "127.0.0.1:{port}", weight = 1 }}' for _, port in backends)
        conf = workdir / "forkproxy.toml"
        conf.write_text(CONFIG.format(workers=args.workers, d=workdir, port=args.port, servers=servers))
        fp = Child("forkproxy", [sys.executable, "-m", "forkproxy", "-c", str(conf)], workdir, env=env)
        children.append(fp)
        print(f"demo: forkproxy (pid {fp.pid}) with config {conf}")
        try:
            wait_until_answers(args.port, fp, "forkproxy")
        except RuntimeError:
            err = workdir / "error.log"
            print(f"demo: forkproxy did not start; its output:\n{fp.tail()}", file=sys.stderr)
            if err.exists():
                print(f"error log:\n{err.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise

        url = f"http://127.0.0.1:{args.port}/"
        print(f"demo: ready. Try:  curl {url}")
        failures = 0
        seen = {}
        for n in range(1, 7):
            try:
                status, backend, body = get(args.port)
                seen[backend] = seen.get(backend, 0) + 1
                print(f"  request {n}: {status}  {body}")
                failures += status != 200
            except (OSError, http.client.HTTPException) as exc:
                print(f"  request {n}: failed: {exc!r}")
                failures += 1
        print("demo: spread: " + ", ".join(f"{k}: {v}" for k, v in sorted(seen.items())))
        print(f"demo: logs in {workdir} (error.log, access.log; removed at exit unless --keep)")
        if failures:
            print(f"demo: {failures} of 6 requests failed", file=sys.stderr)
            return 1
        ok = True
        if args.once:
            return 0
        print("demo: running; Ctrl-C to stop")
        while fp.alive():
            try:
                fp.popen.wait(1)
            except subprocess.TimeoutExpired:
                pass
        print(f"demo: forkproxy exited with status {fp.popen.returncode}", file=sys.stderr)
        ok = False
        return 1
    except (KeyboardInterrupt, Stop):
        print("\ndemo: stopping")
        return 0 if ok else 1
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        # forkproxy first (graceful TERM), then the backends behind it.
        for c in reversed(children):
            c.stop()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"demo: kept {workdir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
