"""The monitoring agents of the shared host (stack.MONITORING_PILLAR), asked from this
machine the way Nagios, Zabbix and LibreNMS would: NRPE with check_nrpe, the Zabbix
agent with its own protocol, snmpd with snmpget. The checks answer OK while the app
runs and CRITICAL when what they watch is down; each agent answers the allowed source
(this machine's end of the veth) and nobody else; the SNMP community and the database
password never show."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import sys
import time

import pytest

import testhost
from stack import MONITORING_PILLAR, MONITORING_PORTS, SNMP_COMMUNITY

pytestmark = pytest.mark.integration

CHECK_NRPE = "/usr/lib/nagios/plugins/check_nrpe"
SYS_DESCR = ".1.3.6.1.2.1.1.1.0"
SYS_LOCATION = ".1.3.6.1.2.1.1.6.0"
OK, CRITICAL = 0, 2
RECOVERY_TIMEOUT = 90

# One request of the Zabbix agent protocol: "ZBXD\x01", the data length as 8 bytes
# little-endian (4 of length, 4 reserved), the item key; the answer comes back in the
# same frame. Prints {"answer": the value, or null when the agent closed without one}.
ZABBIX_GET = r"""
import json, socket, struct, sys
address, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
with socket.create_connection((address, port), timeout=20) as sock:
    sock.sendall(b"ZBXD\x01" + struct.pack("<II", len(key), 0) + key)
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except ConnectionResetError:
        reply = b""
answer = None
if reply:
    assert reply[:5] == b"ZBXD\x01", reply[:16]
    (length,) = struct.unpack("<I", reply[5:9])
    answer = reply[13 : 13 + length].decode("utf-8", "replace")
print(json.dumps({"answer": answer}))
"""

# An SNMPv2c GET of sysDescr.0 over UDP, encoded by hand (BER), for places without
# snmpget: prints {"answered": bool, "text": what came back, printable}.
SNMP_GET = r"""
import json, socket, sys
def tlv(tag, value):
    return bytes([tag, len(value)]) + value
address, port, community = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
oid = bytes([0x2B, 6, 1, 2, 1, 1, 1, 0])
bindings = tlv(0x30, tlv(0x30, tlv(0x06, oid) + tlv(0x05, b"")))
request = tlv(0xA0, tlv(0x02, b"\x07") + tlv(0x02, b"\x00") * 2 + bindings)
message = tlv(0x30, tlv(0x02, b"\x01") + tlv(0x04, community) + request)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.settimeout(3)
    sock.sendto(message, (address, port))
    try:
        reply = sock.recv(4096)
    except TimeoutError:
        reply = b""
text = "".join(chr(c) if 32 <= c < 127 else "." for c in reply)
print(json.dumps({"answered": bool(reply), "text": text}))
"""


def run(argv, timeout=60):
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False
    )


def check_nrpe(address, command, *extra):
    """check_nrpe's (exit status, output) for one command of the host's NRPE."""
    result = run([CHECK_NRPE, "-H", address, "-t", "40", "-c", command, *extra])
    return result.returncode, (result.stdout + result.stderr).strip()


def zabbix_get(address, key):
    result = run([sys.executable, "-c", ZABBIX_GET, address, str(ZABBIX_PORT), key])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["answer"]


def snmpget(address, community, *oids, clientaddr=None):
    argv = ["snmpget", "-v2c", "-c", community, "-t", "3", "-r", "0", "-On"]
    if clientaddr:
        argv.append(f"--clientaddr={clientaddr}")
    return run([*argv, address, *oids])


NRPE_PORT = MONITORING_PORTS["nrpe"]
ZABBIX_PORT = MONITORING_PORTS["zabbix"]
SNMP_PORT = MONITORING_PORTS["snmp"]


@pytest.fixture(scope="module")
def monitored(converged_host, test_host):
    """The converged host; this machine has the client tools (test/setup.sh)."""
    for tool in (CHECK_NRPE, "snmpget", "snmpset"):
        assert run(["sh", "-c", f"command -v {tool}"]).returncode == 0, (
            f"{tool} is missing on this machine: test/setup.sh installs it"
        )
    return test_host


@pytest.fixture(scope="module")
def checks(demo_app):
    """Each check's name and the start of its line when it is OK."""
    name = demo_app["name"]
    return {
        "disk": "DISK OK",
        "load": "LOAD OK",
        f"{name}_http": "HTTP OK - 200",
        f"{name}_gunicorn": "GUNICORN OK - master pid",
        f"{name}_database": "DATABASE OK - postgresql",
    }


def wait_for_check(address, name, status, timeout=RECOVERY_TIMEOUT):
    """Ask NRPE until the check has ``status``; returns its output."""
    deadline = time.monotonic() + timeout
    while True:
        rc, output = check_nrpe(address, f"check_djangoapp_{name}")
        if rc == status or time.monotonic() > deadline:
            assert rc == status, f"check_djangoapp_{name} stays {rc}: {output}"
            return output
        time.sleep(2)


