"""
When a release's pending migrations run: the classification of real
migrations of the tiny project (django-migration-linter's rules, in the
release's own Python, through Salt's loader) and the policy's decision for
each kind (``djangoapp_migration_policy.decide``).
"""

import contextlib
import json
import os
import pathlib
import sqlite3
import sys

import djangoapp_migration_policy as policy
import pytest
from djangoapp_common import StepFailed

pytestmark = pytest.mark.timeout(600) if hasattr(pytest.mark, "timeout") else []

REMOVE_NOTE = "tinyapp.0003_remove_item_note"


def migration(name, incompatible=(), marker=None, depends_on=(), **extra):
    return {
        "name": name,
        "marker": marker,
        "depends_on": list(depends_on),
        "incompatible": list(incompatible),
        **extra,
    }


DROP = {
    "code": "DROP_COLUMN",
    "message": "DROPPING columns",
    "table": "t",
    "column": "c",
}


# --------------------------------------------------------------------------
# the decision


def test_no_pending_migration_is_an_empty_plan():
    assert policy.decide("shop", "safe", []) == {
        "policy": "safe",
        "before_switch": [],
        "after_switch": [],
        "incompatible": {},
        "markers": {},
    }


def test_safe_refuses_an_unmarked_incompatible_migration_by_name():
    with pytest.raises(StepFailed) as refused:
        policy.decide(
            "shop", "safe", [migration("a.0001"), migration("a.0002", [DROP])]
        )
    assert refused.value.step == "preflight"
    assert refused.value.message.startswith(
        "migration a.0002 breaks the release still serving (DROP_COLUMN (t.c)): "
        "the release is stopped before anything changed. Two ways forward: "
    )
    assert "djangoapp:apps:shop:migrations to after_switch" in refused.value.message


def test_after_switch_defers_it_and_what_depends_on_it():
    plan = policy.decide(
        "shop",
        "after_switch",
        [
            migration("a.0001"),
            migration("a.0002", [DROP], depends_on=["a.0001"]),
            migration("a.0003", depends_on=["a.0002"]),
            migration("b.0001"),
        ],
    )
    assert plan["before_switch"] == ["a.0001", "b.0001"]
    assert plan["after_switch"] == ["a.0002", "a.0003"]
    assert plan["incompatible"] == {"a.0002": ["DROP_COLUMN (t.c)"]}
    assert policy.targets_before(plan) == [("a", "0001"), ("b", "0001")]


def test_allow_runs_it_before_the_switch_and_says_so():
    plan = policy.decide("shop", "allow", [migration("a.0002", [DROP])])
    assert plan["before_switch"] == ["a.0002"] and plan["after_switch"] == []
    assert plan["incompatible"] == {"a.0002": ["DROP_COLUMN (t.c)"]}
    assert policy.targets_before(plan) is None


def test_markers_win_over_the_policy():
    plan = policy.decide(
        "shop",
        "safe",
        [
            migration("a.0002", [DROP], marker="before_deploy"),
            migration("a.0003", [DROP], marker="after_deploy"),
            migration("b.0001", marker="always"),
        ],
    )
    assert plan["before_switch"] == ["a.0002", "b.0001"]
    assert plan["after_switch"] == ["a.0003"]
    assert plan["markers"] == {
        "a.0002": "before_deploy",
        "a.0003": "after_deploy",
        "b.0001": "always",
    }


def test_a_before_marker_that_needs_an_after_one_is_refused():
    with pytest.raises(StepFailed) as refused:
        policy.decide(
            "shop",
            "safe",
            [
                migration("a.0002", marker="after_deploy"),
                migration("a.0003", marker="before_deploy", depends_on=["a.0002"]),
            ],
        )
    assert refused.value.message == (
        "migration a.0003 is marked before_deploy but depends on a.0002, which "
        "runs after the switch"
    )


def test_a_migration_the_linter_could_not_read_is_refused_only_when_safe():
    unread = migration("a.0002", lint_error="ImportError: no linter")
    unread["incompatible"] = None
    with pytest.raises(StepFailed) as refused:
        policy.decide("shop", "safe", [unread])
    assert refused.value.message.startswith(
        "migration a.0002 could not be checked (ImportError: no linter): "
    )
    assert policy.decide("shop", "after_switch", [unread])["after_switch"] == ["a.0002"]
    assert policy.decide("shop", "allow", [unread])["before_switch"] == ["a.0002"]


def test_a_migration_the_linter_is_told_to_ignore_runs_before():
    ignored = migration("a.0002", ignored=True)
    ignored["incompatible"] = None
    assert policy.decide("shop", "safe", [ignored])["before_switch"] == ["a.0002"]


# --------------------------------------------------------------------------
# real migrations of the tiny project, classified in its release


@pytest.fixture
def released(tiny_app, tmp_path, mods):
    """A factory: the tiny app at v1.2.0, with ``settings`` in its app.json."""

    def factory(**settings):
        base = tmp_path / "srv"
        cfg = tiny_app("tiny", base, **settings)
        ret = mods["djangoapp.release"]("v1.2.0", app="tiny")
        assert ret["result"] is True, json.dumps(ret, default=str)[:3000]
        return cfg, base

    return factory


