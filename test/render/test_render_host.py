"""The host features of host.sls (firewall, sshd, fail2ban, automatic updates, nightly
backups, log rotation) render for each supported OS with the names of its family,
are switched off unless the pillar turns them on, and refuse bad values."""

import copy

import jinja2
import pytest

from rendering import PLATFORMS, REPO, RenderError, state_args

FILES = REPO / "salt" / "djangoapp" / "files"

APP = {
    "repo": "https://git.example.com/shop.git",
    "version": "v2.3.1",
    "settings_module": "shop.settings",
    "wsgi": "shop.wsgi:application",
    "database": {"engine": "postgresql", "password": "canary-5d1a"},
}

HARDENED = {
    "firewall": {"enabled": True, "allow": [22, 80, 443, "51820/udp"]},
    "ssh": {"harden": True},
    "fail2ban": {"enabled": True},
    "auto_updates": {"enabled": True},
    "backups": {"enabled": True, "keep": 7, "hour": 3},
}

HOST_STATE_PREFIXES = (
    "djangoapp-firewall-",
    "djangoapp-ssh-",
    "djangoapp-fail2ban-",
    "djangoapp-auto-updates-",
    "djangoapp-backups-",
)


def switched_on(states, prefixes):
    """The states with one of ``prefixes`` but those of the off/ files."""
    return [
        state_id
        for state_id, state in states.items()
        if state_id.startswith(prefixes)
        and not state["__sls__"].startswith("djangoapp.off.")
    ]


def pillar(**sections):
    return {"djangoapp": {"apps": {"shop": copy.deepcopy(APP)}, **sections}}


def render_file(name, **context):
    """A template of salt/djangoapp/files as file.managed renders it."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(FILES)),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(),  # off for these non-HTML files
    )
    return environment.get_template(name).render(**context)


def family(platform):
    return PLATFORMS[platform]["os_family"]


@pytest.fixture(scope="module", params=sorted(PLATFORMS))
def hardened(request, renderer):
    return request.param, renderer.show_sls(request.param, pillar(**HARDENED))


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_host_features_are_off_by_default(renderer, platform):
    states = renderer.show_sls(platform, pillar())
    # Only the states that switch them off (off/, test_render_features_off.py).
    assert not switched_on(states, HOST_STATE_PREFIXES)
    # Log rotation is the one feature that is on unless turned off.
    _, logrotate = state_args(states, "djangoapp-logrotate-config-file-managed")
    assert logrotate["name"] == "/etc/logrotate.d/djangoapp"


def test_host_features_can_be_turned_off_explicitly(renderer):
    off = {key: {next(iter(value)): False} for key, value in HARDENED.items()}
    states = renderer.show_sls("debian-12", pillar(**off, logrotate={"enabled": False}))
    assert not switched_on(states, HOST_STATE_PREFIXES + ("djangoapp-logrotate-",))


def test_firewall(hardened):
    platform, states = hardened
    _, packages = state_args(states, "djangoapp-firewall-packages-installed")
    if family(platform) == "Debian":
        assert packages["pkgs"] == ["nftables"]
        _, ruleset = state_args(states, "djangoapp-firewall-ruleset-file-managed")
        assert ruleset["name"] == "/etc/djangoapp/firewall.nft"
        assert ruleset["check_cmd"] == "/usr/sbin/nft --check --file"
        assert ruleset["context"] == {
            "tcp_ports": [22, 80, 443],
            "udp_ports": [51820],
            # Masterless (these renders): no master connection to keep.
            "salt_master": None,
            # No monitoring agent is on.
            "restricted_ports": [],
        }
        function, service = state_args(states, "djangoapp-firewall-service-running")
        assert (function, service["name"]) == ("service.running", "djangoapp-firewall")
        assert service["enable"] is True and service["reload"] is True
        _, unit = state_args(states, "djangoapp-firewall-service-unit-file-managed")
        assert unit["name"] == "/etc/systemd/system/djangoapp-firewall.service"
        assert "djangoapp-firewall-zone-present" not in states
    else:
        assert packages["pkgs"] == ["firewalld"]
        _, service = state_args(states, "djangoapp-firewall-service-running")
        assert service["name"] == "firewalld"
        function, zone = state_args(states, "djangoapp-firewall-zone-present")
        assert function == "firewalld.present"
        assert zone["name"] == "public"
        assert zone["ports"] == ["22/tcp", "80/tcp", "443/tcp", "51820/udp"]
        assert zone["prune_ports"] is True
        assert (zone["services"], zone["prune_services"]) == ([], True)
        # Masterless: no rule for a master, and any other rich rule goes.
        assert (zone["rich_rules"], zone["prune_rich_rules"]) == ([], True)
        assert "djangoapp-firewall-ruleset-file-managed" not in states


def test_nftables_ruleset_drops_what_is_not_allowed():
    ruleset = render_file(
        "firewall-nftables.conf.jinja",
        tcp_ports=[22, 80, 443],
        udp_ports=[],
        salt_master=None,
    )
    lines = [line.strip() for line in ruleset.splitlines()]
    # The table is replaced in one transaction, other tables are not flushed.
    assert "flush ruleset" not in ruleset
    assert lines.index("table inet djangoapp") < lines.index(
        "delete table inet djangoapp"
    )
    assert "type filter hook input priority filter; policy drop;" in lines
    assert "ct state established,related accept" in lines
    assert 'iif "lo" accept' in lines
    assert "tcp dport { 22, 80, 443 } accept" in lines
    assert not [line for line in lines if line.startswith("udp dport")]
    assert "hook output" not in ruleset


@pytest.mark.parametrize(
    ("address", "family", "nft_family"),
    [("192.0.2.10", "ipv4", "ip"), ("2001:db8::10", "ipv6", "ip6")],
)
def test_nftables_ruleset_keeps_the_salt_master_connections(
    address, family, nft_family
):
    """Connections to the master opened before the table existed are not tracked:
    the master's packets that open nothing still come in, and nothing else from it."""
    ruleset = render_file(
        "firewall-nftables.conf.jinja",
        tcp_ports=[22],
        udp_ports=[],
        salt_master={"address": address, "family": family, "ports": [4505, 4506]},
    )
    lines = [line.strip() for line in ruleset.splitlines()]
    rule = (
        f"{nft_family} saddr {address} tcp sport {{ 4505, 4506 }}"
        " tcp flags & syn == 0 accept"
    )
    assert rule in lines
    assert lines.index(rule) < lines.index("ct state invalid drop")
    assert [line for line in lines if address in line] == [rule]


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_firewall_keeps_the_salt_master_of_a_connected_minion(renderer, platform):
    """A minion that has connected to its master (master_ip known) lets the master's
    packets in on either backend; the renders above are masterless and add nothing."""
    states = renderer.show_sls(
        platform,
        pillar(firewall=HARDENED["firewall"]),
        options={"master_ip": "192.0.2.10", "master_port": 4506},
    )
    master = {"address": "192.0.2.10", "family": "ipv4", "ports": [4505, 4506]}
    if family(platform) == "Debian":
        _, ruleset = state_args(states, "djangoapp-firewall-ruleset-file-managed")
        assert ruleset["context"]["salt_master"] == master
    else:
        _, zone = state_args(states, "djangoapp-firewall-zone-present")
        assert zone["rich_rules"] == [
            f'rule family="ipv4" source address="192.0.2.10" source-port port="{port}"'
            ' protocol="tcp" accept'
            for port in (4505, 4506)
        ]
        assert zone["prune_rich_rules"] is True