def test_nrpe_checks_are_ok(monitored, checks):
    for name, expected in checks.items():
        rc, output = check_nrpe(monitored.ip, f"check_djangoapp_{name}")
        assert (rc, output[: len(expected)]) == (OK, expected), output
        # Performance data after the pipe, for graphs.
        assert "|" in output, output


def test_nrpe_takes_no_arguments_and_no_other_command(monitored):
    rc, output = check_nrpe(monitored.ip, "check_djangoapp_disk", "-a", "-p", "/etc")
    assert rc != OK and "DISK OK" not in output, output
    # The package's sample commands are gone with its configuration file.
    rc, output = check_nrpe(monitored.ip, "check_users")
    assert rc != OK and "not defined" in output, output


def test_zabbix_items_run_the_same_checks(monitored, checks):
    assert zabbix_get(monitored.ip, "agent.ping") == "1"
    for name, expected in checks.items():
        assert zabbix_get(monitored.ip, f"djangoapp.status.{name}") == str(OK), name
        output = zabbix_get(monitored.ip, f"djangoapp.output.{name}")
        assert output.startswith(expected), output
    # No remote commands.
    denied = zabbix_get(monitored.ip, "system.run[id]")
    assert denied.startswith("ZBX_NOTSUPPORTED"), denied


@contextlib.contextmanager
def stopped(test_host, start, stop):
    """``stop`` run in the host, and ``start`` after, whatever happens between."""
    test_host.exec(stop)
    try:
        yield
    finally:
        test_host.exec(start)


def test_database_check_is_critical_while_the_database_is_down(
    monitored, demo_app, checks
):
    name = f"{demo_app['name']}_database"
    start, stop = (["systemctl", action, "postgresql"] for action in ("start", "stop"))
    with stopped(monitored, start, stop):
        rc, output = check_nrpe(monitored.ip, f"check_djangoapp_{name}")
        assert rc == CRITICAL, output
        assert output.startswith("DATABASE CRITICAL - postgresql"), output
        assert zabbix_get(monitored.ip, f"djangoapp.status.{name}") == str(CRITICAL)
    assert wait_for_check(monitored.ip, name, OK).startswith(checks[name])


def gunicorn_control(demo_app, action):
    service = f"djangoapp-{demo_app['name']}"
    if demo_app.get("process_manager", "supervisor") == "supervisor":
        return ["supervisorctl", action, service]
    return ["systemctl", action, service]


def test_http_and_gunicorn_checks_are_critical_while_gunicorn_is_down(
    monitored, demo_app, checks
):
    name = demo_app["name"]
    with stopped(
        monitored,
        gunicorn_control(demo_app, "start"),
        gunicorn_control(demo_app, "stop"),
    ):
        rc, output = check_nrpe(monitored.ip, f"check_djangoapp_{name}_http")
        # Nginx answers, without an upstream.
        assert (rc, output[:18]) == (CRITICAL, "HTTP CRITICAL - 50"), output
        rc, output = check_nrpe(monitored.ip, f"check_djangoapp_{name}_gunicorn")
        assert rc == CRITICAL and "no Gunicorn master" in output, output
        status = zabbix_get(monitored.ip, f"djangoapp.status.{name}_gunicorn")
        assert status == str(CRITICAL)
    for check in ("gunicorn", "http"):
        output = wait_for_check(monitored.ip, f"{name}_{check}", OK)
        assert output.startswith(checks[f"{name}_{check}"]), output


def test_snmp_answers_the_community_read_only(monitored):
    result = snmpget(monitored.ip, SNMP_COMMUNITY, SYS_DESCR, SYS_LOCATION)
    assert result.returncode == 0, result.stderr
    assert f'{SYS_DESCR} = STRING: "Linux ' in result.stdout, result.stdout
    location = MONITORING_PILLAR["snmp"]["location"]
    assert f'{SYS_LOCATION} = STRING: "{location}"' in result.stdout, result.stdout
    written = run(
        ["snmpset", "-v2c", "-c", SNMP_COMMUNITY, "-t", "3", "-r", "0"]
        + [monitored.ip, SYS_LOCATION, "s", "written"]
    )
    assert written.returncode != 0
    assert "noAccess" in written.stdout + written.stderr, written
    result = snmpget(monitored.ip, SNMP_COMMUNITY, SYS_LOCATION)
    assert f'"{location}"' in result.stdout


def test_snmp_wrong_community_gets_nothing(monitored):
    result = snmpget(monitored.ip, "wrong-community", SYS_DESCR)
    assert result.returncode != 0
    assert "Timeout: No Response" in result.stderr, result
    assert "STRING" not in result.stdout


@contextlib.contextmanager
def extra_address():
    """A second address of this machine on the host's veth, not allowed anywhere."""
    network = ipaddress.ip_network(testhost.SUBNET)
    address = str(network[3])
    assert address not in (testhost.MASTER_IP, testhost.HOST_IP)
    device = ["dev", testhost.HOST_VETH]
    subprocess.run(["ip", "addr", "add", f"{address}/32", *device], check=True)
    try:
        yield address
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", *device], check=False)


