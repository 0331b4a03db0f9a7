"""Host features switched off in the pillar are switched off on the host: a host of
its own converged with the firewall, hardened sshd, fail2ban, automatic updates,
nightly backups and the NRPE, Zabbix and SNMP agents on, then applied with all of
them (and log rotation) off. Each service is stopped and disabled, the files the
formula wrote are gone (packages stay), our nftables table is out of the running
ruleset, the dumps are kept, the app answers, and a second apply changes nothing.

The tests run in file order, each from where the one before left the host. The slot
is $DJANGOAPP_FEATURES_OFF_SLOT, by default the shared host's slot plus 61.
"""

from __future__ import annotations

import socket
import time

import pytest
import yaml
from secondhost import SecondHost, bootable_testhost, converged_second_host, slot_from
from test_combinations import app_pillar

import demorepo
from stack import changed_states, failed_states

pytestmark = pytest.mark.integration

HOSTNAME = "djangoapp-test-features-off"
SNMP_COMMUNITY = "snmp-community-off-3c9d"

# The services that the features start, the package's own (stopped and disabled,
# kept installed) and ours (their units removed as well).
PACKAGE_SERVICES = ["fail2ban", "nagios-nrpe-server", "zabbix-agent", "snmpd"]
OUR_UNITS = ["djangoapp-firewall.service", "djangoapp-backup.timer"]
# What the features wrote, gone once they are off.
FILES = [
    "/etc/systemd/system/djangoapp-firewall.service",
    "/etc/djangoapp/firewall.nft",
    "/etc/ssh/sshd_config.d/00-djangoapp.conf",
    "/etc/fail2ban/jail.d/djangoapp.local",
    "/etc/apt/apt.conf.d/52djangoapp-auto-updates",
    "/etc/systemd/system/djangoapp-backup.service",
    "/etc/systemd/system/djangoapp-backup.timer",
    "/usr/local/lib/djangoapp/backup-databases",
    "/etc/djangoapp/backups.json",
    "/etc/logrotate.d/djangoapp",
    "/etc/nagios/nrpe.cfg",
    "/etc/zabbix/zabbix_agentd.conf",
    "/etc/snmp/snmpd.conf",
    "/etc/sudoers.d/djangoapp-monitoring",
    "/usr/local/lib/djangoapp/monitoring-check",
]
NIGHTLY = "/var/backups/djangoapp/shop/nightly"
NRPE_PORT = 5666


def pillar_of(module, on: bool) -> dict:
    master = module.MASTER_IP
    return {
        "djangoapp": {
            "apps": {
                "shop": app_pillar(
                    "shop",
                    wsgi="demosite.wsgi:application",
                    database={"engine": "postgresql", "password": "shop-db-0ff1"},
                ),
            },
            "proxy": {"http": module.PROXY_URL, "https": module.PROXY_URL},
            "firewall": {"enabled": on, "allow": [22, 80, 443]},
            "ssh": {"harden": on},
            "fail2ban": {"enabled": on},
            "auto_updates": {"enabled": on},
            "backups": {"enabled": on, "keep": 3},
            "logrotate": {"enabled": on},
            "monitoring": {
                "nrpe": {"enabled": on, "allowed_hosts": [master]},
                "zabbix": {"enabled": on, "server": master},
                "snmp": {
                    "enabled": on,
                    "community": SNMP_COMMUNITY,
                    "allowed": [master],
                },
            },
        }
    }


@pytest.fixture(scope="module")
def featured(tmp_path_factory) -> SecondHost:
    module = bootable_testhost(slot_from("DJANGOAPP_FEATURES_OFF_SLOT", 61))
    work = tmp_path_factory.mktemp("features-off")
    demorepo.build_repo(work / "git" / "demo.git")
    pillar = pillar_of(module, on=True)
    with converged_second_host(module, work, HOSTNAME, pillar) as host:
        host.module = module
        yield host.converged()


def run(host: SecondHost, *argv: str):
    return host.host.exec(list(argv), check=False)


def systemctl(host: SecondHost, verb: str, unit: str) -> str:
    return run(host, "systemctl", verb, unit).stdout.strip()


def exists(host: SecondHost, path: str) -> bool:
    return run(host, "test", "-e", path).rc == 0


def nightly_dumps(host: SecondHost) -> list[str]:
    listed = run(host, "find", NIGHTLY, "-type", "f")
    assert listed.rc == 0, listed.stderr
    return sorted(listed.stdout.split())


def tcp_refused(address: str, port: int) -> bool:
    """True when the port answers with a refusal (nothing listens, nothing drops)."""
    try:
        with socket.create_connection((address, port), timeout=3):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def test_features_are_on_at_first(featured):
    for service in PACKAGE_SERVICES:
        assert systemctl(featured, "is-active", service) == "active", service
        assert systemctl(featured, "is-enabled", service) == "enabled", service
    for unit in OUR_UNITS:
        assert systemctl(featured, "is-enabled", unit) == "enabled", unit
    assert systemctl(featured, "is-active", "djangoapp-firewall") == "active"
    assert "table inet djangoapp" in run(featured, "nft", "list", "tables").stdout
    for path in FILES:
        assert exists(featured, path), path
    assert systemctl(featured, "is-active", "apt-daily-upgrade.timer") == "active"
    # A nightly dump now, to see it kept once backups are off.
    assert run(featured, "systemctl", "start", "djangoapp-backup.service").rc == 0
    assert nightly_dumps(featured)
    # The firewall drops a port it does not allow (no refusal comes back).
    assert not tcp_refused(featured.ip, 8081)


