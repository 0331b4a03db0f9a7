#!/usr/bin/env python3
"""Release benchmark: djangoapp.release, djangoapp.rollback and state.apply against the
in-place update of the usual guides, on one test host, one app and one load.

As root, from the repository (see docs/benchmarks.md for the figures and the method)::

    .venv/bin/python bench/release.py [--runs 3] [--clients 24] [--slot 1]

It boots a Debian 12 test host (test/testhost.py) in its own slot (default 1, or
$DJANGOAPP_TEST_SLOT), converges it masterless with the demo pillar the way test/try
does, and measures each scenario ``--runs`` times while ``--clients`` clients request
the demo page through Nginx (test/loadgen.py). Results go to
bench/results/release-<time>.json and .md; ``--report FILE.json`` prints the tables
of an earlier run again. The exit status is 1 when a target it prints is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import importlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
WORK_ROOT = Path("/var/tmp")

APP = "demo"
PAGE = "/"
CONFIG_DIR = "/etc/djangoapp"
ENVRUN = "/usr/local/lib/djangoapp/envrun"
INPLACE_ROOT = "/srv/inplace"
INPLACE_DIR = f"{INPLACE_ROOT}/demo"
INPLACE_VENV = f"{INPLACE_ROOT}/venv"
INPLACE_GUNICORN_CONFIG = f"{INPLACE_ROOT}/gunicorn.conf.py"
INPLACE_SCRIPT = "/srv/formula/bench/inplace.sh"
# The hooks of the formula's gunicorn.conf.py (the rolling hand-over's)
FORMULA_HOOKS = (
    "on_starting",
    "on_reload",
    "when_ready",
    "post_fork",
    "post_worker_init",
    "worker_exit",
    "child_exit",
)
BASE_VERSION = "v1.0.0"
CODE_VERSION = "v1.0.1"
DEPS_VERSION = "v1.2.0"  # adds humanize and two migrations over v1.0.0
NEW_DEPENDENCY = "humanize"
MIGRATE_BACK_TO = ("notes", "0001")

LOAD_LEAD_IN = 1.0  # seconds of load before each measured command
SETTLE = 1.0  # only the new version answered for this long: the run is over
SETTLE_TIMEOUT = 30.0
COMMAND_TIMEOUT = 1800

SCENARIOS = {
    "release_code": "djangoapp.release, code only",
    "release_deps": "djangoapp.release, new dependency + 2 migrations",
    "release_code_master": "djangoapp.release, code only, through a master",
    "rollback": "djangoapp.rollback",
    "rollback_warm": "djangoapp.rollback right after a release",
    "inplace_hup_code": "in place + HUP, code only",
    "inplace_hup_deps": "in place + HUP, new dependency + 2 migrations",
    "inplace_restart_code": "in place + restart, code only",
    "inplace_restart_deps": "in place + restart, new dependency + 2 migrations",
    "apply_idempotent": "second state.apply (no changes)",
    "apply_idle": "second state.apply (no changes), no load",
    "release_idle": "djangoapp.release, code only, no load",
    "converge_fresh": "first state.apply of a fresh host",
    "salt_call": "salt-call --local test.true (fixed cost)",
}
SCALE_PREFIX = "scale_"  # runs["scale_<N>"]: the code-only release on N apps at once
# runs["together_<N>"]: the same, N apps by one djangoapp.release_apps
TOGETHER_PREFIX = "together_"
# each way of releasing N apps: its runs' prefix, its name in the table, in the targets
SCALE_WAYS = (
    (SCALE_PREFIX, "release", "one salt-call each"),
    (TOGETHER_PREFIX, "release_apps", "by one djangoapp.release_apps"),
)
# Ours against the in-place script with a HUP, measured in the same run.
RATIOS = {
    "release_code": "inplace_hup_code",
    "release_code_master": "inplace_hup_code",
    "release_deps": "inplace_hup_deps",
    "rollback": "inplace_hup_code",
    "rollback_warm": "inplace_hup_code",
}
ZERO_DOWNTIME = (
    "release_code",
    "release_code_master",
    "release_deps",
    "rollback",
    "rollback_warm",
)
# Issue 16's targets
CODE_RATIO_TARGET = 0.6
ENGINE_TARGET_S = 1.2
ROLLBACK_TARGET_S = 1.5
APPLY_TARGET_S = 2.5
SCALE_RATIO_TARGET = 2.5
MINION_ID = "djangoapp-bench"
VERSION_RE = re.compile(rb'<span class="version">([^<]*)<')


def app_counts(text: str) -> list[int]:
    """``1,2,4`` -> [1, 2, 4]: numbers of apps, 1 to 8, in increasing order."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: numbers like 1,2,4") from None
    if not counts or counts[0] < 1 or counts[-1] > 8:
        raise argparse.ArgumentTypeError(f"{text!r}: from 1 to 8 apps")
    return counts


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def page_version(body: bytes) -> str | None:
    match = VERSION_RE.search(body)
    return match.group(1).decode() if match else None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --- the demo repository, with one fresh code-only commit per measured run -----------


def git(args: list[str], cwd: Path) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_AUTHOR_NAME": "Bench",
        "GIT_AUTHOR_EMAIL": "bench@demo.invalid",
        "GIT_COMMITTER_NAME": "Bench",
        "GIT_COMMITTER_EMAIL": "bench@demo.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LC_ALL": "C",
    }
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def add_code_only_tags(bare: Path, series: list[str], runs: int) -> dict[str, list]:
    """Tags ``<series>-<n>``: a chain of commits from v1.0.0 whose trees alternate
    between v1.0.1's (odd n) and v1.0.0's (even n), each with its own VERSION, so
    that every measured code-only update moves to a commit never deployed before."""
    work = bare.parent / "bench-work"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    git(["clone", "--quiet", str(bare), str(work)], cwd=bare.parent)
    tags: dict[str, list] = {}
    for name in series:
        git(["checkout", "--quiet", "--detach", BASE_VERSION], cwd=work)
        tags[name] = []
        for number in range(1, runs + 1):
            tag = f"{name}-{number}"
            tree = CODE_VERSION if number % 2 else BASE_VERSION
            git(["checkout", tree, "--", "."], cwd=work)
            (work / "demosite" / "version.py").write_text(f'VERSION = "{tag}"\n')
            git(["commit", "--quiet", "--all", "-m", f"Code-only change {tag}"], work)
            git(["tag", tag], cwd=work)
            tags[name].append(tag)
    git(["push", "--quiet", "origin", "--tags"], cwd=work)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return tags


