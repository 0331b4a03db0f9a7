"""
Real releases of a tiny Django project from a local git repository: fetch,
build (uv), preflight, migrations, switch, ledger, rollback and pruning, with
no process manager running (the engine then skips reload and verification).

The tests run in file order and share one app.
"""

import json
import os
import pathlib
import stat

import pytest

pytestmark = pytest.mark.timeout(600) if hasattr(pytest.mark, "timeout") else []


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("tinybase") / "srv"


@pytest.fixture
def app(tiny_app, base):
    return tiny_app("tiny", base)


def _ledger(base):
    path = pathlib.Path(base) / "ledger.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _on_disk(base):
    """Release dirs, without the trash that pruning deletes in the background."""
    return sorted(n for n in os.listdir(base / "releases") if not n.startswith("."))


def _step(ret, name):
    return next(s for s in ret["steps"] if s["name"] == name)


def test_first_release(mods, app, base, tiny_repo):
    ret = mods["djangoapp.release"]("v1.0.0", app="tiny")
    assert ret["result"] is True, ret
    sha = tiny_repo.tags["v1.0.0"]
    assert ret["sha"] == sha
    assert ret["id"] == f"v1.0.0-{sha[:8]}"
    assert ret["previous"] is None
    assert ret["changed"] is True
    assert ret["migrations_ran"] is True
    assert "tinyapp.0001_initial" in ret["pending_migrations"]
    assert ret["backup"] is None
    assert [s["name"] for s in ret["steps"]] == [
        "lock",
        "fetch",
        "resolve",
        "build",
        "preflight",
        "migrate",
        "switch",
        "prune",
    ]
    assert all(s["ok"] and s["seconds"] >= 0 for s in ret["steps"])
    assert any("not running" in n for n in ret["notes"])
    assert ret["service_running"] is False
    # check --deploy warnings are reported, not fatal
    assert any("security.W" in w for w in ret["check_warnings"])

    rdir = base / "releases" / ret["id"]
    assert os.readlink(base / "current") == f"releases/{ret['id']}"
    info = json.loads((rdir / "release.json").read_text())
    assert info["version"] == "v1.0.0" and info["sha"] == sha
    assert info["static_root"] == str(rdir / "src" / "staticfiles")
    assert info["media_root"] == str(base / "shared" / "media")
    css = rdir / "src" / "staticfiles" / "tinyapp" / "site.css"
    assert css.is_file()
    assert not (rdir / ".static-staging").exists()
    # code is root-owned (the building user) and nobody else may write it
    for path in (rdir / "src" / "tinysite" / "settings.py", css, rdir / "venv" / "bin"):
        mode = path.stat().st_mode
        assert path.stat().st_uid == os.getuid()
        assert not mode & (stat.S_IWGRP | stat.S_IWOTH), path
        assert mode & stat.S_IROTH, path
    assert list((rdir / "src" / "tinyapp").glob("__pycache__/*.pyc"))
    (entry,) = _ledger(base)
    assert entry["status"] == "success" and entry["id"] == ret["id"]
    assert entry["migrations_ran"] is True and entry["previous"] is None
    assert entry["user"] and entry["started"] and entry["finished"]


def test_same_version_changes_nothing(mods, app, base):
    before = _ledger(base)
    ret = mods["djangoapp.release"]("v1.0.0", app="tiny")
    assert ret["result"] is True and ret["changed"] is False
    assert "already the current release" in ret["comment"]
    assert _ledger(base) == before


def test_test_mode_reports_and_changes_nothing(mods, app, base, tiny_repo):
    on_disk = _on_disk(base)
    ret = mods["djangoapp.release"]("v1.1.0", app="tiny", test=True)
    assert ret["result"] is True and ret["changed"] is True
    assert ret["comment"].startswith("would release v1.1.0-")
    assert ret["sha"] == tiny_repo.tags["v1.1.0"]
    assert _on_disk(base) == on_disk
    ret = mods["djangoapp.release"]("v1.0.0", app="tiny", test=True)
    assert ret["result"] is True and ret["changed"] is False


def test_unknown_ref_fails_before_anything_changes(mods, loaders, app, base):
    on_disk = _on_disk(base)
    current = os.readlink(base / "current")
    loaders["context"].pop("retcode", None)
    ret = mods["djangoapp.release"]("v9.9.9", app="tiny")
    assert ret["result"] is False
    assert ret["failed_step"] == "resolve"
    assert "not a branch, tag or commit" in ret["error"]
    assert ret["restored"] == [f"current unchanged ({current.split('/')[-1]})"]
    assert loaders["context"].get("retcode") == 1
    assert _on_disk(base) == on_disk
    assert os.readlink(base / "current") == current


