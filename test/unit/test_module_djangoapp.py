"""
Unit tests of the djangoapp execution module and its engine (``_utils``),
loaded through Salt's loader where Salt's dunders matter and imported from
the file where plain functions and classes are tested.
"""

import importlib.util
import json
import os
import pathlib
import pwd
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import djangoapp_common
import djangoapp_config
import djangoapp_disk
import djangoapp_django
import djangoapp_files
import djangoapp_flow
import djangoapp_host
import djangoapp_procs
import djangoapp_source
import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

REPO = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"djangoapp_test_{name}", REPO / "_utils" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rules = _load("djangoapp_validate")


# --------------------------------------------------------------------------
# refs and names

GOOD_REFS = [
    "v1.0.0",
    "main",
    "feature/login-form",
    "release-2024.01_rc1",
    "1607192a853ded18c21f7671ce009a18d56bfa8c",
    "a",
]
BAD_REFS = [
    "",
    " ",
    None,
    "v1;rm -rf /",
    "$(id)",
    "`id`",
    "-x",
    "--upload-pack=touch /tmp/x",
    "a..b",
    "has space",
    "tab\there",
    "line\nbreak",
    "ends/",
    "x.lock",
    "a|b",
    "a&b",
    ">out",
    "refs/../../etc",
    "/abs",
    "a//b",
    ".hidden",
    "dir/.hidden",
    "v1~1",
    "v1^{tree}",
    "@{-1}",
    "x" * 201,
]


@pytest.mark.parametrize("ref", GOOD_REFS)
def test_ref_accepted(ref):
    assert rules.ref_problem(ref) is None
    assert rules.ref(ref) == ref


@pytest.mark.parametrize("ref", BAD_REFS)
def test_ref_rejected_naming_the_argument(ref):
    assert rules.ref_problem(ref)
    with pytest.raises(SaltInvocationError, match=r"^version "):
        rules.ref(ref, "version")


def test_ref_rejection_names_the_characters():
    assert "';'" in rules.ref_problem("v1;x")
    assert "'$'" in rules.ref_problem("$(id)")


@pytest.mark.parametrize("name", ["demo", "a", "shop_2", "a" * 30])
def test_app_name_accepted(name):
    assert rules.app_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Demo", "2shop", "my-app", "a" * 31, "a b", "../x"]
)
def test_app_name_rejected(name):
    with pytest.raises(SaltInvocationError, match=r"^app "):
        rules.app_name(name)


def test_release_id_for_replaces_slashes():
    assert (
        djangoapp_source.release_id("feature/x", "0123456789abcdef")
        == "feature_x-01234567"
    )


@pytest.mark.parametrize("value", ["../etc", "-rf", "a/b", "", ".x"])
def test_release_id_rejected(value):
    with pytest.raises(SaltInvocationError, match="to "):
        rules.release_id(value, "to")


# --------------------------------------------------------------------------
# pillar validation


def good_pillar():
    return {
        "apps": {
            "demo": {
                "repo": "https://git.example.com/demo.git",
                "version": "v1.0.0",
                "python": "python3",
                "requirements": "requirements/prod.txt",
                "pip_extra": ["gunicorn", "uvicorn-worker>=0.2"],
                "settings_module": "demosite.settings",
                "wsgi": "demosite.wsgi:application",
                "asgi": None,
                "project_dir": ".",
                "server_names": ["example.com", "www.example.com"],
                "env": {"DJANGO_SECRET_KEY": "x" * 50, "FEATURE_X": "1"},
                "database": {
                    "engine": "postgresql",
                    "name": "demo",
                    "user": "demo",
                    "password": "pw",
                    "host": "localhost",
                    "port": 5432,
                },
                "cache": {"engine": "redis"},
                "keep_releases": 5,
                "health_path": "/healthz/",
                "process_manager": "systemd",
                "tls": {"mode": "acme", "email": "ops@example.com"},
                "workers": 3,
            }
        },
        "firewall": {"enabled": True},
        "ssh": {},
        "lookup": {"anything": 1},
    }


