"""Host features switched off: each feature SLS whose pillar section turns it off
includes its file of off/ (services stopped and disabled, the formula's files
removed, packages kept), off/host.sls switches every one off whatever the pillar's
flags say (clean.sls includes it), on Debian and RedHat alike; and the firewalld
script removes what firewall.sls added to the zone and nothing else."""

import os
import stat
import subprocess

import pytest

from rendering import REPO, app_pillar, state_args

PLATFORMS = ["debian-12", "rocky-9"]
FIREWALLD_SCRIPT = REPO / "salt" / "djangoapp" / "files" / "firewalld-remove-ours.sh"

# Each feature SLS, the pillar that turns it off, and the state IDs of its off file
# per OS family.
FEATURES = {
    "firewall": (
        {"firewall": {"enabled": False}},
        {
            "Debian": [
                "djangoapp-firewall-nftables-table-absent",
                "djangoapp-firewall-ruleset-file-absent",
                "djangoapp-firewall-service-dead",
                "djangoapp-firewall-service-unit-file-absent",
                "djangoapp-firewall-systemd-reloaded",
            ],
            "RedHat": [
                "djangoapp-firewall-service-dead",
                "djangoapp-firewall-zone-record-file-absent",
                "djangoapp-firewall-zone-rules-absent",
            ],
        },
    ),
    "ssh": (
        {"ssh": {"harden": False}},
        ["djangoapp-ssh-hardening-file-absent", "djangoapp-ssh-service-reloaded"],
    ),
    "fail2ban": (
        {"fail2ban": {"enabled": False}},
        ["djangoapp-fail2ban-jail-file-absent", "djangoapp-fail2ban-service-dead"],
    ),
    "auto_updates": (
        {"auto_updates": {"enabled": False}},
        {
            "Debian": [
                "djangoapp-auto-updates-apt-daily-upgrade.timer-dead",
                "djangoapp-auto-updates-record-file-absent",
            ],
            "RedHat": [
                "djangoapp-auto-updates-dnf-automatic.timer-dead",
                "djangoapp-auto-updates-record-file-absent",
            ],
        },
    ),
    "backups": (
        {"backups": {"enabled": False}},
        [
            "djangoapp-backups-file-absent-/etc/djangoapp/backups.json",
            "djangoapp-backups-file-absent-/etc/systemd/system/djangoapp-backup.service",
            "djangoapp-backups-file-absent-/etc/systemd/system/djangoapp-backup.timer",
            "djangoapp-backups-file-absent-/usr/local/lib/djangoapp/backup-databases",
            "djangoapp-backups-systemd-reloaded",
            "djangoapp-backups-timer-dead",
        ],
    ),
    "logrotate": (
        {"logrotate": {"enabled": False}},
        ["djangoapp-logrotate-config-file-absent"],
    ),
    "nrpe": (
        {"monitoring": {"nrpe": {"enabled": False}}},
        ["djangoapp-nrpe-config-file-absent", "djangoapp-nrpe-service-dead"],
    ),
    "zabbix": (
        {"monitoring": {"zabbix": {"enabled": False}}},
        ["djangoapp-zabbix-config-file-absent", "djangoapp-zabbix-service-dead"],
    ),
    "snmp": (
        {"monitoring": {"snmp": {"enabled": False}}},
        ["djangoapp-snmp-config-file-absent", "djangoapp-snmp-service-dead"],
    ),
    "monitoring_checks": (
        {},
        [
            "djangoapp-monitoring-check-script-file-absent",
            "djangoapp-monitoring-sudoers-file-absent",
        ],
    ),
}

# Every feature on: off/host.sls does not read these flags.
EVERYTHING_ON = {
    "firewall": {"enabled": True, "allow": [22, 80, 443, "51820/udp"]},
    "ssh": {"harden": True},
    "fail2ban": {"enabled": True},
    "auto_updates": {"enabled": True},
    "backups": {"enabled": True},
    "logrotate": {"enabled": True},
    "monitoring": {
        "nrpe": {"enabled": True, "allowed_hosts": ["192.0.2.10"]},
        "zabbix": {"enabled": True, "server": "192.0.2.20"},
        "snmp": {"enabled": True, "community": "c0mmunity", "allowed": ["192.0.2.30"]},
    },
}


