"""The fleet of fleet.py as its tests rely on it: every host reaches every other
host and this machine on the bridge, this machine reaches every host there, each
host sees the demo repository, and all four minions answer the one master.

The hosts' root has no ping: reaching a host is opening a TCP connection to a
Python HTTP server that the test runs on the host's bridge address.
"""

from __future__ import annotations

import ipaddress
import json
import socket

import pytest
from fleet import FLEET_HOSTS, fleet_of_hosts
from secondhost import GIT_MOUNT

import testhost

pytestmark = pytest.mark.integration

PROBE_PORT = 8799
PROBE_UNIT = "fleet-probe-http"
CONNECT_TIMEOUT = 3
# Run in a host: connect to PORT at each address; print address -> "ok" or the error.
CONNECT_PROBE = """
import json, socket, sys
port = int(sys.argv[1])
answers = {}
for address in sys.argv[2:]:
    try:
        socket.create_connection((address, port), timeout=3).close()
        answers[address] = "ok"
    except OSError as error:
        answers[address] = str(error)
print(json.dumps(answers))
"""


def connectable(address: str, port: int) -> str:
    """The word ok when a TCP connection from this machine opens, else the error."""
    try:
        socket.create_connection((address, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as error:
        return str(error)
    return "ok"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, request):
    with fleet_of_hosts(tmp_path_factory, request) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def probe_servers(fleet):
    """An HTTP server on each host's bridge address, as a transient unit of the
    host, for as long as the module's tests run."""
    for name, host in fleet.hosts.items():
        host.exec(
            ["systemd-run", f"--unit={PROBE_UNIT}", "--collect"]
            + ["python3", "-m", "http.server", "--bind", fleet.address(name)]
            + [str(PROBE_PORT)]
        )
    try:
        for name in FLEET_HOSTS:
            testhost.wait_for_port(fleet.address(name), PROBE_PORT, timeout=15)
        yield PROBE_PORT
    finally:
        for host in fleet.hosts.values():
            host.exec(["systemctl", "stop", PROBE_UNIT], check=False)


def test_each_host_has_its_bridge_address_on_eth1(fleet):
    for name, host in fleet.hosts.items():
        shown = json.loads(host.exec(["ip", "-j", "addr", "show", "eth1"]).stdout)
        addresses = [a["local"] for a in shown[0]["addr_info"] if a["family"] == "inet"]
        assert addresses == [fleet.address(name)], name


def test_every_host_reaches_every_other_host_on_the_bridge(fleet, probe_servers):
    for name, host in fleet.hosts.items():
        others = [fleet.address(other) for other in FLEET_HOSTS if other != name]
        result = host.exec(
            ["python3", "-c", CONNECT_PROBE, str(probe_servers), *others], timeout=60
        )
        assert json.loads(result.stdout) == dict.fromkeys(others, "ok"), name


def test_this_machine_reaches_every_host_on_the_bridge(fleet, probe_servers):
    answers = {
        fleet.address(name): connectable(fleet.address(name), probe_servers)
        for name in FLEET_HOSTS
    }
    assert answers == {fleet.address(name): "ok" for name in FLEET_HOSTS}


def test_the_bridge_is_not_on_this_machines_own_network(fleet):
    """Only this machine's veth end carries a fleet address here; the hosts'
    veths live in their namespaces and the fleet's."""
    shown = json.loads(testhost.run(["ip", "-j", "addr"]).stdout)
    subnet = ipaddress.ip_network(fleet.network.subnet)
    on_fleet = [
        link["ifname"]
        for link in shown
        for address in link.get("addr_info", [])
        if ipaddress.ip_address(address["local"]) in subnet
    ]
    assert on_fleet == [fleet.network.machine_veth]
    assert not {link["ifname"] for link in shown} & {"eth1", *FLEET_HOSTS}


def test_all_four_minions_answer_the_master(fleet):
    assert fleet.salt("*", "test.ping") == dict.fromkeys(FLEET_HOSTS, True)


def test_the_master_sees_each_minion_from_its_bridge_address(fleet):
    alive = fleet.salt_run("manage.alived", show_ip=True)
    assert alive == {name: fleet.address(name) for name in FLEET_HOSTS}


def test_targets_by_list_and_the_demo_repository_in_every_host(fleet):
    assert fleet.salt("web1,web2", "grains.get", "id", tgt_type="list") == {
        "web1": "web1",
        "web2": "web2",
    }
    head = f"{GIT_MOUNT}/demo.git/HEAD"
    assert fleet.salt("*", "file.file_exists", head) == dict.fromkeys(FLEET_HOSTS, True)