def test_pillar_accepts_a_good_pillar(utils):
    assert utils["djangoapp_validate.pillar"](good_pillar()) is True


def test_pillar_accepts_engine_none_without_credentials():
    pillar = good_pillar()
    pillar["apps"]["demo"]["database"] = {"engine": "none"}
    assert rules.pillar(pillar) is True


def _problem(mutate):
    pillar = good_pillar()
    mutate(pillar["apps"]["demo"], pillar)
    with pytest.raises(SaltInvocationError) as info:
        rules.pillar(pillar)
    return str(info.value)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda a, p: a["database"].pop("password"),
            "djangoapp:apps:demo:database:password is required",
        ),
        (lambda a, p: a.pop("repo"), "djangoapp:apps:demo:repo is required"),
        (lambda a, p: a.pop("version"), "djangoapp:apps:demo:version is required"),
        (
            lambda a, p: a.update(version="v1;reboot"),
            "djangoapp:apps:demo:version 'v1;reboot' contains characters",
        ),
        (
            lambda a, p: a.update(version="-x"),
            "djangoapp:apps:demo:version '-x' must not",
        ),
        (
            lambda a, p: a.update(reqirements="r.txt"),
            "djangoapp:apps:demo:reqirements is not a known key",
        ),
        (
            lambda a, p: a.pop("settings_module"),
            "djangoapp:apps:demo:settings_module is required",
        ),
        (
            lambda a, p: a.update(settings_module="demo-site.settings"),
            "djangoapp:apps:demo:settings_module",
        ),
        (
            lambda a, p: a.pop("wsgi"),
            "djangoapp:apps:demo:wsgi is required unless asgi",
        ),
        (lambda a, p: a.update(wsgi="demosite wsgi"), "djangoapp:apps:demo:wsgi"),
        (
            lambda a, p: a.update(asgi="demosite.asgi:application"),
            "djangoapp:apps:demo:asgi set either wsgi or asgi",
        ),
        (
            lambda a, p: a.update(requirements="../secret.txt"),
            "djangoapp:apps:demo:requirements",
        ),
        (
            lambda a, p: a.update(requirements="/etc/passwd"),
            "djangoapp:apps:demo:requirements",
        ),
        (lambda a, p: a.update(project_dir="../x"), "djangoapp:apps:demo:project_dir"),
        (
            lambda a, p: a.update(pip_extra=["--index-url=http://evil"]),
            "djangoapp:apps:demo:pip_extra:0",
        ),
        (
            lambda a, p: a.update(pip_extra="gunicorn"),
            "djangoapp:apps:demo:pip_extra must",
        ),
        (
            lambda a, p: a["env"].update(DEBUG=1),
            "djangoapp:apps:demo:env:DEBUG must be a string",
        ),
        (lambda a, p: a["env"].update({"1BAD": "x"}), "djangoapp:apps:demo:env:1BAD"),
        (
            lambda a, p: a["database"].update(engine="oracle"),
            "djangoapp:apps:demo:database:engine must be one of",
        ),
        (
            lambda a, p: a["database"].update(port=70000),
            "djangoapp:apps:demo:database:port",
        ),
        (
            lambda a, p: a["database"].update(name="demo; drop"),
            "djangoapp:apps:demo:database:name",
        ),
        (
            lambda a, p: a["cache"].update(engine="couchbase"),
            "djangoapp:apps:demo:cache:engine",
        ),
        (lambda a, p: a.update(keep_releases=0), "djangoapp:apps:demo:keep_releases"),
        (lambda a, p: a.update(keep_releases="5"), "djangoapp:apps:demo:keep_releases"),
        (
            lambda a, p: a.update(health_path="healthz"),
            "djangoapp:apps:demo:health_path",
        ),
        (
            lambda a, p: a.update(server_names=["example.com; return 200"]),
            "djangoapp:apps:demo:server_names:0",
        ),
        (
            lambda a, p: a.update(process_manager="runit"),
            "djangoapp:apps:demo:process_manager",
        ),
        (
            lambda a, p: a.update(check_deploy_fail_level="warn"),
            "djangoapp:apps:demo:check_deploy_fail_level",
        ),
        (lambda a, p: a.update(python="-c"), "djangoapp:apps:demo:python"),
        (
            lambda a, p: p["apps"].update({"Bad-Name": dict(a)}),
            "djangoapp:apps:Bad-Name",
        ),
        (lambda a, p: p.update(firewal={}), "djangoapp:firewal is not a known key"),
        (lambda a, p: p.update(ssh="yes"), "djangoapp:ssh must be a mapping"),
        (lambda a, p: p.update(apps=["demo"]), "djangoapp:apps must be a mapping"),
    ],
)
def test_pillar_problem_names_the_key(mutate, expected):
    assert expected in _problem(mutate)