def test_firewall_unit_loads_and_removes_only_its_table():
    unit = render_file(
        "firewall-systemd.service.jinja",
        nft="/usr/sbin/nft",
        ruleset="/etc/djangoapp/firewall.nft",
    )
    assert "ExecStart=/usr/sbin/nft --file /etc/djangoapp/firewall.nft" in unit
    assert "ExecReload=/usr/sbin/nft --file /etc/djangoapp/firewall.nft" in unit
    assert "ExecStop=/usr/sbin/nft delete table inet djangoapp" in unit
    assert "Before=network-pre.target" in unit


def test_ssh_hardening(hardened):
    platform, states = hardened
    _, dropin = state_args(states, "djangoapp-ssh-hardening-file-managed")
    assert dropin["name"] == "/etc/ssh/sshd_config.d/00-djangoapp.conf"
    assert dropin["check_cmd"] == "/usr/sbin/sshd -t -f"
    settings = dict(
        line.split(None, 1)
        for line in dropin["contents"].splitlines()
        if line and not line.startswith("#")
    )
    assert settings == {
        "PermitRootLogin": "prohibit-password",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "PermitEmptyPasswords": "no",
        "MaxAuthTries": "3",
        "X11Forwarding": "no",
        "AllowTcpForwarding": "no",
        "AllowAgentForwarding": "no",
    }
    _, tested = state_args(states, "djangoapp-ssh-config-tested")
    assert tested["name"] == "/usr/sbin/sshd -t"
    assert tested["onchanges"] == [{"file": "djangoapp-ssh-hardening-file-managed"}]
    _, service = state_args(states, "djangoapp-ssh-service-running")
    assert service["name"] == {"Debian": "ssh", "RedHat": "sshd"}[family(platform)]
    assert service["reload"] is True
    assert {"cmd": "djangoapp-ssh-config-tested"} in service["require"]
    _, package = state_args(states, "djangoapp-ssh-server-package-installed")
    assert package["pkgs"] == ["openssh-server"]