def _ledger(base):
    path = pathlib.Path(base) / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_removed_column_stops_the_release_at_preflight(mods, released):
    _, base = released()
    live = os.readlink(base / "current")
    ret = mods["djangoapp.release"]("drop-note", app="tiny")
    assert ret["result"] is False
    assert ret["failed_step"] == "preflight"
    assert ret["error"].startswith(
        f"migration {REMOVE_NOTE} breaks the release still serving "
        "(DROP_COLUMN (tinyapp_item.note)): "
    )
    assert ret["migrations_ran"] is False
    assert os.readlink(base / "current") == live


def test_after_switch_runs_it_once_the_new_code_is_live(mods, released):
    _, base = released(migrations="after_switch")
    ret = mods["djangoapp.release"]("drop-note", app="tiny")
    assert ret["result"] is True, ret
    assert ret["migrations"]["before_switch"] == []
    assert ret["migrations"]["after_switch"] == [REMOVE_NOTE]
    assert ret["migrations"]["incompatible"] == {
        REMOVE_NOTE: ["DROP_COLUMN (tinyapp_item.note)"]
    }
    names = [step["name"] for step in ret["steps"]]
    assert "migrate" not in names
    assert names.index("switch") < names.index("migrate_after_switch")
    assert _ledger(base)[-1]["migrations"]["after_switch"] == [REMOVE_NOTE]


def test_runpython_that_says_nothing_of_itself_is_refused(mods, released):
    released()
    ret = mods["djangoapp.release"]("code-unaccounted", app="tiny")
    assert ret["failed_step"] == "preflight"
    assert ret["error"].startswith(
        "migration tinyapp.0003_touch breaks the release still serving "
        "(RUNPYTHON_REVERSIBLE): "
    )


def test_runpython_elidable_or_reversible_runs_before_the_switch(mods, released):
    released()
    ret = mods["djangoapp.release"]("code-accounted", app="tiny")
    assert ret["result"] is True, ret
    assert ret["migrations"]["before_switch"] == ["tinyapp.0003_touch"]
    assert ret["migrations"]["incompatible"] == {}


def _columns(base):
    with contextlib.closing(sqlite3.connect(base / "shared" / "db.sqlite3")) as db:
        return [row[1] for row in db.execute("PRAGMA table_info(tinyapp_item)")]


def test_the_migrations_run_in_the_preflights_process(mods, tiny_app, tmp_path):
    base = tmp_path / "srv"
    tiny_app("tiny", base)
    assert mods["djangoapp.release"]("v1.1.0", app="tiny")["result"] is True
    assert "note" not in _columns(base)
    ret = mods["djangoapp.release"]("v1.2.0", app="tiny")
    assert ret["result"] is True, ret
    migrate = next(step for step in ret["steps"] if step["name"] == "migrate")
    assert migrate["in_preflight_process"] is True
    assert migrate["migrations"] == ["tinyapp.0002_item_note"]
    assert "note" in _columns(base)


def test_a_migration_that_fails_in_the_preflights_process(mods, released):
    _, base = released()
    live = os.readlink(base / "current")
    ret = mods["djangoapp.release"]("failing-migration", app="tiny")
    assert (ret["result"], ret["failed_step"]) == (False, "migrate")
    assert ret["error"].startswith("migrate failed: Traceback"), ret["error"]
    assert ret["error"].endswith("RuntimeError: the tiny migration fails")
    migrate = next(step for step in ret["steps"] if step["name"] == "migrate")
    assert migrate["in_preflight_process"] is True
    assert os.readlink(base / "current") == live
    assert not (base / "releases" / ret["id"]).exists()


def test_no_pending_migration_needs_no_linter(mods, released):
    released(migration_linter="/nonexistent")
    ret = mods["djangoapp.release"]("v1.1.0", app="tiny")
    assert ret["result"] is True, ret
    assert ret["migrations"]["before_switch"] == []
    assert ret["pending_migrations"] == []


def test_with_nothing_live_an_incompatible_migration_breaks_nothing():
    plan = policy.decide(
        "shop",
        "safe",
        [migration("a.0002", [DROP]), migration("a.0003", marker="after_deploy")],
        serving=False,
    )
    assert plan["before_switch"] == ["a.0002"]
    assert plan["after_switch"] == ["a.0003"]


def test_a_rollback_over_a_contract_migration_is_refused_unless_forced(mods, released):
    _, base = released(migrations="after_switch")
    before = os.readlink(base / "current")
    contract = mods["djangoapp.release"]("drop-note", app="tiny")
    assert contract["result"] is True, contract
    refused = mods["djangoapp.rollback"]("tiny")
    assert refused["result"] is False
    assert refused["failed_step"] == "select"
    assert refused["error"] == (
        f"rolling back to {before.split('/')[-1]} crosses migrations its code "
        f"cannot run with: {contract['id']} ran {REMOVE_NOTE} (the dump taken "
        "before: none). Roll forward instead, restore the dump (djangoapp.restore) "
        "and roll back, or roll back with force=True"
    )
    assert os.readlink(base / "current") == f"releases/{contract['id']}"
    assert mods["djangoapp.rollback"]("tiny", force="yes")["error"] == (
        "force 'yes' must be True or False"
    )
    forced = mods["djangoapp.rollback"]("tiny", force=True)
    assert forced["result"] is True, forced
    assert forced["contract_migrations"] == [
        {"id": contract["id"], "migrations": [REMOVE_NOTE], "backup": None}
    ]
    assert os.readlink(base / "current") == before