def snapshot_formula(dest: Path, source: str) -> dict:
    """Copy the formula that the host applies, so that edits made while the benchmark
    runs do not reach it: the working tree (tracked and untracked files, not ignored
    ones), the files of a commit (with bench/ always from the working tree), or a
    copy of a directory."""
    commit = git(["rev-parse", "HEAD"], cwd=REPO)
    dirty = bool(git(["status", "--porcelain", "--untracked-files=no"], cwd=REPO))
    if Path(source).is_dir():
        shutil.copytree(source, dest, symlinks=True)
        return {"from": str(Path(source).resolve()), "commit": None}
    dest.mkdir(parents=True)
    if source == "worktree":
        listing = git(
            ["ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO
        )
        names = [name for name in listing.split("\0") if name]
    else:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", source],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-xf", "-", "-C", str(dest)], input=archive, check=True)
        names = [str(path.relative_to(REPO)) for path in (REPO / "bench").iterdir()]
    for name in names:
        origin = REPO / name
        if not origin.is_symlink() and (not origin.exists() or origin.is_dir()):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        shutil.copy2(origin, target, follow_symlinks=False)
    return {
        "from": source,
        "commit": commit,
        "uncommitted_changes": dirty if source == "worktree" else False,
    }


# --- the benchmark -------------------------------------------------------------------


