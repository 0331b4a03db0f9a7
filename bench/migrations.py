#!/usr/bin/env python3
"""Migration benchmark: the failed requests of a release whose migration removes a
column that the release still serving reads, as the engine runs it today (migrate,
then switch), against one whose migration only adds a nullable column.

As root, from the repository (see docs/benchmarks.md for the figures)::

    .venv/bin/python bench/migrations.py [--runs 3] [--clients 24] [--slot 63]

It boots a Debian 12 test host in its own slot (default 63), converges it masterless
with the demo pillar plus ``version: v1.2.0`` and ``migrations: allow`` for the demo
app, and then, ``--runs`` times for each of ``drop-author`` and ``add-nullable``,
releases that version over v1.2.0 while ``--clients`` clients request ``/`` (which
reads the author column on v1.2.0). Between runs the app goes back to v1.2.0 as it
was: ``djangoapp.restore`` of the dump the release took before migrating, then
``djangoapp.rollback`` to the v1.2.0 release (forced: the engine may refuse to
roll back over a dropped column), and the new release's directory is removed so that
the next run builds it again. Results go to bench/results/migrations-<time>.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "test"))

import release as bench_release  # noqa: E402

APP = bench_release.APP
BASE_VERSION = "v1.2.0"
POLICY = "allow"
SCENARIOS = {
    "drop-author": "v1.2.0 -> drop-author (RemoveField of a column v1.2.0 reads)",
    "add-nullable": "v1.2.0 -> add-nullable (AddField, null=True)",
}


class MigrationBench(bench_release.Bench):
    """The release benchmark's host, pillar, load and measuring, with other runs."""

    def __init__(self, args, testhost, demorepo, loadgen, tryout):
        super().__init__(args, testhost, demorepo, _RecordingLoadgen(loadgen), tryout)
        self.work = (
            bench_release.WORK_ROOT / f"djangoapp-migbench{testhost.SLOT.number}"
        )
        self.runs = {name: [] for name in SCENARIOS}

    def prepare(self) -> None:
        subprocess.run(["rm", "-rf", str(self.work)], check=True)
        self.source = bench_release.snapshot_formula(
            self.work / "formula", self.args.source
        )
        self.demorepo.build_repo(self.work / "git" / "demo.git")
        pillar_dir = self.work / "pillar"
        demo = self.tryout.write_pillar(pillar_dir)
        app = {"version": BASE_VERSION, "migrations": POLICY}
        (pillar_dir / "migrations.sls").write_text(
            yaml.safe_dump({"djangoapp": {"apps": {APP: app}}})
        )
        top = yaml.safe_load((pillar_dir / "top.sls").read_text())
        top["base"]["*"].append("migrations")
        (pillar_dir / "top.sls").write_text(yaml.safe_dump(top))
        self.demo_app = demo["djangoapp"]["apps"][APP]
        self.server_name = self.demo_app["server_names"][0]

    def run(self) -> dict:
        self.prepare()
        bench_release.log("booting the test host")
        boot_s = self.boot()
        bench_release.log(f"host up in {boot_s:.0f} s; converging with {BASE_VERSION}")
        converged = self.converge(sync=True)
        if not converged.get("ok"):
            raise RuntimeError(f"the first state.apply failed: {converged}")
        self.cfg = json.loads(
            self.host.get_file(f"{bench_release.CONFIG_DIR}/{APP}/app.json")
        )
        # The engine reads the app's policy from app.json, which the formula writes
        # from the pillar (salt-call masks the pillar's values in its output).
        self.policy_seen = self.cfg.get("migrations")
        if self.policy_seen not in (POLICY, None):
            raise RuntimeError(f"app.json has migrations={self.policy_seen!r}")
        self.wait_for_version(BASE_VERSION)
        base_id = self.current_id()
        for number in range(self.args.runs):
            for version in SCENARIOS:
                record = self.measure(
                    version,
                    f"{BASE_VERSION} -> {version}",
                    lambda version=version: self.release_recorded(version),
                    version,
                )
                record.update(failure_window(record, self.loadgen.last.result))
                bench_release.log(
                    f"  run {number + 1}: {record['load']['failed']} failed of "
                    f"{record['load']['sent']}, window {record['failure_window_s']} s"
                )
                self.back_to_base(base_id, record.get("backup"))
        return self.results()

    def release_recorded(self, version: str) -> dict:
        """djangoapp.release, with what it says of migrations and of its backup."""
        rc, data = self.salt("djangoapp.release", f"version={version}", f"app={APP}")
        detail = bench_release.engine_detail(rc, data)
        if isinstance(data, dict):
            detail["backup"] = data.get("backup")
            detail["migrations"] = data.get("migrations")
        return detail

    def back_to_base(self, base_id: str, backup: str | None) -> None:
        """The database as it was before the release's migrations, the v1.2.0
        release live again, the new release's directory gone."""
        new_id = self.current_id()
        if new_id == base_id:
            return
        if not backup:
            raise RuntimeError(f"release {new_id} names no backup to restore")
        rc, data = self.salt("djangoapp.restore", f"app={APP}", f"backup={backup}")
        if rc != 0 or not data.get("result"):
            raise RuntimeError(f"restore of {backup} failed: {data}")
        rc, data = self.salt(
            "djangoapp.rollback", f"app={APP}", f"to={base_id}", "force=True"
        )
        if rc != 0 or not data.get("result"):
            raise RuntimeError(f"rollback to {base_id} failed: {data}")
        self.exec(["rm", "-rf", f"{self.cfg['base_dir']}/releases/{new_id}"])
        self.wait_for_version(BASE_VERSION)

    def results(self, incomplete: str | None = None) -> dict:
        results = super().results(incomplete)
        results["settings"].update(
            base_version=BASE_VERSION,
            policy=POLICY,
            policy_in_app_json=getattr(self, "policy_seen", None),
        )
        return results


