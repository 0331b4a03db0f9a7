"""The monitoring agents of monitoring.sls (NRPE, the Zabbix agent, snmpd) render for
each supported OS with the packages, services and paths of its family, share one
definition of each check, open their ports in the firewall to their sources only,
keep the SNMP community out of the rendered states, are switched off unless the
pillar turns them on, and refuse bad values naming the key."""

import copy
import json
import re

import pytest

from rendering import PLATFORMS, RenderError, app_pillar, state_args

COMMUNITY = "snmp-canary-3f9a0c"
DB_PASSWORD = "db-canary-8e21"
CHECK_SCRIPT = "/usr/local/lib/djangoapp/monitoring-check"


def app(name, **settings):
    database = {"engine": "postgresql", "password": DB_PASSWORD}
    return app_pillar(name, **{"database": database, **settings})


MONITORING = {
    "nrpe": {"enabled": True, "allowed_hosts": ["192.0.2.10", "2001:db8:1::/64"]},
    "zabbix": {"enabled": True, "server": "192.0.2.20, 192.0.2.21"},
    "snmp": {
        "enabled": True,
        "community": COMMUNITY,
        "allowed": ["198.51.100.0/24", "2001:db8:2::5"],
        "location": "rack 4, room 2",
        "contact": "ops@example.com",
    },
}


def pillar(monitoring=None, firewall=True):
    data = {
        "apps": {
            "shop": app("shop"),
            # No database: no database check.
            "docs": app("docs", database={"engine": "none"}),
        },
        "monitoring": copy.deepcopy(MONITORING if monitoring is None else monitoring),
    }
    if firewall:
        data["firewall"] = {"enabled": True, "allow": [22, 80, 443]}
    return {"djangoapp": data}


FAMILY = {
    "Debian": {
        "checks_pkgs": ["monitoring-plugins-basic", "sudo"],
        "plugins": "/usr/lib/nagios/plugins",
        "nrpe_pkgs": ["nagios-nrpe-server"],
        "nrpe_service": "nagios-nrpe-server",
        "nrpe_conf": "/etc/nagios/nrpe.cfg",
        "nrpe_user": "nagios",
        "nrpe_pid": "/run/nagios/nrpe.pid",
        "zabbix_pkgs": ["zabbix-agent"],
        "zabbix_conf": "/etc/zabbix/zabbix_agentd.conf",
        "snmp_pkgs": ["snmpd"],
        "snmp_group": "Debian-snmp",
    },
    "RedHat": {
        "checks_pkgs": ["nagios-plugins-disk", "nagios-plugins-load", "sudo"],
        "plugins": "/usr/lib64/nagios/plugins",
        "nrpe_pkgs": ["nrpe"],
        "nrpe_service": "nrpe",
        "nrpe_conf": "/etc/nagios/nrpe.cfg",
        "nrpe_user": "nrpe",
        "nrpe_pid": "/run/nrpe/nrpe.pid",
        "zabbix_pkgs": ["zabbix-agent"],
        "zabbix_conf": "/etc/zabbix_agentd.conf",
        "snmp_pkgs": ["net-snmp"],
        "snmp_group": "root",
    },
}

MONITORING_PREFIXES = (
    "djangoapp-monitoring-",
    "djangoapp-nrpe-",
    "djangoapp-zabbix-",
    "djangoapp-snmp-",
)


def switched_on(states, prefixes):
    """The states with one of ``prefixes`` but those of the off/ files."""
    return [
        sid
        for sid, state in states.items()
        if sid.startswith(prefixes)
        and not state["__sls__"].startswith("djangoapp.off.")
    ]


def family(platform):
    return PLATFORMS[platform]["os_family"]


@pytest.fixture(scope="module", params=sorted(PLATFORMS))
def monitored(request, renderer):
    return request.param, renderer.show_sls(request.param, pillar())