def test_pillar_reports_every_problem():
    def mutate(app, pillar):
        app.pop("repo")
        app["database"].pop("password")

    message = _problem(mutate)
    assert "djangoapp:apps:demo:repo is required" in message
    assert "djangoapp:apps:demo:database:password is required" in message


def test_validate_pillar_through_the_module(mods):
    assert mods["djangoapp.validate_pillar"](djangoapp=good_pillar()) is True
    pillar = good_pillar()
    del pillar["apps"]["demo"]["database"]["password"]
    with pytest.raises(SaltInvocationError, match="database:password is required"):
        mods["djangoapp.validate_pillar"](djangoapp=pillar)


def test_allowed_keys_are_listed_once():
    assert not set(rules.APP_KEYS) & set(rules.RESERVED_APP_KEYS)
    for key in (
        "process_manager",
        "tls",
        "workers",
        "timeout",
        "graceful_timeout",
        "check_deploy_fail_level",
        "media",
        "static",
    ):
        assert key in rules.APP_KEYS + rules.RESERVED_APP_KEYS


# --------------------------------------------------------------------------
# the module's argument handling


def refused(loaders, call, *args, **kwargs) -> str:
    """The error of a call the module refuses: one line in the return, and a
    non-zero exit code (never an exception, whose docstring Salt prints)."""
    loaders["context"].pop("retcode", None)
    ret = call(*args, **kwargs)
    assert set(ret) == {"result", "error"} and ret["result"] is False, ret
    assert loaders["context"]["retcode"] == 1
    return ret["error"]


def test_release_rejects_bad_version_before_touching_disk(mods, loaders, make_app):
    cfg = make_app("demo")
    for bad in ["v1;id", "$(id)", "-x", "a..b", "a b"]:
        error = refused(loaders, mods["djangoapp.release"], version=bad, app="demo")
        assert error.startswith(f"version {bad!r} "), error
    assert not os.path.exists(os.path.join(cfg["base_dir"], "repo.git"))
    assert not os.path.exists(os.path.join(cfg["base_dir"], "ledger.jsonl"))


def test_app_may_be_left_out_with_one_app(mods, make_app):
    make_app("solo")
    assert mods["djangoapp.static_location"]() == {
        "static": None,
        "media": None,
        "release": None,
    }


def test_app_required_with_two_apps(mods, loaders, make_app):
    make_app("one")
    make_app("two")
    error = refused(loaders, mods["djangoapp.status"])
    assert error == "app is required: this host has 2 apps: one, two"


def test_app_required_with_no_app(mods, loaders, config_dir):
    error = refused(loaders, mods["djangoapp.releases"])
    assert error.startswith("app is required: no app is configured in ")


def test_bad_app_name(mods, loaders, make_app):
    make_app("demo")
    assert refused(loaders, mods["djangoapp.status"], "../etc").startswith(
        "app '../etc' is not a valid app name"
    )


