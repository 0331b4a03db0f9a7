"""The monitoring agents on a host converged with them all on (stack.MONITORING_PILLAR):
running and enabled, listening on their ports, configuration files that only root
and the agent may read, no write access over SNMP, no arguments over NRPE, and sudo
rules that let the agents run the apps' checks and nothing else."""

import pytest

from stack import MONITORING_PILLAR, MONITORING_PORTS, SNMP_COMMUNITY

pytestmark = pytest.mark.integration

SERVICES = ("nagios-nrpe-server", "zabbix-agent", "snmpd")
# Each configuration file, the group that reads it (the agent's), and whether it
# holds the SNMP community.
CONFIG_FILES = {
    "/etc/nagios/nrpe.cfg": "nagios",
    "/etc/zabbix/zabbix_agentd.conf": "zabbix",
    "/etc/snmp/snmpd.conf": "Debian-snmp",
}
CHECK_SCRIPT = "/usr/local/lib/djangoapp/monitoring-check"
SUDOERS = "/etc/sudoers.d/djangoapp-monitoring"


@pytest.fixture(scope="module", autouse=True)
def monitoring_on(request):
    """These checks need the monitoring pillar, which only our own host gets."""
    if request.config.getoption("hosts", default=None):
        pytest.skip("the kitchen pillar (test/pillar) leaves monitoring off")


def command(host, cmd, *args):
    result = host.run(cmd, *args)
    assert result.rc == 0, f"{result.command!r}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("name", SERVICES)
def test_agent_runs_and_starts_at_boot(host, name):
    service = host.service(name)
    assert service.is_enabled
    assert service.is_running


def test_agents_listen_on_their_ports(host):
    assert host.socket(f"tcp://0.0.0.0:{MONITORING_PORTS['nrpe']}").is_listening
    assert host.socket(f"tcp://0.0.0.0:{MONITORING_PORTS['zabbix']}").is_listening
    assert host.socket(f"udp://0.0.0.0:{MONITORING_PORTS['snmp']}").is_listening


@pytest.mark.parametrize("path", sorted(CONFIG_FILES))
def test_config_file_is_for_root_and_the_agent_only(host, path):
    config = host.file(path)
    assert (config.user, config.group, config.mode) == (
        "root",
        CONFIG_FILES[path],
        0o640,
    )
    assert config.mode & 0o007 == 0


def test_snmpd_is_read_only_for_the_allowed_sources(host):
    lines = [
        line.split()
        for line in host.file("/etc/snmp/snmpd.conf").content_string.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    directives = {line[0] for line in lines}
    assert not {"rwcommunity", "rwcommunity6", "rwuser", "com2sec"} & directives
    communities = [line for line in lines if line[0].startswith("rocommunity")]
    allowed = MONITORING_PILLAR["snmp"]["allowed"]
    assert communities == [
        ["rocommunity", SNMP_COMMUNITY, source] for source in allowed
    ]


def test_nrpe_takes_no_arguments_from_the_allowed_hosts_only(host):
    settings = {}
    commands = []
    for line in host.file("/etc/nagios/nrpe.cfg").content_string.splitlines():
        if line.startswith("command["):
            commands.append(line.split("]", 1)[0].removeprefix("command["))
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
    assert settings["dont_blame_nrpe"] == "0"
    assert settings["allow_bash_command_substitution"] == "0"
    assert settings["allowed_hosts"] == ",".join(
        MONITORING_PILLAR["nrpe"]["allowed_hosts"]
    )
    assert commands and all(name.startswith("check_djangoapp_") for name in commands)


def test_zabbix_agent_runs_no_remote_commands(host):
    config = host.file("/etc/zabbix/zabbix_agentd.conf").content_string.splitlines()
    assert "DenyKey=system.run[*]" in config
    assert "UnsafeUserParameters=0" in config
    assert f"Server={MONITORING_PILLAR['zabbix']['server']}" in config
    # No flexible item: nothing the server sends reaches a command line.
    parameters = [line for line in config if line.startswith("UserParameter=")]
    assert parameters and not [line for line in parameters if "[*]" in line]


def test_check_script_and_sudo_rules(host, demo_app):
    script = host.file(CHECK_SCRIPT)
    assert (script.user, script.mode) == ("root", 0o755)
    sudoers = host.file(SUDOERS)
    assert (sudoers.user, sudoers.group, sudoers.mode) == ("root", "root", 0o440)
    command(host, "visudo -c")
    name = demo_app["name"]
    for agent in ("nagios", "zabbix"):
        rules = command(host, "sudo -n -l -U %s", agent)
        assert f"({name}) NOPASSWD:" in rules, rules
        for check in ("http", "gunicorn", "database"):
            assert (
                f"{CHECK_SCRIPT} --config-root /etc/djangoapp {check} {name}" in rules
            )
        # The exact command lines only: another argument is refused.
        refused = host.run(
            "runuser -u %s -- sudo -n -u %s %s --config-root /tmp http %s",
            agent,
            name,
            CHECK_SCRIPT,
            name,
        )
        assert refused.rc != 0
        allowed = host.run(
            "runuser -u %s -- sudo -n -u %s %s --config-root /etc/djangoapp http %s",
            agent,
            name,
            CHECK_SCRIPT,
            name,
        )
        assert allowed.rc == 0 and allowed.stdout.startswith("HTTP OK"), allowed