def tcp_connect(source, address, port, timeout=3.0):
    """None when a TCP connection from ``source`` opens, else the error."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        try:
            sock.connect((address, port))
        except OSError as error:
            return error
    return None


def test_firewall_drops_the_monitoring_ports_from_another_source(monitored):
    with extra_address() as other:
        for port in (NRPE_PORT, ZABBIX_PORT):
            error = tcp_connect(other, monitored.ip, port)
            assert isinstance(error, TimeoutError), (port, error)
            assert tcp_connect(testhost.MASTER_IP, monitored.ip, port) is None
        # The web server answers the same address meanwhile.
        assert tcp_connect(other, monitored.ip, 80) is None
        refused = snmpget(monitored.ip, SNMP_COMMUNITY, SYS_DESCR, clientaddr=other)
        assert "Timeout: No Response" in refused.stderr, refused
        allowed = snmpget(
            monitored.ip, SNMP_COMMUNITY, SYS_DESCR, clientaddr=testhost.MASTER_IP
        )
        assert allowed.returncode == 0, allowed.stderr


def test_firewall_rules_match_the_source(monitored):
    table = monitored.exec(["nft", "list", "table", "inet", "djangoapp"]).stdout
    lines = [line.strip() for line in table.splitlines()]
    for port, protocol in (
        (NRPE_PORT, "tcp"),
        (ZABBIX_PORT, "tcp"),
        (SNMP_PORT, "udp"),
    ):
        rules = [line for line in lines if f"dport {port} " in line]
        assert rules == [
            f"ip saddr {testhost.MASTER_IP} {protocol} dport {port} accept"
        ], table
    # Not among the ports open to anyone.
    for line in lines:
        if "dport {" in line:
            open_ports = line.split("{")[1].split("}")[0].replace(",", " ").split()
            assert not {str(port) for port in MONITORING_PORTS.values()} & set(
                open_ports
            ), line


def in_host(test_host, code, *args):
    result = test_host.exec(["python3", "-c", code, *args], timeout=60)
    return json.loads(result.stdout)


def test_agents_ignore_a_source_they_do_not_allow(monitored):
    """Past the firewall (the host asking itself on its own address goes through
    loopback), the agents' own access lists still turn the host's address away; the
    same requests from this machine get answers."""
    own = monitored.ip
    assert in_host(monitored, SNMP_GET, own, str(SNMP_PORT), SNMP_COMMUNITY) == {
        "answered": False,
        "text": "",
    }
    local = json.loads(
        run(
            [sys.executable, "-c", SNMP_GET, own, str(SNMP_PORT), SNMP_COMMUNITY]
        ).stdout
    )
    assert local["answered"] and "Linux" in local["text"], local
    assert in_host(monitored, ZABBIX_GET, own, str(ZABBIX_PORT), "agent.ping") == {
        "answer": None
    }
    assert zabbix_get(own, "agent.ping") == "1"


def test_secrets_never_show(monitored, first_converge, demo_app, checks):
    """The community is in no state return, log or command line, and the database
    password that the database check reads shows in no log."""
    for name in checks:
        check_nrpe(monitored.ip, f"check_djangoapp_{name}")
    password = demo_app["database"]["password"]
    minion_log = monitored.exec(["cat", "/var/log/salt/minion"]).stdout
    journal = monitored.exec(["journalctl", "--no-pager", "--output=cat"]).stdout
    command_lines = monitored.exec(
        ["sh", "-c", "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done"]
    ).stdout
    assert "nrpe" in command_lines and "snmpd" in command_lines
    assert "Executing state" in minion_log
    for secret in (SNMP_COMMUNITY, password):
        assert secret not in json.dumps(first_converge)
        assert secret not in minion_log
        assert secret not in journal
        assert secret not in command_lines


BAD_MONITORING_PILLARS = {
    "nrpe without hosts": (
        {"nrpe": {"allowed_hosts": []}},
        "djangoapp:monitoring:nrpe:allowed_hosts is required when enabled",
    ),
    "community with a write directive": (
        {"snmp": {"community": "x\nrwcommunity y"}},
        "djangoapp:monitoring:snmp:community must be 1 to 64 printable characters",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MONITORING_PILLARS))
def test_bad_monitoring_pillar_stops_before_anything_changes(monitored, salt_cli, case):
    override, message = BAD_MONITORING_PILLARS[case]
    configs = ["/etc/nagios/nrpe.cfg", "/etc/snmp/snmpd.conf"]
    before = monitored.exec(["sha256sum", *configs]).stdout
    result = salt_cli.run(
        "state.apply", pillar={"djangoapp": {"monitoring": override}}, timeout=300
    )
    assert result.returncode != 0
    assert message in str(result.data)
    assert monitored.exec(["sha256sum", *configs]).stdout == before
    assert check_nrpe(monitored.ip, "check_djangoapp_disk")[0] == OK
