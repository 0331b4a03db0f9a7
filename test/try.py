"""Deploy the demo app with this formula on a throwaway systemd host, and work on it."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

import demorepo
import testhost

REPO = Path(__file__).resolve().parents[1]
# One work dir per test host slot (testhost.SLOT), so tries in two slots coexist.
WORK_DIR = Path(
    "/var/lib/djangoapp-try"
    + (str(testhost.SLOT.number) if testhost.SLOT.number else "")
)
FORMULA_MOUNT = "/srv/formula"
PILLAR_MOUNT = "/srv/pillar"
GIT_MOUNT = "/srv/git"
DEMO_PILLAR = REPO / "pillar" / "demo.sls"
# Debian's stable release; `test/try --debian 12` for oldstable.
DEFAULT_DEBIAN = "13"
# The cached roots and wheelhouse: testhost's, which the tests share, unless this
# names another directory (a test of `down --purge` purges its own).
CACHE_VARIABLE = "DJANGOAPP_TRY_CACHE"
# test/try exports how it was started, so that the commands it prints paste as typed.
INVOKED_AS_VARIABLE = "DJANGOAPP_TRY_COMMAND"
# The cache entries testhost builds: root tarballs, wheelhouses, their locks, and
# what a build killed half-way left (a temporary rootfs-*/wheels-* directory).
CACHE_ENTRIES = ("rootfs-*", "wheels-*", ".rootfs*.lock", ".wheels.lock")


def write_pillar(pillar_dir: Path, source: Path = DEMO_PILLAR) -> dict:
    """``source`` as the demo pillar, plus the proxy through which the host reaches
    out; returns the pillar ``source`` holds."""
    pillar_dir.mkdir(parents=True, exist_ok=True)
    demo = yaml.safe_load(source.read_text())
    shutil.copy(source, pillar_dir / "demo.sls")
    proxy = {"http": testhost.PROXY_URL, "https": testhost.PROXY_URL}
    (pillar_dir / "try.sls").write_text(yaml.safe_dump({"djangoapp": {"proxy": proxy}}))
    (pillar_dir / "top.sls").write_text(
        yaml.safe_dump({"base": {"*": ["demo", "try"]}})
    )
    return demo


def salt_call_argv(*args: str) -> list[str]:
    """``salt-call --local ARGS`` with the formula and pillar mounted the way ``up``
    mounts them."""
    return [
        "/opt/salt/bin/salt-call",
        "--local",
        f"--file-root={FORMULA_MOUNT}/salt",
        f"--pillar-root={PILLAR_MOUNT}",
        *args,
    ]


def salt_call(host: testhost.TestHost, *args: str, timeout: float = 1800):
    """``salt-call --local ARGS`` in the host; returns the ExecResult (raises on
    nothing)."""
    return host.exec(salt_call_argv(*args), check=False, timeout=timeout)


def sync_modules(host: testhost.TestHost):
    """``saltutil.sync_all``: the formula's modules, states and utils into the
    host's minion cache, which ``state.apply djangoapp`` does not do (a highstate
    would, but the formula ships no top file)."""
    return salt_call(host, "--retcode-passthrough", "saltutil.sync_all", timeout=300)


def apply_states(
    host: testhost.TestHost, *options: str, timeout: float = 1800, sync: bool = False
):
    """``state.apply djangoapp`` in the host (masterless), after a
    ``saltutil.sync_all`` when ``sync``; ``options`` go to salt-call."""
    if sync:
        synced = sync_modules(host)
        if synced.rc != 0:
            return synced
    return salt_call(
        host,
        "--retcode-passthrough",
        *options,
        "state.apply",
        "djangoapp",
        timeout=timeout,
    )


# --- progress --------------------------------------------------------------------


class Progress:
    """Lines saying what runs now; when nothing was said for QUIET_SECONDS, a line
    saying what still runs and for how long, so that no step is silent."""

    QUIET_SECONDS = 20

    def __init__(self):
        self.activity: str | None = None
        self.activity_started = time.monotonic()
        self.last_line = time.monotonic()
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._reminder = threading.Thread(target=self._remind, daemon=True)

    def __enter__(self) -> Progress:
        testhost.PHASE_LISTENERS.append(self.begin)
        self._reminder.start()
        return self

    def __exit__(self, *exc_info) -> None:
        testhost.PHASE_LISTENERS.remove(self.begin)
        self._finished.set()
        self._reminder.join()

    def say(self, message: str) -> None:
        with self._lock:
            print(f"[try] {message}", flush=True)
            self.last_line = time.monotonic()

    def begin(self, activity: str, announce: bool = True) -> None:
        self.activity = activity
        self.activity_started = time.monotonic()
        if announce:
            self.say(f"{activity} ...")

    @contextlib.contextmanager
    def step(self, activity: str) -> Iterator[None]:
        self.begin(activity)
        started = time.monotonic()
        yield
        self.activity = None
        self.say(f"{activity}: done in {time.monotonic() - started:.0f} s")

    def _remind(self) -> None:
        while not self._finished.wait(1):
            now = time.monotonic()
            if self.activity and now - self.last_line >= self.QUIET_SECONDS:
                elapsed = now - self.activity_started
                self.say(f"  still {self.activity} ({elapsed:.0f} s)")


# Salt's log lines at level info around each state it runs.
STATE_EXECUTING = re.compile(r"Executing state (\S+) for \[(.*?)\]?$")
STATE_COMPLETED = re.compile(r"Completed state \[.*duration_in_ms=([0-9.]+)")
LOG_ERROR = re.compile(r"^\[(ERROR|CRITICAL)\s*\]")


def salt_call_with_progress(
    host: testhost.TestHost, progress: Progress, *args: str
) -> tuple[int, str]:
    """salt-call in the host with a line per state as each one finishes (from its
    info log); returns its exit code and its output."""
    command = host.nsenter_command(salt_call_argv("--log-level=info", *args))
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(process.stdout.read()))
    reader.start()
    finished = 0
    running = None
    for line in process.stderr:
        line = line.rstrip("\n")
        executing = STATE_EXECUTING.search(line)
        if executing:
            function, name = executing.groups()
            running = f"{function} {name[:70]}"
            progress.begin(f"at state {finished + 1}: {running}", announce=False)
        elif "Completed state [" in line and running:
            finished += 1
            completed = STATE_COMPLETED.search(line)
            took = f" ({float(completed.group(1)) / 1000:.1f} s)" if completed else ""
            progress.say(f"  state {finished:3}: {running}{took}")
            running = None
        elif LOG_ERROR.match(line):
            progress.say(f"  {line}")
    process.wait()
    reader.join()
    return process.returncode, "".join(output)


def converge(host: testhost.TestHost, progress: Progress) -> bool:
    """Sync the formula's modules, then ``state.apply djangoapp``, state by state;
    prints Salt's summary (everything it said when something failed)."""
    with progress.step("syncing the formula's modules (saltutil.sync_all)"):
        synced = sync_modules(host)
    if synced.rc != 0:
        print(synced.stdout, synced.stderr, sep="\n")
        return False
    with progress.step("state.apply djangoapp"):
        rc, output = salt_call_with_progress(
            host,
            progress,
            "--retcode-passthrough",
            "--state-output=terse",
            "--state-verbose=false",
            "state.apply",
            "djangoapp",
        )
    summary = output.find("Summary for local")
    print(output if rc != 0 or summary < 0 else output[summary:], flush=True)
    return rc == 0