def test_apply_with_the_features_off_switches_them_off(featured):
    dumps = nightly_dumps(featured)
    featured.pillar = pillar_of(featured.module, on=False)
    featured.pillar_file.write_text(yaml.safe_dump(featured.pillar))
    started = time.monotonic()
    rc, ret, output = featured.apply()
    print(f"apply with the features off: {time.monotonic() - started:.1f} s")
    assert rc == 0 and not failed_states(ret), output
    changed = sorted(ret[key]["__id__"] for key in changed_states(ret))
    print("changed:", changed)
    assert changed == sorted(
        [
            "djangoapp-auto-updates-apt-daily-upgrade.timer-dead",
            "djangoapp-auto-updates-record-file-absent",
            "djangoapp-backups-file-absent-/etc/djangoapp/backups.json",
            "djangoapp-backups-file-absent-/etc/systemd/system/djangoapp-backup.service",
            "djangoapp-backups-file-absent-/etc/systemd/system/djangoapp-backup.timer",
            "djangoapp-backups-file-absent-/usr/local/lib/djangoapp/backup-databases",
            "djangoapp-backups-systemd-reloaded",
            "djangoapp-backups-timer-dead",
            "djangoapp-fail2ban-jail-file-absent",
            "djangoapp-fail2ban-service-dead",
            "djangoapp-firewall-ruleset-file-absent",
            "djangoapp-firewall-service-dead",
            "djangoapp-firewall-service-unit-file-absent",
            "djangoapp-firewall-systemd-reloaded",
            "djangoapp-logrotate-config-file-absent",
            "djangoapp-monitoring-check-script-file-absent",
            "djangoapp-monitoring-sudoers-file-absent",
            "djangoapp-nrpe-config-file-absent",
            "djangoapp-nrpe-service-dead",
            "djangoapp-snmp-config-file-absent",
            "djangoapp-snmp-service-dead",
            "djangoapp-ssh-hardening-file-absent",
            "djangoapp-ssh-service-reloaded",
            "djangoapp-zabbix-config-file-absent",
            "djangoapp-zabbix-service-dead",
        ]
    )

    # Each service stopped and disabled; ours have no unit left at all.
    for service in PACKAGE_SERVICES:
        assert systemctl(featured, "is-active", service) == "inactive", service
        assert systemctl(featured, "is-enabled", service) == "disabled", service
    for unit in OUR_UNITS:
        assert systemctl(featured, "is-active", unit) == "inactive", unit
        enabled = run(featured, "systemctl", "is-enabled", unit)
        assert enabled.rc != 0 and enabled.stdout.strip() in ("", "not-found"), unit
    # The files the formula wrote are gone; the packages stay installed.
    for path in FILES:
        assert not exists(featured, path), path
    for package in ["nftables", "fail2ban", "nagios-nrpe-server", "zabbix-agent"]:
        assert run(featured, "dpkg-query", "-W", package).rc == 0, package
    # Nothing installs updates any more (unattended-upgrades' own 20auto-upgrades
    # would); apt's list refresh goes on.
    assert systemctl(featured, "is-active", "apt-daily-upgrade.timer") == "inactive"
    assert systemctl(featured, "is-enabled", "apt-daily-upgrade.timer") == "disabled"
    assert systemctl(featured, "is-enabled", "apt-daily.timer") == "enabled"
    # Our table is out of the running ruleset, and fail2ban took its own with it.
    tables = run(featured, "nft", "list", "tables").stdout
    assert "djangoapp" not in tables and "f2b" not in tables, tables
    # sshd runs on the host's own settings (Debian's default MaxAuthTries).
    assert systemctl(featured, "is-active", "ssh") == "active"
    assert "maxauthtries 6" in run(featured, "sshd", "-T").stdout.lower()
    # The dumps are kept.
    assert nightly_dumps(featured) == dumps
    # The app answers, from inside and from this machine; a port that was dropped
    # is refused now (nothing filters, NRPE no longer listens).
    assert featured.get("http://127.0.0.1/", "shop.test")["status"] == 200
    assert tcp_refused(featured.ip, NRPE_PORT)
    probe = socket.create_connection((featured.ip, 80), timeout=10)
    probe.sendall(b"GET /healthz/ HTTP/1.0\r\nHost: shop.test\r\n\r\n")
    assert probe.recv(64).startswith(b"HTTP/1.1 200"), "the app does not answer"
    probe.close()


def test_a_second_apply_with_the_features_off_changes_nothing(featured):
    started = time.monotonic()
    rc, ret, output = featured.apply()
    print(f"second apply with the features off: {time.monotonic() - started:.1f} s")
    assert rc == 0 and not failed_states(ret), output
    assert changed_states(ret) == [], output
    # The units of ours are gone: nothing to stop, a success with no change.
    off = {state["__id__"]: state for state in ret.values()}
    for state_id in ["djangoapp-firewall-service-dead", "djangoapp-backups-timer-dead"]:
        assert off[state_id]["result"] is True and not off[state_id]["changes"]
    seconds = sum(
        state.get("duration", 0)
        for state in ret.values()
        if state.get("__sls__", "").startswith("djangoapp.off.")
    )
    print(f"the off states took {seconds / 1000:.2f} s")
