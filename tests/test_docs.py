"""Checks of the operator-facing files: man pages, init files, logrotate,
defaults, and that forkproxy(8) documents every option ``--help`` prints.

External tools (mandoc, groff, systemd-analyze, logrotate, start-stop-daemon)
are used when present; a test that needs one skips, saying which, only when
it is absent.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.procs import wait_until

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
INIT = ROOT / "init"
MAN_PAGES = sorted(p for p in MAN.glob("*.[58]") if p.is_file())

REQUIRED_8 = [
    "NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "ENVIRONMENT", "FILES",
    "EXIT STATUS", "EXAMPLES", "SEE ALSO",
]
# A file-format page has no command line of its own.
REQUIRED_5 = ["NAME", "DESCRIPTION", "FILES", "EXAMPLES", "SEE ALSO"]
EXTRA_SECTIONS = {"forkproxy.8": ["SIGNALS"]}


def need(tool):
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def page_id(p):
    return p.name


# ---------------------------------------------------------------- man pages


def test_the_man_pages_this_project_ships_exist():
    names = {p.name for p in MAN_PAGES}
    assert {"forkproxy.8", "forkproxyctl.8"} <= names


@pytest.mark.parametrize("page", MAN_PAGES, ids=page_id)
def test_mandoc_lint_is_clean(page):
    need("mandoc")
    r = subprocess.run(
        ["mandoc", "-Tlint", "-W", "warning", str(page)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.stdout + r.stderr == ""
    assert r.returncode == 0


@pytest.mark.parametrize("page", MAN_PAGES, ids=page_id)
def test_groff_lint_is_clean(page):
    need("groff")
    r = subprocess.run(
        ["groff", "-mdoc", "-ww", "-z", str(page)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.stdout + r.stderr == ""
    assert r.returncode == 0


def rendered(page):
    """The page as ``mandoc -Tutf8`` prints it, one line per paragraph, no overstrikes."""
    need("mandoc")
    r = subprocess.run(["mandoc", "-Tutf8", "-Owidth=1000", str(page)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return re.sub(r".\x08", "", r.stdout)


@pytest.mark.parametrize("page", MAN_PAGES, ids=page_id)
def test_rendered_quotes_do_not_nest(page):
    """A quoting macro swallowing the words after it (``.Ql a No and Ql b``)
    renders as ‘a and ‘b’’: no ‘ may open inside another."""
    for line in rendered(page).splitlines():
        depth = 0
        for i, ch in enumerate(line):
            if ch == "‘":
                assert depth == 0, line[max(0, i - 60):i + 60]
                depth = 1
            elif ch == "’":
                depth = 0


@pytest.mark.parametrize("page", MAN_PAGES, ids=page_id)
def test_rendered_braces_and_brackets_match(page):
    """JSON and TOML shown in a page close what they open, in order
    (``.Brq Qq a : [ ... ]`` renders as {"a: [...]"})."""
    text = rendered(page)
    stack = []
    for m in re.finditer(r"[{}\[\]]", text):
        if m.group() in "{[":
            stack.append(m.group())
        else:
            assert stack and stack.pop() == {"}": "{", "]": "["}[m.group()], \
                text[max(0, m.start() - 80):m.start() + 20]
    assert stack == []


def test_pages_are_dated_together():
    """The pages describe one release: none is dated more than half a year before the newest."""
    import datetime

    dates = {p.name: datetime.datetime.strptime(macro_lines(p, "Dd")[0], "%B %d, %Y").date()
             for p in MAN_PAGES}
    newest = max(dates.values())
    assert {n: d for n, d in dates.items() if (newest - d).days > 180} == {}


def macro_lines(page, macro):
    """Arguments of every ``.Macro`` line, in order."""
    prefix = "." + macro
    return [
        line[len(prefix):].strip()
        for line in page.read_text(encoding="utf-8").splitlines()
        if line == prefix or line.startswith(prefix + " ")
    ]


@pytest.mark.parametrize("page", MAN_PAGES, ids=page_id)
def test_page_is_mdoc_with_a_matching_title(page):
    lines = page.read_text(encoding="utf-8").splitlines()
    heads = [l.split()[0] for l in lines if l.startswith(".") and not l.startswith('.\\"')]
    assert heads[:3] == [".Dd", ".Dt", ".Os"]
    name, section = page.name.rsplit(".", 1)
    assert macro_lines(page, "Dt") == [f"{name.upper()} {section}"]
    assert macro_lines(page, "Nm")[0] == name


@pytest.mark.parametrize("page", MAN_PAGES, ids=page_id)
def test_page_has_the_required_sections(page):
    required = REQUIRED_8 if page.suffix == ".8" else REQUIRED_5
    required = required + EXTRA_SECTIONS.get(page.name, [])
    sections = macro_lines(page, "Sh")
    missing = [s for s in required if s not in sections]
    assert missing == []
    assert sections[0] == "NAME"
    assert len(sections) == len(set(sections)), "a section appears twice"


def section_text(page, name):
    text = page.read_text(encoding="utf-8")
    m = re.search(rf"^\.Sh {re.escape(name)}\n(.*?)(?=^\.Sh |\Z)", text, re.S | re.M)
    assert m, f"no {name} section in {page.name}"
    return m.group(1)


def test_forkproxy_8_says_in_bold_that_term_is_graceful_and_quit_fast():
    signals = section_text(MAN / "forkproxy.8", "SIGNALS")
    bold = " ".join(macro_lines(MAN / "forkproxy.8", "Sy"))
    assert "TERM is the graceful stop and QUIT the fast one" in bold
    assert ".Sy TERM is the graceful stop" in signals
    for sig in ["HUP", "TERM", "INT", "QUIT", "USR1", "USR2", "WINCH", "TTIN", "TTOU"]:
        assert re.search(rf"^\.It Dv .*\b{sig}\b", signals, re.M), sig


@pytest.mark.parametrize(
    "page, words",
    [
        ("forkproxy.8", ["FORKPROXY_CONFIG", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"]),
        ("forkproxyctl.8", ["FORKPROXY_CONFIG"]),
    ],
)
def test_environment_variables_are_documented(page, words):
    env = section_text(MAN / page, "ENVIRONMENT")
    for w in words:
        assert f"Ev {w}" in env, w


@pytest.mark.parametrize(
    "page, codes",
    [("forkproxy.8", ["0", "1", "2", "3", "70"]), ("forkproxyctl.8", ["0", "1", "2", "3"])],
)
def test_exit_statuses_are_documented(page, codes):
    status = section_text(MAN / page, "EXIT STATUS")
    assert re.findall(r"^\.It (\d+)$", status, re.M) == codes


@pytest.mark.parametrize(
    "command",
    ["status", "drain", "maint", "ready", "weight"],
)
def test_forkproxyctl_8_documents_every_command(command):
    desc = section_text(MAN / "forkproxyctl.8", "DESCRIPTION")
    assert re.search(rf"^\.It Cm {command}\b", desc, re.M), command


@pytest.mark.parametrize(
    "path",
    ["/etc/forkproxy/forkproxy.toml", "/run/forkproxy/forkproxy.pid",
     "/run/forkproxy/", "/var/log/forkproxy/"],
)
def test_forkproxy_8_lists_its_files(path):
    assert f".It Pa {path}" in section_text(MAN / "forkproxy.8", "FILES")


# -------------------------------------------------- --help against the page


OPTION_TOKEN = re.compile(r"--?[A-Za-z][\w-]*")


def help_options(help_text):
    """Options at the start of indented ``--help`` lines: -x and --xxx.

    argparse writes ``  -c FILE, --config FILE    help``: the option list
    ends at the first run of two spaces."""
    found = set()
    for line in help_text.splitlines():
        m = re.match(r"^\s+(-\S.*?)(?:\s{2,}|$)", line)
        if not m:
            continue
        for part in m.group(1).split(", "):
            token = part.split()[0] if part.split() else ""
            if OPTION_TOKEN.fullmatch(token):
                found.add(token)
    return found


def man_options(page, section="OPTIONS"):
    """Every ``Fl`` argument in a section, as the option it renders."""
    text = section_text(page, section)
    opts = set()
    for m in re.finditer(r"\bFl (\S+)", text):
        arg = m.group(1).replace("\\-", "-").rstrip(",")
        opts.add("-" + arg)
    return opts


def test_help_option_parser_reads_argparse_style_lines():
    sample = textwrap.dedent("""\
        usage: forkproxy [-h] [-c FILE]
        options:
          -h, --help            show this help message and exit
          -c FILE, --config FILE
                                configuration file
              --wait            wait
          -x                    short only
          -s {reload,stop}, --signal {reload,stop}
        -n not indented
    """)
    assert help_options(sample) == {
        "-h", "--help", "-c", "--config", "--wait", "-x", "-s", "--signal"}


@pytest.fixture(scope="module")
def forkproxy_help():
    pytest.importorskip("forkproxy.cli", reason="forkproxy.cli cannot be imported yet")
    r = subprocess.run(
        [sys.executable, "-m", "forkproxy", "--help"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    opts = help_options(r.stdout)
    assert opts, "no options found in forkproxy --help"
    return opts


def test_every_option_in_help_is_in_forkproxy_8(forkproxy_help):
    documented = man_options(MAN / "forkproxy.8")
    assert sorted(forkproxy_help - documented) == []


def test_every_option_in_forkproxy_8_is_in_help(forkproxy_help):
    documented = man_options(MAN / "forkproxy.8")
    assert sorted(documented - forkproxy_help) == []


def test_forkproxy_8_documents_the_command_line():
    expected = {
        "-c", "--config", "-t", "--test", "-T", "--test-dump", "--show-secrets", "-D", "--daemon",
        "-p", "--pidfile", "-s", "--signal", "--wait", "-v", "--version", "-V", "--versions", "-h", "--help",
    }
    assert man_options(MAN / "forkproxy.8") == expected
    assert man_options(MAN / "forkproxy.8", "SYNOPSIS") == {o for o in expected if len(o) == 2}


# ------------------------------------------------------------ systemd units


def parse_unit(path):
    """systemd unit -> {section: {key: [values]}}; keys may repeat."""
    unit, section = {}, None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def seconds(value):
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, value
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


SERVICE_EXPECT = [
    ("Service", "Type", lambda v: v == ["notify"]),
    ("Service", "NotifyAccess", lambda v: v == ["main"]),
    ("Service", "KillMode", lambda v: v == ["mixed"]),
    ("Service", "KillSignal", lambda v: v == ["SIGTERM"]),
    ("Service", "Restart", lambda v: v == ["on-failure"]),
    ("Service", "RuntimeDirectory", lambda v: v == ["forkproxy"]),
    ("Service", "RuntimeDirectoryPreserve", lambda v: v == ["restart"]),
    ("Service", "EnvironmentFile", lambda v: v == ["-/etc/default/forkproxy"]),
    ("Service", "NoNewPrivileges", lambda v: v == ["yes"]),
    ("Service", "ProtectSystem", lambda v: v == ["full"]),
    ("Service", "ProtectHome", lambda v: v == ["yes"]),
    ("Service", "PrivateTmp", lambda v: v == ["yes"]),
    # Above server.graceful_timeout's default of 30s.
    ("Service", "TimeoutStopSec", lambda v: seconds(v[-1]) > 30),
    ("Service", "ExecStartPre", lambda v: v == ["/usr/bin/forkproxy -t -c ${CONFIG}"]),
    ("Service", "ExecStart",
     lambda v: len(v) == 1 and v[0].startswith("/usr/bin/forkproxy -c ${CONFIG}")
     and " -D" not in v[0] and "--daemon" not in v[0]),
    ("Service", "ExecReload",
     lambda v: v == ["/usr/bin/forkproxy -t -c ${CONFIG}", "/bin/kill -HUP $MAINPID"]),
    ("Service", "Environment", lambda v: v == ["CONFIG=/etc/forkproxy/forkproxy.toml"]),
    ("Service", "CapabilityBoundingSet",
     lambda v: {"CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL"}
     <= set(" ".join(v).split())),
    ("Service", "RestrictAddressFamilies",
     lambda v: set(" ".join(v).split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}),
    ("Install", "WantedBy", lambda v: v == ["multi-user.target"]),
    ("Socket", "ListenStream", lambda v: v == ["80", "443"]),
    ("Socket", "ReusePort", lambda v: v == ["no"]),
]


@pytest.mark.parametrize(
    "section, key, check", SERVICE_EXPECT, ids=[f"{s}.{k}" for s, k, _ in SERVICE_EXPECT]
)
def test_unit_directive(section, key, check):
    unit = parse_unit(INIT / ("forkproxy.socket" if section == "Socket" else "forkproxy.service"))
    values = unit.get(section, {}).get(key)
    assert values is not None, f"[{section}] {key}= is missing"
    assert check(values), f"[{section}] {key}={values}"


def test_service_never_signals_quit_or_usr2():
    text = (INIT / "forkproxy.service").read_text(encoding="utf-8")
    directives = [l for l in text.splitlines() if l and not l.startswith("#")]
    assert not any(re.search(r"QUIT|USR2", l) for l in directives)


@pytest.fixture(scope="module")
def systemd_analyze():
    tool = need("systemd-analyze")
    # Some containers ship the binary but cannot run it: try a trivial unit.
    probe = subprocess.run([tool, "--version"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("systemd-analyze does not run here")
    return tool


def test_systemd_analyze_verify_is_clean(systemd_analyze, tmp_path):
    # verify insists that ExecStart= binaries exist: point them at a stub so
    # that only the units themselves are judged.
    stub = tmp_path / "forkproxy"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    for name in ("forkproxy.service", "forkproxy.socket"):
        text = (INIT / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace("/usr/bin/forkproxy", str(stub)))
    r = subprocess.run(
        [systemd_analyze, "verify", "--man=no",
         str(tmp_path / "forkproxy.socket"), str(tmp_path / "forkproxy.service")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert r.stdout + r.stderr == ""
    assert r.returncode == 0


def test_systemd_analyze_verify_can_fail(systemd_analyze, tmp_path):
    bad = tmp_path / "forkproxy.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nKillMode=mixd\n")
    r = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(bad)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert "mixd" in r.stdout + r.stderr


# ---------------------------------------------------- logrotate and defaults


def run_logrotate(conf, tmp_path):
    copy = tmp_path / "forkproxy.logrotate"
    copy.write_text(conf)
    copy.chmod(0o644)  # logrotate ignores group- or world-writable files
    r = subprocess.run(
        [need("logrotate"), "-d", "-s", str(tmp_path / "state"), str(copy)],
        capture_output=True, text=True, timeout=60,
    )
    return r.returncode, r.stdout + r.stderr


def test_logrotate_debug_run_is_clean(tmp_path):
    rc, out = run_logrotate((INIT / "forkproxy.logrotate").read_text(), tmp_path)
    assert rc == 0
    assert not re.search(r"^error", out, re.M | re.I), out


def test_logrotate_debug_run_reports_a_bad_directive(tmp_path):
    rc, out = run_logrotate(
        (INIT / "forkproxy.logrotate").read_text().replace("daily", "daly"), tmp_path
    )
    assert re.search(r"^error", out, re.M | re.I)


def test_logrotate_directives():
    text = (INIT / "forkproxy.logrotate").read_text(encoding="utf-8")
    words = {l.strip() for l in text.splitlines()}
    assert {"daily", "rotate 14", "compress", "delaycompress", "missingok",
            "notifempty", "sharedscripts", "postrotate", "endscript"} <= words
    post = text.split("postrotate", 1)[1].split("endscript", 1)[0]
    assert "USR1" in post or "-s reopen" in post
    assert "/var/log/forkproxy/" in text


def test_logrotate_postrotate_is_valid_sh():
    text = (INIT / "forkproxy.logrotate").read_text(encoding="utf-8")
    post = text.split("postrotate", 1)[1].split("endscript", 1)[0]
    r = subprocess.run(["sh", "-n"], input=post, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_defaults_file_is_plain_assignments_both_sh_and_systemd_read():
    lines = (INIT / "forkproxy.default").read_text(encoding="utf-8").splitlines()
    assigns = dict(
        l.split("=", 1) for l in lines if l.strip() and not l.lstrip().startswith("#")
    )
    assert set(assigns) == {"CONFIG", "DAEMON_OPTS"}
    assert assigns["CONFIG"] == "/etc/forkproxy/forkproxy.toml"
    assert "-D" not in assigns["DAEMON_OPTS"].split()
    for value in assigns.values():
        assert not re.search(r"[$`\"' ]", value), value
    r = subprocess.run(["sh", "-n", str(INIT / "forkproxy.default")], capture_output=True)
    assert r.returncode == 0


# ---------------------------------------------------------- LSB init script


INIT_SCRIPT = INIT / "forkproxy.init"
ACTIONS = ["start", "stop", "restart", "reload", "force-reload", "rotate",
           "configtest", "upgrade", "status"]


@pytest.mark.parametrize("shell", ["sh", "dash", "bash"])
def test_init_script_parses(shell):
    need(shell)
    r = subprocess.run([shell, "-n", str(INIT_SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_init_script_has_an_lsb_header_and_every_action():
    text = INIT_SCRIPT.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    header = text.split("### BEGIN INIT INFO", 1)[1].split("### END INIT INFO", 1)[0]
    for field in ["Provides:", "Required-Start:", "Required-Stop:", "Default-Start:",
                  "Default-Stop:", "Short-Description:"]:
        assert field in header
    assert os.access(INIT_SCRIPT, os.X_OK)
    for action in ACTIONS:
        assert re.search(rf"^\s*(?:[\w-]+ \| )*{re.escape(action)}(?: \| [\w-]+)*\)", text, re.M), action


# A stand-in for forkproxy with its flags, pidfile and signal protocol
# (gunicorn's: after USR2 the new master, a child of the old one, writes
# PIDFILE.2 and renames it to PIDFILE once its parent has gone), and one
# worker child that WINCH stops. Every signal it receives is appended to the
# events file, so the test sees what the init script sent, to whom.
FAKE_FORKPROXY = r'''#!PYTHON
import os, signal, sys, time

EVENTS = os.environ["FAKE_EVENTS"]

def record(*words):
    with open(EVENTS, "a") as f:
        f.write(" ".join(str(w) for w in words) + "\n")

def opt(flag):
    return sys.argv[sys.argv.index(flag) + 1]

def serve(pidfile, parent):
    me = os.getpid()
    own = pidfile + ".2" if parent else pidfile
    with open(own + ".tmp", "w") as f:
        f.write("%d\n" % me)
    os.rename(own + ".tmp", own)
    record("START", me)
    worker = os.fork()
    if worker == 0:
        for s in ("HUP", "TERM", "QUIT", "INT", "USR1", "USR2", "WINCH"):
            signal.signal(getattr(signal, "SIG" + s), signal.SIG_DFL)
        while True:
            time.sleep(1)
    record("WORKER", worker)
    def stop_worker():
        nonlocal worker
        if worker:
            os.kill(worker, signal.SIGTERM)
            os.waitpid(worker, 0)
            record("WORKER-STOPPED", me)
            worker = 0
    def on(signum, frame):
        name = signal.Signals(signum).name[3:]
        record(name, me)
        if name in ("WINCH", "TERM", "QUIT", "INT"):
            stop_worker()
        if name in ("TERM", "QUIT", "INT"):
            try:
                if int(open(own).read()) == me:
                    os.unlink(own)
            except (OSError, ValueError):
                pass
            os._exit(0)
        if name == "USR2" and os.fork() == 0:
            os.environ["FAKE_PARENT"] = str(me)
            os.execv(sys.executable, [sys.executable] + sys.argv)
    for s in ("HUP", "TERM", "QUIT", "INT", "USR1", "USR2", "WINCH"):
        signal.signal(getattr(signal, "SIG" + s), on)
    while True:
        if parent and os.getppid() != parent:
            os.rename(own, pidfile)
            own, parent = pidfile, 0
            record("PROMOTED", me)
        time.sleep(0.02)

def main():
    conf, pidfile = opt("-c"), opt("-p")
    if "-t" in sys.argv:
        if "bad" in open(conf).read():
            print("%s:1: server.workers: bad value" % conf, file=sys.stderr)
            return 1
        return 0
    if os.environ.get("FAKE_PARENT"):
        serve(pidfile, int(os.environ["FAKE_PARENT"]))
    assert "-D" in sys.argv
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return 0
    os.setsid()
    if os.fork():
        os._exit(0)
    fd = os.open(os.devnull, os.O_RDWR)
    for n in (0, 1, 2):
        os.dup2(fd, n)
    serve(pidfile, 0)

sys.exit(main())
'''


def alive(pid):
    """Running, not a zombie (this container's init does not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class InitHarness:
    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.events = tmp_path / "events"
        self.events.touch()
        self.conf = tmp_path / "forkproxy.toml"
        self.conf.write_text("[server]\nworkers = 2\n")
        self.pidfile = tmp_path / "run" / "forkproxy.pid"
        self.pidfile.parent.mkdir()
        fake = tmp_path / "forkproxy"
        fake.write_text(FAKE_FORKPROXY.replace("PYTHON", sys.executable, 1))
        fake.chmod(0o755)
        self.defaults = tmp_path / "default"
        self.defaults.write_text(
            f"DAEMON={fake}\nCONFIG={self.conf}\nPIDFILE={self.pidfile}\n"
            "STOP_TIMEOUT=20\nSTART_TIMEOUT=20\n"
        )

    def run(self, action):
        env = dict(os.environ, FORKPROXY_DEFAULTS=str(self.defaults),
                   FAKE_EVENTS=str(self.events))
        return subprocess.run(
            ["sh", str(INIT_SCRIPT), action], capture_output=True, text=True,
            env=env, timeout=120,
        )

    def log(self):
        return [tuple(l.split()) for l in self.events.read_text().splitlines()]

    def started(self):
        return [int(pid) for what, pid in self.log() if what == "START"]

    def processes(self):
        return [int(pid) for what, pid in self.log() if what in ("START", "WORKER")]

    def pid(self, path=None):
        path = path or self.pidfile
        return int(path.read_text()) if path.exists() else None

    def cleanup(self):
        for pid in self.processes():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def lsb(tmp_path):
    need("start-stop-daemon")
    h = InitHarness(tmp_path)
    yield h
    h.cleanup()


@pytest.mark.timeout(120)
def test_init_script_lifecycle_with_a_fake_master(lsb):
    r = lsb.run("status")
    assert r.returncode == 3, r.stdout + r.stderr

    r = lsb.run("start")
    assert r.returncode == 0, r.stdout + r.stderr
    old = lsb.pid()
    assert old is not None and alive(old)
    assert lsb.run("status").returncode == 0

    # Already running: start is a no-op that succeeds, no second master.
    assert lsb.run("start").returncode == 0
    assert lsb.started() == [old]

    assert lsb.run("reload").returncode == 0
    wait_until(lambda: ("HUP", str(old)) in lsb.log(), timeout=20, what="HUP")
    assert lsb.run("rotate").returncode == 0
    wait_until(lambda: ("USR1", str(old)) in lsb.log(), timeout=20, what="USR1")

    # A bad file fails configtest, reload and upgrade, and signals nothing.
    lsb.conf.write_text("bad\n")
    before = lsb.log()
    for action in ("configtest", "reload", "upgrade"):
        r = lsb.run(action)
        assert r.returncode == 1, action
        assert "server.workers" in r.stderr
    assert lsb.log() == before
    lsb.conf.write_text("[server]\nworkers = 2\n")

    r = lsb.run("upgrade")
    assert r.returncode == 0, r.stdout + r.stderr
    new = lsb.pid()
    assert new not in (None, old) and alive(new)
    assert not alive(old)
    assert not Path(str(lsb.pidfile) + ".2").exists()
    seen_by_old = [what for what, pid in lsb.log() if pid == str(old)]
    # The old workers were gone before the old master was told to stop.
    assert seen_by_old == ["START", "HUP", "USR1", "USR2", "WINCH", "WORKER-STOPPED", "TERM"]
    assert ("PROMOTED", str(new)) in lsb.log()

    r = lsb.run("stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not alive(new)
    assert ("TERM", str(new)) in lsb.log()
    assert not lsb.pidfile.exists()
    assert lsb.run("status").returncode == 3
    # Stopping what is not running succeeds (LSB).
    assert lsb.run("stop").returncode == 0


def test_init_script_rejects_an_unknown_action(lsb):
    r = lsb.run("frobnicate")
    assert r.returncode == 2
    assert "Usage:" in r.stderr


# ----------------------------------------------------------------- the docs


def test_operations_doc_covers_the_four_tasks():
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.M)
    for word in ["Install", "Reload", "Upgrade", "Rotate"]:
        assert any(word.lower() in h.lower() for h in headings), word
    assert "TERM is the graceful stop" in text