def family(platform):
    return "Debian" if platform.startswith("debian") else "RedHat"


def off_ids(feature, platform):
    ids = FEATURES[feature][1]
    return sorted(ids[family(platform)] if isinstance(ids, dict) else ids)


def pillar(**sections):
    return {"djangoapp": {"apps": {"shop": app_pillar("shop")}, **sections}}


@pytest.fixture(scope="module", params=PLATFORMS)
def off_host(request, renderer):
    """off/host.sls with every feature on in the pillar."""
    platform = request.param
    return platform, renderer.show_sls(
        platform, pillar(**EVERYTHING_ON), sls="djangoapp.off.host"
    )


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_a_feature_turned_off_includes_its_off_file(renderer, platform, feature):
    sections, _ = FEATURES[feature]
    states = renderer.show_sls(platform, pillar(**sections), sls=f"djangoapp.{feature}")
    assert sorted(states) == off_ids(feature, platform)
    assert {state["__sls__"] for state in states.values()} == {
        f"djangoapp.off.{feature}"
    }


def test_off_host_switches_every_feature_off_whatever_the_flags(off_host):
    platform, states = off_host
    expected = sorted(
        state_id for feature in FEATURES for state_id in off_ids(feature, platform)
    )
    assert sorted(states) == expected
    # Nothing is installed, started or written.
    functions = {state_args(states, state_id)[0] for state_id in states}
    assert functions <= {
        "service.dead",
        "file.absent",
        "cmd.run",
        "cmd.script",
        "module.run",
    }
    for state_id in states:
        function, args = state_args(states, state_id)
        if function == "service.dead":
            assert args["enable"] is False, state_id


def test_services_stopped_per_family_where_the_formula_started_them(off_host):
    """Each service only where a file of the formula shows that it started it: a
    service someone else runs is left alone."""
    platform, states = off_host
    stopped = {}
    for state_id in states:
        function, args = state_args(states, state_id)
        if function == "service.dead":
            stopped[state_id] = (args["name"], args["onlyif"])

    def ours(path):
        return "grep -qsF 'Managed by Salt (djangoapp)' " + path

    if family(platform) == "Debian":
        assert stopped == {
            "djangoapp-firewall-service-dead": (
                "djangoapp-firewall",
                "test -e /etc/systemd/system/djangoapp-firewall.service",
            ),
            "djangoapp-fail2ban-service-dead": (
                "fail2ban",
                "test -e /etc/fail2ban/jail.d/djangoapp.local",
            ),
            "djangoapp-auto-updates-apt-daily-upgrade.timer-dead": (
                "apt-daily-upgrade.timer",
                "test -e /etc/apt/apt.conf.d/52djangoapp-auto-updates",
            ),
            "djangoapp-backups-timer-dead": (
                "djangoapp-backup.timer",
                "test -e /etc/systemd/system/djangoapp-backup.timer",
            ),
            "djangoapp-nrpe-service-dead": (
                "nagios-nrpe-server",
                ours("/etc/nagios/nrpe.cfg"),
            ),
            "djangoapp-zabbix-service-dead": (
                "zabbix-agent",
                ours("/etc/zabbix/zabbix_agentd.conf"),
            ),
            "djangoapp-snmp-service-dead": ("snmpd", ours("/etc/snmp/snmpd.conf")),
        }
    else:
        assert stopped == {
            "djangoapp-firewall-service-dead": (
                "firewalld",
                "test -e /etc/djangoapp/firewalld-managed",
            ),
            "djangoapp-fail2ban-service-dead": (
                "fail2ban",
                "test -e /etc/fail2ban/jail.d/djangoapp.local",
            ),
            "djangoapp-auto-updates-dnf-automatic.timer-dead": (
                "dnf-automatic.timer",
                "test -e /etc/djangoapp/dnf-automatic-managed",
            ),
            "djangoapp-backups-timer-dead": (
                "djangoapp-backup.timer",
                "test -e /etc/systemd/system/djangoapp-backup.timer",
            ),
            "djangoapp-nrpe-service-dead": ("nrpe", ours("/etc/nagios/nrpe.cfg")),
            "djangoapp-zabbix-service-dead": (
                "zabbix-agent",
                ours("/etc/zabbix_agentd.conf"),
            ),
            "djangoapp-snmp-service-dead": ("snmpd", ours("/etc/snmp/snmpd.conf")),
        }
    # The agents' configuration files go only where they are ours.
    for part in ("nrpe", "zabbix", "snmp"):
        _, config = state_args(states, f"djangoapp-{part}-config-file-absent")
        assert config["onlyif"] == stopped[f"djangoapp-{part}-service-dead"][1]
    # sshd keeps running: the removed drop-in is reloaded away.
    _, reload = state_args(states, "djangoapp-ssh-service-reloaded")
    assert reload["service.reload"] == [
        {"name": "ssh" if family(platform) == "Debian" else "sshd"}
    ]
    assert reload["onchanges"] == [{"file": "djangoapp-ssh-hardening-file-absent"}]


