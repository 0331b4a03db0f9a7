"""The host features of host.sls, checked on a host converged with them all on
(stack.HARDENING_PILLAR): firewall, sshd, fail2ban, automatic security updates,
nightly database dumps and log rotation."""

import re
import time

import pytest

from stack import HARDENING_PILLAR, MONITORING_PORTS

pytestmark = pytest.mark.integration

SSHD_EXPECTED = {
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "permitemptypasswords": "no",
    "maxauthtries": "3",
    "x11forwarding": "no",
    "allowtcpforwarding": "no",
    "allowagentforwarding": "no",
}
BACKUP_UNIT = "djangoapp-backup"


@pytest.fixture(scope="module", autouse=True)
def hardened(request):
    """These checks need the hardening pillar, which only our own host gets."""
    if request.config.getoption("hosts", default=None):
        pytest.skip("the kitchen pillar (test/pillar) leaves host hardening off")


def command(host, cmd, *args):
    result = host.run(cmd, *args)
    assert result.rc == 0, f"{result.command!r}: {result.stdout}{result.stderr}"
    return result.stdout


def test_firewall_table_drops_input_by_default(host):
    service = host.service("djangoapp-firewall")
    assert service.is_enabled
    assert service.is_running
    table = command(host, "nft list table inet djangoapp")
    lines = [line.strip() for line in table.splitlines()]
    assert "type filter hook input priority filter; policy drop;" in lines
    assert "ct state established,related accept" in lines
    assert 'iif "lo" accept' in lines
    ports = ", ".join(str(port) for port in HARDENING_PILLAR["firewall"]["allow"])
    assert f"tcp dport {{ {ports} }} accept" in lines
    # Output is not filtered: the minion reaches its master, apt its proxy.
    assert "hook output" not in command(host, "nft list ruleset")


def test_only_allowed_ports_listen_beyond_loopback(host):
    allowed = {str(port) for port in HARDENING_PILLAR["firewall"]["allow"]}
    # The monitoring agents' ports: open to their sources only (test_monitoring_agents).
    allowed |= {str(port) for port in MONITORING_PORTS.values()}
    exposed = set()
    for line in command(host, "ss -Hltnu").splitlines():
        address, _, port = line.split()[4].rpartition(":")
        if address.strip("[]").split("%")[0] not in ("127.0.0.1", "::1", "127.0.0.53"):
            exposed.add(port)
    assert exposed <= allowed, f"listening beyond loopback: {sorted(exposed)}"


def test_sshd_runs_with_the_hardened_settings(host):
    assert host.service("ssh").is_running
    effective = dict(
        line.split(None, 1) for line in command(host, "sshd -T").splitlines() if line
    )
    # sshd -T prints prohibit-password by its older name.
    assert effective["permitrootlogin"] in ("without-password", "prohibit-password")
    assert {key: effective[key] for key in SSHD_EXPECTED} == SSHD_EXPECTED


def test_fail2ban_watches_sshd_through_the_journal(host):
    service = host.service("fail2ban")
    assert service.is_enabled
    assert service.is_running
    status = command(host, "fail2ban-client status sshd")
    assert "Journal matches:" in status  # backend = systemd
    assert "_COMM=sshd" in status


def test_fail2ban_bans_with_nftables(host):
    address = "192.0.2.77"  # TEST-NET-1: never a real client
    command(host, "fail2ban-client set sshd banip %s", address)
    try:
        ruleset = command(host, "nft list table inet f2b-table")
        assert address in ruleset
        assert "tcp dport 22" in ruleset
    finally:
        command(host, "fail2ban-client set sshd unbanip %s", address)
    assert address not in command(host, "nft list table inet f2b-table")


