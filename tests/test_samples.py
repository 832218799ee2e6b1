"""Every sample configuration in conf/ passes ``forkproxy -t``.

Samples name production paths (/etc/forkproxy/tls/..., /run/forkproxy): the
test points them at a certificate it generates and at a temporary runtime
dir, and changes nothing else.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import trustme

ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "conf").glob("*.toml"))


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("shop.example.com")
    leaf.cert_chain_pems[0].write_to_path(str(d / "site.pem"))
    leaf.private_key_pem.write_to_path(str(d / "site.key"))
    return d


def test_there_is_a_sample_per_deployment_shape():
    assert {p.name for p in SAMPLES} >= {"forkproxy.toml", "edge.toml", "loadbalancer.toml",
                                         "tcp.toml", "combined.toml"}


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_passes_config_test(sample, cert, tmp_path):
    text = sample.read_text()
    text = text.replace("/etc/forkproxy/tls", str(cert))
    text = text.replace("/run/forkproxy", str(tmp_path / "run"))
    text = text.replace("/var/log/forkproxy", str(tmp_path))
    conf = tmp_path / sample.name
    conf.write_text(text)
    out = subprocess.run([sys.executable, "-m", "forkproxy", "-t", "-c", str(conf)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
