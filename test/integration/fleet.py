"""A fleet of four test hosts (lb, web1, web2, db) on a private bridge, with one
Salt master on this machine that all four minions connect to.

Each host is a test/testhost.py host of a slot of its own: the fleet's base slot
(``$DJANGOAPP_FLEET_SLOT``, else the shared host's slot plus 44) and the three after
it. Besides the eth0 that testhost gives it (its way to this machine's proxy), each
host has an eth1 on the fleet's bridge, 10.214.<base>.0/24::

    this machine  djangoapp-f<base>  10.214.<base>.1   (the master listens here)
    lb            eth1               10.214.<base>.11
    web1          eth1               10.214.<base>.12
    web2          eth1               10.214.<base>.13
    db            eth1               10.214.<base>.14

The bridge lives in a network namespace of its own, ``djangoapp-fleet<base>``: the
only thing of it in this machine's namespace is the veth end that carries the
master's address. Use it from a module-scoped fixture::

    @pytest.fixture(scope="module")
    def fleet(tmp_path_factory, request):
        with fleet_of_hosts(tmp_path_factory, request) as fleet:
            yield fleet

    def test_db_answers(fleet):
        assert fleet.salt("db", "test.ping") == {"db": True}

Without pytest (a benchmark), pass None for both and a directory of its own::

    with fleet_of_hosts(None, None, work=Path("/var/tmp/my-fleet")) as fleet:
        ...

The master is then a plain ``salt-master -c <work>/master`` process of this machine.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import yaml
from secondhost import GIT_MOUNT, bootable_testhost, slot_from

import demorepo
import testhost
from stack import DEMO_PILLAR, merged

REPO = Path(__file__).resolve().parents[2]
FLEET_HOSTS = ("lb", "web1", "web2", "db")
FLEET_SLOT_VARIABLE = "DJANGOAPP_FLEET_SLOT"
FLEET_SLOT_OFFSET = 44
FIRST_HOST_OCTET = 11
BRIDGE = "br0"
MACHINE_PEER = "machine"  # the bridge's end of this machine's veth
MASTER_ID = "djangoapp-fleet-master"
MINION_CONNECT_TIMEOUT = 180
MASTER_START_TIMEOUT = 60
MASTER_STOP_TIMEOUT = 30
SALT_TIMEOUT = 900
# What each host's minion gets besides its master and id, as testhost's start_minion.
MINION_DEFAULTS = {
    "acceptance_wait_time": 2,
    "random_reauth_delay": 0,
    "log_level_logfile": "info",
}
# salt's targeting options by the name its Python API uses for them.
TARGET_OPTIONS = {
    "glob": [],
    "pcre": ["-E"],
    "list": ["-L"],
    "grain": ["-G"],
    "grain_pcre": ["--grain-pcre"],
    "pillar": ["-I"],
    "pillar_pcre": ["--pillar-pcre"],
    "nodegroup": ["-N"],
    "range": ["-R"],
    "compound": ["-C"],
    "ipcidr": ["-S"],
}


# The demo fleet's roles, by host (write_demo_pillar).
ROLES = {"lb": ["lb"], "web1": ["web"], "web2": ["web"], "db": ["db", "cache"]}
REDIS_PASSWORD = "fleet-redis-5e1f0c"
# Each host's firewall: the load balancer answers HTTP; the others only what the
# fleet's roles open to each other (djangoapp.fleet_ports).
FIREWALL_ALLOW = {"lb": [22, 80, 443], "web1": [22], "web2": [22], "db": [22]}
DEMO_APP = "demo"
# The fleet's second app (write_demo_pillar with_mariadb_app): the demo project again,
# on MariaDB and Memcached on the db minion.
MARIADB_APP = "shop"
MARIADB_PASSWORD = "fleet-shop-db-'7c\\2a"


class FleetError(RuntimeError):
    """The fleet could not be set up, reached or torn down."""


def log(message: str) -> None:
    print(f"[fleet] {message}", file=sys.stderr, flush=True)


def run(argv: list[str]) -> str:
    """Run a command on this machine; its output, or FleetError when it fails."""
    try:
        return testhost.run(argv).stdout
    except testhost.TestHostError as error:
        raise FleetError(str(error)) from error


def fleet_slots() -> range:
    """The slots of the fleet's hosts, in FLEET_HOSTS order: the base slot and
    the ones after it."""
    base = slot_from(FLEET_SLOT_VARIABLE, FLEET_SLOT_OFFSET)
    slots = range(base, base + len(FLEET_HOSTS))
    if slots[-1] > testhost.MAX_SLOT:
        raise ValueError(
            f"the fleet's slots {slots[0]}..{slots[-1]} go past {testhost.MAX_SLOT}: "
            f"set {FLEET_SLOT_VARIABLE} to {testhost.MAX_SLOT - len(FLEET_HOSTS) + 1} "
            "or less"
        )
    return slots


# --- the private network -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FleetNetwork:
    """The bridge of the fleet's base slot: its namespace, names and addresses."""

    base: int
    names: tuple[str, ...] = FLEET_HOSTS

    @property
    def netns(self) -> str:
        return f"djangoapp-fleet{self.base}"

    @property
    def machine_veth(self) -> str:
        # Interface names have at most 15 characters.
        return f"djangoapp-f{self.base}"

    @property
    def subnet(self) -> str:
        return f"10.214.{self.base}.0/24"

    @property
    def machine_ip(self) -> str:
        return f"10.214.{self.base}.1"

    def address(self, name: str) -> str:
        """The bridge address of the host ``name``."""
        return f"10.214.{self.base}.{FIRST_HOST_OCTET + self.names.index(name)}"

    def create(self) -> None:
        """The namespace with the bridge, and this machine's veth plugged into it."""
        self.remove()
        run(["ip", "netns", "add", self.netns])
        self._in_fleet_netns(["link", "set", "lo", "up"])
        self._in_fleet_netns(["link", "add", BRIDGE, "type", "bridge"])
        self._in_fleet_netns(["link", "set", BRIDGE, "up"])
        run(
            ["ip", "link", "add", self.machine_veth, "type", "veth"]
            + ["peer", "name", MACHINE_PEER, "netns", self.netns]
        )
        self._plug(MACHINE_PEER)
        run(["ip", "addr", "add", f"{self.machine_ip}/24", "dev", self.machine_veth])
        run(["ip", "link", "set", self.machine_veth, "up"])

    def attach(self, name: str, host_netns: str) -> None:
        """Give the host of ``name`` (booted in ``host_netns``) its eth1 on the bridge.

        The pair is made in the fleet's namespace with its other end born in the
        host's: this machine's namespace never sees it.
        """
        self._in_fleet_netns(
            ["link", "add", name, "type", "veth"]
            + ["peer", "name", "eth1", "netns", host_netns]
        )
        self._plug(name)
        in_host = ["ip", "-n", host_netns]
        run(in_host + ["addr", "add", f"{self.address(name)}/24", "dev", "eth1"])
        run(in_host + ["link", "set", "eth1", "up"])

    def remove(self) -> None:
        """Delete this machine's veth and the namespace (the hosts' veths go with
        it, or with the hosts' own namespaces)."""
        if Path(f"/sys/class/net/{self.machine_veth}").exists():
            run(["ip", "link", "del", self.machine_veth])
        if Path(f"/run/netns/{self.netns}").exists():
            for pid in run(["ip", "netns", "pids", self.netns]).split():
                with contextlib.suppress(FileNotFoundError):
                    testhost.ProcessRef.of(int(pid)).stop(5, signal.SIGKILL)
            run(["ip", "netns", "del", self.netns])

    def _plug(self, interface: str) -> None:
        self._in_fleet_netns(["link", "set", interface, "master", BRIDGE, "up"])

    def _in_fleet_netns(self, ip_args: list[str]) -> None:
        run(["ip", "-n", self.netns, *ip_args])