def test_unattended_upgrades_take_the_security_origin_only(host):
    assert host.package("unattended-upgrades").is_installed
    config = command(host, "apt-config dump")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config
    assert 'APT::Periodic::Update-Package-Lists "1";' in config
    origins = re.findall(
        r'^Unattended-Upgrade::Origins-Pattern:: "(.*)";$', config, re.M
    )
    assert origins, config
    assert all("label=Debian-Security" in origin for origin in origins), origins
    # What unattended-upgrade itself makes of it (no download in a dry run).
    dry_run = host.run("unattended-upgrade --dry-run --debug")
    allowed = re.search(r"^Allowed origins are: (.*)$", dry_run.stdout, re.M)
    assert allowed, dry_run.stdout + dry_run.stderr
    codename = re.search(
        r"^VERSION_CODENAME=(\w+)$", host.file("/etc/os-release").content_string, re.M
    ).group(1)
    assert f"codename={codename}-security,label=Debian-Security" in allowed.group(1)
    assert "label=Debian," not in allowed.group(1) + ","
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        assert host.service(timer).is_enabled


def test_backup_timer_runs_nightly(host):
    timer = host.service(f"{BACKUP_UNIT}.timer")
    assert timer.is_enabled
    assert timer.is_running
    calendar = command(
        host, "systemctl show --property=TimersCalendar --value %s.timer", BACKUP_UNIT
    )
    hour = HARDENING_PILLAR["backups"]["hour"]
    assert f"*-*-* {hour:02d}:00:00" in calendar


def test_backup_run_dumps_and_rotates(host, demo_app):
    keep = HARDENING_PILLAR["backups"]["keep"]
    name = demo_app["name"]
    nightly = f"/var/backups/djangoapp/{name}/nightly"
    # Older dumps than any real one, more than `keep` of them: the run must leave
    # the newest `keep` of all, its own dump included.
    older = [f"{name}-2000010{day}T030000Z.dump" for day in range(1, keep + 2)]
    command(host, "install -d -m 0700 %s", nightly)
    for fake in older:
        command(host, "touch %s", f"{nightly}/{fake}")
    command(host, "systemctl start %s.service", BACKUP_UNIT)

    dumps = sorted(command(host, "ls -1 %s", nightly).split())
    assert len(dumps) == keep, dumps
    newest = dumps[-1]
    assert re.fullmatch(rf"{name}-\d{{8}}T\d{{6}}Z\.dump", newest)
    assert newest not in older
    assert dumps[:-1] == older[-(keep - 1) :]
    dump = host.file(f"{nightly}/{newest}")
    assert (dump.user, dump.mode) == ("root", 0o600)
    assert host.file(nightly).mode == 0o700
    listing = command(host, "pg_restore --list %s", f"{nightly}/{newest}")
    assert "Archive created at" in listing
    assert "TABLE public notes_note" in listing
    for fake in dumps[:-1]:
        command(host, "rm -f %s", f"{nightly}/{fake}")


def test_logrotate_config_parses_and_covers_the_app_logs(host, demo_app):
    assert host.package("logrotate").is_installed
    debug = host.run("logrotate --debug /etc/logrotate.d/djangoapp")
    assert debug.rc == 0, debug.stderr
    assert "error" not in debug.stderr.lower(), debug.stderr
    log = f"/var/log/djangoapp/{demo_app['name']}/gunicorn.log"
    assert f"considering log {log}" in debug.stderr
    assert "copytruncate" in host.file("/etc/logrotate.d/djangoapp").content_string
    # Nginx's per-app logs: the distribution's rotation covers them already.
    nginx = host.file("/etc/logrotate.d/nginx").content_string
    assert "/var/log/nginx/*.log" in nginx


def test_copytruncate_keeps_gunicorn_logging(host, demo_app, demo_url, http_get):
    """A forced rotation (its own state file: the real one is left alone) truncates
    the log in place, and Gunicorn's next lines land at its start."""
    log = f"/var/log/djangoapp/{demo_app['name']}/gunicorn.log"
    http_get(demo_url("/healthz/"), demo_app["server_names"][0])
    state = "/tmp/djangoapp-logrotate-test.status"
    command(host, "logrotate --force --state %s /etc/logrotate.d/djangoapp", state)
    try:
        assert host.file(f"{log}.1").exists
        http_get(demo_url("/healthz/"), demo_app["server_names"][0])
        deadline = time.monotonic() + 10
        while "/healthz/" not in host.file(log).content_string:
            assert time.monotonic() < deadline, "nothing logged after the rotation"
            time.sleep(0.5)
        head = command(host, "head -c 64 %s | od -An -c", log)
        assert "\\0" not in head, "the writer kept its old offset"
    finally:
        host.run("rm -f %s", state)