def test_an_unknown_argument_is_named_not_ignored(mods, loaders, make_app):
    """``verison=`` must not release the pillar's version."""
    cfg = make_app("demo")
    error = refused(loaders, mods["djangoapp.release"], verison="v2", app="demo")
    assert error == (
        "unknown argument 'verison': djangoapp.release takes version, app, test, "
        "from_pillar, version_policy, defer_after_switch"
    )
    assert not os.path.exists(os.path.join(cfg["base_dir"], "ledger.jsonl"))
    error = refused(loaders, mods["djangoapp.status"], "demo", apps="demo")
    assert error == "unknown argument 'apps': djangoapp.status takes app"
    error = refused(loaders, mods["djangoapp.status"], "demo", "v2")
    assert error == "too many arguments ('v2'): djangoapp.status takes app"
    error = refused(loaders, mods["djangoapp.release"], "demo", version="v2")
    assert error == (
        "multiple values for argument 'version': djangoapp.release takes version, "
        "app, test, from_pillar, version_policy, defer_after_switch"
    )
    # Salt's own keyword arguments pass
    assert mods["djangoapp.releases"]("demo", __pub_jid="1")["current"] is None


def test_unknown_app(mods, make_app):
    from salt.exceptions import CommandExecutionError

    make_app("demo")
    with pytest.raises(CommandExecutionError, match="not configured"):
        mods["djangoapp.status"]("other")


def test_rollback_rejects_bad_release_id(mods, loaders, make_app):
    make_app("demo")
    error = refused(loaders, mods["djangoapp.rollback"], "demo", to="../../etc")
    assert error == "to '../../etc' is not a valid release id"


def test_rollback_without_history_fails_with_retcode(mods, loaders, make_app):
    make_app("demo")
    loaders["context"].pop("retcode", None)
    ret = mods["djangoapp.rollback"]("demo")
    assert ret["result"] is False
    assert ret["failed_step"] == "select"
    assert ret["error"] == "no previous good release on disk to roll back to"
    assert ret["restored"] == ["current unchanged (nothing deployed yet)"]


def test_failed_rollback_sends_a_failure_event(make_app):
    cfg = make_app("demo")
    app = djangoapp_config.load_app(
        "demo", str(pathlib.Path(cfg["env_file"]).parents[1])
    )
    sent = []
    host = djangoapp_host.Host(
        lambda argv, **kwargs: {"retcode": 1},
        lambda tag, data: sent.append((tag, data)),
    )
    ret = djangoapp_flow.rollback(app, host, user="alice", jid="20261204")
    for thread in host._events:
        thread.join()
    assert ret["failed_step"] == "select"
    assert [tag for tag, _ in sent] == ["djangoapp/release/failure"]
    data = sent[0][1]
    assert (data["action"], data["failed_step"], data["user"], data["jid"]) == (
        "rollback",
        "select",
        "alice",
        "20261204",
    )
    assert data["restored"] == ret["restored"]


def test_every_public_function_has_a_cli_example(mods):
    names = [n for n in mods if n.startswith("djangoapp.")]
    assert {
        "djangoapp.release",
        "djangoapp.rollback",
        "djangoapp.status",
        "djangoapp.releases",
        "djangoapp.static_location",
        "djangoapp.reload",
        "djangoapp.validate_pillar",
        "djangoapp.derive_settings",
    } <= set(names)
    for name in names:
        assert "CLI Example" in mods[name].__doc__, name


# --------------------------------------------------------------------------
# ledger


def test_ledger_round_trip_and_tolerance(tmp_path):
    path = tmp_path / "ledger.jsonl"
    assert djangoapp_disk.ledger_read(str(path)) == []
    djangoapp_disk.ledger_append(str(path), {"id": "a", "status": "success"})
    with open(path, "a") as handle:
        handle.write("not json\n\n[1, 2]\n")
    djangoapp_disk.ledger_append(str(path), {"id": "b", "status": "failed"})
    entries = djangoapp_disk.ledger_read(str(path))
    assert [e["id"] for e in entries] == ["a", "b"]
    assert path.read_text().count("\n") == 5


