"""Throwaway Debian 12 or 13 hosts booted with systemd-nspawn, for integration tests.

A host is a fresh copy of a cached debootstrap root, booted with systemd as PID 1 in a
network namespace of its own. It shares a /24 with this machine over a veth pair and
reaches the outside world only through a tinyproxy that listens on this machine's end
of the pair. Salt is preinstalled in /opt/salt; ``TestHost.start_minion`` points a
salt-minion at a master listening on MASTER_IP.

Command line, as root::

    python test/testhost.py up [--hostname NAME] [--bind-ro SRC[:DST] ...]
    python test/testhost.py exec [--user USER] -- salt-call --local test.versions
    python test/testhost.py status
    python test/testhost.py down

Every command acts on the host of slot ``$DJANGOAPP_TEST_SLOT`` (default 0): slot N
has the namespace ``djangoapp-test<N>`` (plain ``djangoapp-test`` for 0), the subnet
10.213.(47+N).0/24 and its own proxy port, state files and work dir, so hosts of
different slots run side by side::

    DJANGOAPP_TEST_SLOT=3 python test/testhost.py up

``$DJANGOAPP_TEST_DEBIAN`` (12, the default, or 13) or ``up --debian N`` chooses the
release. Debian 12's Salt comes from a wheelhouse built here (same Python, 3.11);
Debian 13's Python is 3.13, so its root builds Salt from the package index (timelib
has no cp313 wheel: build-essential and python3-dev are in that root). Each root is
cached as a tarball keyed by its recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

SUITE = "bookworm"
DEBIAN_VARIABLE = "DJANGOAPP_TEST_DEBIAN"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
INCLUDE_PACKAGES = (
    "ca-certificates",
    "dbus",
    "iproute2",
    "procps",
    "python3",
    "python3-venv",
    "systemd",
    "systemd-sysv",
)
SALT_VERSION = "3008.4"
PYTHON_CACHE_TAG = "cpython-311"
REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "requirements-test.txt"
MINION_CONFIG_EXAMPLE = Path(__file__).resolve().parents[1] / "minion.conf.example"
MINION_CONFIG_FILE = "/etc/salt/minion.d/djangoapp-loader.conf"  # in the host


@dataclasses.dataclass(frozen=True)
class Distribution:
    """A Debian release a test host can run, and how Salt gets into its root."""

    release: str
    suite: str
    # Salt from this machine's wheelhouse (same Python), or from the index in the root.
    salt_from: str
    extra_packages: tuple[str, ...] = ()

    @property
    def default_hostname(self) -> str:
        return f"djangoapp-test-debian{self.release}"


DISTRIBUTIONS = {
    "12": Distribution("12", SUITE, salt_from="wheelhouse"),
    # Python 3.13: Salt's timelib builds from source, with a compiler and headers.
    "13": Distribution(
        "13",
        "trixie",
        salt_from="index",
        extra_packages=("build-essential", "python3-dev"),
    ),
}
DEFAULT_DEBIAN = "12"


def distribution_from_environment(
    environ: Mapping[str, str] = os.environ,
) -> Distribution:
    value = environ.get(DEBIAN_VARIABLE, "").strip() or DEFAULT_DEBIAN
    if value not in DISTRIBUTIONS:
        raise ValueError(
            f"{DEBIAN_VARIABLE}={value!r}: expected one of {', '.join(DISTRIBUTIONS)}"
        )
    return DISTRIBUTIONS[value]


CACHE_DIR = Path("/var/cache/djangoapp-test")
ROOTFS_LOCK = ".rootfs.lock"
WORK_DIR = Path("/var/tmp/djangoapp-test")
RUN_DIR = Path("/run/djangoapp-test")
MACHINE_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# A slot (DJANGOAPP_TEST_SLOT, default 0) names one host with its own namespace, veth,
# /24, proxy port, state files and work dir, so that hosts of different slots run side
# by side (a test run beside a benchmark, two people on one machine).
SLOT_VARIABLE = "DJANGOAPP_TEST_SLOT"
MAX_SLOT = 199
FIRST_SUBNET_OCTET = 47
FIRST_PROXY_PORT = 8888


def slot_from_environment(environ: Mapping[str, str] = os.environ) -> int:
    value = environ.get(SLOT_VARIABLE, "").strip() or "0"
    if not value.isdigit() or int(value) > MAX_SLOT:
        raise ValueError(
            f"{SLOT_VARIABLE}={value!r}: expected a number from 0 to {MAX_SLOT}"
        )
    return int(value)


@dataclasses.dataclass(frozen=True)
class Slot:
    """The names and addresses of the host of one slot."""

    number: int

    @property
    def netns(self) -> str:
        return "djangoapp-test" if self.number == 0 else f"djangoapp-test{self.number}"

    @property
    def veth(self) -> str:
        # Interface names have at most 15 characters.
        return "djangoapp-veth" if self.number == 0 else f"djangoapp-v{self.number}"

    @property
    def subnet(self) -> str:
        return f"10.213.{FIRST_SUBNET_OCTET + self.number}.0/24"

    @property
    def master_ip(self) -> str:
        return f"10.213.{FIRST_SUBNET_OCTET + self.number}.1"

    @property
    def host_ip(self) -> str:
        return f"10.213.{FIRST_SUBNET_OCTET + self.number}.2"

    @property
    def proxy_port(self) -> int:
        return FIRST_PROXY_PORT + self.number


SLOT = Slot(slot_from_environment())
NETNS = SLOT.netns
HOST_VETH = SLOT.veth
SUBNET = SLOT.subnet
MASTER_IP = SLOT.master_ip
HOST_IP = SLOT.host_ip
PROXY_PORT = SLOT.proxy_port
PROXY_URL = f"http://{MASTER_IP}:{PROXY_PORT}"

STATE_FILE = RUN_DIR / f"{NETNS}.json"
LOCK_FILE = RUN_DIR / f"{NETNS}.lock"

DEBIAN = distribution_from_environment()
DEFAULT_HOSTNAME = DEBIAN.default_hostname
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MINION_PATH = f"/opt/salt/bin:{HOST_PATH}"
BOOT_TIMEOUT = 120
SHUTDOWN_TIMEOUT = 30
BUSY_WAIT_TIMEOUT = 1800

SALT_MINION_UNIT = f"""\
[Unit]
Description=Salt minion
After=network.target

