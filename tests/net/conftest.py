"""Fixtures for the two-host network tests: namespaces joined by veth, ChainIO peers in them.

Run as root from the repository root:  python3 -m pytest -q tests/net
The peers import the installed `chainio_torch` (they run tests/net/peer.py, whose own directory,
not the repository's python/, heads sys.path), so `make install` first.
"""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import netns  # noqa: E402
from netcase import Lab  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: moves hundreds of MiB (still part of the suite)")
    config.addinivalue_line("markers", "xdp_only: needs AF_XDP by design")


@pytest.fixture(scope="session", autouse=True)
def net_session():
    """Skips everything without root or `ip`; removes namespaces a crashed run left behind
    (before) and anything of this run that escaped its finalizer (after)."""
    if os.geteuid() != 0:
        pytest.skip("tests/net creates network namespaces and loads XDP programs: needs root")
    missing = netns.missing_tools()
    if missing:
        pytest.skip(f"tests/net needs {', '.join(missing)} (iproute2)")
    removed = netns.cleanup_stale()
    if removed:
        print(f"\nremoved {len(removed)} stale namespaces: {' '.join(removed)}")
    yield
    netns.cleanup_stale()


@pytest.fixture(scope="session")
def chainio_net(net_session):
    """Fails (does not skip) when the installed extension lacks the network API: that is a
    build problem, not a missing kernel feature."""
    try:
        from chainio_torch import _C
    except ImportError as e:
        pytest.fail(f"cannot import chainio_torch._C ({e}); run `make install`")
    for name in ("NetListener", "net_connect"):
        if not hasattr(_C, name):
            pytest.fail(f"chainio_torch._C ({_C.__file__}) has no {name}: run `make install`")
    return _C


@pytest.fixture
def lab(chainio_net):
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