# --- commands --------------------------------------------------------------------


def try_command(*args: str) -> str:
    """A command line of test/try that works pasted where the user started it."""
    invoked_as = os.environ.get(INVOKED_AS_VARIABLE) or str(REPO / "test" / "try")
    settings = [
        f"{name}={shlex.quote(os.environ[name].strip())}"
        for name in (testhost.SLOT_VARIABLE, CACHE_VARIABLE)
        if os.environ.get(name, "").strip()
    ]
    return " ".join(settings + [shlex.join([invoked_as, *args])])


def release_example(version: str) -> str:
    """A tag of the demo repository to release by hand: the one after the pillar's
    on the main line (the one before, from the last)."""
    line = demorepo.MAIN_LINE
    if version not in line:
        return line[-1]
    index = line.index(version)
    return line[index + 1] if index + 1 < len(line) else line[index - 1]


def print_next_steps(host: testhost.TestHost, demo: dict) -> None:
    app_name, app = next(iter(demo["djangoapp"]["apps"].items()))
    server_name = app["server_names"][0]
    version = release_example(str(app.get("version", "")))
    commands = [
        (
            try_command("apply"),
            "pillar/demo.sls and the formula as they are now, applied again",
        ),
        (
            try_command(
                "salt", "djangoapp.release", f"version={version}", f"app={app_name}"
            ),
            "release another tag by hand",
        ),
        (
            try_command("salt", "djangoapp.rollback", app_name),
            "back to the previous good release",
        ),
        (try_command("salt", "djangoapp.status", app_name), "what is live"),
        (try_command("salt", "djangoapp.releases", app_name), "the release history"),
        (try_command("down"), "stop the host and remove it"),
        (try_command("down", "--purge"), "the same, and remove the cached root too"),
    ]
    print(
        f"\nThe demo app answers on http://{host.ip}/ for Host {server_name}:\n"
        f"  curl -H 'Host: {server_name}' http://{host.ip}/\n\n"
        "Work on it (`salt` runs any salt-call function in the host):"
    )
    for command, what in commands:
        print(f"  # {what}\n  {command}")