@contextlib.contextmanager
def slots_held(slots: range) -> Iterator[None]:
    """Hold a lock per slot, in order, for as long as a fleet uses them: another
    fleet run waits here instead of tearing down this one's network."""
    with contextlib.ExitStack() as locks:
        for slot in slots:
            lock_file = testhost.RUN_DIR / f"fleet-slot{slot}.lock"
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            handle = locks.enter_context(open(lock_file, "w"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"waiting: another fleet uses slot {slot}")
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --- the hosts -----------------------------------------------------------------


def boot_on_bridge(host, host_netns: str, network: FleetNetwork) -> None:
    """Boot the host, then plug it into the bridge: its namespace, made by the
    boot, is ``host_netns``."""
    host.start()
    network.attach(host.hostname, host_netns)


def run_on_each(
    hosts: Mapping[str, object], action: Callable[[object], None], label: str
) -> None:
    """``action(host)`` for every host at once, each in a thread; waits for all of
    them (a host still booting must not be torn down under its own thread), then
    raises the first failure, naming every host that failed."""
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=len(hosts), thread_name_prefix=f"fleet-{label}"
    ) as pool:
        futures = {name: pool.submit(action, host) for name, host in hosts.items()}
        concurrent.futures.wait(futures.values())
    failures = {
        name: future.exception()
        for name, future in futures.items()
        if future.exception() is not None
    }
    if failures:
        details = "\n".join(
            f"--- {name} ---\n{error}" for name, error in failures.items()
        )
        raise FleetError(
            f"{label} failed on {', '.join(failures)}:\n{details}"
        ) from next(iter(failures.values()))


