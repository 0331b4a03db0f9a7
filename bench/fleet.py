#!/usr/bin/env python3
"""Fleet benchmark: the fleet of test/integration/fleet.py converged from nothing,
then the rolling release and rollback across it under load, against the same release
on one web minion in the same run.

As root, from the repository (see docs/benchmarks.md, "A fleet")::

    .venv/bin/python bench/fleet.py [--slot 70] [--clients 24] [--runs 1]

It boots the fleet (lb, web1, web2, db on a private bridge, a salt-master on this
machine) in test host slots ``--slot`` to ``--slot`` + 3, writes the demo pillar with
the roles (write_demo_pillar) and a site top file that gives every minion
``djangoapp``, and serves the formula from a copy of the working tree taken when the
run starts. It measures:

- the converge: ``salt '*' saltutil.sync_all``, ``mine.update`` and ``state.apply``
  from nothing, then a second ``state.apply`` (its changed states: none expected);
- ``--runs`` times, while ``--clients`` clients request ``/`` of demo.test through
  the load balancer: the rolling release v1.0.0 -> v1.1.0 (``salt-run
  state.orchestrate djangoapp.orchestrate.release``) and the fleet's rollback, then
  the same release on web1 alone (``salt web1 djangoapp.release``) and its rollback.

Before each release the web minions are put back as they were before the first one
(v1.1.0's migration reversed, its release directories removed), so that every
release builds, and the first minion migrates, again. Results go to
bench/results/fleet-<time>.json; the tables are printed in Markdown. The exit status
is 1 when a release or rollback failed or a request failed during one.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import importlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from release import engine_detail, fmt, machine_info, snapshot_formula

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
WORK_ROOT = Path("/var/tmp")
FLEET_SLOT_VARIABLE = "DJANGOAPP_FLEET_SLOT"

APP = "demo"
SERVER_NAME = "demo.test"
PAGE = "/"
WEB = "web1"  # the web minion of the single-host release
BASE_VERSION = "v1.0.0"
NEW_VERSION = "v1.1.0"
MIGRATE_BACK_TO = ("notes", "0001")  # v1.1.0 adds notes.0002_note_author
APP_CONFIG = f"/etc/djangoapp/{APP}/app.json"
ENVRUN = "/usr/local/lib/djangoapp/envrun"

LOAD_LEAD_IN = 1.0  # seconds of load before each measured command
LOAD_TAIL = 1.0  # and after it
CONVERGE_TIMEOUT = 1800
VERSION_RE = re.compile(rb'<span class="version">([^<]+)</span>')

MEASURES = {
    "rolling_release": (
        f"rolling release {BASE_VERSION} → {NEW_VERSION} "
        "(`salt-run state.orchestrate djangoapp.orchestrate.release`)"
    ),
    "rolling_rollback": (
        "rolling rollback (`salt-run state.orchestrate djangoapp.orchestrate.rollback`)"
    ),
    "single_release": (
        f"release on {WEB} alone (`salt {WEB} djangoapp.release version={NEW_VERSION}`)"
    ),
    "single_rollback": f"rollback on {WEB} alone (`salt {WEB} djangoapp.rollback`)",
}


class BenchError(RuntimeError):
    """The fleet is not where the next measure needs it: the run stops."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def load_averages() -> list[float]:
    """This machine's load averages over 1, 5 and 15 minutes."""
    return [round(value, 2) for value in os.getloadavg()]


def served_version(body: bytes) -> str | None:
    found = VERSION_RE.search(body)
    return found.group(1).decode() if found else None


def timed_call(action: Callable[[], object]) -> tuple[float, object]:
    started = time.monotonic()
    result = action()
    return round(time.monotonic() - started, 2), result


# --- state returns ----------------------------------------------------------------