def test_files_removed_per_family_and_the_dumps_kept(off_host):
    platform, states = off_host
    removed = {
        state_args(states, state_id)[1]["name"]
        for state_id in states
        if state_args(states, state_id)[0] == "file.absent"
    }
    common = {
        "/etc/ssh/sshd_config.d/00-djangoapp.conf",
        "/etc/fail2ban/jail.d/djangoapp.local",
        "/etc/systemd/system/djangoapp-backup.timer",
        "/etc/systemd/system/djangoapp-backup.service",
        "/usr/local/lib/djangoapp/backup-databases",
        "/etc/djangoapp/backups.json",
        "/etc/logrotate.d/djangoapp",
        "/etc/nagios/nrpe.cfg",
        "/etc/snmp/snmpd.conf",
        "/etc/sudoers.d/djangoapp-monitoring",
        "/usr/local/lib/djangoapp/monitoring-check",
    }
    if family(platform) == "Debian":
        assert removed == common | {
            "/etc/systemd/system/djangoapp-firewall.service",
            "/etc/djangoapp/firewall.nft",
            "/etc/apt/apt.conf.d/52djangoapp-auto-updates",
            "/etc/zabbix/zabbix_agentd.conf",
        }
    else:
        # dnf's automatic.conf is the package's, only some options ours: kept.
        assert removed == common | {
            "/etc/zabbix_agentd.conf",
            "/etc/djangoapp/firewalld-managed",
            "/etc/djangoapp/dnf-automatic-managed",
        }
    assert not [path for path in removed if path.startswith("/var/backups")]


def test_debian_firewall_off_removes_our_table_only(renderer):
    states = renderer.show_sls(
        "debian-12", pillar(firewall={"enabled": False}), sls="djangoapp.firewall"
    )
    _, table = state_args(states, "djangoapp-firewall-nftables-table-absent")
    assert table["name"] == "/usr/sbin/nft delete table inet djangoapp"
    assert table["onlyif"] == "/usr/sbin/nft list table inet djangoapp"
    assert table["require"] == [{"service": "djangoapp-firewall-service-dead"}]
    _, unit = state_args(states, "djangoapp-firewall-service-unit-file-absent")
    assert unit["require"] == [{"service": "djangoapp-firewall-service-dead"}]
    _, reloaded = state_args(states, "djangoapp-firewall-systemd-reloaded")
    assert reloaded["onchanges"] == [
        {"file": "djangoapp-firewall-service-unit-file-absent"}
    ]


