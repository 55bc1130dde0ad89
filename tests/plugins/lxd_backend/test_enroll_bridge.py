"""``claude-net enroll`` for a container on a managed LXD network: the hub is reached at the host's
address on that network, and no proxy device is added.

The other enroll tests use busybox containers without a network (the proxy-device branch). Here
the test makes a managed bridge of its own (no NAT and no firewall rules: the machine may have no
iptables), puts a container on it with a static address (busybox has no DHCP client running),
and starts a real hub listening on the bridge's address.
"""

from __future__ import annotations

import contextlib
import json
import secrets

import pytest

from claude_net.testing import HubProcess, database_for

from .conftest import lxc, wait_running
from .test_enroll import enroll, whoami_inside

IMAGE_ALIAS = "claude-net-busybox"


@pytest.fixture(scope="module")
def bridge(lxd_available):
    """A managed LXD bridge on a random 10.x.y.0/24 (name at most 15 characters), deleted after."""
    name = f"cnbr{secrets.token_hex(3)}"
    subnet = f"10.{secrets.randbelow(50) + 200}.{secrets.randbelow(254) + 1}"
    created = lxc("network", "create", name, f"ipv4.address={subnet}.1/24", "ipv6.address=none",
                  "ipv4.nat=false", "ipv4.firewall=false", "ipv6.firewall=false", check=False)
    assert created.returncode == 0, f"could not create an LXD bridge for the test: {created.stderr}"
    try:
        yield name, subnet
    finally:
        lxc("network", "delete", name, check=False, timeout=60)


@pytest.fixture(scope="module")
def bridged(bridge, run_id):
    """A running container on the bridge, with an address, deleted after."""
    network, subnet = bridge
    name = f"{run_id}-bridged-{secrets.token_hex(2)}"
    lxc("launch", IMAGE_ALIAS, name, "--network", network)
    try:
        wait_running(name)
        lxc("exec", name, "--", "sh", "-c",
            f"ip link set lo up && ip link set eth0 up && ip addr add {subnet}.50/24 dev eth0")
        yield name
    finally:
        with contextlib.suppress(Exception):
            lxc("delete", "--force", name, check=False, timeout=60)


@pytest.fixture(scope="module")
def bridge_hub(bridge, run_id, tmp_path_factory):
    """A real hub listening on the bridge's address only (SQLite: the database paths of enroll
    run on both databases in test_enroll.py)."""
    _network, subnet = bridge
    with database_for("sqlite", tmp_path_factory.mktemp("bridge-db")) as url:
        process = HubProcess(f'host = "{subnet}.1"\n[lxd]\ninclude = ["{run_id}-*"]\n', database_url=url,
                             workdir=str(tmp_path_factory.mktemp("bridge-hub")))
        process.url = f"http://{subnet}.1:{process.port}"
        with process:
            yield process


def test_a_container_on_a_managed_network_reaches_the_hub_at_the_bridge_address(bridge, bridged, bridge_hub):
    network, subnet = bridge
    done = enroll(bridge_hub, bridged)
    assert done.returncode == 0, done.stderr
    assert f"the host's address on the LXD network {network}" in done.stdout, done.stdout
    assert "proxy device" not in done.stdout

    # the configuration points at the bridge address, and a process in the container that uses
    # only what enroll wrote calls the hub over the container's own network as that node
    config = json.loads(lxc("exec", bridged, "--", "cat", "/root/.claude.json").stdout)
    assert config["mcpServers"]["claude-net"]["url"] == f"http://{subnet}.1:{bridge_hub.port}/mcp"
    inside = whoami_inside(bridged, "/root/.claude.json", "/root/.claude-net-token")
    assert inside.returncode == 0, inside.stderr
    who = json.loads(inside.stdout)
    assert who["ok"] is True and who["name"] == bridged and who["admin"] is False

    # nothing was added to the container
    devices = json.loads(lxc("query", f"/1.0/instances/{bridged}").stdout)["devices"]
    assert "claude-net-hub" not in devices