def check_lines(platform):
    """The command line of each check, as the agents run it."""
    plugins = FAMILY[family(platform)]["plugins"]
    lines = {
        "disk": f"{plugins}/check_disk -w 20% -c 10% -p /",
        "load": f"{plugins}/check_load -r -w 2,1.5,1 -c 4,3,2",
    }
    for name, checks in (
        ("docs", ("http", "gunicorn")),
        ("shop", ("http", "gunicorn", "database")),
    ):
        for check in checks:
            lines[f"{name}_{check}"] = (
                f"/usr/bin/sudo -n -u {name} {CHECK_SCRIPT}"
                f" --config-root /etc/djangoapp {check} {name}"
            )
    return lines


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_monitoring_is_off_by_default(renderer, platform):
    states = renderer.show_sls(platform, pillar(monitoring={}))
    # Only the states that switch them off (off/, test_render_features_off.py).
    assert not switched_on(states, MONITORING_PREFIXES)
    # The firewall opens nothing for them.
    if family(platform) == "Debian":
        _, ruleset = state_args(states, "djangoapp-firewall-ruleset-file-managed")
        assert ruleset["context"]["restricted_ports"] == []
    else:
        _, zone = state_args(states, "djangoapp-firewall-zone-present")
        assert zone["rich_rules"] == []


def test_each_agent_can_be_on_alone(renderer):
    only_snmp = {"snmp": MONITORING["snmp"], "nrpe": {"enabled": False}}
    states = renderer.show_sls("debian-12", pillar(monitoring=only_snmp))
    assert "djangoapp-snmp-service-running" in states
    # The checks serve NRPE and Zabbix only.
    assert not switched_on(
        states, ("djangoapp-nrpe-", "djangoapp-zabbix-", "djangoapp-monitoring-")
    )


def test_packages_services_and_paths(monitored):
    platform, states = monitored
    expected = FAMILY[family(platform)]
    _, checks = state_args(states, "djangoapp-monitoring-checks-packages-installed")
    assert checks["pkgs"] == expected["checks_pkgs"]
    for part in ("nrpe", "zabbix", "snmp"):
        _, packages = state_args(states, f"djangoapp-{part}-packages-installed")
        assert packages["pkgs"] == expected[f"{part}_pkgs"]
        assert {"pkg": "djangoapp-base-packages-installed"} in packages["require"]
    _, nrpe = state_args(states, "djangoapp-nrpe-service-running")
    assert (nrpe["name"], nrpe["enable"]) == (expected["nrpe_service"], True)
    assert nrpe["watch"] == [{"file": "djangoapp-nrpe-config-file-managed"}]
    _, zabbix = state_args(states, "djangoapp-zabbix-service-running")
    assert (zabbix["name"], zabbix["enable"]) == ("zabbix-agent", True)
    _, snmp = state_args(states, "djangoapp-snmp-service-running")
    assert (snmp["name"], snmp["enable"]) == ("snmpd", True)
    assert snmp["watch"] == [{"file": "djangoapp-snmp-config-file-managed"}]
    for state_id, name, group in (
        (
            "djangoapp-nrpe-config-file-managed",
            expected["nrpe_conf"],
            expected["nrpe_user"],
        ),
        ("djangoapp-zabbix-config-file-managed", expected["zabbix_conf"], "zabbix"),
        (
            "djangoapp-snmp-config-file-managed",
            "/etc/snmp/snmpd.conf",
            expected["snmp_group"],
        ),
    ):
        _, config = state_args(states, state_id)
        assert (config["name"], config["user"], config["group"], config["mode"]) == (
            name,
            "root",
            group,
            "0640",
        )
    _, script = state_args(states, "djangoapp-monitoring-check-script-file-managed")
    assert (script["name"], script["mode"]) == (CHECK_SCRIPT, "0755")
    assert script["source"] == "salt://djangoapp/files/monitoring-check.py"
    # From EPEL on RedHat: the base packages require the repositories.
    if family(platform) == "RedHat":
        _, repos = state_args(states, "djangoapp-package-repositories-installed")
        assert "epel-release" in repos["pkgs"]
    # nrpe's SELinux domain may run sudo where the policy is on.
    boolean = "djangoapp-nrpe-selinux-run-sudo-boolean"
    assert (boolean in states) == (family(platform) == "RedHat")
    if boolean in states:
        _, selinux = state_args(states, boolean)
        assert (selinux["name"], selinux["value"]) == ("nagios_run_sudo", True)