def _entries(*items):
    out = []
    for item in items:
        kind, rid, status = item[0], item[1], item[2]
        entry = {
            "event": kind,
            "id": rid,
            "status": status,
            "finished": "2026-01-01T00:00:00+00:00",
        }
        if kind == "rollback":
            entry["from"] = item[3]
        out.append(entry)
    return out


def test_rollback_target_is_previous_success_in_ledger_order():
    entries = _entries(
        ("release", "r1", "success"),
        ("release", "r2", "success"),
        ("release", "r3", "failed"),
        ("release", "r4", "rolled_back"),
        ("release", "r5", "success"),
    )
    on_disk = ["r1", "r2", "r5"]
    assert djangoapp_disk.rollback_target(entries, "r5", on_disk) == "r2"
    # order is the ledger's, not names or mtimes
    assert djangoapp_disk.rollback_target(entries, "r5", ["r1", "r5"]) == "r1"
    assert djangoapp_disk.rollback_target(entries, "r1", on_disk) == "r5"


def test_rolled_away_release_is_not_a_rollback_target():
    entries = _entries(
        ("release", "r1", "success"),
        ("release", "r2", "success"),
        ("release", "r3", "success"),
        ("rollback", "r2", "success", "r3"),
    )
    assert djangoapp_disk.rollback_target(entries, "r2", ["r1", "r2", "r3"]) == "r1"
    # released again: good again
    entries += _entries(("release", "r3", "success"))
    assert djangoapp_disk.rollback_target(entries, "r3", ["r1", "r2", "r3"]) == "r2"


def test_last_deploy_of_sees_rollbacks():
    entries = _entries(
        ("release", "r1", "success"),
        ("release", "r2", "success"),
        ("rollback", "r1", "success", "r2"),
    )
    assert djangoapp_disk.last_deploy_of(entries, "r1")["event"] == "rollback"


# --------------------------------------------------------------------------
# pruning


def _layout_with(tmp_path, names):
    layout = djangoapp_disk.Layout(str(tmp_path / "base"))
    for name in names:
        os.makedirs(os.path.join(layout.releases, name, "src"))
    return layout


def test_prune_keeps_n_successful_and_drops_failed(tmp_path):
    names = ["r1", "r2", "bad", "r3", "r4", "half"]
    layout = _layout_with(tmp_path, names)
    entries = _entries(
        ("release", "r1", "success"),
        ("release", "r2", "success"),
        ("release", "bad", "failed"),
        ("release", "r3", "success"),
        ("release", "r4", "success"),
    )
    removed = djangoapp_disk.prune(layout, entries, 2, "r4", "r3", in_use=set())
    assert sorted(removed) == ["bad", "half", "r1", "r2"]
    assert layout.on_disk() == ["r3", "r4"]


def test_prune_never_removes_current_previous_or_in_use(tmp_path):
    layout = _layout_with(tmp_path, ["r1", "r2", "r3", "r4", "r5"])
    entries = _entries(*[("release", f"r{i}", "success") for i in range(1, 6)])
    # current r2 (rolled back), previous good r1, r3 used by a process
    removed = djangoapp_disk.prune(layout, entries, 1, "r2", "r1", in_use={"r3"})
    assert sorted(removed) == ["r4", "r5"]
    assert layout.on_disk() == ["r1", "r2", "r3"]
    # keep=3: the protected ones count, the oldest unprotected goes first
    layout = _layout_with(tmp_path / "again", ["r1", "r2", "r3", "r4", "r5"])
    removed = djangoapp_disk.prune(layout, entries, 3, "r5", "r4", in_use=set())
    assert removed == ["r1", "r2"]