def up(debian: str, pillar: Path) -> int:
    state = testhost.HostState.load()
    if state is not None and state.busy_reason() and WORK_DIR.is_dir():
        print("[try] a test/try host is up in this slot: replacing it", flush=True)
        status = down(purge=False)
        if status != 0:
            return status
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    with Progress() as progress:
        with progress.step("building the demo app's git repository"):
            demorepo.build_repo(WORK_DIR / "git" / "demo.git")
        demo = write_pillar(WORK_DIR / "pillar", pillar)
        host = testhost.TestHost(
            binds_ro={
                WORK_DIR / "git": GIT_MOUNT,
                WORK_DIR / "pillar": PILLAR_MOUNT,
                REPO: FORMULA_MOUNT,
            },
            owned_by_caller=False,
            debian=debian,
        )
        try:
            with progress.step(f"starting a Debian {host.debian.release} host"):
                host.start()
        except BaseException:
            host.stop()
            raise
        progress.say(
            f"Debian {host.debian.release} host is up at {host.ip}; applying the "
            "formula (a few minutes on a fresh host)"
        )
        if not converge(host, progress):
            print(
                f"state.apply failed; the host stays up: {try_command('down')}",
                file=sys.stderr,
            )
            return 1
    print_next_steps(host, demo)
    return 0


def attach() -> testhost.TestHost:
    """The host test/try started in this slot."""
    host = testhost.TestHost.attach()
    if not (WORK_DIR / "pillar").is_dir():
        raise testhost.TestHostError(
            f"the host of slot {testhost.SLOT.number} was not started by test/try"
        )
    return host


def apply(pillar: Path) -> int:
    host = attach()
    write_pillar(WORK_DIR / "pillar", pillar)
    with Progress() as progress:
        progress.say(f"{pillar} sent to the host")
        return 0 if converge(host, progress) else 1


def salt(arguments: list[str]) -> int:
    host = attach()
    command = salt_call_argv("--retcode-passthrough", *arguments)
    return subprocess.run(host.nsenter_command(command), check=False).returncode


def disk_usage(path: Path) -> int:
    """Bytes on disk under ``path``."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_blocks * 512
    return sum(entry.lstat().st_blocks * 512 for entry in path.rglob("*"))


def purge_caches(cache_dir: Path) -> None:
    """Remove what testhost cached in ``cache_dir`` (roots, wheelhouses), under the
    locks its builds take; the directory goes too when nothing else is in it."""
    if not cache_dir.is_dir():
        print(f"no cache to remove in {cache_dir}")
        return
    with (
        testhost.file_lock(cache_dir / testhost.ROOTFS_LOCK),
        testhost.file_lock(cache_dir / ".wheels.lock"),
    ):
        entries = sorted(
            {p for pattern in CACHE_ENTRIES for p in cache_dir.glob(pattern)}
        )
        for entry in entries:
            size = disk_usage(entry)
            # A hard link elsewhere keeps the data: no space comes back.
            linked = not entry.is_dir() and entry.lstat().st_nlink > 1
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            if size:
                freed = "still linked elsewhere" if linked else "freed"
                print(f"removed {entry} ({size / 2**20:.0f} MB {freed})")
    with contextlib.suppress(OSError):
        cache_dir.rmdir()


def down(purge: bool) -> int:
    with (
        Progress() as progress,
        progress.step("stopping the host and removing its files"),
    ):
        status = testhost.main(["down"])
    if status != 0:
        return status
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    if purge:
        purge_caches(testhost.CACHE_DIR)
    return 0


def pillar_file(value: str) -> Path:
    path = Path(value).resolve()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    return path


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="test/try",
        description=__doc__,
        epilog="Without a command: up.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    pillar_help = "the demo pillar to send (default: pillar/demo.sls)"
    start = commands.add_parser("up", help="boot a fresh host and deploy the demo")
    start.add_argument(
        "--debian",
        choices=sorted(testhost.DISTRIBUTIONS),
        default=DEFAULT_DEBIAN,
        help=f"the host's Debian release (default {DEFAULT_DEBIAN})",
    )
    start.add_argument(
        "--pillar", type=pillar_file, default=DEMO_PILLAR, help=pillar_help
    )
    again = commands.add_parser(
        "apply", help="send the pillar and apply the formula's current states again"
    )
    again.add_argument(
        "--pillar", type=pillar_file, default=DEMO_PILLAR, help=pillar_help
    )
    call = commands.add_parser(
        "salt",
        help="salt-call --local FUNCTION [ARGS] in the host, "
        "e.g. salt djangoapp.status demo",
    )
    call.add_argument("arguments", nargs=argparse.REMAINDER, metavar="FUNCTION ...")
    stop = commands.add_parser("down", help="stop the host and remove it")
    stop.add_argument(
        "--purge",
        action="store_true",
        help="also remove the cached roots and wheelhouse (see the README)",
    )
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["up", *argv]
    args = parser.parse_args(argv)
    if args.command == "salt" and not args.arguments:
        call.error("name a function, e.g. djangoapp.status demo")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    cache_dir = os.environ.get(CACHE_VARIABLE, "").strip()
    if cache_dir:
        # testhost reads its cache directory from this global when it builds or
        # finds a root.
        testhost.CACHE_DIR = Path(cache_dir).resolve()
    if args.command == "up":
        return up(args.debian, args.pillar)
    if args.command == "apply":
        return apply(args.pillar)
    if args.command == "salt":
        return salt(args.arguments)
    return down(args.purge)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except testhost.TestHostError as error:
        sys.exit(f"test/try: {error}")