def test_test_mode_says_how_each_pending_migration_would_run(mods, released):
    _, base = released()
    live = os.readlink(base / "current")
    refused = mods["djangoapp.release"]("drop-note", app="tiny", test=True)
    assert refused["result"] is False
    assert refused["failed_step"] == "preflight"
    assert refused["error"].startswith(
        f"migration {REMOVE_NOTE} breaks the release still serving "
    )
    accounted = mods["djangoapp.release"]("code-accounted", app="tiny", test=True)
    assert accounted["result"] is True, accounted
    assert accounted["migrations"]["before_switch"] == ["tinyapp.0003_touch"]
    assert accounted["migrations"]["after_switch"] == []
    assert os.readlink(base / "current") == live
    left = sorted(os.listdir(base / "releases"))
    assert [name for name in left if name != ".venvs"] == [live.split("/")[-1]]


def _item_columns(base):
    with contextlib.closing(sqlite3.connect(base / "shared" / "db.sqlite3")) as db:
        return [row[1] for row in db.execute("PRAGMA table_info(tinyapp_item)")]


def test_a_deferred_migration_waits_for_djangoapp_migrate(mods, released):
    """A fleet's web minions release with defer_after_switch: the migration that
    old code cannot run with waits until djangoapp.migrate, once no old code
    serves; a rollback is refused only once it ran."""
    _, base = released(migrations="after_switch")
    before = os.readlink(base / "current").split("/")[-1]
    ret = mods["djangoapp.release"]("drop-note", app="tiny", defer_after_switch=True)
    assert ret["result"] is True, ret
    assert ret["migrations_deferred"] == [REMOVE_NOTE]
    assert "migrate_after_switch" not in [step["name"] for step in ret["steps"]]
    assert "note" in _item_columns(base)
    assert _ledger(base)[-1]["migrations_deferred"] == [REMOVE_NOTE]
    # nothing crossed yet: the refusal would name none
    assert policy.contracts_since(_ledger(base), before) == []

    migrated = mods["djangoapp.migrate"]("tiny")
    assert migrated["result"] is True, migrated
    assert (migrated["id"], migrated["migrations"]) == (ret["id"], [REMOVE_NOTE])
    assert [s["name"] for s in migrated["steps"]] == ["lock", "migrate"]
    assert "note" not in _item_columns(base)
    entry = _ledger(base)[-1]
    assert (entry["event"], entry["status"], entry["id"]) == (
        "migrate",
        "success",
        ret["id"],
    )
    # applied: a second call has nothing to do, runs and records nothing
    recorded = len(_ledger(base))
    again = mods["djangoapp.migrate"]("tiny")
    assert (again["result"], again["migrations"]) == (True, [])
    assert [s["name"] for s in again["steps"]] == ["lock"]
    assert len(_ledger(base)) == recorded
    refused = mods["djangoapp.rollback"]("tiny")
    assert refused["failed_step"] == "select"
    assert policy.contracts_since(_ledger(base), before) == [
        {"id": ret["id"], "migrations": [REMOVE_NOTE], "backup": None}
    ]


def test_defer_after_switch_must_be_a_boolean(mods, released):
    released()
    refused = mods["djangoapp.release"]("drop-note", app="tiny", defer_after_switch=1)
    assert refused["error"] == "defer_after_switch 1 must be True or False"


def test_a_deferred_migration_that_fails_is_recorded_and_stays_pending(
    mods, released, monkeypatch
):
    _, base = released(migrations="after_switch")
    ret = mods["djangoapp.release"]("drop-note", app="tiny", defer_after_switch=True)
    assert ret["migrations_deferred"] == [REMOVE_NOTE], ret

    engine = sys.modules["djangoapp_deferred"]  # as the loaded engine has it

    def out_of_space(*args):
        raise engine.StepFailed("migrate", "migrate failed (exit 1): no space left")

    monkeypatch.setattr(engine, "migrate", out_of_space)
    failed = mods["djangoapp.migrate"]("tiny")
    assert (failed["result"], failed["failed_step"], failed["error"]) == (
        False,
        "migrate",
        "migrate failed (exit 1): no space left",
    )
    entry = _ledger(base)[-1]
    assert (entry["event"], entry["status"], entry["failed_step"]) == (
        "migrate",
        "failed",
        "migrate",
    )
    assert "note" in _item_columns(base)
    monkeypatch.undo()
    done = mods["djangoapp.migrate"]("tiny")
    assert (done["result"], done["migrations"]) == (True, [REMOVE_NOTE]), done
    assert "note" not in _item_columns(base)