def test_prune_failed_releases_do_not_count(tmp_path):
    layout = _layout_with(tmp_path, ["r1", "f1", "f2", "f3", "r2"])
    entries = _entries(
        ("release", "r1", "success"),
        ("release", "f1", "failed"),
        ("release", "f2", "rolled_back"),
        ("release", "f3", "failed"),
        ("release", "r2", "success"),
    )
    removed = djangoapp_disk.prune(layout, entries, 2, "r2", "r1", in_use=set())
    assert sorted(removed) == ["f1", "f2", "f3"]
    assert layout.on_disk() == ["r1", "r2"]


def test_releases_in_use_sees_a_process_cwd(tmp_path):
    layout = _layout_with(tmp_path, ["r1", "r2"])
    proc = subprocess.Popen(
        ["sleep", "30"], cwd=os.path.join(layout.releases, "r1", "src")
    )
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if "r1" in djangoapp_procs.releases_in_use(layout):
                break
            time.sleep(0.05)
        used = djangoapp_procs.releases_in_use(layout)
        assert "r1" in used and "r2" not in used
        entries = _entries(("release", "r1", "success"), ("release", "r2", "success"))
        assert djangoapp_disk.prune(layout, entries, 1, "r2", None) == []
    finally:
        proc.kill()
        proc.wait()