def test_snmp_community_is_in_no_rendered_state(monitored):
    _, states = monitored
    assert COMMUNITY not in json.dumps(states)
    _, config = state_args(states, "djangoapp-snmp-config-file-managed")
    assert config["show_changes"] is False
    assert config["context"] == {
        "port": 161,
        "allowed": ["198.51.100.0/24", "2001:db8:2::5"],
        "location": "rack 4, room 2",
        "contact": "ops@example.com",
    }


def test_nrpe_and_zabbix_run_the_same_check_lines(monitored):
    platform, states = monitored
    lines = check_lines(platform)
    _, nrpe = state_args(states, "djangoapp-nrpe-config-file-managed")
    _, zabbix = state_args(states, "djangoapp-zabbix-config-file-managed")
    for context in (nrpe["context"], zabbix["context"]):
        assert {check["name"]: check["line"] for check in context["checks"]} == lines
    assert (
        nrpe["context"]["nrpe"]["allowed_hosts"] == MONITORING["nrpe"]["allowed_hosts"]
    )
    assert nrpe["context"]["nrpe"]["pid_file"] == FAMILY[family(platform)]["nrpe_pid"]
    assert zabbix["context"]["servers"] == ["192.0.2.20", "192.0.2.21"]


def test_sudo_rules_name_each_check_exactly(monitored):
    platform, states = monitored
    _, sudoers = state_args(states, "djangoapp-monitoring-sudoers-file-managed")
    assert (sudoers["name"], sudoers["mode"]) == (
        "/etc/sudoers.d/djangoapp-monitoring",
        "0440",
    )
    assert sudoers["check_cmd"] == "/usr/sbin/visudo -c -f"
    rules = [
        line for line in sudoers["contents"].splitlines() if not line.startswith("#")
    ]
    agents = f"{FAMILY[family(platform)]['nrpe_user']}, zabbix"
    prefix = f"{CHECK_SCRIPT} --config-root /etc/djangoapp"
    assert rules == [
        f"Cmnd_Alias DJANGOAPP_DOCS_CHECKS = {prefix} http docs,"
        f" {prefix} gunicorn docs",
        f"{agents} ALL = (docs) NOPASSWD: DJANGOAPP_DOCS_CHECKS",
        "Defaults!DJANGOAPP_DOCS_CHECKS !syslog, !pam_session",
        f"Cmnd_Alias DJANGOAPP_SHOP_CHECKS = {prefix} http shop,"
        f" {prefix} gunicorn shop, {prefix} database shop",
        f"{agents} ALL = (shop) NOPASSWD: DJANGOAPP_SHOP_CHECKS",
        "Defaults!DJANGOAPP_SHOP_CHECKS !syslog, !pam_session",
    ]
    assert DB_PASSWORD not in sudoers["contents"]


