"""TLS contexts the master builds while it loads the configuration, before the fork.

A TLS listener's server contexts (``server_context``: certificate and key
read, protocol floor, ciphers, ALPN) are built by the configuration loader,
in the master: every worker of a generation then shares their session
ticket keys, keys are read with the master's privileges, and ``forkproxy
-t`` reports a certificate that cannot be loaded at the line that names it.
``check_ciphers`` and ``check_ca_file`` are the loader's checks of a cipher
list and of a pool's CA file, made by building a throwaway context.

Standard library only (``ssl``), and nothing of forkproxy: the master and
``forkproxy -t`` import it, and they must not import gevent
(tests/test_layering.py).  The workers' side of TLS is ``net.tls``.
"""

from __future__ import annotations

import os
import ssl

TLS_VERSIONS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1,
                "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsFileError(Exception):
    """A certificate, key or CA file that cannot be used.

    ``which`` is the key that names the file ("cert", "key" or "ca"),
    ``missing`` True when the file does not exist (``reason`` then says
    nothing more), else ``reason`` is OpenSSL's or the OS's word for it.
    """

    def __init__(self, which: str, path: str, reason: str, missing: bool = False):
        super().__init__(f"{which} {path}: {reason}")
        self.which, self.path, self.reason, self.missing = which, path, reason, missing


def server_context(cert: str, key: str, min_version: str, ciphers: str,
                   alpn: tuple | None) -> ssl.SSLContext:
    """A server context serving the certificate chain ``cert`` with ``key``.

    ``min_version`` is a key of TLS_VERSIONS; ``alpn``: the protocols ALPN
    offers, in order (("h2", "http/1.1"); None: no ALPN).
    Raises TlsFileError when a file is missing or the pair cannot be loaded
    (then ``which`` is "cert": the pair is named by its certificate).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[min_version]
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(ciphers)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    for which, name in (("cert", cert), ("key", key)):
        if not os.path.isfile(name):
            raise TlsFileError(which, name, "no such file", missing=True)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise TlsFileError("cert", cert, reason) from None
    return ctx


def cert_names(path: str) -> tuple[str, ...]:
    """The DNS names of a PEM certificate: subjectAltName DNS entries, else the CN."""
    try:
        info = ssl._ssl._test_decode_cert(path)  # stdlib, the decoder behind getpeercert()
    except (AttributeError, OSError, ssl.SSLError, ValueError):
        return ()
    names = tuple(v.lower() for k, v in info.get("subjectAltName", ()) if k == "DNS")
    if not names:
        names = tuple(v.lower() for rdn in info.get("subject", ()) for k, v in rdn
                      if k == "commonName")
    return names


def check_ciphers(ciphers: str) -> bool:
    """Whether OpenSSL accepts at least one cipher of the list ``ciphers``."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except ssl.SSLError:
        return False
    return True


def check_ca_file(path: str) -> None:
    """Raise TlsFileError ("ca") unless ``path`` holds CA certificates OpenSSL loads."""
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise TlsFileError("ca", path, reason) from None
