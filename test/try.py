"""Deploy the demo app with this formula on a throwaway systemd host (test/try)."""

import argparse
import shutil
import sys
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
# Debian's stable release; `test/try --debian 12` for oldstable.
DEFAULT_DEBIAN = "13"


def write_pillar(pillar_dir: Path) -> dict:
    """The demo pillar, plus the proxy through which the host reaches out."""
    pillar_dir.mkdir(parents=True)
    shutil.copy(REPO / "pillar" / "demo.sls", pillar_dir / "demo.sls")
    proxy = {"http": testhost.PROXY_URL, "https": testhost.PROXY_URL}
    (pillar_dir / "try.sls").write_text(yaml.safe_dump({"djangoapp": {"proxy": proxy}}))
    (pillar_dir / "top.sls").write_text(
        yaml.safe_dump({"base": {"*": ["demo", "try"]}})
    )
    return yaml.safe_load((REPO / "pillar" / "demo.sls").read_text())


def salt_call(host: testhost.TestHost, *args: str, timeout: float = 1800):
    """``salt-call --local ARGS`` in the host, with the formula and pillar mounted
    the way ``up`` mounts them; returns the ExecResult (raises on nothing)."""
    argv = [
        "/opt/salt/bin/salt-call",
        "--local",
        f"--file-root={FORMULA_MOUNT}/salt",
        f"--pillar-root={PILLAR_MOUNT}",
        *args,
    ]
    return host.exec(argv, check=False, timeout=timeout)


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


def up(debian: str) -> int:
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    demorepo.build_repo(WORK_DIR / "git" / "demo.git")
    demo = write_pillar(WORK_DIR / "pillar")
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
        host.start()
    except BaseException:
        host.stop()
        raise
    print(
        f"Debian {host.debian.release} host is up; applying the formula "
        "(a few minutes on a fresh host)",
        flush=True,
    )
    converge = apply_states(host, "--state-output=terse", sync=True)
    print(converge.stdout, converge.stderr, sep="\n")
    if converge.rc != 0:
        print("state.apply failed; the host stays up: test/try down", file=sys.stderr)
        return 1
    app = next(iter(demo["djangoapp"]["apps"].values()))
    server_name = app["server_names"][0]
    print(
        f"\nThe demo app answers on http://{host.ip}/ for Host {server_name}:\n"
        f"  curl -H 'Host: {server_name}' http://{host.ip}/\n"
        "Release another version on it:\n"
        "  test/testhost.py exec /opt/salt/bin/salt-call --local djangoapp.release "
        "version=v1.1.0\n"
        "Stop it: test/try down"
    )
    return 0


def down() -> int:
    status = testhost.main(["down"])
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", nargs="?", default="up", choices=["up", "down"])
    parser.add_argument(
        "--debian",
        choices=sorted(testhost.DISTRIBUTIONS),
        default=DEFAULT_DEBIAN,
        help=f"the host's Debian release (default {DEFAULT_DEBIAN})",
    )
    args = parser.parse_args()
    return up(args.debian) if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