@pytest.mark.parametrize("value", [False, "no"])
def test_root_login_can_be_refused_entirely(renderer, value):
    # `permit_root_login: no` unquoted in YAML arrives as false.
    states = renderer.show_sls(
        "debian-12", pillar(ssh={"harden": True, "permit_root_login": value})
    )
    _, dropin = state_args(states, "djangoapp-ssh-hardening-file-managed")
    assert "PermitRootLogin no\n" in dropin["contents"]


def test_fail2ban(hardened):
    platform, states = hardened
    _, packages = state_args(states, "djangoapp-fail2ban-packages-installed")
    _, jail = state_args(states, "djangoapp-fail2ban-jail-file-managed")
    assert jail["name"] == "/etc/fail2ban/jail.d/djangoapp.local"
    # The jail exists before the package starts the service the first time.
    assert {"file": "djangoapp-fail2ban-jail-file-managed"} in packages["require"]
    if family(platform) == "Debian":
        assert packages["pkgs"] == ["fail2ban", "python3-systemd", "nftables"]
    else:
        # From EPEL: the base packages require the repositories.
        assert "fail2ban-server" in packages["pkgs"]
        _, repos = state_args(states, "djangoapp-package-repositories-installed")
        assert "epel-release" in repos["pkgs"]
    assert {"pkg": "djangoapp-base-packages-installed"} in packages["require"]
    rendered = render_file("fail2ban-jail.local.jinja", **jail["context"])
    sshd = rendered.split("[sshd]", 1)[1]
    assert "enabled = true" in sshd
    assert "backend = systemd" in sshd
    assert "banaction = nftables-multiport" in rendered
    assert "ignoreip = 127.0.0.1/8 ::1\n" in rendered
    _, service = state_args(states, "djangoapp-fail2ban-service-running")
    assert service["name"] == "fail2ban"
    assert service["watch"] == [{"file": "djangoapp-fail2ban-jail-file-managed"}]


def test_auto_updates(hardened):
    platform, states = hardened
    _, packages = state_args(states, "djangoapp-auto-updates-packages-installed")
    if family(platform) == "Debian":
        assert packages["pkgs"] == ["unattended-upgrades"]
        _, apt = state_args(states, "djangoapp-auto-updates-apt-config-file-managed")
        assert apt["name"] == "/etc/apt/apt.conf.d/52djangoapp-auto-updates"
        contents = apt["contents"]
        assert 'APT::Periodic::Unattended-Upgrade "1";' in contents
        assert "#clear Unattended-Upgrade::Origins-Pattern;" in contents
        origins = [
            line.strip().strip('";')
            for line in contents.splitlines()
            if line.strip().startswith('"origin=')
        ]
        assert origins and all("label=Debian-Security" in o for o in origins)
        assert 'Unattended-Upgrade::Automatic-Reboot "false";' in contents
        timers = ["apt-daily.timer", "apt-daily-upgrade.timer"]
    else:
        assert packages["pkgs"] == ["dnf-automatic"]
        function, dnf = state_args(
            states, "djangoapp-auto-updates-dnf-automatic-config-options-present"
        )
        assert function == "ini.options_present"
        assert dnf["name"] == "/etc/dnf/automatic.conf"
        assert dnf["sections"]["commands"] == {
            "upgrade_type": "security",
            "download_updates": "yes",
            "apply_updates": "yes",
            "reboot": "never",
        }
        timers = ["dnf-automatic.timer"]
    for timer in timers:
        function, running = state_args(
            states, f"djangoapp-auto-updates-{timer}-running"
        )
        assert (function, running["name"], running["enable"]) == (
            "service.running",
            timer,
            True,
        )


