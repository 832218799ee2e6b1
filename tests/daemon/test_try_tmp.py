import os, signal, socket, time
from support.procs import free_port, wait_until

def state(pid):
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]

def test_try(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
pool = "p"

[pool.p]
servers = [{{ addr = "{b.addr}" }}]
""", server={"workers": 1})
    w, = fp.wait_workers(1)
    os.kill(w, signal.SIGSTOP)
    wait_until(lambda: state(w) == "T")
    socks = []
    for i in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    os.kill(w, signal.SIGTERM)
    os.kill(w, signal.SIGCONT)
    res = []
    for s in socks:
        s.settimeout(10)
        try:
            res.append(s.recv(100)[:12])
        except OSError as e:
            res.append(repr(e))
    print(res)
    print(open(fp.dir / "forkproxy.log").read()[-3000:])
    assert all(r == b"HTTP/1.1 200" for r in res)