[Service]
Environment=PATH={MINION_PATH}
Environment=LANG=C.UTF-8
Environment=HOME=/root
ExecStart=/opt/salt/bin/salt-minion
KillMode=process
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


class TestHostError(RuntimeError):
    """The test host could not be built, booted, reached or torn down."""

    __test__ = False


class HostCommandError(TestHostError):
    """A command inside the test host exited with a non-zero status."""

    def __init__(self, result: ExecResult):
        self.result = result
        super().__init__(
            f"{' '.join(result.argv)!r} exited with {result.rc}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n"
            f"--- stderr ---\n{result.stderr[-4000:]}"
        )


@dataclasses.dataclass(frozen=True)
class ExecResult:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str


def log(message: str) -> None:
    print(f"[testhost] {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str]) -> subprocess.CompletedProcess:
    """Run a command on this machine, raising with its output when it fails."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise TestHostError(
            f"{' '.join(argv)!r} exited with {result.returncode}\n"
            f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
    return result


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield


# Called with the label of each timed phase as it starts (test/try prints them).
PHASE_LISTENERS: list[Callable[[str], None]] = []


@contextlib.contextmanager
def timed(label: str, timings: dict[str, float]) -> Iterator[None]:
    started = time.monotonic()
    for listener in PHASE_LISTENERS:
        listener(label)
    yield
    timings[label] = round(time.monotonic() - started, 1)
    log(f"{label}: {timings[label]} s")


# --- processes we start, remembered across runs by pid and start time -------------


def process_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, ppid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


@dataclasses.dataclass(frozen=True)
class ProcessRef:
    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        return cls(pid, int(process_stat(pid)[19]))

    def alive(self) -> bool:
        """True while the process runs; a zombie has finished."""
        try:
            stat = process_stat(self.pid)
        except (FileNotFoundError, ProcessLookupError):
            return False
        return stat[0] != "Z" and int(stat[19]) == self.start_time

    def send(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def stop(self, timeout: float, signum: int = signal.SIGTERM) -> None:
        self.send(signum)
        if not self.wait_gone(timeout):
            self.send(signal.SIGKILL)
            self.wait_gone(10)


@dataclasses.dataclass
class HostState:
    """What makes up a running host, kept in STATE_FILE for whoever cleans up."""

    owner: int | None = None
    nspawn: ProcessRef | None = None
    proxy: ProcessRef | None = None
    companions: list[ProcessRef] = dataclasses.field(default_factory=list)

    @classmethod
    def load(cls) -> HostState | None:
        try:
            data = json.loads(STATE_FILE.read_text())
        except FileNotFoundError:
            return None
        return cls(
            owner=data["owner"],
            nspawn=ProcessRef(**data["nspawn"]) if data["nspawn"] else None,
            proxy=ProcessRef(**data["proxy"]) if data["proxy"] else None,
            companions=[ProcessRef(**ref) for ref in data.get("companions", [])],
        )

    def save(self) -> None:
        STATE_FILE.write_text(json.dumps(dataclasses.asdict(self)))

    def busy_reason(self) -> str | None:
        """Why another run still needs this host, or None."""
        if (
            self.owner not in (None, os.getpid())
            and Path(f"/proc/{self.owner}").exists()
        ):
            return f"in use by process {self.owner}"
        if self.owner is None and self.nspawn is not None and self.nspawn.alive():
            return (
                f"up by hand (systemd-nspawn pid {self.nspawn.pid}); "
                "stop it with: python test/testhost.py down"
            )
        return None


def tear_down(state: HostState, children: Iterable[subprocess.Popen] = ()) -> None:
    """Stop what ``state`` names, then remove the network and the host's files.

    Call with LOCK_FILE held.
    """
    for companion in state.companions:
        companion.stop(15)
    if state.nspawn is not None:
        state.nspawn.stop(SHUTDOWN_TIMEOUT)
    if state.proxy is not None:
        state.proxy.stop(5)
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    remove_network()
    remove_tree_without_mounts(WORK_DIR / NETNS)
    STATE_FILE.unlink(missing_ok=True)


def remove_tree_without_mounts(directory: Path) -> None:
    prefix = str(directory.resolve()) + "/"
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    if any((line.split()[4] + "/").startswith(prefix) for line in mountinfo):
        raise TestHostError(f"not deleting {directory}: something is mounted in it")
    shutil.rmtree(directory, ignore_errors=True)


# --- the cached root and the salt wheelhouse -------------------------------------


def recipe_hash(recipe: Mapping) -> str:
    encoded = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def wheelhouse_recipe() -> dict:
    return {"salt": SALT_VERSION, "python": PYTHON_CACHE_TAG}


def ensure_wheelhouse(timings: dict[str, float]) -> Path:
    """Build (once) wheels of salt and its dependencies for Debian 12's python3."""
    wheelhouse = CACHE_DIR / f"wheels-{recipe_hash(wheelhouse_recipe())}"
    with file_lock(CACHE_DIR / ".wheels.lock"):
        if wheelhouse.is_dir():
            return wheelhouse
        if sys.implementation.cache_tag != PYTHON_CACHE_TAG:
            raise TestHostError(
                "the salt wheelhouse is built with this interpreter, which must match "
                f"Debian 12's python3 (3.11); this is {sys.version.split()[0]}"
            )
        building = Path(tempfile.mkdtemp(prefix="wheels-", dir=CACHE_DIR))
        with timed("wheelhouse build", timings):
            run(
                [sys.executable, "-m", "pip", "wheel", "--quiet"]
                + [f"salt=={SALT_VERSION}", "--wheel-dir", str(building)]
            )
        building.chmod(0o755)
        building.rename(wheelhouse)
    return wheelhouse


def prepare_root(root: Path, wheelhouse: Path) -> None:
    """Turn a fresh debootstrap root into a test host image with salt in /opt/salt."""
    script = f"""
        python3 -m venv /opt/salt
        /opt/salt/bin/pip install --quiet --no-index --find-links /mnt/wheels \\
            salt=={SALT_VERSION}
        ln -s /opt/salt/bin/salt-call /usr/local/bin/salt-call
        apt-get clean
    """
    nspawn_run(root, ["sh", "-ec", script], binds_ro={wheelhouse: "/mnt/wheels"})
    (root / "etc/salt/minion.d").mkdir(parents=True)
    (root / "etc/systemd/system/salt-minion.service").write_text(SALT_MINION_UNIT)
    (root / "etc/resolv.conf").write_text(
        "# No DNS: this host reaches the outside only through an HTTP proxy.\n"
    )
    (root / "etc/machine-id").write_text("")


def prepare_root_from_index(root: Path) -> None:
    """Like prepare_root, with Salt built in the root from the package index (pinned
    by requirements-test.txt), over this machine's network, trusting its CAs."""
    trust_machine_ca_bundle(root)
    script = f"""
        python3 -m venv /opt/salt
        /opt/salt/bin/pip install --quiet --no-cache-dir \\
            --constraint /mnt/requirements.txt salt=={SALT_VERSION}
        ln -s /opt/salt/bin/salt-call /usr/local/bin/salt-call
        apt-get clean
    """
    nspawn_run(
        root,
        ["sh", "-ec", script],
        binds_ro={REQUIREMENTS_FILE: "/mnt/requirements.txt"},
        network=True,
    )
    (root / "etc/salt/minion.d").mkdir(parents=True)
    (root / "etc/systemd/system/salt-minion.service").write_text(SALT_MINION_UNIT)
    (root / "etc/resolv.conf").write_text(
        "# No DNS: this host reaches the outside only through an HTTP proxy.\n"
    )
    (root / "etc/machine-id").write_text("")


def root_recipe(debian: Distribution | None = None) -> dict:
    debian = debian or DEBIAN
    if debian.salt_from == "wheelhouse":
        # Debian 12's recipe as it was before Debian 13 came: its cached root stays.
        return {
            "suite": debian.suite,
            "mirror": DEBIAN_MIRROR,
            "variant": "minbase",
            "include": sorted(INCLUDE_PACKAGES + debian.extra_packages),
            "wheelhouse": wheelhouse_recipe(),
            "prepare": inspect.getsource(prepare_root) + SALT_MINION_UNIT,
        }
    return {
        "suite": debian.suite,
        "mirror": DEBIAN_MIRROR,
        "variant": "minbase",
        "include": sorted(INCLUDE_PACKAGES + debian.extra_packages),
        "salt": SALT_VERSION,
        "constraints": hashlib.sha256(REQUIREMENTS_FILE.read_bytes()).hexdigest(),
        "prepare": inspect.getsource(prepare_root_from_index)
        + inspect.getsource(trust_machine_ca_bundle)
        + SALT_MINION_UNIT,
    }


def ensure_root_tarball(
    timings: dict[str, float], debian: Distribution | None = None
) -> Path:
    """The cached root tarball, built with debootstrap when its recipe is new."""
    debian = debian or DEBIAN
    tarball = CACHE_DIR / f"rootfs-{recipe_hash(root_recipe(debian))}.tar"
    if tarball.exists():
        return tarball
    wheelhouse = (
        ensure_wheelhouse(timings) if debian.salt_from == "wheelhouse" else None
    )
    # A lock per recipe, so that the Debian 12 and 13 roots build at once; every
    # build shares ROOTFS_LOCK, which a purge (test/try down --purge) takes alone.
    with (
        file_lock(CACHE_DIR / ROOTFS_LOCK, shared=True),
        file_lock(CACHE_DIR / f".{tarball.stem}.lock"),
    ):
        if tarball.exists():
            return tarball
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=CACHE_DIR) as building:
            root = Path(building) / "root"
            include = INCLUDE_PACKAGES + debian.extra_packages
            with timed(f"debootstrap {debian.suite}", timings):
                run(
                    ["debootstrap", "--variant=minbase"]
                    + [f"--include={','.join(include)}"]
                    + [debian.suite, str(root), DEBIAN_MIRROR]
                )
            with timed("salt install in the root", timings):
                if wheelhouse is not None:
                    prepare_root(root, wheelhouse)
                else:
                    prepare_root_from_index(root)
            partial = Path(building) / "rootfs.tar"
            with timed("root tarball", timings):
                run(tar_command("-cf", partial) + ["-C", str(root), "."])
            partial.rename(tarball)
    return tarball


