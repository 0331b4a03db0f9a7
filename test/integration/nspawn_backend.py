"""A testinfra backend for a host booted with systemd-nspawn: commands run in all of the
host's namespaces through nsenter, with a clean environment."""

from testinfra.backend import base
from testinfra.host import Host

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NspawnBackend(base.BaseBackend):
    NAME = "nspawn"

    def __init__(self, leader_pid: int, *args, **kwargs):
        self.leader_pid = leader_pid
        super().__init__(f"nspawn-{leader_pid}", *args, **kwargs)

    def run(self, command: str, *args: str, **kwargs) -> base.CommandResult:
        cmd = self.get_command(command, *args)
        out = self.run_local(
            "nsenter -t %s -a env -i PATH=%s HOME=/root LANG=C.UTF-8 /bin/sh -c %s",
            str(self.leader_pid),
            HOST_PATH,
            cmd,
        )
        out.command = self.encode(cmd)
        return out


def nspawn_host(leader_pid: int) -> Host:
    return Host(NspawnBackend(leader_pid))