@pytest.mark.parametrize("platform", ["rocky-9", "almalinux-10"])
def test_firewalld_off_removes_what_we_added_then_stops(renderer, platform):
    sections = {"firewall": {"enabled": False, "allow": [22, 443, "51820/udp"]}}
    states = renderer.show_sls(platform, pillar(**sections), sls="djangoapp.firewall")
    function, script = state_args(states, "djangoapp-firewall-zone-rules-absent")
    assert function == "cmd.script"
    assert script["source"] == "salt://djangoapp/files/firewalld-remove-ours.sh"
    assert script["stateful"] is True
    assert script["args"].split() == [
        "public",
        "port:22/tcp",
        "port:443/tcp",
        "port:51820/udp",
        "rule:5666/tcp",
        "rule:10050/tcp",
        "rule:161/udp",
        "source-rule:4505/tcp",
        "source-rule:4506/tcp",
    ]
    # Only where firewall.sls turned firewalld on (RHEL may run it already).
    assert script["onlyif"] == "test -e /etc/djangoapp/firewalld-managed"
    _, service = state_args(states, "djangoapp-firewall-service-dead")
    assert service["require"] == [{"cmd": "djangoapp-firewall-zone-rules-absent"}]
    assert service["onlyif"] == script["onlyif"]
    _, record = state_args(states, "djangoapp-firewall-zone-record-file-absent")
    assert record["require"] == [{"service": "djangoapp-firewall-service-dead"}]


@pytest.mark.parametrize("platform", ["rocky-9", "almalinux-10"])
def test_firewalld_and_dnf_automatic_on_leave_a_record(renderer, platform):
    sections = {"firewall": {"enabled": True}, "auto_updates": {"enabled": True}}
    states = renderer.show_sls(platform, pillar(**sections), sls="djangoapp.host")
    _, record = state_args(states, "djangoapp-firewall-zone-record-file-managed")
    assert record["name"] == "/etc/djangoapp/firewalld-managed"
    _, record = state_args(states, "djangoapp-auto-updates-record-file-managed")
    assert record["name"] == "/etc/djangoapp/dnf-automatic-managed"


def test_monitoring_checks_stay_while_one_agent_needs_them(renderer):
    monitoring = {
        "nrpe": {"enabled": False},
        "zabbix": {"enabled": True, "server": "192.0.2.20"},
    }
    states = renderer.show_sls(
        "debian-12", pillar(monitoring=monitoring), sls="djangoapp.monitoring"
    )
    assert "djangoapp-monitoring-sudoers-file-managed" in states
    assert "djangoapp-monitoring-sudoers-file-absent" not in states
    assert "djangoapp-nrpe-service-dead" in states
    assert "djangoapp-zabbix-service-running" in states


def test_clean_sls_switches_the_features_off(renderer):
    states = renderer.show_sls(
        "debian-12", pillar(**EVERYTHING_ON), sls="djangoapp.clean"
    )
    for feature in FEATURES:
        for state_id in off_ids(feature, "debian-12"):
            assert state_id in states, state_id
    assert "djangoapp-firewall-service-running" not in states


# firewall-cmd for the script's test: the zone is a file of lines, "port P/PROTO"
# or a rich rule as firewalld lists it.
FAKE_FIREWALL_CMD = r"""#!/bin/sh
zone="$FAKE_ZONE"
for argument in "$@"; do
    case "$argument" in
        --state) [ -n "$FAKE_RUNNING" ]; exit $? ;;
        --list-rich-rules) grep '^rule' "$zone" || true; exit 0 ;;
        --query-port=*) grep -qx "port ${argument#*=}" "$zone"; exit $? ;;
        --remove-port=*) line="port ${argument#*=}" ;;
        --remove-rich-rule=*) line="${argument#*=}" ;;
        *) continue ;;
    esac
    grep -vxF "$line" "$zone" > "$zone.new" || true
    mv "$zone.new" "$zone"
    echo "$(basename "$0") $*" >> "$zone.log"
done
"""