def tar_command(mode: str, tarball: Path) -> list[str]:
    return [
        "tar",
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        mode,
        str(tarball),
    ]


def nspawn_run(
    root: Path,
    argv: Sequence[str],
    binds_ro: Mapping[Path, str],
    network: bool = False,
) -> None:
    """Run one command in the root without booting it, without network unless
    ``network`` (then with this machine's, and its DNS)."""
    isolation = (
        ["--resolv-conf=copy-host"]
        if network
        else ["--private-network", "--resolv-conf=off"]
    )
    run(
        ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--pipe"]
        + ["--link-journal=no", *isolation]
        + ["--timezone=off", "--directory", str(root)]
        + [f"--bind-ro={source}:{target}" for source, target in binds_ro.items()]
        + list(argv)
    )


def pem_certificates(text: str) -> list[str]:
    return re.findall(
        r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.DOTALL
    )


def trust_machine_ca_bundle(root: Path) -> None:
    """Make the host trust every CA this machine trusts, for its system tools and pip.

    HTTPS from here passes a CA that only this machine's bundle holds. The certificates
    the host lacks go to /usr/local/share/ca-certificates, so that they survive an
    update-ca-certificates inside the host, and into its system bundle right away.
    """
    system_bundle = root / "etc/ssl/certs/ca-certificates.crt"
    known = set(pem_certificates(system_bundle.read_text()))
    machine_certs = pem_certificates(MACHINE_CA_BUNDLE.read_text())
    missing = [cert for cert in machine_certs if cert not in known]
    for index, cert in enumerate(missing):
        local_cert = root / f"usr/local/share/ca-certificates/test-machine-{index}.crt"
        local_cert.write_text(cert + "\n")
    with open(system_bundle, "a") as bundle:
        bundle.writelines(cert + "\n" for cert in missing)
    (root / "etc/pip.conf").write_text(
        "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
    )


