"""HTTP/2 origins for tests, as processes: ``H2Backend`` (h2backend.py, the h2
library: h2c, or TLS with ALPN h2) and ``GrpcBackend`` (grpcbackend.py, grpcio)."""

from __future__ import annotations

import sys
from pathlib import Path

from .procs import free_port
from .runner import _child_env, _Served

_HERE = Path(__file__).resolve().parent


class H2Backend(_Served):
    def __init__(self, name: str, directory, tls: tuple | None = None,
                 max_streams: int | None = None, hang: bool = False):
        self.name, self.dir, self.tls = name, Path(directory), tls
        self.max_streams, self.hang = max_streams, hang
        self.port = free_port()
        self.start()

    def _argv(self) -> list[str]:
        argv = [sys.executable, str(_HERE / "h2backend.py"), "--port", str(self.port),
                "--name", self.name]
        if self.hang:
            argv.append("--hang")
        if self.max_streams is not None:
            argv += ["--max-streams", str(self.max_streams)]
        if self.tls is not None:
            argv += ["--cert", str(self.tls[0]), "--key", str(self.tls[1])]
        return argv

    def _proc_name(self) -> str:
        return f"h2backend-{self.name}"

    def _env(self):
        return _child_env()


class GrpcBackend(_Served):
    def __init__(self, name: str, directory):
        self.name, self.dir = name, Path(directory)
        self.port = free_port()
        self.start()

    def _argv(self) -> list[str]:
        return [sys.executable, str(_HERE / "grpcbackend.py"), "--port", str(self.port),
                "--name", self.name]

    def _proc_name(self) -> str:
        return f"grpcbackend-{self.name}"

    def _env(self):
        return _child_env()