def _wait_exec(pid):
    """Right after exec, /proc/<pid>/environ may still read empty."""
    deadline = time.monotonic() + 5
    while not djangoapp_procs.proc_environ(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_master_birth_release_pins_without_pwd(tmp_path):
    layout = _layout_with(tmp_path, ["r1", "r2"])
    started = time.time()
    entries = [
        {
            "event": "release",
            "id": "r1",
            "status": "success",
            "finished": datetime.fromtimestamp(started - 60, UTC).isoformat(),
        },
        {
            "event": "release",
            "id": "r2",
            "status": "success",
            "finished": datetime.fromtimestamp(started + 60, UTC).isoformat(),
        },
    ]
    env = {k: v for k, v in os.environ.items() if k != "PWD"}
    proc = subprocess.Popen(["sleep", "30"], env=env)
    try:
        _wait_exec(proc.pid)
        assert djangoapp_procs.master_birth_release(layout, entries, proc.pid) == "r1"
    finally:
        proc.kill()
        proc.wait()
    for pwd_value, expected in (
        (layout.current + "/src", None),
        (layout.base, None),
        (layout.release("r1") + "/src", "r1"),
    ):
        env["PWD"] = pwd_value
        proc = subprocess.Popen(["sleep", "30"], env=env)
        try:
            _wait_exec(proc.pid)
            assert (
                djangoapp_procs.master_birth_release(layout, entries, proc.pid)
                == expected
            )
        finally:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------
# lock

HOLDER = r"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("e", sys.argv[1])
e = importlib.util.module_from_spec(spec); spec.loader.exec_module(e)
e = e.load_engine()["djangoapp_disk"]
holder = {"pid": __import__("os").getpid(), "action": "release", "version": "v9.9.9",
          "user": "alice", "jid": "123", "started": "now"}
lock = e.ReleaseLock(sys.argv[2], holder)
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _hold_lock(path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLDER,
            str(REPO / "_utils" / "djangoapp_release.py"),
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_contention_and_takeover(tmp_path):
    path = tmp_path / ".release.lock"
    holder = _hold_lock(path)
    try:
        assert djangoapp_disk.ReleaseLock.is_held(str(path))
        lock = djangoapp_disk.ReleaseLock(
            str(path), {"pid": os.getpid(), "version": "v1"}
        )
        with pytest.raises(djangoapp_disk.LockBusy) as info:
            lock.acquire()
        message = str(info.value)
        assert f"pid={holder.pid}" in message
        assert (
            "version=v9.9.9" in message
            and "user=alice" in message
            and "jid=123" in message
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the flock with the process: the next release takes over
    assert not djangoapp_disk.ReleaseLock.is_held(str(path))
    lock = djangoapp_disk.ReleaseLock(str(path), {"pid": os.getpid(), "version": "v1"})
    lock.acquire()
    try:
        assert lock.stale["pid"] == holder.pid
        assert lock.stale["version"] == "v9.9.9"
        assert json.loads(path.read_text())["version"] == "v1"
    finally:
        lock.release()
    assert path.read_text() == ""


def test_lock_waits_for_its_holder_when_asked(tmp_path):
    path = tmp_path / ".release.lock"
    holder = _hold_lock(path)
    lock = djangoapp_disk.ReleaseLock(
        str(path), {"pid": os.getpid(), "action": "reload"}
    )
    started = time.monotonic()
    with pytest.raises(djangoapp_disk.LockBusy, match=f"pid={holder.pid}"):
        lock.acquire(wait=0.6)
    assert time.monotonic() - started >= 0.6
    threading.Timer(0.5, holder.kill).start()
    try:
        lock.acquire(wait=30)
    finally:
        holder.wait()
    try:
        assert json.loads(path.read_text())["action"] == "reload"
    finally:
        lock.release()


def test_release_refused_while_locked(mods, make_app):
    cfg = make_app("demo", repo="file:///nonexistent")
    holder = _hold_lock(os.path.join(cfg["base_dir"], ".release.lock"))
    try:
        ret = mods["djangoapp.release"](version="v1.0.0", app="demo")
    finally:
        holder.kill()
        holder.wait()
    assert ret["result"] is False
    assert ret["failed_step"] == "lock"
    assert "v9.9.9" in ret["error"] and f"pid={holder.pid}" in ret["error"]
    assert not os.path.exists(os.path.join(cfg["base_dir"], "repo.git"))


# --------------------------------------------------------------------------
# switch


def test_switch_is_atomic_and_relative(tmp_path):
    layout = _layout_with(tmp_path, ["a", "b"])
    djangoapp_disk.switch_current(layout, "a")
    assert os.readlink(layout.current) == "releases/a"
    seen = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            target = os.path.realpath(layout.current)
            seen.append(os.path.isdir(target))

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(300):
        djangoapp_disk.switch_current(layout, "b" if i % 2 == 0 else "a")
    stop.set()
    thread.join()
    assert seen and all(seen)
    assert layout.current_id() == "a"
    assert not os.path.lexists(layout.current + ".tmp")
    # a stale current.tmp from a killed run does not get in the way
    os.symlink("releases/b", layout.current + ".tmp")
    djangoapp_disk.switch_current(layout, "b")
    assert layout.current_id() == "b"


# --------------------------------------------------------------------------
# static_location


def _deployed(
    tmp_path,
    make_app,
    static_root,
    media_root="/srv/djangoapp/demo/shared/media",
    static_url="/static/",
    media_url="/media/",
):
    base = tmp_path / "srv" / "demo"
    cfg = make_app("demo", base_dir=base)
    layout = djangoapp_disk.Layout(str(base))
    rid = "v1.0.0-01234567"
    os.makedirs(layout.release(rid))
    root = static_root.format(release=layout.release(rid))
    with open(os.path.join(layout.release(rid), "release.json"), "w") as handle:
        json.dump(
            {
                "id": rid,
                "static_url": static_url,
                "static_root": root,
                "media_url": media_url,
                "media_root": media_root,
            },
            handle,
        )
    djangoapp_disk.switch_current(layout, rid)
    return cfg, layout


def test_static_location_maps_through_current(mods, make_app, tmp_path):
    cfg, layout = _deployed(tmp_path, make_app, "{release}/src/staticfiles")
    loc = mods["djangoapp.static_location"]("demo")
    assert loc["static"] == {
        "url": "/static/",
        "path": layout.current + "/src/staticfiles",
    }
    assert loc["media"] == {
        "url": "/media/",
        "path": "/srv/djangoapp/demo/shared/media",
    }


def test_static_location_outside_release_is_kept(mods, make_app, tmp_path):
    _deployed(tmp_path, make_app, "/var/www/demo/static")
    loc = mods["djangoapp.static_location"]("demo")
    assert loc["static"]["path"] == "/var/www/demo/static"


@pytest.mark.parametrize(
    ("settings", "static", "media"),
    [
        # Django's defaults where a project takes no uploads: MEDIA_URL "/",
        # MEDIA_ROOT "" (release.json: None)
        ({"media_url": "/", "media_root": None}, True, False),
        ({"media_url": None, "media_root": "/srv/media"}, True, False),
        ({"media_url": "/media/", "media_root": None}, True, False),
        ({"media_url": "/", "media_root": "/srv/media"}, True, False),
        # static files on a CDN, or served by the app itself without a STATIC_ROOT
        ({"static_url": "https://cdn.example.com/static/"}, False, True),
        ({"static_url": "//cdn.example.com/static/"}, False, True),
        ({"static_root": ""}, False, True),
        ({"static_url": "/"}, False, True),
    ],
)
def test_static_location_leaves_out_what_nginx_cannot_serve(
    mods, make_app, tmp_path, settings, static, media
):
    settings = dict(settings)
    _deployed(
        tmp_path,
        make_app,
        settings.pop("static_root", "/var/www/demo/static"),
        **settings,
    )
    loc = mods["djangoapp.static_location"]("demo")
    assert (loc["static"] is not None, loc["media"] is not None) == (static, media)


def test_static_location_does_not_map_a_sibling_prefix(tmp_path):
    layout = djangoapp_disk.Layout(str(tmp_path))
    path = layout.release("v1") + "0/static"
    assert djangoapp_files.map_to_current(layout, "v1", path) == path


# --------------------------------------------------------------------------
# secrets


def test_redactor_hides_secret_values_and_url_passwords():
    redact = djangoapp_common.Redactor.from_env(
        {
            "DJANGO_SECRET_KEY": "very-secret-value",
            "DATABASE_URL": "postgres://demo:p%40ss-word@localhost:5432/demo",
            "DJANGO_ALLOWED_HOSTS": "example.com",
        }
    )
    text = redact(
        "key very-secret-value url postgres://demo:p%40ss-word@localhost pw p@ss-word "
        "host example.com"
    )
    assert "very-secret-value" not in text
    assert "p%40ss-word" not in text and "p@ss-word" not in text
    assert "example.com" in text


def test_parse_database_url():
    db = djangoapp_django.parse_database_url(
        "postgres://u%2Bx:p%40w@db.local:5433/name"
    )
    assert db == {
        "engine": "postgresql",
        "user": "u+x",
        "password": "p@w",
        "host": "db.local",
        "port": 5433,
        "name": "name",
    }
    assert (
        djangoapp_django.parse_database_url("mysql://u:p@localhost/n")["engine"]
        == "mysql"
    )


def test_commands_of_the_app_user_run_through_setpriv():
    """The app user's commands drop to its uid, gid and groups without a login
    session; the caller's environment and working directory are kept."""
    calls = []

    def run_all(argv, **kwargs):
        calls.append((argv, kwargs))
        done = subprocess.run(
            argv,
            cwd=kwargs.get("cwd"),
            env=kwargs.get("env"),
            capture_output=True,
            text=True,
            check=False,
        )
        return {"retcode": done.returncode, "stdout": done.stdout, "stderr": ""}

    host = djangoapp_host.Host(run_all)
    nobody = pwd.getpwnam("nobody")
    ret = host.run(
        ["sh", "-c", 'echo "$(id -u) $(id -g) $MARK $PWD"'],
        runas="nobody",
        cwd="/tmp",
        env={"PATH": djangoapp_common.SAFE_PATH, "MARK": "kept"},
        clean_env=True,
    )
    assert ret["stdout"].split() == [
        str(nobody.pw_uid),
        str(nobody.pw_gid),
        "kept",
        "/tmp",
    ]
    argv, kwargs = calls[-1]
    assert os.path.basename(argv[0]) == "setpriv" and "runas" not in kwargs
    with pytest.raises(CommandExecutionError, match="no-such-user"):
        host.run(["true"], runas="no-such-user")