def test_firewalld_script_removes_ours_and_keeps_the_rest(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("firewall-cmd", "firewall-offline-cmd"):
        fake = bin_dir / name
        fake.write_text(FAKE_FIREWALL_CMD)
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    zone = tmp_path / "zone"
    ours = [
        "port 22/tcp",
        "port 80/tcp",
        'rule family="ipv4" source address="192.0.2.10" port port="5666" '
        'protocol="tcp" accept',
        'rule family="ipv6" source address="2001:db8::5" port port="161" '
        'protocol="udp" accept',
        'rule family="ipv4" source address="192.0.2.1" source-port port="4505" '
        'protocol="tcp" accept',
    ]
    users = [
        "port 8080/tcp",
        'rule family="ipv4" source address="192.0.2.9" port port="22" '
        'protocol="tcp" accept',
        'rule family="ipv4" source address="192.0.2.10" port port="5666" '
        'protocol="tcp" log prefix="nrpe" accept',
    ]
    zone.write_text("\n".join(ours + users) + "\n")
    args = [
        "public",
        "port:22/tcp",
        "port:80/tcp",
        "port:443/tcp",
        "rule:5666/tcp",
        "rule:10050/tcp",
        "rule:161/udp",
        "source-rule:4505/tcp",
        "source-rule:4506/tcp",
    ]

    def run(running=True, path=None):
        env = {
            "PATH": path or f"{bin_dir}:/usr/bin:/bin",
            "FAKE_ZONE": str(zone),
            "FAKE_RUNNING": "1" if running else "",
        }
        done = subprocess.run(
            ["sh", str(FIREWALLD_SCRIPT), *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip().splitlines()[-1]

    assert run() == (
        "changed=yes comment='removed 2 ports and 3 rich rules from zone public'"
    )
    assert zone.read_text().splitlines() == users
    assert all(
        "--permanent --zone=public" in line
        for line in (tmp_path / "zone.log").read_text().splitlines()
    )
    assert run() == "changed=no comment='nothing of ours in zone public'"
    # firewalld stopped: its permanent configuration changed offline.
    zone.write_text("\n".join(ours + users) + "\n")
    assert run(running=False).startswith("changed=yes")
    assert "firewall-offline-cmd --zone=public" in (tmp_path / "zone.log").read_text()
    # No firewalld at all: nothing to do.
    assert run(path="/usr/bin:/bin") == (
        "changed=no comment='firewalld is not installed'"
    )


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_minion_without_the_lb_role_stops_only_the_haproxy_it_set_up(
    renderer, platform
):
    """One host (no lb role): HAProxy, where the formula wrote its configuration
    (a load balancer whose role went elsewhere), stopped and its files removed,
    the configuration last, since it is what says the rest is ours."""
    states = renderer.show_sls(platform, pillar(), sls="djangoapp.lb")
    config = "/etc/haproxy/haproxy.cfg"
    ours = f"grep -qsF 'Managed by Salt (djangoapp)' {config}"
    removed = [
        "/etc/haproxy/djangoapp-tls",
        "/etc/djangoapp/lb.json",
    ]
    assert sorted(states) == sorted(
        [
            "djangoapp-lb-haproxy-service-dead",
            f"djangoapp-lb-file-absent-{config}",
            *(f"djangoapp-lb-file-absent-{path}" for path in removed),
        ]
    )
    function, dead = state_args(states, "djangoapp-lb-haproxy-service-dead")
    assert (function, dead["name"], dead["enable"], dead["onlyif"]) == (
        "service.dead",
        "haproxy",
        False,
        ours,
    )
    for path in removed:
        _, absent = state_args(states, f"djangoapp-lb-file-absent-{path}")
        assert absent["onlyif"] == ours
        assert absent["require_in"] == [{"file": f"djangoapp-lb-file-absent-{config}"}]
    _, last = state_args(states, f"djangoapp-lb-file-absent-{config}")
    assert (last["onlyif"], last["require"]) == (
        ours,
        [{"service": "djangoapp-lb-haproxy-service-dead"}],
    )