def configure_minion(root: Path) -> None:
    """The minion configuration the README recommends (minion.conf.example)."""
    target = root / MINION_CONFIG_FILE.lstrip("/")
    target.write_text(MINION_CONFIG_EXAMPLE.read_text())


def set_hostname(root: Path, hostname: str) -> None:
    (root / "etc/hostname").write_text(hostname + "\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
    )


# --- the network namespace and the proxy -----------------------------------------


def create_network() -> None:
    prefix = SUBNET.split("/")[1]
    run(["ip", "netns", "add", NETNS])
    run(
        ["ip", "link", "add", HOST_VETH, "type", "veth"]
        + ["peer", "eth0", "netns", NETNS]
    )
    run(["ip", "addr", "add", f"{MASTER_IP}/{prefix}", "dev", HOST_VETH])
    run(["ip", "link", "set", HOST_VETH, "up"])
    run(["ip", "-n", NETNS, "addr", "add", f"{HOST_IP}/{prefix}", "dev", "eth0"])
    run(["ip", "-n", NETNS, "link", "set", "eth0", "up"])
    run(["ip", "-n", NETNS, "link", "set", "lo", "up"])


def remove_network() -> None:
    """Delete the veth pair and the namespace, killing what still runs in it."""
    if Path(f"/sys/class/net/{HOST_VETH}").exists():
        run(["ip", "link", "del", HOST_VETH])
    if Path(f"/run/netns/{NETNS}").exists():
        for pid in run(["ip", "netns", "pids", NETNS]).stdout.split():
            with contextlib.suppress(FileNotFoundError):
                ProcessRef.of(int(pid)).stop(timeout=5, signum=signal.SIGKILL)
        run(["ip", "netns", "del", NETNS])