def test_code_only_release(mods, app, base, tiny_repo):
    previous = os.readlink(base / "current").split("/")[-1]
    ret = mods["djangoapp.release"]("v1.1.0", app="tiny")
    assert ret["result"] is True, ret
    assert ret["previous"] == {"id": previous, "version": "v1.0.0"}
    assert ret["migrations_ran"] is False
    assert "migrate" not in [s["name"] for s in ret["steps"]]
    # both releases link to the one virtualenv of their requirements, whose
    # scripts name its own path
    old_venv, new_venv = (
        base / "releases" / previous / "venv",
        base / "current" / "venv",
    )
    digest = json.loads((base / "current" / "release.json").read_text())["requirements"]
    shared = base / "releases" / ".venvs" / digest
    assert os.readlink(old_venv) == os.readlink(new_venv) == f"../.venvs/{digest}"
    assert (shared / ".djangoapp-built").read_text() == f"{digest}\n"
    assert (
        f"the virtualenv of these requirements is built already ({digest}): shared"
        in ret["notes"]
    )
    shebang = (new_venv / "bin" / "gunicorn").read_text().splitlines()[0]
    assert shebang == f"#!{shared}/bin/python"
    # nothing of it compiled again: the project's few changed files only
    assert _step(ret, "build")["compiled"] < 20


def test_missing_migration_fails_preflight_and_cleans_up(mods, app, base, tiny_repo):
    current = os.readlink(base / "current")
    ret = mods["djangoapp.release"]("missing-migration", app="tiny")
    assert ret["result"] is False
    assert ret["failed_step"] == "preflight"
    assert "no migration" in ret["error"]
    assert os.readlink(base / "current") == current
    assert not (base / "releases" / ret["id"]).exists()
    assert f"removed the failed release {ret['id']}" in ret["restored"]
    last = _ledger(base)[-1]
    assert last["id"] == ret["id"] and last["status"] == "failed"
    assert last["failed_step"] == "preflight"


def test_broken_import_fails_preflight(mods, app, base):
    ret = mods["djangoapp.release"]("broken-import", app="tiny")
    assert ret["result"] is False and ret["failed_step"] == "preflight"
    assert "no_such_module" in ret["error"]
    # the secret key never shows, even in a traceback
    assert "unit-test-secret" not in json.dumps(ret)


def test_static_files_without_a_static_root_fail_preflight(mods, app, base):
    current = os.readlink(base / "current")
    ret = mods["djangoapp.release"]("no-static-root", app="tiny")
    assert (ret["result"], ret["failed_step"]) == (False, "preflight")
    assert ret["error"].startswith(
        "collectstatic failed: RuntimeError: STATIC_ROOT is not set, and "
        "django.contrib.staticfiles is installed"
    )
    assert 'STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT")' in ret["error"]
    assert os.readlink(base / "current") == current


def test_release_with_migration(mods, app, base):
    ret = mods["djangoapp.release"]("v1.2.0", app="tiny")
    assert ret["result"] is True, (ret.get("failed_step"), ret.get("error"))
    assert ret["migrations_ran"] is True
    assert ret["pending_migrations"] == ["tinyapp.0002_item_note"]
    # A column with a database default: the code still serving keeps working.
    assert ret["migrations"] == {
        "policy": "safe",
        "before_switch": ["tinyapp.0002_item_note"],
        "after_switch": [],
        "incompatible": {},
        "markers": {},
    }
    assert _step(ret, "migrate")["migrations"] == ["tinyapp.0002_item_note"]
    assert _step(ret, "migrate")["in_preflight_process"] is True
    assert _ledger(base)[-1]["migrations"] == ret["migrations"]
    # keep_releases=2: v1.0.0 goes, failed attempts never stayed
    assert _on_disk(base) == sorted([ret["id"], ret["previous"]["id"]])
    assert _step(ret, "prune")["removed"]


