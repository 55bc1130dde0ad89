"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest

from claude_net.testing import require_component


@pytest.fixture
def sshd(tmp_path):
    """A private OpenSSH sshd on loopback for one test."""
    from claude_net_ssh.testserver import PrivateSshd, sshd_available

    ok, why = sshd_available()
    require_component("OpenSSH sshd", ok, why)
    with PrivateSshd(tmp_path / "sshd") as server:
        yield server