def failed_states(state_return) -> list[str]:
    """Comments of the states that failed; a minion's error as it is when it
    returned no states (render errors, no answer)."""
    if isinstance(state_return, str):
        return [state_return]
    if not isinstance(state_return, dict):
        return [str(line) for line in state_return or ["no return"]]
    return [
        f"{state_id}: {state.get('comment')}"
        for state_id, state in state_return.items()
        if state.get("result") is not True
    ]


def changed_states(state_return) -> list[str]:
    if not isinstance(state_return, dict):
        return []
    return [
        state_id for state_id, state in state_return.items() if state.get("changes")
    ]


def apply_summary(returns: dict) -> dict:
    """Per minion: how many states, which changed; the failures of those that
    failed."""
    failed = {name: failed_states(ret) for name, ret in returns.items()}
    return {
        "states": {
            name: len(ret) if isinstance(ret, dict) else 0
            for name, ret in returns.items()
        },
        "changed": {name: changed_states(ret) for name, ret in returns.items()},
        "failed": {name: errors for name, errors in failed.items() if errors},
    }


# --- the benchmark ----------------------------------------------------------------


class FleetBench:
    """One run: the fleet, the load through its load balancer, what was measured."""

    def __init__(self, args, fleets, loadgen):
        self.args = args
        self.fleets = fleets  # test/integration/fleet.py
        self.loadgen = loadgen
        self.work = WORK_ROOT / f"djangoapp-fleet-bench{args.slot}"
        self.started = datetime.datetime.now(datetime.UTC)
        self.load_average_start = load_averages()
        self.source: dict | None = None
        self.fleet_timings: dict[str, float] = {}
        self.converge: dict | None = None
        self.second_apply: dict | None = None
        self.runs: list[dict] = []

    def run(self) -> dict:
        self.prepare()
        with self.fleets.fleet_of_hosts(
            None, None, master_config=self.master_config(), work=self.work / "fleet"
        ) as fleet:
            self.fleet_timings = fleet.timings
            self.fleets.write_demo_pillar(fleet)
            self.converge = self.converge_from_nothing(fleet)
            fleet.salt_run("saltutil.sync_runners")
            self.second_apply = self.apply_again(fleet)
            self.wait_for_version(fleet, BASE_VERSION)
            for number in range(1, self.args.runs + 1):
                self.measure_run(fleet, number)
        shutil.rmtree(self.work, ignore_errors=True)
        return self.results()

    def prepare(self) -> None:
        """A fresh work directory: the formula's copy and the site's top file."""
        shutil.rmtree(self.work, ignore_errors=True)
        self.source = snapshot_formula(self.work / "formula", "worktree")
        site = self.work / "site"
        site.mkdir()
        (site / "top.sls").write_text(json.dumps({"base": {"*": ["djangoapp"]}}))

    def master_config(self) -> dict:
        """The site's top file first, then the formula: the test fleet's roots."""
        roots = [str(self.work / "site"), str(self.work / "formula" / "salt")]
        return {"file_roots": {"base": roots}}

    # --- converging ---------------------------------------------------------------

    def converge_from_nothing(self, fleet) -> dict:
        """sync_all, mine.update and the first state.apply on every minion, each
        timed; BenchError when one of them fails."""
        log("converge: saltutil.sync_all, mine.update, state.apply")
        sync_s, synced = timed_call(lambda: fleet.salt("*", "saltutil.sync_all"))
        unsynced = sorted(
            name
            for name, ret in synced.items()
            if not isinstance(ret, dict)
            or "modules.djangoapp" not in ret.get("modules", [])
        )
        if unsynced:
            raise BenchError(f"saltutil.sync_all on {unsynced}: {synced}")
        mine_s, mined = timed_call(lambda: fleet.salt("*", "mine.update"))
        if set(mined.values()) != {True}:
            raise BenchError(f"mine.update: {mined}")
        apply_s, applied = timed_call(
            lambda: fleet.salt("*", "state.apply", timeout=CONVERGE_TIMEOUT)
        )
        summary = apply_summary(applied)
        record = {
            "sync_all_s": sync_s,
            "mine_update_s": mine_s,
            "state_apply_s": apply_s,
            "total_s": round(sync_s + mine_s + apply_s, 2),
            "machine_load": load_averages()[0],
            **summary,
        }
        log(f"  {record['total_s']} s (state.apply {apply_s} s)")
        if summary["failed"]:
            self.converge = record
            raise BenchError(
                "the first state.apply failed:\n"
                + json.dumps(summary["failed"], indent=1)
            )
        return record

    def apply_again(self, fleet) -> dict:
        """A second state.apply on every minion: its time and its changes."""
        log("second state.apply")
        apply_s, applied = timed_call(
            lambda: fleet.salt("*", "state.apply", timeout=CONVERGE_TIMEOUT)
        )
        record = {
            "state_apply_s": apply_s,
            "machine_load": load_averages()[0],
            **apply_summary(applied),
        }
        changed = sum(len(states) for states in record["changed"].values())
        log(f"  {apply_s} s, {changed} changed, failed: {record['failed'] or 'none'}")
        return record

    # --- releasing ----------------------------------------------------------------

    def measure_run(self, fleet, number: int) -> None:
        """The rolling release and rollback, then the same on WEB alone, each under
        load, recorded in ``self.runs``; the fleet is back on BASE_VERSION, as
        before the run, at the end."""
        run: dict = {"run": number}
        self.runs.append(run)
        released = self.measure(
            fleet,
            run,
            "rolling_release",
            lambda: self.orchestrate(fleet, "release", app=APP, version=NEW_VERSION),
        )
        self.wait_for_version(fleet, NEW_VERSION)
        self.measure(
            fleet,
            run,
            "rolling_rollback",
            lambda: self.orchestrate(fleet, "rollback", app=APP),
        )
        self.wait_for_version(fleet, BASE_VERSION)
        self.back_to_base(fleet, released_ids(released))

        released = self.measure(
            fleet,
            run,
            "single_release",
            lambda: self.on_web(
                fleet, "djangoapp.release", app=APP, version=NEW_VERSION
            ),
        )
        self.measure(
            fleet,
            run,
            "single_rollback",
            lambda: self.on_web(fleet, "djangoapp.rollback", app=APP),
        )
        self.wait_for_version(fleet, BASE_VERSION)
        self.back_to_base(fleet, {WEB: released.get("id")})
        run["ratios"] = ratios(run)

    def measure(self, fleet, run: dict, name: str, action: Callable[[], dict]) -> dict:
        """``action`` under load, recorded as ``run[name]``; BenchError when it
        failed: what follows needs it done."""
        label = f"run {run['run']}: {name.replace('_', ' ')}"
        record = run[name] = self.under_load(fleet, label, action)
        if not record["ok"]:
            raise BenchError(f"{label}: {json.dumps(record.get('error'))[:4000]}")
        return record

    def under_load(self, fleet, label: str, action: Callable[[], dict]) -> dict:
        """``action`` while the clients request the page through the load balancer,
        from LOAD_LEAD_IN s before it until LOAD_TAIL s after it."""
        log(label)
        load = self.loadgen.Load(
            fleet.address("lb"),
            80,
            PAGE,
            SERVER_NAME,
            clients=self.args.clients,
            classify=served_version,
        )
        load.start()
        try:
            time.sleep(LOAD_LEAD_IN)
            started = time.monotonic()
            detail = action()
            wall = time.monotonic() - started
            time.sleep(LOAD_TAIL)
        finally:
            result = load.stop()
        record = {
            "label": label,
            "wall_s": round(wall, 3),
            "machine_load": load_averages()[0],
            **detail,
            "load": result.as_dict(),
            # when the longest time without an answer began, after the command did
            "gap_at_s": round(load.started + result.longest_gap_at - started, 3),
        }
        log(f"  {summary_line(record)}")
        return record

    def orchestrate(self, fleet, sls: str, **pillar) -> dict:
        """``salt-run state.orchestrate djangoapp.orchestrate.<sls>``: the runner's
        result, its own seconds and steps."""
        ran = fleet.salt_run(
            "state.orchestrate",
            f"djangoapp.orchestrate.{sls}",
            pillar=pillar,
            check=False,
        )
        try:
            (state,) = ran["data"][fleet.master.id].values()
            ret = state["changes"]["return"]
        except (KeyError, TypeError, ValueError, AttributeError):
            return {"ok": False, "error": ran}
        detail = {
            "ok": ret.get("result") is True,
            "salt_s": ret.get("seconds"),
            "batches": ret.get("batches"),
            "steps": ret.get("steps"),
        }
        if not detail["ok"]:
            detail["error"] = {
                key: ret.get(key) for key in ("failed", "switched_back", "steps")
            }
        return detail

    def on_web(self, fleet, function: str, **kwargs) -> dict:
        """``salt WEB <function> key=value...`` through the master: the engine's
        return, as bench/release.py reads it."""
        result = fleet.salt_command(WEB, function, **kwargs)
        ret = result.data.get(WEB) if isinstance(result.data, dict) else None
        if ret is None:
            ret = (result.stdout + result.stderr)[-3000:]
        detail = engine_detail(result.returncode, ret)
        detail["salt_s"] = detail.pop("engine_s", None)
        return detail

    def back_to_base(self, fleet, release_ids: dict[str, str | None]) -> None:
        """Undo a release of NEW_VERSION that was rolled back: its migration
        reversed (from WEB) and its directory removed from each minion, so that
        the next release of it builds and migrates again."""
        for minion, release_id in release_ids.items():
            if not release_id or "/" in release_id or release_id.startswith("."):
                raise BenchError(f"{minion}: no release id to undo: {release_id!r}")
        self.migrate_back(fleet.hosts[WEB], release_ids[WEB])
        for minion, release_id in release_ids.items():
            host = fleet.hosts[minion]
            base_dir = app_config(host)["base_dir"]
            current = host.exec(["readlink", f"{base_dir}/current"]).stdout.strip()
            if current.endswith(f"/{release_id}"):
                raise BenchError(f"{minion}: {release_id} is still the current release")
            host.exec(["rm", "-rf", f"{base_dir}/releases/{release_id}"])

    def migrate_back(self, host, release_id: str) -> None:
        """``manage.py migrate`` back to MIGRATE_BACK_TO with the code of the
        release ``release_id``, as the app's manage command runs it: the live
        release's code (BASE_VERSION's) does not know the migration to reverse.
        BASE_VERSION, serving, does not read what it removes."""
        config = app_config(host)
        release = f"{config['base_dir']}/releases/{release_id}"
        host.exec(
            ["sh", "-ec", 'cd "$1"; shift; exec "$@"', "sh"]
            + [f"{release}/src/{config['project_dir']}"]
            + ["runuser", "-u", config["user"], "--"]
            + [ENVRUN, "--release", release, config["env_file"]]
            + [f"{release}/venv/bin/python", "manage.py", "migrate"]
            + [*MIGRATE_BACK_TO, "--noinput"]
        )

    def wait_for_version(self, fleet, version: str, timeout: float = 120) -> None:
        """Until the page through the load balancer shows ``version`` in 20
        answers in a row (both web minions, in turn)."""
        deadline = time.monotonic() + timeout
        streak, answer = 0, "nothing yet"
        while streak < 20:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the load balancer does not serve {version} within {timeout} s; "
                    f"its last answer: {answer}"
                )
            seen, answer = page_through(fleet.address("lb"))
            streak = streak + 1 if seen == version else 0
            time.sleep(0.05)

    # --- results ------------------------------------------------------------------

    def results(self, incomplete: str | None = None) -> dict:
        return {
            "incomplete": incomplete,
            "started": self.started.isoformat(timespec="seconds"),
            "seconds": round(
                (datetime.datetime.now(datetime.UTC) - self.started).total_seconds()
            ),
            "command": " ".join(sys.argv),
            "source": self.source,
            "settings": {
                "slot": self.args.slot,
                "clients": self.args.clients,
                "runs": self.args.runs,
                "load_lead_in_s": LOAD_LEAD_IN,
                "load_tail_s": LOAD_TAIL,
            },
            "machine": machine_info(),
            "load_average_start": self.load_average_start,
            "load_average_end": load_averages(),
            "fleet_timings": self.fleet_timings,
            "converge": self.converge,
            "second_apply": self.second_apply,
            "runs": self.runs,
        }