def boot_hosts(
    hosts: Mapping[str, object], host_netns: Mapping[str, str], network: FleetNetwork
) -> None:
    """Boot every host at once, each plugged into the bridge once it is up."""
    run_on_each(
        hosts,
        lambda host: boot_on_bridge(host, host_netns[host.hostname], network),
        "boot",
    )


def stop_host(host) -> None:
    """Power the host off and remove it. Its salt-minion is killed first, all of
    its processes at once: left to stop on its own, a process of it outlives the
    unit (KillMode=process) and holds the poweroff up for seconds. The stop after
    the kill keeps systemd from restarting it."""
    if host.pid1 is not None:
        minion = "salt-minion.service"
        host.exec(["systemctl", "kill", "--signal=SIGKILL", minion], check=False)
        host.exec(["systemctl", "stop", minion], check=False, timeout=30)
    host.stop()


def stop_hosts(hosts: Mapping[str, object]) -> None:
    run_on_each(hosts, stop_host, "stop")


def minion_diagnostics(host) -> str:
    """The salt-minion's status and its last journal lines in ``host``."""
    status = host.exec(
        ["systemctl", "status", "--no-pager", "--lines=0", "salt-minion"], check=False
    )
    journal = host.exec(
        ["journalctl", "--unit=salt-minion", "--no-pager", "--lines=30"], check=False
    )
    return f"{status.stdout}\n{journal.stdout}"


# --- the master and the fleet --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SaltResult:
    """One salt or salt-run command line: its exit code, its parsed JSON output
    (None when it printed none) and its raw output."""

    returncode: int
    data: object
    stdout: str
    stderr: str