@pytest.mark.parametrize(
    ("platform", "backups", "hours"),
    [("debian-12", {"enabled": True}, 26), ("rocky-9", {"max_age_hours": 30}, 30)],
)
def test_the_backup_check_is_wired_with_the_nightly_backups(
    renderer, platform, backups, hours
):
    data = pillar()
    data["djangoapp"]["backups"] = {"enabled": True, **backups}
    states = renderer.show_sls(platform, data)
    # shop only: docs has no database to dump. Without backups (the other tests),
    # no backup check at all.
    status = "--status-file /var/lib/djangoapp/backup-status/shop.json"
    backup_line = (
        f"/usr/bin/sudo -n -u shop {CHECK_SCRIPT} --config-root /etc/djangoapp"
        f" --max-age-hours {hours} {status} backup shop"
    )
    lines = {**check_lines(platform), "shop_backup": backup_line}
    _, nrpe = state_args(states, "djangoapp-nrpe-config-file-managed")
    _, zabbix = state_args(states, "djangoapp-zabbix-config-file-managed")
    for context in (nrpe["context"], zabbix["context"]):
        assert {check["name"]: check["line"] for check in context["checks"]} == lines
    _, sudoers = state_args(states, "djangoapp-monitoring-sudoers-file-managed")
    prefix = f"{CHECK_SCRIPT} --config-root /etc/djangoapp"
    assert (
        f"Cmnd_Alias DJANGOAPP_SHOP_CHECKS = {prefix} http shop,"
        f" {prefix} gunicorn shop, {prefix} database shop,"
        f" {prefix} --max-age-hours {hours} {status} backup shop"
    ) in sudoers["contents"].splitlines()


def test_firewall_opens_each_port_to_its_sources(monitored):
    platform, states = monitored
    if family(platform) == "Debian":
        _, ruleset = state_args(states, "djangoapp-firewall-ruleset-file-managed")
        assert ruleset["context"]["tcp_ports"] == [22, 80, 443]
        assert ruleset["context"]["udp_ports"] == []
        assert ruleset["context"]["restricted_ports"] == [
            {
                "protocol": "tcp",
                "port": 5666,
                "ip": ["192.0.2.10"],
                "ip6": ["2001:db8:1::/64"],
            },
            {
                "protocol": "tcp",
                "port": 10050,
                "ip": ["192.0.2.20", "192.0.2.21"],
                "ip6": [],
            },
            {
                "protocol": "udp",
                "port": 161,
                "ip": ["198.51.100.0/24"],
                "ip6": ["2001:db8:2::5"],
            },
        ]
    else:
        _, zone = state_args(states, "djangoapp-firewall-zone-present")
        assert zone["ports"] == ["22/tcp", "80/tcp", "443/tcp"]
        rule = (
            'rule family="{}" source address="{}" port port="{}" protocol="{}" accept'
        )
        assert zone["rich_rules"] == [
            rule.format("ipv4", "192.0.2.10", 5666, "tcp"),
            rule.format("ipv6", "2001:db8:1::/64", 5666, "tcp"),
            rule.format("ipv4", "192.0.2.20", 10050, "tcp"),
            rule.format("ipv4", "192.0.2.21", 10050, "tcp"),
            rule.format("ipv4", "198.51.100.0/24", 161, "udp"),
            rule.format("ipv6", "2001:db8:2::5", 161, "udp"),
        ]
        assert zone["prune_rich_rules"] is True


def test_nftables_ruleset_matches_the_source(renderer):
    restricted = [
        {
            "protocol": "tcp",
            "port": 5666,
            "ip": ["192.0.2.10", "192.0.2.11"],
            "ip6": [],
        },
        {"protocol": "udp", "port": 161, "ip": [], "ip6": ["2001:db8:2::/64"]},
    ]
    ruleset = renderer.render_file(
        "debian-12",
        "salt://djangoapp/files/firewall-nftables.conf.jinja",
        {
            "tcp_ports": [22],
            "udp_ports": [],
            "salt_master": None,
            "restricted_ports": restricted,
        },
    )
    lines = [line.strip() for line in ruleset.splitlines()]
    assert "ip saddr { 192.0.2.10, 192.0.2.11 } tcp dport 5666 accept" in lines
    assert "ip6 saddr { 2001:db8:2::/64 } udp dport 161 accept" in lines
    assert [line for line in lines if "5666" in line or " 161 " in line] == [
        "ip saddr { 192.0.2.10, 192.0.2.11 } tcp dport 5666 accept",
        "ip6 saddr { 2001:db8:2::/64 } udp dport 161 accept",
    ]
    # After the drop policy and the rules everyone gets.
    assert lines.index("tcp dport { 22 } accept") < lines.index(
        "ip saddr { 192.0.2.10, 192.0.2.11 } tcp dport 5666 accept"
    )