def tinyproxy_config(log_file: Path) -> str:
    return textwrap.dedent(f"""\
        Port {PROXY_PORT}
        Listen {MASTER_IP}
        Timeout 600
        MaxClients 64
        Allow {SUBNET}
        DisableViaHeader Yes
        LogFile "{log_file}"
        LogLevel Connect
        """)


def spawn_salt_master(config_dir: Path, config: Mapping) -> subprocess.Popen:
    """A ``salt-master -c config_dir`` of this machine with ``config`` as its
    configuration file, in a session of its own, its output in ``master.out``."""
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "master").write_text(json.dumps(config, indent=1))
    binary = Path(sys.executable).with_name("salt-master")
    with open(config_dir / "master.out", "w") as output:
        return subprocess.Popen(
            [str(binary), "-c", str(config_dir)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def free_ports(address: str, count: int) -> list[int]:
    """Ports on ``address`` that nothing listens on now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((address, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(address: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TestHostError(f"nothing answers on {address}:{port}") from None
            time.sleep(0.2)


def missing_prerequisites() -> str | None:
    """Why test hosts cannot be booted on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, systemd-nspawn)"
    tools = ("debootstrap", "systemd-nspawn", "tinyproxy", "nsenter", "ip", "tar")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"missing on this machine: {', '.join(missing)}"
    return None


# --- the host --------------------------------------------------------------------


class TestHost:
    """One booted Debian host: ``with TestHost(...) as host``, or start()/stop()."""

    __test__ = False

    def __init__(
        self,
        hostname: str | None = None,
        binds_ro: Mapping[str | Path, str] | None = None,
        binds: Mapping[str | Path, str] | None = None,
        owned_by_caller: bool = True,
        debian: str | None = None,
    ):
        """``binds_ro``/``binds`` map directories of this machine to paths in the host.

        A host owned by its caller is cleaned up by the next run once the caller has
        exited; one that is not (``testhost.py up``) stays until someone stops it.
        """
        self.debian = DISTRIBUTIONS[debian] if debian else DEBIAN
        self.hostname = hostname or self.debian.default_hostname
        self.binds_ro = dict(binds_ro or {})
        self.binds = dict(binds or {})
        self.owned_by_caller = owned_by_caller
        self.ip = HOST_IP
        self.master_ip = MASTER_IP
        self.proxy_url = PROXY_URL
        self.work_dir = WORK_DIR / NETNS
        self.root = self.work_dir / "root"
        self.nspawn_log = self.work_dir / "nspawn.log"
        self.timings: dict[str, float] = {}
        self.state = HostState()
        self._claimed = False
        self._children: list[subprocess.Popen] = []
        self._pid1: int | None = None

    @classmethod
    def attach(cls) -> TestHost:
        """The host that is up now, to run commands in (raises when none is)."""
        state = HostState.load()
        if state is None or state.nspawn is None or not state.nspawn.alive():
            raise TestHostError(f"no test host is up in slot {SLOT.number}")
        host = cls()
        host.state = state
        return host

    def __enter__(self) -> TestHost:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        reason = missing_prerequisites()
        if reason:
            raise TestHostError(reason)
        tarball = ensure_root_tarball(self.timings, self.debian)
        self._claim()
        with timed("extract root", self.timings):
            self.root.mkdir(parents=True)
            run(tar_command("-xpf", tarball) + ["-C", str(self.root)])
        trust_machine_ca_bundle(self.root)
        set_hostname(self.root, self.hostname)
        configure_minion(self.root)
        create_network()
        self._start_proxy()
        with timed("boot", self.timings):
            self._boot()

    def stop(self) -> None:
        if self._claimed:
            with file_lock(LOCK_FILE):
                tear_down(self.state, self._children)
            self._claimed = False
            self._pid1 = None

    def power_cycle(self) -> None:
        """Power the host off and boot the same root again: its disk is kept, its
        /run and processes are not. The network, the proxy and the binds stay."""
        # systemd-nspawn turns SIGTERM into an orderly poweroff of the host.
        self.state.nspawn.stop(SHUTDOWN_TIMEOUT)
        self._pid1 = None
        with timed("power cycle", self.timings):
            self._boot()

    def _claim(self) -> None:
        """Wait until no live run uses the host's name, then clean up what is left."""
        deadline = time.monotonic() + BUSY_WAIT_TIMEOUT
        while True:
            with file_lock(LOCK_FILE):
                previous = HostState.load() or HostState()
                reason = previous.busy_reason()
                if reason is None:
                    tear_down(previous)
                    self.work_dir.mkdir(parents=True)
                    owner = os.getpid() if self.owned_by_caller else None
                    self.state = HostState(owner=owner)
                    self.state.save()
                    self._claimed = True
                    return
            if previous.owner is None or time.monotonic() > deadline:
                raise TestHostError(f"the test host {NETNS!r} is {reason}")
            log(f"waiting: the test host {NETNS!r} is {reason}")
            time.sleep(5)

    def adopt(self, pid: int) -> None:
        """Stop this process of this machine with the host, even if this run dies.

        For servers that serve the host, such as a Salt master: a later run that
        cleans up after a killed one stops them too.
        """
        self.state.companions.append(ProcessRef.of(pid))
        self.state.save()

    def _spawn(self, argv: list[str], output: Path) -> ProcessRef:
        with open(output, "w") as log_file:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children.append(child)
        return ProcessRef.of(child.pid)

    def _start_proxy(self) -> None:
        config = self.work_dir / "tinyproxy.conf"
        config.write_text(tinyproxy_config(self.work_dir / "tinyproxy.log"))
        self.state.proxy = self._spawn(
            ["tinyproxy", "-d", "-c", str(config)], self.work_dir / "tinyproxy.out"
        )
        self.state.save()
        wait_for_port(MASTER_IP, PROXY_PORT, timeout=10)

    def _boot(self) -> None:
        argv = [
            "systemd-nspawn",
            "--register=no",
            "--keep-unit",
            "--boot",
            f"--directory={self.root}",
            f"--network-namespace-path=/run/netns/{NETNS}",
            # nspawn keeps CAP_NET_ADMIN only with a network it makes itself: the
            # host's services (its nftables firewall, fail2ban's bans) need it in
            # the host's own namespace.
            "--capability=CAP_NET_ADMIN",
            f"--hostname={self.hostname}",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
            "--console=read-only",
        ]
        argv += [f"--bind-ro={src}:{dst}" for src, dst in self.binds_ro.items()]
        argv += [f"--bind={src}:{dst}" for src, dst in self.binds.items()]
        self.state.nspawn = self._spawn(argv, self.nspawn_log)
        self.state.save()
        self._wait_until_running()

    def _wait_until_running(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        answer = "no PID 1 yet"
        while time.monotonic() < deadline:
            if not self.state.nspawn.alive():
                raise TestHostError(f"systemd-nspawn exited\n{self._nspawn_output()}")
            if self.pid1 is not None:
                result = self.exec(["systemctl", "is-system-running"], check=False)
                answer = (result.stdout or result.stderr).strip()
                if answer in ("running", "degraded"):
                    return
            time.sleep(0.5)
        failed = ""
        if self.pid1 is not None:
            failed = self.exec(
                ["systemctl", "--failed", "--no-pager"], check=False
            ).stdout
        raise TestHostError(
            f"the test host did not finish booting in {BOOT_TIMEOUT} s "
            f"(systemctl is-system-running: {answer})\n"
            f"--- systemctl --failed ---\n{failed}\n"
            f"--- systemd-nspawn output ---\n{self._nspawn_output()}"
        )

    def _nspawn_output(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.nspawn_log.read_text(errors="replace")[-6000:]
        return ""

    @property
    def pid1(self) -> int | None:
        """The host's init as this machine sees it: the child of systemd-nspawn."""
        if self._pid1 is None and self.state.nspawn is not None:
            nspawn = self.state.nspawn.pid
            with contextlib.suppress(FileNotFoundError):
                children = Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text()
                for child in children.split():
                    status = Path(f"/proc/{child}/status").read_text()
                    ns_pids = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
                    if ns_pids and ns_pids.group(1).split()[-1] == "1":
                        self._pid1 = int(child)
        return self._pid1

    def exec(
        self,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 600,
        user: str | None = None,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        """Run argv in the host as root, or as ``user``, with a clean environment."""
        command = self.nsenter_command(argv, user=user, env=env)
        try:
            completed = subprocess.run(
                command,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            message = f"{list(argv)!r} timed out after {timeout} s in the test host"
            raise TestHostError(message) from error
        result = ExecResult(
            list(argv), completed.returncode, completed.stdout, completed.stderr
        )
        if check and result.rc != 0:
            raise HostCommandError(result)
        return result

    def nsenter_command(
        self,
        argv: Sequence[str],
        user: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The command of this machine that runs argv in the host the way ``exec``
        does, for callers that stream its output or hand it the terminal."""
        if self.pid1 is None:
            raise TestHostError("the test host is not running")
        variables = {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
        variables.update(env or {})
        command = ["nsenter", "-t", str(self.pid1), "-a", "-r", "-w", "env", "-i"]
        command += [f"{name}={value}" for name, value in variables.items()]
        if user is not None:
            command += ["runuser", "-u", user, "--"]
        return command + list(argv)

    def path(self, guest_path: str) -> Path:
        """Where a path of the host lies on this machine (symlinks resolved inside).

        While the host runs this goes through /proc/PID/root, so that its own mounts
        (/run, /tmp, binds) show.
        """
        base = Path(f"/proc/{self.pid1}/root") if self.pid1 else self.root
        return resolve_in_root(base, guest_path)

    def put_file(
        self, guest_path: str, content: str | bytes, mode: int = 0o644
    ) -> None:
        target = self.path(guest_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        target.chmod(mode)

    def get_file(self, guest_path: str) -> str:
        return self.path(guest_path).read_text()

    def start_minion(
        self,
        master_port: int,
        publish_port: int,
        minion_id: str | None = None,
        extra_config: Mapping | None = None,
    ) -> None:
        """Point the salt-minion at a master on MASTER_IP, then enable and start it."""
        config = {
            "master": MASTER_IP,
            "master_port": master_port,
            "publish_port": publish_port,
            "id": minion_id or self.hostname,
            "acceptance_wait_time": 2,
            "random_reauth_delay": 0,
            "log_level_logfile": "info",
            **(extra_config or {}),
        }
        self.put_file("/etc/salt/minion.d/test-master.conf", json.dumps(config))
        self.exec(["systemctl", "enable", "--now", "salt-minion.service"])


def resolve_in_root(root: Path, guest_path: str, max_links: int = 40) -> Path:
    """Resolve an absolute path the way the host would, never leaving ``root``."""
    remaining = list(PurePosixPath(guest_path).parts[1:])
    resolved = PurePosixPath("/")
    links = 0
    while remaining:
        part = remaining.pop(0)
        if part == "..":
            resolved = resolved.parent
            continue
        on_disk = root / (resolved / part).relative_to("/")
        if not on_disk.is_symlink():
            resolved = resolved / part
            continue
        links += 1
        if links > max_links:
            raise TestHostError(f"too many levels of symbolic links in {guest_path}")
        target = PurePosixPath(os.readlink(on_disk))
        if target.is_absolute():
            resolved = PurePosixPath("/")
            remaining = list(target.parts[1:]) + remaining
        else:
            remaining = list(target.parts) + remaining
    return root / resolved.relative_to("/")


# --- command line ------------------------------------------------------------------


def parse_bind(value: str) -> tuple[str, str]:
    source, _, target = value.partition(":")
    return source, target or source


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="boot a fresh host and leave it running")
    up.add_argument("--hostname")
    up.add_argument(
        "--debian",
        choices=sorted(DISTRIBUTIONS),
        help=f"the release (default: ${DEBIAN_VARIABLE}, else {DEFAULT_DEBIAN})",
    )
    up.add_argument(
        "--bind-ro",
        action="append",
        type=parse_bind,
        default=[],
        metavar="SRC[:DST]",
        help="a directory of this machine to show read-only in the host",
    )
    commands.add_parser("down", help="stop the host and remove it")
    commands.add_parser("status", help="tell whether a host is up")
    run_in = commands.add_parser("exec", help="run a command in the host")
    run_in.add_argument("--user", help="run as this user of the host")
    run_in.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "up":
        host = TestHost(
            args.hostname,
            binds_ro=dict(args.bind_ro),
            owned_by_caller=False,
            debian=args.debian,
        )
        try:
            host.start()
        except BaseException:
            host.stop()
            raise
        print(
            f"{host.hostname} (Debian {host.debian.release}, slot {SLOT.number}) "
            f"is up at {HOST_IP}; proxy {PROXY_URL}; root {host.root}"
        )
        return 0
    if args.command == "down":
        with file_lock(LOCK_FILE):
            state = HostState.load() or HostState()
            if state.owner is not None and state.busy_reason():
                print(f"not stopping: the test host is {state.busy_reason()}")
                return 1
            tear_down(state)
        return 0
    host = TestHost.attach()
    if args.command == "status":
        running = host.exec(["systemctl", "is-system-running"], check=False)
        print(
            f"slot {SLOT.number}: up at {HOST_IP} "
            f"(systemd-nspawn pid {host.state.nspawn.pid}, "
            f"system {running.stdout.strip()}); proxy {PROXY_URL}; root {host.root}"
        )
        return 0
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    result = host.exec(command, check=False, user=args.user)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TestHostError as error:
        sys.exit(f"testhost: {error}")