def app_config(host) -> dict:
    """The app's settings for the release engine on the web minion ``host``."""
    return json.loads(host.get_file(APP_CONFIG))


def released_ids(record: dict) -> dict[str, str | None]:
    """The release id of each web minion in a rolling release's steps."""
    return {
        step["minion"]: step.get("id")
        for step in record.get("steps") or []
        if step.get("step") == "release"
    }


def ratios(run: dict) -> dict:
    """Rolling over single-host, for the wall times and for Salt's own seconds
    (the runner's against the engine's)."""
    found = {}
    for action in ("release", "rollback"):
        rolling, single = run[f"rolling_{action}"], run[f"single_{action}"]
        found[f"{action}_wall"] = round(rolling["wall_s"] / single["wall_s"], 2)
        if rolling.get("salt_s") and single.get("salt_s"):
            found[f"{action}_salt"] = round(rolling["salt_s"] / single["salt_s"], 2)
    return found


def page_through(address: str) -> tuple[str | None, str]:
    """The version the page at ``address`` shows (None when it does not answer
    200 with one), and what it answered, for messages."""
    connection = http.client.HTTPConnection(address, 80, timeout=10)
    try:
        connection.request("GET", PAGE, headers={"Host": SERVER_NAME})
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as error:
        return None, f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    version = served_version(body) if response.status == 200 else None
    return version, f"HTTP {response.status}, version {version}"