def test_backups(hardened):
    _, states = hardened
    _, script = state_args(states, "djangoapp-backups-script-file-managed")
    assert script["name"] == "/usr/local/lib/djangoapp/backup-databases"
    assert script["mode"] == "0755"
    _, service = state_args(states, "djangoapp-backups-service-unit-file-managed")
    assert service["name"] == "/etc/systemd/system/djangoapp-backup.service"
    assert (
        "ExecStart=/usr/bin/python3 /usr/local/lib/djangoapp/backup-databases"
        " --apps-file /etc/djangoapp/backups.json --keep 7\n"
    ) in service["contents"]
    assert "Type=oneshot" in service["contents"]
    assert "canary-5d1a" not in service["contents"]
    _, apps_file = state_args(states, "djangoapp-backups-apps-file-serialized")
    assert (apps_file["name"], apps_file["mode"]) == (
        "/etc/djangoapp/backups.json",
        "0600",
    )
    assert [(app["name"], app["group"]) for app in apps_file["dataset"]] == [
        ("shop", "shop")
    ]
    _, timer = state_args(states, "djangoapp-backups-timer-unit-file-managed")
    assert "OnCalendar=*-*-* 03:00:00\n" in timer["contents"]
    assert "Persistent=true" in timer["contents"]
    function, running = state_args(states, "djangoapp-backups-timer-running")
    assert (function, running["name"]) == ("service.running", "djangoapp-backup.timer")
    _, reloaded = state_args(states, "djangoapp-backups-systemd-reloaded")
    assert reloaded["service.systemctl_reload"] == []
    # pg_dump comes with the PostgreSQL client packages.
    assert "djangoapp-postgresql-client-packages-installed" in states


def test_backup_time_and_count_from_the_pillar(renderer):
    states = renderer.show_sls(
        "rocky-9",
        pillar(backups={"enabled": True, "keep": 30, "hour": 23, "minute": 5}),
    )
    _, timer = state_args(states, "djangoapp-backups-timer-unit-file-managed")
    assert "OnCalendar=*-*-* 23:05:00\n" in timer["contents"]
    _, service = state_args(states, "djangoapp-backups-service-unit-file-managed")
    assert "--keep 30\n" in service["contents"]


def test_logrotate(hardened):
    _, states = hardened
    _, config = state_args(states, "djangoapp-logrotate-config-file-managed")
    contents = config["contents"]
    assert contents.splitlines()[1] == "/var/log/djangoapp/*/*.log {"
    for directive in ("copytruncate", "daily", "rotate 14", "missingok", "compress"):
        assert f"    {directive}\n" in contents
    # Nginx's logs are the distribution's business.
    assert "/var/log/nginx" not in contents
    _, package = state_args(states, "djangoapp-logrotate-package-installed")
    assert package["pkgs"] == ["logrotate"]
    _, timer = state_args(states, "djangoapp-logrotate-timer-running")
    assert timer["name"] == "logrotate.timer"


def test_host_sls_renders_on_its_own(renderer):
    states = renderer.show_sls("almalinux-9", pillar(**HARDENED), sls="djangoapp.host")
    assert "djangoapp-firewall-zone-present" in states
    assert "djangoapp-backups-timer-running" in states


BAD_HOST_PILLARS = {
    "port name": ({"firewall": {"allow": ["http"]}}, "djangoapp:firewall:allow:0"),
    "port out of range": (
        {"firewall": {"allow": [70000]}},
        "djangoapp:firewall:allow:0",
    ),
    "allow not a list": ({"firewall": {"allow": 22}}, "djangoapp:firewall:allow"),
    "enabled as a string": (
        {"firewall": {"enabled": "yes"}},
        "djangoapp:firewall:enabled",
    ),
    "root login yes": (
        {"ssh": {"harden": True, "permit_root_login": "yes"}},
        "djangoapp:ssh:permit_root_login",
    ),
    "many auth tries": (
        {"ssh": {"max_auth_tries": 50}},
        "djangoapp:ssh:max_auth_tries",
    ),
    "bantime words": (
        {"fail2ban": {"bantime": "1 hour"}},
        "djangoapp:fail2ban:bantime",
    ),
    "ignoreip with a space": (
        {"fail2ban": {"ignoreip": ["10.0.0.1 10.0.0.2"]}},
        "djangoapp:fail2ban:ignoreip",
    ),
    "unknown upgrade type": (
        {"auto_updates": {"upgrade_type": "all"}},
        "djangoapp:auto_updates:upgrade_type",
    ),
    "keep zero": ({"backups": {"keep": 0}}, "djangoapp:backups:keep"),
    "hour 24": ({"backups": {"hour": 24}}, "djangoapp:backups:hour"),
    "hourly rotation": (
        {"logrotate": {"frequency": "hourly"}},
        "djangoapp:logrotate:frequency",
    ),
    "misspelt key": ({"backups": {"kepe": 3}}, "djangoapp:backups:kepe"),
}


@pytest.mark.parametrize("case", sorted(BAD_HOST_PILLARS))
def test_bad_host_pillar_names_the_key(renderer, case):
    sections, key = BAD_HOST_PILLARS[case]
    with pytest.raises(RenderError, match=key):
        renderer.show_sls("debian-12", pillar(**sections))