def cli_argument(value: object) -> str:
    """A CLI argument for salt: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def cli_keyword_arguments(kwargs: Mapping[str, object]) -> list[str]:
    return [f"{key}={cli_argument(value)}" for key, value in kwargs.items()]


def parsed_json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


class Fleet:
    """The booted hosts, the master they answer to, and the ways to command them.

    ``hosts`` maps each name of FLEET_HOSTS to its testhost.TestHost; ``master`` is
    the saltfactories master factory, or a PlainMaster without pytest
    (``master.config_dir`` for salt's CLI tools); ``events`` the saltfactories
    event listener that sees the master's bus (None without pytest);
    ``pillar_dir`` the master's pillar root (empty: the test writes it, top file
    included); ``timings`` the seconds each phase took.
    """

    def __init__(
        self,
        hosts: Mapping[str, object],
        network: FleetNetwork,
        work: Path,
        pillar_dir: Path,
    ):
        self.hosts = dict(hosts)
        self.network = network
        self.work = work
        self.pillar_dir = pillar_dir
        self.master = None
        self.events = None
        self.timings: dict[str, float] = {}

    @property
    def master_ip(self) -> str:
        return self.network.machine_ip

    def address(self, name: str) -> str:
        """The address of the host ``name`` on the fleet's bridge."""
        return self.network.address(name)

    def salt_command(
        self,
        target: str,
        function: str,
        *args: object,
        tgt_type: str = "glob",
        timeout: float = SALT_TIMEOUT,
        batch: int | None = None,
        **kwargs: object,
    ) -> SaltResult:
        """``salt --out=json --static TARGET FUNCTION ARGS KEY=VALUE`` through the
        master. Arguments that are not strings go as JSON (``pillar={...}``);
        ``batch``: ``--batch-size`` (that many minions at a time)."""
        if tgt_type not in TARGET_OPTIONS:
            raise ValueError(
                f"tgt_type {tgt_type!r}: one of {', '.join(TARGET_OPTIONS)}"
            )
        argv = [
            self._salt_tool("salt"),
            f"--config-dir={self.master.config_dir}",
            "--out=json",
            "--static",
            f"--timeout={int(timeout)}",
            *([f"--batch-size={batch}"] if batch else []),
            *TARGET_OPTIONS[tgt_type],
            target,
            function,
            *map(cli_argument, args),
            *cli_keyword_arguments(kwargs),
        ]
        return self._run_salt_tool(argv, timeout)

    def salt(
        self,
        target: str,
        function: str,
        *args: object,
        tgt_type: str = "glob",
        timeout: float = SALT_TIMEOUT,
        batch: int | None = None,
        **kwargs: object,
    ) -> dict:
        """The return of each targeted minion, by id, as salt_command runs it. A
        minion that did not answer in time has salt's "Minion did not return"
        message as its return."""
        result = self.salt_command(
            target,
            function,
            *args,
            tgt_type=tgt_type,
            timeout=timeout,
            batch=batch,
            **kwargs,
        )
        if not isinstance(result.data, dict):
            raise FleetError(
                f"salt {target} {function}: no JSON returns (exit {result.returncode})"
                f"\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
            )
        return result.data

    def salt_run(
        self,
        function: str,
        *args: object,
        cli_timeout: float = SALT_TIMEOUT,
        check: bool = True,
        **kwargs,
    ) -> object:
        """The return of the runner ``function`` (``salt-run --out=json``); keyword
        arguments go to the runner, ``cli_timeout`` bounds the command. ``check``
        False: a non-zero exit (a runner that reports a failure) is returned too,
        as long as the output is JSON."""
        argv = [
            self._salt_tool("salt-run"),
            f"--config-dir={self.master.config_dir}",
            "--out=json",
            f"--timeout={int(cli_timeout)}",
            function,
            *map(cli_argument, args),
            *cli_keyword_arguments(kwargs),
        ]
        result = self._run_salt_tool(argv, cli_timeout)
        if (check and result.returncode != 0) or result.data is None:
            raise FleetError(
                f"salt-run {function}: exit {result.returncode}\n"
                f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
            )
        return result.data

    def start_minions(self, extra_config: Mapping | None = None) -> None:
        """Point every host's minion at the master's bridge address, with the host's
        name as its id, then enable and start it. The loader configuration that
        testhost writes to /etc/salt/minion.d stays beside it."""
        for name, host in self.hosts.items():
            config = {
                "master": self.master_ip,
                "master_port": self.master.config["ret_port"],
                "publish_port": self.master.config["publish_port"],
                "id": name,
                **MINION_DEFAULTS,
                **(extra_config or {}),
            }
            host.put_file("/etc/salt/minion.d/test-master.conf", json.dumps(config))
            host.exec(["systemctl", "enable", "--now", "salt-minion.service"])

    def answering_minions(self) -> set[str]:
        """The ids that answer test.ping now."""
        with contextlib.suppress(FleetError):
            returns = self.salt("*", "test.ping", timeout=5)
            return {name for name, answer in returns.items() if answer is True}
        return set()

    def wait_for_minions(self, timeout: float = MINION_CONNECT_TIMEOUT) -> None:
        """Wait until every host's minion answers test.ping through the master."""
        deadline = time.monotonic() + timeout
        answering: set[str] = set()
        while time.monotonic() < deadline:
            answering = self.answering_minions()
            if answering >= set(self.hosts):
                return
            time.sleep(1)
        silent = sorted(set(self.hosts) - answering)
        details = "\n".join(
            f"--- {name} ---\n{minion_diagnostics(self.hosts[name])}" for name in silent
        )
        raise FleetError(
            f"no answer to test.ping in {timeout} s from {', '.join(silent)}\n{details}"
        )

    def _salt_tool(self, name: str) -> str:
        return str(Path(sys.executable).with_name(name))

    def _run_salt_tool(self, argv: list[str], timeout: float) -> SaltResult:
        try:
            completed = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout + 60, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise FleetError(f"{' '.join(argv)} timed out") from error
        return SaltResult(
            completed.returncode,
            parsed_json(completed.stdout),
            completed.stdout,
            completed.stderr,
        )