def test_status_and_releases(mods, app, base):
    st = mods["djangoapp.status"]("tiny")
    current = os.readlink(base / "current").split("/")[-1]
    assert st["current"] == current and st["version"] == "v1.2.0"
    assert st["deployed_how"] == "release" and st["deployed_by"]
    assert st["service"]["running"] is False and st["workers"] == []
    assert st["release_running"] is None
    rel = mods["djangoapp.releases"]("tiny")
    assert rel["current"] == current
    assert rel["previous_good"].startswith("v1.1.0-")
    assert {r["id"] for r in rel["on_disk"]} == {current, rel["previous_good"]}
    assert [e["status"] for e in rel["history"]].count("failed") >= 3


def test_static_location_of_live_release(mods, app, base):
    loc = mods["djangoapp.static_location"]("tiny")
    assert loc["static"] == {
        "url": "/static/",
        "path": str(base / "current" / "src" / "staticfiles"),
    }
    assert loc["media"]["path"] == str(base / "shared" / "media")


def test_rollback_and_roll_forward(mods, app, base):
    before = os.readlink(base / "current").split("/")[-1]
    ret = mods["djangoapp.rollback"]("tiny")
    assert ret["result"] is True, ret
    assert ret["id"].startswith("v1.1.0-") and ret["version"] == "v1.1.0"
    assert [s["name"] for s in ret["steps"]] == ["lock", "select", "switch"]
    assert ret["seconds"] < 5
    assert os.readlink(base / "current") == f"releases/{ret['id']}"
    last = _ledger(base)[-1]
    assert last["event"] == "rollback" and last["from"] == before
    assert mods["djangoapp.status"]("tiny")["deployed_how"] == "rollback"
    # nothing older is left to roll back to: v1.2.0 was rolled away from
    ret2 = mods["djangoapp.rollback"]("tiny")
    assert ret2["result"] is False and ret2["failed_step"] == "select"
    # an explicit target works, and releasing a built good release reuses it
    ret3 = mods["djangoapp.release"]("v1.2.0", app="tiny")
    assert ret3["result"] is True
    assert _step(ret3, "build").get("reused") is True
    assert os.readlink(base / "current") == f"releases/{before}"
    ret4 = mods["djangoapp.rollback"]("tiny", to=ret["id"])
    assert ret4["result"] is True and ret4["id"] == ret["id"]
    # a version names its newest good release on disk
    assert mods["djangoapp.release"]("v1.2.0", app="tiny")["result"] is True
    ret5 = mods["djangoapp.rollback"]("tiny", to="v1.1.0")
    assert ret5["result"] is True and ret5["id"] == ret["id"]
    # never to a release that failed (nothing of it stays on disk)
    ret6 = mods["djangoapp.rollback"]("tiny", to="no-static-root")
    assert (ret6["result"], ret6["failed_step"]) == (False, "select")
    assert ret6["error"] == (
        "no-static-root is neither a release on disk nor the version of one"
    )
    assert os.readlink(base / "current") == f"releases/{ret['id']}"


def test_branch_release_follows_new_commits(mods, app, base, tiny_repo):
    ret = mods["djangoapp.release"]("main", app="tiny")
    assert ret["result"] is True, ret
    assert ret["sha"] == tiny_repo.tags["v1.2.0"]
    tiny_repo.write(
        {
            "tinyapp/views.py": "from django.http import HttpResponse\n"
            "def index(request):\n    return HttpResponse('main 2')\n"
        }
    )
    sha = tiny_repo.commit("main moves on")
    plan = mods["djangoapp.release"]("main", app="tiny", test=True)
    assert plan["result"] is True and plan["changed"] is True
    assert plan["sha"] == sha
    ret = mods["djangoapp.release"]("main", app="tiny")
    assert ret["result"] is True and ret["sha"] == sha and ret["changed"] is True


def test_the_engine_loads_each_of_its_modules_after_those_it_imports():
    """``load_engine`` loads ENGINE_MODULES anew, in their order: a module left out,
    or loaded before one it imports, would run the code an earlier formula left.
    Read from the files, not imported: importing djangoapp_release loads the engine
    again, and the loader's copy would no longer be the one in ``sys.modules``."""
    import ast

    utils = pathlib.Path(__file__).resolve().parents[2] / "_utils"
    release = ast.parse((utils / "djangoapp_release.py").read_text())
    order = next(
        list(ast.literal_eval(node.value))
        for node in release.body
        if isinstance(node, ast.Assign)
        and [target.id for target in node.targets] == ["ENGINE_MODULES"]
    )
    for position, name in enumerate(order):
        tree = ast.parse((utils / f"{name}.py").read_text())
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("djangoapp_")
        }
        assert imported - set(order[:position]) == set(), name