class Bench:
    def __init__(self, args, testhost, demorepo, loadgen, tryout):
        self.args = args
        self.testhost = testhost
        self.demorepo = demorepo
        self.loadgen = loadgen
        self.tryout = tryout
        self.work = WORK_ROOT / f"djangoapp-bench{testhost.SLOT.number}"
        self.runs: dict[str, list[dict]] = {name: [] for name in SCENARIOS}
        for count in args.scale:
            self.runs[f"{SCALE_PREFIX}{count}"] = []
            if count > 1:
                self.runs[f"{TOGETHER_PREFIX}{count}"] = []
        self.host = None
        self.master = None
        self.cfg: dict = {}
        self.server_name = ""
        self.proxy = testhost.PROXY_URL
        self.started = datetime.datetime.now(datetime.UTC)

    # --- host -------------------------------------------------------------------

    def prepare(self) -> None:
        subprocess.run(["rm", "-rf", str(self.work)], check=True)
        self.source = snapshot_formula(self.work / "formula", self.args.source)
        bare = self.work / "git" / "demo.git"
        self.demorepo.build_repo(bare)
        series = ["bench-ours", "bench-hup", "bench-restart", "bench-master"]
        series.append("bench-idle")
        self.tags = add_code_only_tags(bare, series, self.args.runs)
        if self.args.scale:
            # one fresh commit per measured run, released on every app of the run
            ways = sum(2 if count > 1 else 1 for count in self.args.scale)
            self.tags.update(
                add_code_only_tags(bare, ["bench-scale"], self.args.runs * ways)
            )
        demo = self.tryout.write_pillar(self.work / "pillar")
        self.demo_app = demo["djangoapp"]["apps"][APP]
        # The scenarios go back to the first release by its id: kept, however many
        # releases follow.
        self.demo_app.update(keep_releases=50, preload_app=self.args.preload)
        bench_app = {k: self.demo_app[k] for k in ("keep_releases", "preload_app")}
        (self.work / "pillar" / "bench.sls").write_text(
            json.dumps({"djangoapp": {"apps": {APP: bench_app}}})
        )
        self.pillar_files = ["demo", "try", "bench"]
        top = self.work / "pillar" / "top.sls"
        top.write_text(json.dumps({"base": {"*": self.pillar_files}}))
        self.server_name = self.demo_app["server_names"][0]

    def boot(self) -> float:
        testhost = self.testhost
        self.host = testhost.TestHost(
            hostname="djangoapp-bench",
            binds_ro={
                self.work / "git": self.tryout.GIT_MOUNT,
                self.work / "pillar": self.tryout.PILLAR_MOUNT,
                self.work / "formula": self.tryout.FORMULA_MOUNT,
            },
        )
        started = time.monotonic()
        try:
            self.host.start()
            if not self.args.strict_loader:
                self.exec(["rm", "-f", self.testhost.MINION_CONFIG_FILE])
        except BaseException:
            self.host.stop()
            raise
        return time.monotonic() - started

    def teardown(self) -> None:
        if self.host is not None:
            self.host.stop()  # the master too: the host adopted it
            self.host = None
            self.master = None

    def start_master(self) -> None:
        """A salt-master on this machine (the test host's gateway address) serving
        the same formula and pillar, and the host's salt-minion connected to it."""
        config_dir = self.work / "master"
        ports = self.testhost.free_ports(self.testhost.MASTER_IP, 2)
        config = {
            "id": "djangoapp-bench-master",
            "root_dir": str(config_dir / "root"),
            "interface": self.testhost.MASTER_IP,
            "ret_port": ports[0],
            "publish_port": ports[1],
            "auto_accept": True,
            "user": "root",
            "file_roots": {"base": [str(self.work / "formula" / "salt")]},
            "pillar_roots": {"base": [str(self.work / "pillar")]},
            "log_file": str(config_dir / "master.log"),
            "log_level_logfile": "info",
        }
        process = self.testhost.spawn_salt_master(config_dir, config)
        self.host.adopt(process.pid)
        self.master = config_dir
        self.host.start_minion(ports[0], ports[1], minion_id=MINION_ID)
        deadline = time.monotonic() + 120
        while self.salt_through_master("test.ping", timeout=10)[1] is not True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the minion did not answer its master: {config}")
            time.sleep(2)
        rc, synced = self.salt_through_master("saltutil.sync_all", timeout=300)
        if rc != 0:
            raise RuntimeError(f"saltutil.sync_all through the master: {synced}")

    def salt_through_master(
        self, *args: str, timeout: float = COMMAND_TIMEOUT
    ) -> tuple[int, object]:
        """``salt <minion> ARGS`` on this machine, as an operator runs it."""
        binary = Path(sys.executable).with_name("salt")
        result = subprocess.run(
            [str(binary), "-c", str(self.master), "--out=json", "--static"]
            + [f"--timeout={int(timeout)}", MINION_ID, *args],
            capture_output=True,
            text=True,
            timeout=timeout + 30,
        )
        try:
            data = json.loads(result.stdout)[MINION_ID]
        except (ValueError, KeyError, TypeError):
            data = {"error": (result.stdout + result.stderr)[-3000:]}
        return result.returncode, data

    def exec(self, argv, **kwargs):
        kwargs.setdefault("timeout", COMMAND_TIMEOUT)
        return self.host.exec(argv, **kwargs)

    def salt(self, *args: str) -> tuple[int, object]:
        result = self.tryout.salt_call(
            self.host, "--out=json", *args, timeout=COMMAND_TIMEOUT
        )
        try:
            data = json.loads(result.stdout)["local"]
        except (ValueError, KeyError, TypeError):
            data = {"error": (result.stdout + result.stderr)[-3000:]}
        return result.rc, data

    # --- measuring ----------------------------------------------------------------

    def measure(
        self,
        scenario: str,
        label: str,
        action: Callable[[], dict],
        target: str | None = None,
        load: bool = True,
    ) -> dict:
        """Run ``action`` under load; the load goes on until only ``target`` (the
        version the page should show) has answered for SETTLE seconds."""
        log(f"{scenario} #{len(self.runs[scenario]) + 1}: {label}")
        generator = None
        if load:
            generator = self.loadgen.Load(
                self.host.ip,
                80,
                PAGE,
                host_header=self.server_name,
                clients=self.args.clients,
                classify=page_version,
                rate=self.args.rate,
            )
            generator.start()
            time.sleep(LOAD_LEAD_IN)
        started, busy = time.monotonic(), cpu_busy_seconds()
        try:
            detail = action()
        except Exception as error:  # recorded, and the run goes on
            detail = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        finished = time.monotonic()
        record = {
            "label": label,
            "wall_s": round(finished - started, 3),
            # every CPU of this machine (the host's, the load's and ours), busy
            "cpu_s": round(cpu_busy_seconds() - busy, 2),
            # this machine's 1-minute load average when the command ended: other
            # jobs on the machine move the figures, and differently from run to run
            "machine_load": load_average(),
            **detail,
        }
        if generator is not None:
            self.settle(generator, target, finished)
            result = generator.stop()
            record["load"] = result.as_dict()
            gap_at = generator.started + result.longest_gap_at
            record["gap_at_s"] = round(gap_at - started, 3)
            if target:
                record.update(switch_times(generator.labels(), target, started))
        self.runs[scenario].append(record)
        log(f"  {summary_line(record)}")
        return record

    def settle(self, generator, target: str | None, finished: float) -> None:
        deadline = finished + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            now = time.monotonic()
            labels = generator.labels()
            others = [last for name, (_, last, _) in labels.items() if name != target]
            if (
                now - finished >= SETTLE
                and (target is None or target in labels)
                and now - max(others, default=0.0) >= SETTLE
            ):
                return
            time.sleep(0.1)

    def wait_for_version(self, version: str, timeout: float = 60) -> None:
        """Until the page shows ``version`` in 20 answers in a row (no load)."""
        deadline = time.monotonic() + timeout
        streak = 0
        seen = None
        while time.monotonic() < deadline and streak < 20:
            seen = self.fetch_version()
            streak = streak + 1 if seen == version else 0
            time.sleep(0.05)
        if streak < 20:
            raise RuntimeError(f"the page shows {seen!r}, not {version!r}")

    def fetch_version(self) -> str | None:
        connection = http.client.HTTPConnection(self.host.ip, 80, timeout=10)
        try:
            connection.request("GET", PAGE, headers={"Host": self.server_name})
            response = connection.getresponse()
            body = response.read()
            return page_version(body) if response.status == 200 else None
        except OSError:
            return None
        finally:
            connection.close()

    # --- our commands ---------------------------------------------------------------

    def release(self, version: str, salt: Callable | None = None) -> dict:
        """``djangoapp.release`` by ``salt-call`` in the host, or by ``salt``
        (``salt_through_master``)."""
        salt = salt or self.salt
        rc, data = salt("djangoapp.release", f"version={version}", f"app={APP}")
        return engine_detail(rc, data)

    def release_on_apps(self, version: str, apps: list[str]) -> dict:
        """``djangoapp.release`` of ``version`` on each of ``apps`` at once, one
        salt-call per app (each app has its own lock); done when the last is."""
        details: dict[str, dict] = {}

        def one(app: str) -> None:
            rc, data = self.salt(
                "djangoapp.release", f"version={version}", f"app={app}"
            )
            details[app] = engine_detail(rc, data)

        threads = [threading.Thread(target=one, args=(app,)) for app in apps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return apps_detail(details, apps)

    def release_apps(self, version: str, apps: list[str]) -> dict:
        """``djangoapp.release_apps`` of ``version`` on ``apps``: one salt-call."""
        rc, data = self.salt(
            "djangoapp.release_apps", f"apps={','.join(apps)}", f"version={version}"
        )
        answers = data.get("apps") if isinstance(data, dict) else None
        if not isinstance(answers, dict):
            return {"ok": False, "apps": len(apps), "error": str(data)[-3000:]}
        details = {app: engine_detail(rc, answer) for app, answer in answers.items()}
        return apps_detail(details, apps)

    def rollback(self, to: str | None = None) -> dict:
        args = ["djangoapp.rollback", f"app={APP}"] + ([f"to={to}"] if to else [])
        rc, data = self.salt(*args)
        return engine_detail(rc, data)

    def converge(self, sync: bool = False) -> dict:
        result = self.tryout.apply_states(self.host, "--out=json", sync=sync)
        try:
            states = json.loads(result.stdout)["local"]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": (result.stdout + result.stderr)[:3000]}
        return state_summary(result.rc, states, self.args.slowest)

    def current_id(self) -> str:
        base = self.cfg["base_dir"]
        return self.exec(["readlink", f"{base}/current"]).stdout.strip().split("/")[-1]

    # --- the in-place procedure -------------------------------------------------------

    def inplace_env(self) -> dict:
        return {
            "INPLACE_DIR": INPLACE_DIR,
            "INPLACE_VENV": INPLACE_VENV,
            "INPLACE_PROGRAM": self.cfg["service"],
            "INPLACE_ENV_FILE": self.cfg["env_file"],
            "INPLACE_ENVRUN": ENVRUN,
            "http_proxy": self.proxy,
            "https_proxy": self.proxy,
        }

    def inplace(self, tag: str, mode: str) -> dict:
        result = self.exec(
            ["sh", INPLACE_SCRIPT, tag, mode], env=self.inplace_env(), check=False
        )
        steps = {}
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "STEP":
                steps[parts[1]] = round(float(parts[2]), 3)
        detail = {"ok": result.rc == 0, "steps": steps}
        if result.rc != 0:
            detail["error"] = (result.stdout + result.stderr)[-3000:]
        return detail

    def inplace_manage(self, *args: str) -> None:
        """manage.py of the in-place checkout, with the app's environment."""
        self.exec(
            ["sh", "-ec", 'cd "$1"; shift; exec "$@"', "sh", INPLACE_DIR]
            + [ENVRUN, self.cfg["env_file"], f"{INPLACE_VENV}/bin/python"]
            + ["manage.py", *args]
        )

    def serving_from(self, expected: str) -> None:
        """Check that the program's Gunicorn master runs from ``expected``."""
        pid = self.exec(["supervisorctl", "pid", self.cfg["service"]]).stdout.strip()
        command = self.exec(["ps", "-o", "args=", "-p", pid]).stdout
        if expected not in command:
            raise RuntimeError(f"the Gunicorn master runs {command!r}, not {expected}")

    def setup_inplace(self) -> None:
        """A checkout and a virtualenv as the guides set them up, and a Gunicorn
        config for it (same program, socket, Gunicorn settings, database and Nginx
        site as djangoapp's releases); the program is switched to it by
        ``serve_inplace``."""
        log("in place: clone, virtualenv, pip install")
        gunicorn = self.exec(
            [
                f"{self.cfg['base_dir']}/current/venv/bin/python",
                "-c",
                "import gunicorn; print(gunicorn.__version__)",
            ]
        ).stdout.strip()
        script = f"""
            rm -rf {INPLACE_ROOT}
            mkdir -p {INPLACE_ROOT}
            git clone --quiet {self.cfg["repo"]} {INPLACE_DIR}
            cd {INPLACE_DIR}
            git checkout --quiet {BASE_VERSION}
            python3 -m venv {INPLACE_VENV}
            {INPLACE_VENV}/bin/pip install --quiet --disable-pip-version-check \\
                -r requirements.txt gunicorn=={gunicorn}
        """
        self.exec(["sh", "-ec", script], env=self.inplace_env())
        self.inplace_manage("migrate", "--noinput")
        self.inplace_manage("collectstatic", "--noinput")
        # The formula's Gunicorn settings, with the checkout as working directory and
        # without the hooks that tie new workers to the formula's releases.
        self.host.put_file(
            INPLACE_GUNICORN_CONFIG,
            "# The app's Gunicorn settings, serving the in-place checkout.\n"
            f"with open({self.cfg['gunicorn_config']!r}) as managed:\n"
            "    exec(managed.read())\n"
            f"chdir = {INPLACE_DIR!r}\n"
            # as the guides run it: a HUP loads the new code
            "preload_app = False\n"
            f"for hook in {FORMULA_HOOKS!r}:\n"
            "    globals().pop(hook, None)\n",
        )
        self.program_original = self.host.get_file(self.program_file())

    def serve_inplace(self, version: str) -> None:
        """Point the app's Supervisor program at the in-place checkout, which has
        ``version`` checked out (a restart, not measured)."""
        text = self.program_original
        base = self.cfg["base_dir"]
        text = re.sub(
            r"(?m)^command=.*$",
            f"command={INPLACE_VENV}/bin/python -m gunicorn "
            f"--config {INPLACE_GUNICORN_CONFIG} {self.cfg['wsgi']}",
            text,
        )
        text = re.sub(r"(?m)^directory=.*$", f"directory={INPLACE_DIR}", text)
        text = text.replace(f'PWD="{base}"', f'PWD="{INPLACE_DIR}"')
        self.switch_program(text, INPLACE_VENV, version)

    def serve_releases(self, version: str) -> None:
        """The app's Supervisor program as the formula wrote it, serving the live
        release, which is ``version`` (a restart)."""
        venv = f"{self.cfg['base_dir']}/current/venv"
        self.switch_program(self.program_original, venv, version)

    def switch_program(self, text: str, venv: str, version: str) -> None:
        self.host.put_file(self.program_file(), text)
        self.exec(["supervisorctl", "update", self.cfg["service"]])
        self.wait_for_version(version)
        self.serving_from(venv)

    def program_file(self) -> str:
        return f"/etc/supervisor/conf.d/{self.cfg['service']}.conf"

    def inplace_back_to_base(self, migrate_back: bool) -> None:
        """Undo an in-place update to v1.2.0: schema, checkout, package, pip's cache."""
        if migrate_back:
            self.inplace_manage("migrate", *MIGRATE_BACK_TO, "--noinput")
        self.exec(["git", "-C", INPLACE_DIR, "checkout", "--quiet", BASE_VERSION])
        self.exec(
            [f"{INPLACE_VENV}/bin/pip", "uninstall", "--quiet", "-y", NEW_DEPENDENCY],
            check=False,
        )
        # Every cached HTTP response that mentions the package (its index page and
        # its wheel): the next install downloads it, as a new dependency would be.
        self.exec(
            [
                "sh",
                "-c",
                f"grep -rlZ {NEW_DEPENDENCY} /root/.cache/pip 2>/dev/null"
                " | xargs -0r rm -f",
            ]
        )
        self.exec(["supervisorctl", "signal", "HUP", self.cfg["service"]])
        self.wait_for_version(BASE_VERSION)

    # --- the whole run -----------------------------------------------------------

    def run(self) -> dict:
        self.prepare()
        boot_s = self.boot()
        self.measure(
            "converge_fresh",
            "fresh host",
            lambda: dict(self.converge(sync=True), boot_s=round(boot_s, 1)),
            load=False,
        )
        first = self.runs["converge_fresh"][0]
        if not first.get("ok"):
            raise RuntimeError(f"the first state.apply failed: {first.get('error')}")
        self.cfg = json.loads(self.host.get_file(f"{CONFIG_DIR}/{APP}/app.json"))
        self.wait_for_version(BASE_VERSION)
        if not self.args.only_scale:
            self.run_main()
        if self.args.scale:
            self.run_scale()
        if not self.args.only_scale:
            for _ in range(1, self.args.fresh_runs):
                self.teardown()
                boot_s = self.boot()
                self.measure(
                    "converge_fresh",
                    "fresh host",
                    lambda boot_s=boot_s: dict(
                        self.converge(), boot_s=round(boot_s, 1)
                    ),
                    load=False,
                )
        return self.results()

    def run_scale(self) -> None:
        """The same code-only release on N apps of one host at once, for each N of
        --scale, under the load on the first app. The other apps are copies of the
        demo app (names demo2, demo3...), added to the pillar and converged first."""
        counts = self.args.scale
        names = [APP] + [f"{APP}{number}" for number in range(2, max(counts) + 1)]
        if len(names) > 1:
            log(f"scale: adding apps {', '.join(names[1:])} and converging")
            extra = {
                name: dict(self.demo_app, server_names=[f"{name}.test"])
                for name in names[1:]
            }
            pillar_dir = self.work / "pillar"
            top = pillar_dir / "top.sls"
            demo_top = top.read_text()
            (pillar_dir / "scale.sls").write_text(
                json.dumps({"djangoapp": {"apps": extra}}, indent=1)
            )
            top.write_text(json.dumps({"base": {"*": [*self.pillar_files, "scale"]}}))
            try:
                converged = self.converge()
            finally:
                # the fresh hosts that follow get the demo pillar alone
                top.write_text(demo_top)
            if not converged.get("ok"):
                raise RuntimeError(f"converging {len(names)} apps: {converged}")
        tags = iter(self.tags["bench-scale"])
        for count in counts:
            for _ in range(self.args.runs):
                tag = next(tags)
                self.measure(
                    f"{SCALE_PREFIX}{count}",
                    f"{tag} on {count} app{'s' if count > 1 else ''}",
                    lambda tag=tag, count=count: self.release_on_apps(
                        tag, names[:count]
                    ),
                    tag,
                )
                if count == 1:
                    continue
                # the same apps by one command, taking turns with the above
                tag = next(tags)
                self.measure(
                    f"{TOGETHER_PREFIX}{count}",
                    f"{tag} on {count} apps by djangoapp.release_apps",
                    lambda tag=tag, count=count: self.release_apps(tag, names[:count]),
                    tag,
                )

    def run_main(self) -> None:
        runs = self.args.runs

        for _ in range(runs):
            self.measure(
                "salt_call",
                "test.true",
                lambda: salt_detail(self.salt("test.true")),
                load=False,
            )
        for _ in range(runs):
            self.measure("apply_idempotent", "state.apply", self.converge, BASE_VERSION)
        for _ in range(runs):
            self.measure(
                "apply_idle", "state.apply", self.converge, BASE_VERSION, load=False
            )
        base_id = self.current_id()

        # Code-only updates, ours and in place + HUP taking turns, so that both
        # meet the same moments of the machine: the ratio compares them.
        self.setup_inplace()
        ours_from, inplace_from = BASE_VERSION, BASE_VERSION
        for ours, inplace in zip(
            self.tags["bench-ours"], self.tags["bench-hup"], strict=True
        ):
            self.measure(
                "release_code",
                f"{ours_from} -> {ours}",
                lambda tag=ours: self.release(tag),
                ours,
            )
            self.serve_inplace(inplace_from)
            self.measure(
                "inplace_hup_code",
                f"{inplace_from} -> {inplace}",
                lambda tag=inplace: self.inplace(tag, "hup"),
                inplace,
            )
            self.serve_releases(ours)
            ours_from, inplace_from = ours, inplace
        # Back along the chain: each rollback skips the release it left.
        chain = [BASE_VERSION, *self.tags["bench-ours"]]
        for number in range(runs):
            source, target = chain[-1 - number], chain[-2 - number]
            self.measure("rollback", f"{source} -> {target}", self.rollback, target)
        if self.current_id() != base_id:
            self.rollback(to=base_id)
            self.wait_for_version(BASE_VERSION)
        # A rollback right after the release it undoes (with preload_app, that
        # release's standby left one of the release it replaced).
        for tag in self.tags["bench-ours"][:runs]:
            self.release(tag)
            self.wait_for_version(tag)
            self.measure(
                "rollback_warm",
                f"{tag} -> {BASE_VERSION}",
                lambda: self.rollback(base_id),
                BASE_VERSION,
            )
        # What one release costs in CPU time, with nothing else running: the
        # least that N releases at once need of the machine's CPUs.
        previous = BASE_VERSION
        for tag in self.tags["bench-idle"]:
            self.measure(
                "release_idle",
                f"{previous} -> {tag}",
                lambda tag=tag: self.release(tag),
                tag,
                load=False,
            )
            previous = tag
        self.rollback(to=base_id)
        self.wait_for_version(BASE_VERSION)

        for _ in range(runs):
            self.measure(
                "release_deps",
                f"{BASE_VERSION} -> {DEPS_VERSION}",
                lambda: self.release(DEPS_VERSION),
                DEPS_VERSION,
            )
            self.release_back_to_base(base_id)

        self.exec(["git", "-C", INPLACE_DIR, "checkout", "--quiet", BASE_VERSION])
        self.serve_inplace(BASE_VERSION)
        for mode in ("hup", "restart"):
            if mode == "restart":
                previous = BASE_VERSION
                for tag in self.tags["bench-restart"]:
                    self.measure(
                        "inplace_restart_code",
                        f"{previous} -> {tag}",
                        lambda tag=tag: self.inplace(tag, "restart"),
                        tag,
                    )
                    previous = tag
                self.exec(
                    ["git", "-C", INPLACE_DIR, "checkout", "--quiet", BASE_VERSION]
                )
                self.exec(["supervisorctl", "signal", "HUP", self.cfg["service"]])
                self.wait_for_version(BASE_VERSION)
            for _ in range(runs):
                record = self.measure(
                    f"inplace_{mode}_deps",
                    f"{BASE_VERSION} -> {DEPS_VERSION}",
                    lambda mode=mode: self.inplace(DEPS_VERSION, mode),
                    DEPS_VERSION,
                )
                migrated = "migrate" in record.get("steps", {})
                self.inplace_back_to_base(migrate_back=migrated)
        self.serve_releases(BASE_VERSION)

        if self.args.master:
            log("master: starting a salt-master here and connecting the minion")
            self.start_master()
            previous = BASE_VERSION
            for tag in self.tags["bench-master"]:
                self.measure(
                    "release_code_master",
                    f"{previous} -> {tag}",
                    lambda tag=tag: self.release(tag, self.salt_through_master),
                    tag,
                )
                previous = tag
            detail = self.rollback(to=base_id)
            if not detail["ok"]:
                raise RuntimeError(f"rollback to {base_id} failed: {detail}")
            self.wait_for_version(BASE_VERSION)

    def results(self, incomplete: str | None = None) -> dict:
        started = self.started
        return {
            "incomplete": incomplete,
            "started": started.isoformat(timespec="seconds"),
            "seconds": round(
                (datetime.datetime.now(datetime.UTC) - started).total_seconds()
            ),
            "command": " ".join(sys.argv),
            "source": getattr(self, "source", None),
            "settings": {
                "runs": self.args.runs,
                "scale": self.args.scale,
                "only_scale": self.args.only_scale,
                "fresh_runs": self.args.fresh_runs,
                "clients": self.args.clients,
                "rate": self.args.rate,
                "master": self.args.master,
                "strict_loader": self.args.strict_loader,
                "slot": self.testhost.SLOT.number,
                "load_lead_in_s": LOAD_LEAD_IN,
                "settle_s": SETTLE,
            },
            "machine": machine_info(),
            "load_average_start": getattr(self, "load_average_start", None),
            "host": self.host_info(),
            "runs": self.runs,
        }

    def release_back_to_base(self, base_id: str) -> None:
        """Undo a release of v1.2.0: schema back, rollback, release dir, the
        virtualenv of its requirements and the new package removed from uv's
        cache, so that the next one does it all again."""
        new_id = self.current_id()
        if new_id != base_id:
            manage = f"/usr/local/bin/{APP}-manage"
            self.exec([manage, "migrate", *MIGRATE_BACK_TO, "--noinput"])
            detail = self.rollback(to=base_id)
            if not detail["ok"]:
                raise RuntimeError(f"rollback to {base_id} failed: {detail}")
            releases = f"{self.cfg['base_dir']}/releases"
            venvs = {
                rid: self.exec(["readlink", "-f", f"{releases}/{rid}/venv"]).stdout
                for rid in (new_id, base_id)
            }
            self.exec(["rm", "-rf", f"{releases}/{new_id}"])
            if venvs[new_id] != venvs[base_id]:
                self.exec(["rm", "-rf", venvs[new_id].strip()])
        self.exec(
            [
                self.cfg["uv"],
                "cache",
                "clean",
                "--quiet",
                "--cache-dir",
                self.cfg["uv_cache"],
                NEW_DEPENDENCY,
            ]
        )
        self.wait_for_version(BASE_VERSION)

    def host_info(self) -> dict:
        if self.host is None:
            return {}
        info = {}
        with contextlib.suppress(Exception):
            info["nproc"] = int(self.exec(["nproc"]).stdout)
            python = f"{self.cfg['base_dir']}/current/venv/bin/python"
            info["gunicorn_processes"] = len(
                self.exec(["pgrep", "-f", "gunicorn"]).stdout.split()
            )
            info["versions"] = self.exec(
                [
                    python,
                    "-c",
                    "import django, gunicorn; "
                    "print(django.__version__, gunicorn.__version__)",
                ]
            ).stdout.split()
        return info


def switch_times(labels: dict, target: str, started: float) -> dict:
    """When the new version first answered and the old one last answered, in
    seconds after the command started."""
    first = labels.get(target, (None, None, 0))[0]
    old_last = max(
        (last for name, (_, last, _) in labels.items() if name != target),
        default=None,
    )
    return {
        "new_first_s": round(first - started, 3) if first else None,
        "old_last_s": round(max(old_last - started, 0.0), 3) if old_last else None,
    }


def engine_detail(rc: int, data) -> dict:
    if not isinstance(data, dict):
        return {"ok": False, "error": str(data)[-3000:]}
    reload = next((s for s in data.get("steps") or [] if s["name"] == "reload"), {})
    detail = {
        "ok": rc == 0 and data.get("result") is True,
        "engine_s": data.get("seconds"),
        "id": data.get("id"),
        "reload_method": reload.get("method"),
        "reload_standby": reload.get("standby"),
        "steps": {step["name"]: step["seconds"] for step in data.get("steps") or []},
        "step_timings": {
            step["name"]: step["timings"]
            for step in data.get("steps") or []
            if step.get("timings")
        },
        "notes": data.get("notes"),
    }
    if not detail["ok"]:
        detail["error"] = data.get("error") or data
        detail["failed_step"] = data.get("failed_step")
    return detail


def apps_detail(details: dict[str, dict], apps: list[str]) -> dict:
    """One record of a release on several apps, from each app's detail."""
    failed = {app: d.get("error") for app, d in details.items() if not d["ok"]}
    detail = {
        "ok": not failed and len(details) == len(apps),
        "apps": len(apps),
        "engine_s": details[APP].get("engine_s"),
        "engines_s": {app: d.get("engine_s") for app, d in details.items()},
        "steps": details[APP].get("steps"),
        "step_timings": details[APP].get("step_timings"),
        "reload_method": details[APP].get("reload_method"),
    }
    if failed:
        detail["error"] = failed
    return detail


def salt_detail(result: tuple[int, object]) -> dict:
    rc, data = result
    return {"ok": rc == 0 and data is True}


def state_summary(rc: int, states, slowest: int) -> dict:
    if not isinstance(states, dict):
        return {"ok": False, "error": str(states)[:3000]}
    rows = []
    for key, state in states.items():
        parts = key.split("_|-")
        rows.append(
            {
                "id": state.get("__id__") or parts[1],
                "function": f"{parts[0]}.{parts[-1]}" if len(parts) >= 4 else key,
                "ms": round(float(state.get("duration") or 0), 1),
                "changed": bool(state.get("changes")),
                "result": state.get("result"),
            }
        )
    rows.sort(key=lambda row: row["ms"], reverse=True)
    return {
        "ok": rc == 0 and all(row["result"] is True for row in rows),
        "states": len(rows),
        "changed": [row["id"] for row in rows if row["changed"]],
        "failed": [row["id"] for row in rows if row["result"] is not True],
        "states_ms": round(sum(row["ms"] for row in rows)),
        "slowest": rows[:slowest],
    }


def summary_line(record: dict) -> str:
    parts = [f"{record['wall_s']:.2f} s", "ok" if record.get("ok") else "FAILED"]
    if record.get("engine_s") is not None:
        parts.append(f"engine {record['engine_s']:.2f} s")
    if "load" in record:
        load = record["load"]
        parts.append(
            f"{load['sent']} req, {load['failed']} failed, "
            f"gap {load['longest_gap_s']:.3f} s at {record['gap_at_s']:.2f} s"
        )
    if record.get("old_last_s") is not None:
        parts.append(f"old version last {record['old_last_s']:.2f} s")
    if record.get("changed"):
        parts.append(f"{len(record['changed'])} changed")
    if record.get("error"):
        parts.append(str(record["error"])[:300])
    return ", ".join(parts)


def cpu_busy_seconds() -> float:
    """The seconds this machine's CPUs have been busy since it started, all of
    them together (``/proc/stat``: every state but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_until_quiet(limit: float, timeout: float) -> float:
    """Wait (at most ``timeout`` s) for the 1-minute load average to drop below
    ``limit``: other work on this machine would be measured too."""
    deadline = time.monotonic() + timeout
    while load_average() >= limit and time.monotonic() < deadline:
        log(f"load average {load_average():.2f} >= {limit}: waiting for quiet")
        time.sleep(15)
    return load_average()


def machine_info() -> dict:
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
    cpu = ""
    with contextlib.suppress(OSError, AttributeError):
        cpu = re.search(
            r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()
        ).group(1)
    os_release = Path("/etc/os-release").read_text()
    pretty = re.search(r'PRETTY_NAME="?([^"\n]*)', os_release)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(total_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": pretty.group(1) if pretty else "",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": load_average(),
    }


# --- report ----------------------------------------------------------------------


def aggregate(records: list[dict]) -> dict:
    walls = [r["wall_s"] for r in records]
    loads = [r["load"] for r in records if "load" in r]
    row = {
        "runs": len(records),
        "ok": all(r.get("ok") for r in records),
        "wall_median": median(walls),
        "wall_min": min(walls) if walls else None,
        "wall_max": max(walls) if walls else None,
        "engine_median": median(r.get("engine_s") for r in records),
        "old_last_median": median(r.get("old_last_s") for r in records),
        "machine_load_median": median(r.get("machine_load") for r in records),
        "cpu_median": median(r.get("cpu_s") for r in records),
    }
    if loads:
        row.update(
            requests=sum(load["sent"] for load in loads),
            failed=sum(load["failed"] for load in loads),
            gap_max=max(load["longest_gap_s"] for load in loads),
            p50_median=median(load["p50_ms"] for load in loads),
            p99_max=max(load["p99_ms"] for load in loads),
        )
    return row


def fmt(value, digits=2, unit="") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def report(results: dict) -> tuple[str, list[tuple[str, bool, str]]]:
    runs = results["runs"]
    rows = {name: aggregate(records) for name, records in runs.items() if records}
    lines = [
        "| scenario | runs | wall s: median (min–max) | engine s | requests "
        "| failed | longest gap s | p50 ms | p99 ms | old version last seen s "
        "| ours / in place | machine load | machine CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- |",
    ]
    for name, title in SCENARIOS.items():
        row = rows.get(name)
        if not row:
            continue
        ratio = "–"
        other = rows.get(RATIOS.get(name, ""))
        if other and other["wall_median"]:
            ratio = f"{row['wall_median'] / other['wall_median']:.2f}"
        mark = "" if row["ok"] else " (a run FAILED)"
        lines.append(
            f"| {title}{mark} | {row['runs']} "
            f"| {fmt(row['wall_median'])} ({fmt(row['wall_min'])}–"
            f"{fmt(row['wall_max'])}) | {fmt(row['engine_median'])} "
            f"| {fmt(row.get('requests'))} | {fmt(row.get('failed'))} "
            f"| {fmt(row.get('gap_max'), 3)} | {fmt(row.get('p50_median'), 1)} "
            f"| {fmt(row.get('p99_max'), 1)} | {fmt(row['old_last_median'])} "
            f"| {ratio} | {fmt(row['machine_load_median'])} "
            f"| {fmt(row['cpu_median'])} |"
        )
    text = "\n".join(lines) + "\n"
    text += "\n" + step_table(runs)
    text += "\n" + scale_table(runs)
    text += "\n" + slowest_states(runs)

    checks = []
    for name in ZERO_DOWNTIME:
        row = rows.get(name)
        if row:
            holds = row["ok"] and row.get("failed") == 0 and row["gap_max"] < 1.0
            checks.append(
                (
                    f"{SCENARIOS[name]}: 0 failed, longest gap < 1 s",
                    holds,
                    f"{row.get('failed')} failed, gap {row['gap_max']:.3f} s",
                )
            )
    checks += speed_checks(rows, runs)
    text += "\n| target | holds | measured |\n| --- | --- | --- |\n"
    text += "".join(
        f"| {what} | {'yes' if holds else '**no**'} | {measured} |\n"
        for what, holds, measured in checks
    )
    return text, checks


def speed_checks(rows: dict, runs: dict) -> list[tuple[str, bool, str]]:
    """Issue 16's targets, each against figures of this run."""
    checks = []
    code, inplace = rows.get("release_code"), rows.get("inplace_hup_code")
    if code and inplace:
        ratio = code["wall_median"] / inplace["wall_median"]
        checks.append(
            (
                f"code-only release <= {CODE_RATIO_TARGET} x in place + HUP",
                ratio <= CODE_RATIO_TARGET,
                f"{code['wall_median']:.2f} s / {inplace['wall_median']:.2f} s = "
                f"{ratio:.2f}",
            )
        )
    if code and code["engine_median"] is not None:
        checks.append(
            (
                f"code-only release: the engine's own time <= {ENGINE_TARGET_S} s",
                code["engine_median"] <= ENGINE_TARGET_S,
                f"median {code['engine_median']:.2f} s",
            )
        )
    deps, inplace_deps = rows.get("release_deps"), rows.get("inplace_hup_deps")
    if deps and inplace_deps:
        ratio = deps["wall_median"] / inplace_deps["wall_median"]
        checks.append(
            (
                "release with a new dependency and migrations <= 1.0 x in place",
                ratio <= 1.0,
                f"{deps['wall_median']:.2f} s / {inplace_deps['wall_median']:.2f} s "
                f"= {ratio:.2f}",
            )
        )
    for name, what in (
        ("rollback", "rollback"),
        ("rollback_warm", "rollback right after a release"),
    ):
        back = rows.get(name)
        if back:
            checks.append(
                (
                    f"{what} <= {ROLLBACK_TARGET_S} s wall",
                    back["wall_median"] <= ROLLBACK_TARGET_S,
                    f"median {back['wall_median']:.2f} s, max {back['wall_max']:.2f} s "
                    f"(engine median {fmt(back['engine_median'])} s)",
                )
            )
    for name, how in (("apply_idempotent", "under the load"), ("apply_idle", "idle")):
        idem_row, idem = rows.get(name), runs.get(name) or []
        if not idem_row:
            continue
        changed = sorted({state for r in idem for state in r.get("changed") or []})
        checks.append(
            (
                f"second state.apply, {how}: zero changes",
                idem_row["ok"] and not changed,
                f"changed: {', '.join(changed) or 'none'}",
            )
        )
        checks.append(
            (
                f"second state.apply, {how}, <= {APPLY_TARGET_S} s",
                idem_row["wall_median"] <= APPLY_TARGET_S,
                f"median {idem_row['wall_median']:.2f} s",
            )
        )
    one = rows.get(f"{SCALE_PREFIX}1")
    for prefix, _name, how in SCALE_WAYS:
        four = rows.get(f"{prefix}4")
        if one and four:
            checks.append(scale_check(one, four, how, runs.get("release_idle")))
    return checks


def scale_check(one: dict, four: dict, how: str, idle: list | None) -> tuple:
    """Issue 16's target for 4 apps at once, against one app by ``salt-call``."""
    ratio = four["wall_median"] / one["wall_median"]
    measured = f"{four['wall_median']:.2f} s / {one['wall_median']:.2f} s = {ratio:.2f}"
    cpu = median(r.get("cpu_s") for r in idle or [])
    if cpu is not None:
        nproc = os.cpu_count() or 1
        floor = 4 * cpu / nproc / one["wall_median"]
        measured += (
            f"; one release takes {cpu:.2f} s of CPU time with no load, so 4 "
            f"on {nproc} CPUs take at least {4 * cpu / nproc:.2f} s, "
            f"{floor:.2f} x one under the load"
        )
    return (
        f"4 apps released at once, {how}, <= {SCALE_RATIO_TARGET} x one",
        four["ok"] and ratio <= SCALE_RATIO_TARGET,
        measured,
    )


def scale_table(runs: dict) -> str:
    """The code-only release on N apps at once: how the time grows with N."""
    counts = sorted(
        int(name[len(SCALE_PREFIX) :])
        for name, records in runs.items()
        if name.startswith(SCALE_PREFIX) and records
    )
    if not counts:
        return ""
    lines = [
        "The same code-only release on N apps of the host at once, by one `salt-call "
        "--local djangoapp.release` per app started together, or by one `salt-call "
        "--local djangoapp.release_apps` (load on the first app):\n",
        "| apps | how | runs | wall s: median (min–max) | engine s per app: median "
        "(slowest) | wall / wall of 1 app | requests | failed | longest gap s "
        "| reload |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = None
    for count in counts:
        for prefix, how, _description in SCALE_WAYS:
            records = runs.get(f"{prefix}{count}")
            if not records:
                continue
            row = aggregate(records)
            engines = [
                seconds
                for record in records
                for seconds in (record.get("engines_s") or {}).values()
                if seconds is not None
            ]
            base = base or row["wall_median"]
            methods = sorted({r.get("reload_method") or "–" for r in records})
            mark = "" if row["ok"] else " (a run FAILED)"
            lines.append(
                f"| {count}{mark} | {how} | {row['runs']} | {fmt(row['wall_median'])} "
                f"({fmt(row['wall_min'])}–{fmt(row['wall_max'])}) "
                f"| {fmt(median(engines))} ({fmt(max(engines, default=None))}) "
                f"| {fmt(row['wall_median'] / base)} | {fmt(row.get('requests'))} "
                f"| {fmt(row.get('failed'))} | {fmt(row.get('gap_max'), 3)} "
                f"| {', '.join(methods)} |"
            )
    return "\n".join(lines) + "\n"


def step_table(runs: dict) -> str:
    """Median seconds per step: the engine's steps, the in-place script's steps."""
    lines = ["| scenario | steps (median s) |", "| --- | --- |"]
    for name in (
        "release_code",
        "release_deps",
        "rollback",
        "rollback_warm",
        "inplace_hup_code",
        "inplace_hup_deps",
        "inplace_restart_code",
        "inplace_restart_deps",
    ):
        records = runs.get(name) or []
        names: list[str] = []
        for record in records:
            names += [s for s in record.get("steps") or {} if s not in names]
        if not names:
            continue
        cells = []
        for step in names:
            value = median((r.get("steps") or {}).get(step) for r in records)
            cells.append(f"{step} {fmt(value)}")
            if step == "reload":
                methods = sorted({r.get("reload_method") or "?" for r in records})
                cells[-1] += f" ({', '.join(methods)})"
            if step in ("build", "preflight"):
                subs: list[str] = []
                for record in records:
                    timings = (record.get("step_timings") or {}).get(step) or {}
                    subs += [s for s in timings if s not in subs]
                inner = [
                    f"{sub} "
                    + fmt(
                        median(
                            ((r.get("step_timings") or {}).get(step) or {}).get(sub)
                            for r in records
                        )
                    )
                    for sub in subs
                ]
                if inner:
                    cells[-1] += f" ({', '.join(inner)})"
        engine = median(r.get("engine_s") for r in records)
        if engine is not None:
            wall = median(r["wall_s"] for r in records)
            cells.append(f"outside the engine (salt-call) {fmt(wall - engine)}")
        lines.append(f"| {SCENARIOS[name]} | {'; '.join(cells)} |")
    return "\n".join(lines) + "\n"


def slowest_states(runs: dict) -> str:
    lines = []
    for name in ("apply_idempotent", "converge_fresh"):
        records = [r for r in runs.get(name) or [] if r.get("slowest")]
        if not records:
            continue
        record = sorted(records, key=lambda r: r["wall_s"])[len(records) // 2]
        lines.append(
            f"Slowest states of the median {SCENARIOS[name]} "
            f"({record['wall_s']:.1f} s wall, {record['states']} states, "
            f"{record['states_ms'] / 1000:.1f} s in states):\n"
        )
        lines.append("| state | function | ms | changed |\n| --- | --- | --- | --- |")
        lines += [
            f"| {row['id']} | {row['function']} | {row['ms']:.0f} "
            f"| {'yes' if row['changed'] else 'no'} |"
            for row in record["slowest"]
        ]
        lines.append("")
    return "\n".join(lines)


def write_results(results: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = results["started"].replace(":", "").replace("-", "")[:15]
    path = RESULTS_DIR / f"release-{stamp}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def print_report(results: dict, markdown_path: Path | None) -> int:
    text, checks = report(results)
    machine = results.get("machine", {})
    header = (
        f"Machine: {machine.get('nproc')} CPUs ({machine.get('cpu')}), "
        f"{machine.get('memory_gib')} GiB, kernel {machine.get('kernel')}, "
        f"{machine.get('os')}; {machine.get('date')}; load average "
        f"{results.get('load_average_start')} at the start, "
        f"{machine.get('load_average')} at the end; "
        f"{results['settings']['clients']} clients, "
        + (
            f"{results['settings']['rate']:g} requests/s; "
            if results["settings"].get("rate")
            else "each sending as soon as answered; "
        )
        + (
            "the minion's loader with strict matching (minion.conf.example); "
            if results["settings"].get("strict_loader")
            else "the minion's loader as Salt ships it; "
        )
        + f"benchmark took {results.get('seconds')} s\n\n"
    )
    print(header + text)
    if markdown_path:
        markdown_path.write_text(header + text)
    for what, holds, measured in checks:
        print(f"{'HOLDS ' if holds else 'MISSED'}  {what}: {measured}")
    return 0 if all(holds for _, holds, _ in checks) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario")
    parser.add_argument(
        "--fresh-runs", type=int, default=3, help="fresh hosts converged (>= 1)"
    )
    parser.add_argument("--clients", type=int, default=24, help="load clients")
    parser.add_argument(
        "--rate",
        type=float,
        help="requests/s of all clients together (default: as fast as answered)",
    )
    parser.add_argument(
        "--slot",
        type=int,
        default=int(os.environ.get("DJANGOAPP_TEST_SLOT") or 1),
        help="test host slot (default: $DJANGOAPP_TEST_SLOT, else 1)",
    )
    parser.add_argument(
        "--source",
        default="worktree",
        help="the formula to apply: worktree (default), a commit, or a directory",
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=1.0,
        help="start once the 1-minute load average is below this (default 1.0)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=600, help="wait at most this long (s)"
    )
    parser.add_argument(
        "--scale",
        type=app_counts,
        default=[],
        metavar="N,N,...",
        help="also release one code-only commit on N apps of the host at once, "
        "for each N (e.g. 1,2,4): a salt-call per app, and one release_apps",
    )
    parser.add_argument(
        "--only-scale",
        action="store_true",
        help="with --scale: one fresh host, no other scenario",
    )
    parser.add_argument(
        "--no-master",
        dest="master",
        action="store_false",
        help="leave out the releases through a salt-master",
    )
    parser.add_argument(
        "--default-loader",
        dest="strict_loader",
        action="store_false",
        help="without minion.conf.example's loader setting on the host",
    )
    parser.add_argument(
        "--preload",
        action="store_true",
        help="the demo app with preload_app: a new master per hand-over",
    )
    parser.add_argument("--slowest", type=int, default=10, help="states listed")
    parser.add_argument(
        "--keep", action="store_true", help="leave the last host up afterwards"
    )
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="print the tables of a result"
    )
    args = parser.parse_args(argv)
    if args.report:
        return print_report(json.loads(args.report.read_text()), None)
    if args.runs < 1 or args.fresh_runs < 1 or not 20 <= args.clients <= 200:
        parser.error("--runs and --fresh-runs >= 1, --clients from 20 to 200")
    if args.only_scale and not args.scale:
        parser.error("--only-scale needs --scale")

    quiet = wait_until_quiet(args.quiet_below, args.quiet_wait)
    os.environ["DJANGOAPP_TEST_SLOT"] = str(args.slot)
    sys.path.insert(0, str(REPO / "test"))
    testhost = importlib.import_module("testhost")
    reason = testhost.missing_prerequisites()
    if reason:
        sys.exit(f"bench: {reason}")
    bench = Bench(
        args,
        testhost,
        importlib.import_module("demorepo"),
        importlib.import_module("loadgen"),
        importlib.import_module("try"),
    )
    bench.load_average_start = quiet
    try:
        results = bench.run()
    except BaseException as error:
        partial = bench.results(incomplete=f"{type(error).__name__}: {error}")
        log(f"stopped: {error}; what was measured: {write_results(partial)}")
        raise
    finally:
        if not args.keep:
            bench.teardown()
    path = write_results(results)
    status = print_report(results, path.with_suffix(".md"))
    print(f"\nresults: {path} and {path.with_suffix('.md')}")
    return status


if __name__ == "__main__":
    sys.exit(main())