class _RecordingLoadgen:
    """test/loadgen.py, keeping the last load started: its result has the times
    of the failed requests, which the release benchmark's record leaves out."""

    def __init__(self, loadgen):
        self.module = loadgen
        self.last = None

    def Load(self, *args, **kwargs):
        self.last = self.module.Load(*args, **kwargs)
        return self.last


def failure_window(record: dict, result) -> dict:
    """From the first to the last failed request, in seconds after the release
    command started (the load began LOAD_LEAD_IN seconds before it)."""
    if not result.failed_at:
        return {"failure_window_s": 0.0, "first_failure_s": None}
    offset = record["load"]["longest_gap_at_s"] - record["gap_at_s"]
    first, last = result.failed_at[0] - offset, result.failed_at[-1] - offset
    return {
        "failure_window_s": round(last - first, 3),
        "first_failure_s": round(first, 3),
        "last_failure_s": round(last, 3),
    }


def report(results: dict) -> str:
    machine = results["machine"]
    settings = results["settings"]
    lines = [
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), "
        f"{machine['memory_gib']} GiB, kernel {machine['kernel']}, {machine['os']}; "
        f"{machine['date']}; {settings['clients']} clients on /; "
        f"policy migrations: {settings['policy']} "
        f"(app.json: {settings['policy_in_app_json']})",
        "",
        "| release | run | ok | failed | requests | failure window (s) "
        "| first failure (s) | old version last (s) | wall (s) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for version, records in results["runs"].items():
        for number, record in enumerate(records, 1):
            load = record.get("load", {})
            lines.append(
                f"| {version} | {number} | {'yes' if record.get('ok') else 'NO'} "
                f"| {load.get('failed')} | {load.get('sent')} "
                f"| {record.get('failure_window_s')} | {record.get('first_failure_s')} "
                f"| {record.get('old_last_s')} | {record.get('wall_s')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per release")
    parser.add_argument("--clients", type=int, default=24, help="load clients")
    parser.add_argument(
        "--rate",
        type=float,
        help="requests/s of all clients together (default: as fast as answered)",
    )
    parser.add_argument("--slot", type=int, default=63, help="test host slot")
    parser.add_argument(
        "--source",
        default="worktree",
        help="the formula to apply: worktree (default), a commit, or a directory",
    )
    parser.add_argument("--slowest", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument(
        "--keep", action="store_true", help="leave the host up afterwards"
    )
    # what the release benchmark's settings record expects of its own options
    parser.set_defaults(scale=[], only_scale=False, fresh_runs=0)
    args = parser.parse_args(argv)
    if args.runs < 1 or not 20 <= args.clients <= 200:
        parser.error("--runs >= 1, --clients from 20 to 200")

    os.environ["DJANGOAPP_TEST_SLOT"] = str(args.slot)
    testhost = importlib.import_module("testhost")
    reason = testhost.missing_prerequisites()
    if reason:
        sys.exit(f"bench: {reason}")
    bench = MigrationBench(
        args,
        testhost,
        importlib.import_module("demorepo"),
        importlib.import_module("loadgen"),
        importlib.import_module("try"),
    )
    bench.load_average_start = bench_release.load_average()
    started = time.monotonic()
    try:
        results = bench.run()
    except BaseException as error:
        partial = bench.results(incomplete=f"{type(error).__name__}: {error}")
        bench_release.log(f"stopped: {error}; measured so far: {write(partial)}")
        raise
    finally:
        if not args.keep:
            bench.teardown()
    path = write(results)
    text = report(results)
    path.with_suffix(".md").write_text(text)
    print(text)
    print(f"took {time.monotonic() - started:.0f} s; results: {path}")
    return 0 if all(r.get("ok") for rs in results["runs"].values() for r in rs) else 1


def write(results: dict) -> Path:
    bench_release.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = results["started"].replace(":", "").replace("-", "")[:15]
    path = bench_release.RESULTS_DIR / f"migrations-{stamp}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
