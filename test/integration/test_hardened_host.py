"""The hardened host seen from outside its network namespace, from this machine: the
firewall drops a port that is not allowed while the allowed ones answer, and a
fail2ban ban closes sshd to the banned address only."""

import contextlib
import http.client
import socket
import time
import uuid

import pytest

from stack import uses_tls

pytestmark = pytest.mark.integration

NOT_ALLOWED_PORT = 8081


def connect(address, port, timeout=3.0):
    """None when a TCP connection opens, else the error (a timeout when dropped)."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return None
    except OSError as error:
        return error


@contextlib.contextmanager
def listener_in_host(test_host, port):
    """A throwaway HTTP server on all of the host's addresses, stopped by its pid."""
    unit = f"djangoapp-probe-{port}-{uuid.uuid4().hex[:8]}"
    test_host.exec(
        ["systemd-run", f"--unit={unit}", "python3", "-m", "http.server", str(port)]
    )
    pid = test_host.exec(
        ["systemctl", "show", "--property=MainPID", "--value", unit]
    ).stdout.strip()
    try:
        deadline = time.monotonic() + 10
        inside = "import socket, sys; socket.create_connection(('127.0.0.1', %s), 2)"
        while test_host.exec(["python3", "-c", inside % port], check=False).rc != 0:
            assert time.monotonic() < deadline, f"nothing listens on {port} in the host"
            time.sleep(0.2)
        yield
    finally:
        if pid.isdigit() and pid != "0":
            test_host.exec(["kill", pid], check=False)


def test_firewall_drops_a_port_that_is_not_allowed(converged_host, test_host, demo_app):
    with listener_in_host(test_host, NOT_ALLOWED_PORT):
        error = connect(test_host.ip, NOT_ALLOWED_PORT)
        # Dropped, not refused: the connection times out.
        assert isinstance(error, TimeoutError), error
        # An allowed port answers meanwhile, from the same place.
        connection = http.client.HTTPConnection(test_host.ip, 80, timeout=10)
        connection.request(
            "GET", "/healthz/", headers={"Host": demo_app["server_names"][0]}
        )
        # Plain HTTP redirects to HTTPS when the demo app has TLS on.
        assert connection.getresponse().status == (301 if uses_tls(demo_app) else 200)
        connection.close()


def test_fail2ban_ban_closes_sshd_to_the_banned_address(converged_host, test_host):
    assert connect(test_host.ip, 22) is None
    ban = ["fail2ban-client", "set", "sshd"]
    test_host.exec(ban + ["banip", test_host.master_ip])
    try:
        assert connect(test_host.ip, 22) is not None
        # Only sshd: the web server still answers this address.
        assert connect(test_host.ip, 80) is None
    finally:
        test_host.exec(ban + ["unbanip", test_host.master_ip])
    assert connect(test_host.ip, 22) is None


def test_firewall_keeps_the_minion_connected_to_its_master(
    converged_host, test_host, salt_cli
):
    """The minion's connections to the master predate the table: the master's packets
    on them are let in by their source (the second apply depends on it too)."""
    table = test_host.exec(["nft", "list", "table", "inet", "djangoapp"]).stdout
    rule = next(
        line.strip() for line in table.splitlines() if test_host.master_ip in line
    )
    assert rule.startswith(f"ip saddr {test_host.master_ip} tcp sport {{ ")
    assert "tcp flags" in rule and "syn" in rule and rule.endswith(" accept")
    assert salt_cli("test.ping", timeout=30) is True