@contextlib.contextmanager
def timed(label: str, timings: dict[str, float]) -> Iterator[None]:
    started = time.monotonic()
    yield
    timings[label] = round(time.monotonic() - started, 1)
    log(f"{label}: {timings[label]} s")


def show_timings(request, timings: Mapping[str, float]) -> None:
    """Print the phases' times on the terminal, past pytest's output capture."""
    line = "fleet: " + ", ".join(f"{label} {secs} s" for label, secs in timings.items())
    capture = (
        request.config.pluginmanager.getplugin("capturemanager") if request else None
    )
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def master_started(fleet: Fleet, request, extra_config: Mapping | None):
    """The saltfactories master, bound to this machine's bridge address, adopted by
    every host so that a run that cleans up after a killed one stops it too."""
    from saltfactories.manager import FactoriesManager

    factories = FactoriesManager(
        **{
            **request.getfixturevalue("_salt_factories_config"),
            "root_dir": fleet.hosts[FLEET_HOSTS[0]].work_dir / "salt",
        },
        stats_processes=request.getfixturevalue("stats_processes"),
        event_listener=request.getfixturevalue("event_listener"),
    )
    master = factories.salt_master_daemon(
        MASTER_ID,
        overrides={
            "interface": fleet.master_ip,
            "auto_accept": True,
            "file_roots": {"base": [str(REPO / "salt")]},
            "pillar_roots": {"base": [str(fleet.pillar_dir)]},
            **(extra_config or {}),
        },
    )
    with master.started():
        for host in fleet.hosts.values():
            host.adopt(master.pid)
        fleet.master = master
        fleet.events = request.getfixturevalue("event_listener")
        yield master