def summary_line(record: dict) -> str:
    load = record["load"]
    parts = [
        f"{record['wall_s']:.2f} s",
        "ok" if record.get("ok") else "FAILED",
        f"Salt's own {fmt(record.get('salt_s'))} s",
        f"{load['sent']} req, {load['failed']} failed",
        f"gap {load['longest_gap_s']:.3f} s at {record['gap_at_s']:.2f} s",
    ]
    return ", ".join(parts)


# --- report -----------------------------------------------------------------------


def converge_table(results: dict) -> str:
    converge, again = results.get("converge"), results.get("second_apply")
    if not converge:
        return ""
    rows = [
        ("`salt '*' saltutil.sync_all`", converge["sync_all_s"], None),
        ("`salt '*' mine.update`", converge["mine_update_s"], None),
        ("`salt '*' state.apply`, from nothing", converge["state_apply_s"], converge),
        ("converge (the three)", converge["total_s"], None),
    ]
    if again:
        rows.append(("second `salt '*' state.apply`", again["state_apply_s"], again))
    lines = [
        "| step | wall s | states | changed | failed |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for title, seconds, record in rows:
        states = changed = failed = "–"
        if record:
            states = sum(record["states"].values())
            changed = sum(len(ids) for ids in record["changed"].values())
            failed = sum(len(errors) for errors in record["failed"].values())
        lines.append(f"| {title} | {seconds:.1f} | {states} | {changed} | {failed} |")
    return "\n".join(lines) + "\n"


def release_table(results: dict) -> str:
    lines = [
        "| run | command | wall s | Salt's own s | requests | failed "
        "| longest gap s | p50 ms | p99 ms | machine load |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in results["runs"]:
        for name, title in MEASURES.items():
            record = run.get(name)
            if not record:
                continue
            load = record["load"]
            mark = "" if record.get("ok") else " (FAILED)"
            lines.append(
                f"| {run['run']} | {title}{mark} | {record['wall_s']:.2f} "
                f"| {fmt(record.get('salt_s'))} | {load['sent']} | {load['failed']} "
                f"| {load['longest_gap_s']:.3f} | {load['p50_ms']:.1f} "
                f"| {load['p99_ms']:.1f} | {fmt(record['machine_load'])} |"
            )
    text = "\n".join(lines) + "\n"
    for run in results["runs"]:
        found = run.get("ratios") or {}
        if found:
            text += (
                f"\nRun {run['run']}, rolling / single-host: release "
                f"{fmt(found.get('release_wall'))} (Salt's own "
                f"{fmt(found.get('release_salt'))}), rollback "
                f"{fmt(found.get('rollback_wall'))} (Salt's own "
                f"{fmt(found.get('rollback_salt'))})\n"
            )
    return text


def report(results: dict) -> str:
    machine = results["machine"]
    settings = results["settings"]
    slot = settings["slot"]
    timings = ", ".join(
        f"{label} {seconds} s"
        for label, seconds in (results.get("fleet_timings") or {}).items()
    )
    header = (
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), "
        f"{machine['memory_gib']} GiB, kernel {machine['kernel']}, {machine['os']}; "
        f"{machine['date']}; load average (1, 5, 15 min) "
        f"{results['load_average_start']} at the start, "
        f"{results['load_average_end']} at the end; fleet in slots {slot}–{slot + 3}; "
        f"{settings['clients']} clients through the load balancer; "
        f"benchmark took {results['seconds']} s ({timings})\n"
    )
    return "\n".join(
        part
        for part in (header, converge_table(results), release_table(results))
        if part
    )


def any_failure(results: dict) -> bool:
    """A release or rollback failed, or a request failed during one."""
    records = [run[name] for run in results["runs"] for name in MEASURES if name in run]
    return bool(results.get("incomplete")) or any(
        not record.get("ok") or record["load"]["failed"] > 0 for record in records
    )


def write_results(results: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = results["started"].replace(":", "").replace("-", "")[:15]
    path = RESULTS_DIR / f"fleet-{stamp}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


# --- command line -----------------------------------------------------------------


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--slot",
        type=int,
        default=70,
        help="the fleet's base test host slot: it uses this one and the 3 after it "
        "(default 70)",
    )
    parser.add_argument("--clients", type=int, default=24, help="load clients")
    parser.add_argument(
        "--runs", type=int, default=1, help="rolling releases measured (default 1)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or not 1 <= args.clients <= 200:
        parser.error("--runs >= 1, --clients from 1 to 200")
    return args


def import_test_modules(slot: int):
    """test/integration/fleet.py, with its base slot set first, and loadgen; both
    directories of the tests importable, as their conftest makes them."""
    os.environ[FLEET_SLOT_VARIABLE] = str(slot)
    sys.path[:0] = [str(REPO / "test" / "integration"), str(REPO / "test")]
    testhost = importlib.import_module("testhost")
    reason = testhost.missing_prerequisites()
    if reason:
        sys.exit(f"bench: {reason}")
    return importlib.import_module("fleet"), importlib.import_module("loadgen")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fleets, loadgen = import_test_modules(args.slot)
    bench = FleetBench(args, fleets, loadgen)
    try:
        results = bench.run()
    except BenchError as error:
        partial = bench.results(incomplete=str(error))
        print(report(partial))
        log(f"stopped: {error}\nwhat was measured: {write_results(partial)}")
        log(f"the fleet's files are kept in {bench.work}")
        return 1
    except BaseException as error:
        partial = bench.results(incomplete=f"{type(error).__name__}: {error}")
        log(f"stopped: {error}; what was measured: {write_results(partial)}")
        raise
    path = write_results(results)
    print(report(results))
    print(f"results: {path}")
    return 1 if any_failure(results) else 0


if __name__ == "__main__":
    sys.exit(main())