def test_nrpe_config_takes_no_arguments(renderer, monitored):
    platform, states = monitored
    _, nrpe = state_args(states, "djangoapp-nrpe-config-file-managed")
    rendered = renderer.render_file(platform, nrpe["source"], nrpe["context"])
    settings, commands = {}, {}
    for line in rendered.splitlines():
        if line.startswith("command["):
            name, _, command = line.removeprefix("command[").partition("]=")
            commands[name] = command
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
    expected = FAMILY[family(platform)]
    assert settings == {
        "log_facility": "daemon",
        "debug": "0",
        "pid_file": expected["nrpe_pid"],
        "server_port": "5666",
        "nrpe_user": expected["nrpe_user"],
        "nrpe_group": expected["nrpe_user"],
        "allowed_hosts": "192.0.2.10,2001:db8:1::/64",
        "dont_blame_nrpe": "0",
        "allow_bash_command_substitution": "0",
        "command_timeout": "60",
        "connection_timeout": "300",
        "disable_syslog": "0",
    }
    assert commands == {
        f"check_djangoapp_{name}": line for name, line in check_lines(platform).items()
    }


def test_zabbix_config_has_fixed_items_only(renderer, monitored):
    platform, states = monitored
    _, zabbix = state_args(states, "djangoapp-zabbix-config-file-managed")
    rendered = renderer.render_file(platform, zabbix["source"], zabbix["context"])
    lines = rendered.splitlines()
    for setting in (
        "Server=192.0.2.20,192.0.2.21",
        "ServerActive=192.0.2.20,192.0.2.21",
        "ListenPort=10050",
        "Timeout=10",
        "DenyKey=system.run[*]",
        "UnsafeUserParameters=0",
        "LogType=system",
        "PidFile=/run/zabbix/zabbix_agentd.pid",
    ):
        assert setting in lines, setting
    items = dict(
        line.removeprefix("UserParameter=").split(",", 1)
        for line in lines
        if line.startswith("UserParameter=")
    )
    expected = {}
    for name, line in check_lines(platform).items():
        expected[f"djangoapp.status.{name}"] = f"{line} >/dev/null 2>&1; echo $?"
        expected[f"djangoapp.output.{name}"] = line
    assert items == expected


def test_snmpd_config_is_read_only_for_the_allowed_sources(renderer, monitored):
    platform, states = monitored
    _, snmp = state_args(states, "djangoapp-snmp-config-file-managed")
    rendered = renderer.render_file(
        platform, snmp["source"], snmp["context"], pillar=pillar()
    )
    lines = [line for line in rendered.splitlines() if not line.startswith("#")]
    assert lines == [
        "agentaddress udp:161,udp6:161",
        "sysLocation rack 4, room 2",
        "sysContact ops@example.com",
        "sysServices 72",
        f"rocommunity {COMMUNITY} 198.51.100.0/24",
        f"rocommunity6 {COMMUNITY} 2001:db8:2::5",
    ]