@dataclasses.dataclass(frozen=True)
class PlainMaster:
    """A ``salt-master -c config_dir`` process of this machine, with what the fleet
    uses of a saltfactories master: ``id``, ``config_dir``, ``config`` and ``pid``."""

    id: str
    config_dir: Path
    config: dict
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> Path:
        return self.config_dir / "master.out"

    def wait_until_listening(self, timeout: float = MASTER_START_TIMEOUT) -> None:
        """Until the master accepts connections on its ret port; FleetError when it
        exits or does not within ``timeout``."""
        address, port = self.config["interface"], self.config["ret_port"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FleetError(
                    f"salt-master exited ({self.process.returncode}):\n"
                    f"{self.output.read_text()[-4000:]}"
                )
            try:
                with socket.create_connection((address, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise FleetError(f"salt-master: nothing answers on {address}:{port}")

    def stop(self, timeout: float = MASTER_STOP_TIMEOUT) -> None:
        """SIGTERM, and ``timeout`` s later SIGKILL to whatever is left of its
        process group: the master and its workers, started in a session of their
        own, and nothing else."""
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def plain_master_config(fleet: Fleet, extra_config: Mapping | None) -> dict:
    """The configuration of a plain master bound to this machine's bridge address,
    its files under the fleet's work directory; ``extra_config`` merged over it."""
    root_dir = fleet.work / "master" / "root"
    ret_port, publish_port = testhost.free_ports(fleet.master_ip, 2)
    return {
        "id": MASTER_ID,
        "root_dir": str(root_dir),
        "interface": fleet.master_ip,
        "ret_port": ret_port,
        "publish_port": publish_port,
        "auto_accept": True,
        "user": "root",
        "file_roots": {"base": [str(REPO / "salt")]},
        "pillar_roots": {"base": [str(fleet.pillar_dir)]},
        # under root_dir, or salt puts root_dir in front of it
        "log_file": str(root_dir / "master.log"),
        "log_level_logfile": "info",
        **(extra_config or {}),
    }


@contextlib.contextmanager
def plain_master_started(fleet: Fleet, extra_config: Mapping | None):
    """A plain salt-master subprocess for runs without pytest, adopted by every host
    (as master_started's), stopped when the block ends."""
    config = plain_master_config(fleet, extra_config)
    config_dir = fleet.work / "master"
    process = testhost.spawn_salt_master(config_dir, config)
    master = PlainMaster(MASTER_ID, config_dir, config, process)
    try:
        for host in fleet.hosts.values():
            host.adopt(master.pid)
        master.wait_until_listening()
        fleet.master = master
        yield master
    finally:
        master.stop()


def fleet_work_dir(tmp_path_factory, work: Path | None) -> Path:
    """A new directory for the fleet's files: from pytest's ``tmp_path_factory``,
    else ``work`` (made if missing, refused if not empty)."""
    if tmp_path_factory is not None:
        return tmp_path_factory.mktemp("fleet")
    if work is None:
        raise ValueError("fleet_of_hosts: a tmp_path_factory or a work directory")
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise ValueError(f"fleet_of_hosts: {work} is not empty")
    return work


@contextlib.contextmanager
def fleet_of_hosts(
    tmp_path_factory,
    request,
    *,
    master_config: Mapping | None = None,
    minion_config: Mapping | None = None,
    debian: str | None = None,
    work: Path | None = None,
) -> Iterator[Fleet]:
    """The fleet, booted and with every minion answering its master; everything
    (master, hosts, bridge, veths) is torn down when the block ends, however it
    ends. For a module-scoped fixture: ``request`` is the fixture's, through which
    saltfactories' fixtures are reached.

    ``master_config`` is merged over the master's configuration (a key it names
    replaces the fleet's, ``file_roots`` included), ``minion_config`` over each
    minion's. The test is skipped (failed under CI) where hosts cannot be booted.

    Without pytest: ``request`` None starts a plain salt-master subprocess instead
    (plain_master_started), and ``tmp_path_factory`` None takes ``work``, a directory
    for the fleet's files (the demo repository, the pillar, the master's).
    """
    slots = fleet_slots()
    modules = [bootable_testhost(slot) for slot in slots]
    work = fleet_work_dir(tmp_path_factory, work)
    demorepo.build_repo(work / "git" / "demo.git")
    pillar_dir = work / "pillar"
    pillar_dir.mkdir()
    hosts = {
        name: module.TestHost(
            hostname=name,
            binds_ro={work / "git": GIT_MOUNT},
            **({"debian": debian} if debian else {}),
        )
        for name, module in zip(FLEET_HOSTS, modules, strict=True)
    }
    host_netns = {
        name: module.NETNS for name, module in zip(FLEET_HOSTS, modules, strict=True)
    }
    network = FleetNetwork(slots[0])
    fleet = Fleet(hosts, network, work, pillar_dir)
    with slots_held(slots):
        try:
            with timed("root tarball ready", fleet.timings):
                first = hosts[FLEET_HOSTS[0]]
                modules[0].ensure_root_tarball(fleet.timings, first.debian)
            network.create()
            with timed(f"boot of {len(hosts)} hosts", fleet.timings):
                boot_hosts(hosts, host_netns, network)
            if request is None:
                master = plain_master_started(fleet, master_config)
            else:
                master = master_started(fleet, request, master_config)
            with master:
                with timed("minions up", fleet.timings):
                    fleet.start_minions(minion_config)
                    fleet.wait_for_minions()
                show_timings(request, fleet.timings)
                yield fleet
        finally:
            with timed("teardown", fleet.timings):
                try:
                    stop_hosts(hosts)
                finally:
                    network.remove()
            show_timings(request, {"teardown": fleet.timings["teardown"]})


# --- the demo's pillar ----------------------------------------------------------


def mariadb_app_pillar(demo: Mapping) -> dict:
    """The demo app's pillar as a second app: its own names, MariaDB, Memcached."""
    return merged(
        demo,
        {
            "server_names": [f"{MARIADB_APP}.test"],
            "env": {"DJANGO_SECRET_KEY": f"{MARIADB_APP}-secret-" + "0123456789" * 5},
            "database": {"engine": "mysql", "password": MARIADB_PASSWORD},
            "cache": {"engine": "memcached"},
            "tls": {"mode": "selfsigned"},
        },
    )


def write_demo_pillar(fleet, with_mariadb_app: bool = False) -> None:
    """The demo pillar for every minion, its roles and its proxy its own; with
    ``with_mariadb_app``, MARIADB_APP beside the demo."""
    demo_pillar = yaml.safe_load(DEMO_PILLAR.read_text())
    if with_mariadb_app:
        apps = demo_pillar["djangoapp"]["apps"]
        apps[MARIADB_APP] = mariadb_app_pillar(apps[DEMO_APP])
    common = merged(
        demo_pillar,
        {
            "mine_functions": {"djangoapp.fleet_member": []},
            "djangoapp": {
                "fleet": {"network": fleet.network.subnet},
                "redis": {"password": REDIS_PASSWORD},
                "backups": {"enabled": True},
                "apps": {
                    DEMO_APP: {
                        "cache": {"engine": "redis"},
                        "tls": {"mode": "selfsigned"},
                    }
                },
            },
        },
    )
    (fleet.pillar_dir / "fleet.sls").write_text(yaml.safe_dump(common))
    top = {"base": {}}
    for name, host in fleet.hosts.items():
        own = {
            "djangoapp": {
                "roles": ROLES[name],
                "proxy": {"http": host.proxy_url, "https": host.proxy_url},
                "firewall": {"enabled": True, "allow": FIREWALL_ALLOW[name]},
            }
        }
        if "db" in ROLES[name]:
            # the check of its nightly dumps, asked on the host itself
            nrpe = {"enabled": True, "allowed_hosts": ["127.0.0.1"]}
            own["djangoapp"]["monitoring"] = {"nrpe": nrpe}
        (fleet.pillar_dir / f"minion_{name}.sls").write_text(yaml.safe_dump(own))
        top["base"][name] = ["fleet", f"minion_{name}"]
    (fleet.pillar_dir / "top.sls").write_text(yaml.safe_dump(top))