BAD_PILLARS = {
    "nrpe without hosts": (
        {"nrpe": {"enabled": True}},
        "djangoapp:monitoring:nrpe:allowed_hosts is required when enabled",
    ),
    "nrpe host name": (
        {"nrpe": {"enabled": True, "allowed_hosts": ["nagios.example.com"]}},
        "djangoapp:monitoring:nrpe:allowed_hosts:0 'nagios.example.com' is not",
    ),
    "nrpe network with host bits": (
        {"nrpe": {"enabled": True, "allowed_hosts": ["192.0.2.10/24"]}},
        "djangoapp:monitoring:nrpe:allowed_hosts:0 '192.0.2.10/24' has host bits",
    ),
    "nrpe hosts not a list": (
        {"nrpe": {"enabled": True, "allowed_hosts": "192.0.2.10"}},
        "djangoapp:monitoring:nrpe:allowed_hosts must be a list",
    ),
    "nrpe enabled as a string": (
        {"nrpe": {"enabled": "yes", "allowed_hosts": ["192.0.2.10"]}},
        "djangoapp:monitoring:nrpe:enabled must be true or false",
    ),
    "zabbix without server": (
        {"zabbix": {"enabled": True}},
        "djangoapp:monitoring:zabbix:server is required when enabled",
    ),
    "zabbix server name": (
        {"zabbix": {"enabled": True, "server": "192.0.2.20,zabbix;reboot"}},
        "djangoapp:monitoring:zabbix:server 'zabbix;reboot' is not an IP address",
    ),
    "snmp without community": (
        {"snmp": {"enabled": True, "allowed": ["192.0.2.0/24"]}},
        "djangoapp:monitoring:snmp:community is required when enabled",
    ),
    "snmp without sources": (
        {"snmp": {"enabled": True, "community": COMMUNITY}},
        "djangoapp:monitoring:snmp:allowed is required when enabled",
    ),
    "snmp community with a newline": (
        {
            "snmp": {
                "enabled": True,
                "community": "x\nrwcommunity y",
                "allowed": ["192.0.2.0/24"],
            }
        },
        "djangoapp:monitoring:snmp:community must be 1 to 64 printable",
    ),
    "snmp community public": (
        {"snmp": {"enabled": True, "community": "public", "allowed": ["192.0.2.1"]}},
        "djangoapp:monitoring:snmp:community must not be a well-known community",
    ),
    "snmp location with a newline": (
        {"snmp": {"location": "room 1\nrwcommunity x"}},
        "djangoapp:monitoring:snmp:location must not contain control characters",
    ),
    "misspelt agent key": (
        {"snmp": {"enabled": False, "comunity": "x"}},
        "djangoapp:monitoring:snmp:comunity is not a known key",
    ),
    "unknown part": (
        {"munin": {"enabled": True}},
        "djangoapp:monitoring:munin is not a known key",
    ),
    "sentry dsn without a key": (
        {"sentry_dsn": "https://sentry.example.com/1"},
        "djangoapp:monitoring:sentry_dsn must be empty or a DSN",
    ),
    "sentry dsn not a url": (
        {"sentry_dsn": "sentry"},
        "djangoapp:monitoring:sentry_dsn must be empty or a DSN",
    ),
    "sentry environment not a string": (
        {"sentry_environment": 3},
        "djangoapp:monitoring:sentry_environment must be a string",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PILLARS))
def test_bad_monitoring_pillar_names_the_key(renderer, case):
    monitoring, message = BAD_PILLARS[case]
    with pytest.raises(RenderError, match=re.escape(message)):
        renderer.show_sls("debian-12", pillar(monitoring=monitoring))


@pytest.mark.parametrize("hours", [12, "26h"])
def test_a_backup_age_under_a_day_or_not_in_hours_is_refused(renderer, hours):
    data = pillar()
    data["djangoapp"]["backups"] = {"enabled": True, "max_age_hours": hours}
    message = "djangoapp:backups:max_age_hours must be an integer >= 24"
    with pytest.raises(RenderError, match=re.escape(message)):
        renderer.show_sls("debian-12", data)


def test_sentry_dsn_and_environment_are_accepted(renderer):
    accepted = {
        "sentry_dsn": "https://0123abcd@sentry.example.com/42",
        "sentry_environment": "production",
        **copy.deepcopy(MONITORING),
    }
    states = renderer.show_sls("rocky-9", pillar(monitoring=accepted))
    assert "djangoapp-nrpe-service-running" in states
