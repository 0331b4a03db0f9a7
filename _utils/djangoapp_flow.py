"""
The procedures of the release engine: a release and a rollback, each a list of
named steps over one ``Run``, and the one failure handler that puts things back.

::

    release:  lock | fetch resolve build preflight backup migrate
                   | switch reload verify migrate_after_switch health | prune
    rollback: lock | select | switch reload verify health migrations | keep_warm

Like Capistrano's flow: starting (``lock``), updating (up to ``migrate``: the
live release still serves, and nothing it uses has changed but the database),
publishing (``switch`` to ``health``: the new release is live; a failure here
switches back) and finishing (``prune``, once the ledger says the release
succeeded). A step is a function of the run and of its own record in the
result (``info``: what it reports beside its name, time and outcome); a step
with a condition (``when``) is left out, unrecorded, when it does not apply.
"""

import collections
import logging
import os
import time

from djangoapp_build import Builder, lent_to, venv_package_version
from djangoapp_common import (
    Redactor,
    StepFailed,
    file_sha256,
    now_iso,
    os_user,
    tail,
    write_json_atomic,
)
from djangoapp_config import load_env
from djangoapp_disk import (
    Layout,
    ReleaseLock,
    ledger_append,
    ledger_read,
    lock_holder,
    newest_good_of_version,
    prune,
    remove_release,
    rollback_target,
    successful_releases,
    switch_current,
)
from djangoapp_django import gunicorn_checked, run_hooks, run_preflight
from djangoapp_files import place_static, prepare_media_root
from djangoapp_gunicorn import KEEPER_START, Service, reload_workers
from djangoapp_health import check_health
from djangoapp_migration_policy import (
    after_switch_due,
    backup,
    backup_due,
    before_switch_due,
    migrate_after_switch,
    migrate_before_switch,
    plan_in_preflight,
    preview,
    refuse_crossing_contracts,
    release_migration_lock,
)
from djangoapp_migrations import start_check
from djangoapp_procs import (
    children,
    master_birth_release,
    proc_cwd,
    raised_priority,
    releases_in_use,
)
from djangoapp_recovery import (
    Interrupted,
    end_own_children,
    own_children,
    recover,
    restore,
    stopping_on_signals,
)
from djangoapp_source import Git, release_id, unknown_ref
from djangoapp_standby import checked_in_standby, standby_request
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

# Errors that a step reports as its own failure; anything else is a bug ("internal").
EXPECTED_ERRORS = (CommandExecutionError, OSError, ValueError, KeyError)

# How long a reload waits for a release or rollback of the app to finish.
RELOAD_LOCK_WAIT = 900


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


Step = collections.namedtuple("Step", "name act when", defaults=(None,))


class Run:
    """
    One release or rollback of an app: its configuration and the host, what it
    found live, what it has done so far, its ledger entry and the result it
    returns (``ret``).
    """

    def __init__(self, cfg, host, action, version=None, **options):
        self.cfg = cfg
        self.host = host
        self.action = action
        self.version = version
        self.to = options.get("to")
        self.force = options.get("force", False)
        self.defer_after_switch = False
        self.user = options.get("user") or os_user()
        self.jid = options.get("jid")
        self.layout = Layout(cfg["base_dir"])
        self.service = Service(cfg, host)
        self.niceness = cfg["release_niceness"]
        self.env = load_env(cfg) if action == "release" else {}
        self.redact = Redactor.from_env(self.env)
        self.clock = time.monotonic()
        self.started = now_iso()
        self.ret = new_result(cfg["name"], version)
        self.notes = self.ret["notes"]
        self.lock = None
        self.current = None
        self.rid = self.rdir = self.sha = self.deps_digest = None
        self.built = self.reused = self.switched = False
        self.pending = []
        self.migration_plan = None
        self.preflight_static = None
        self.preflight_process = None
        self.migration_lock = None  # an ExitStack while the run holds it
        self.master = self.standby = 0
        self.entry = None
        self.done = False
        self.ahead_check = None
        self.step = None

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)

    def finish_early(self, comment):
        """Nothing to do: the run succeeds, changes nothing and records nothing."""
        self.ret.update(result=True, changed=False, comment=comment)
        self.entry = None
        self.done = True

    def event(self, what, **data):
        base = {
            "app": self.cfg["name"],
            "action": self.action,
            "version": self.ret.get("version"),
            "user": self.user,
            "jid": self.jid,
        }
        self.host.event(f"djangoapp/release/{what}", {**base, **data})


def new_result(app, version):
    return {
        "app": app,
        "version": version,
        "sha": None,
        "id": None,
        "previous": None,
        "steps": [],
        "seconds": 0.0,
        "migrations_ran": False,
        "backup": None,
        "check_warnings": [],
        "changed": False,
        "result": False,
        "notes": [],
    }


# --------------------------------------------------------------------------
# running steps


def perform(run, step):
    """Run one step and record it: name, seconds, ok, what it reports and, when
    it failed, its output (secrets redacted)."""
    info = {}
    started = time.monotonic()
    failure = None
    run.step = step.name
    if run.lock:
        run.lock.update(step=step.name, rid=run.rid, previous=run.current)
    try:
        step.act(run, info)
    except StepFailed as exc:
        failure = exc.message
        raise
    except EXPECTED_ERRORS as exc:
        failure = str(exc)
        raise StepFailed(step.name, run.redact(failure)) from exc
    except Exception as exc:
        failure = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        record = {
            "name": step.name,
            "seconds": round(time.monotonic() - started, 3),
            "ok": failure is None,
        }
        record.update(info)
        if failure is not None:
            record["output"] = run.redact(tail(failure))
        run.ret["steps"].append(record)


def execute(run, steps, finishing=()):
    """
    Perform ``steps`` in order until one fails or ``run.done``; on failure put
    back what was live. Record the ledger entry, then perform the finishing
    steps of a successful run (a failure there is noted: the run stays good).
    The lock, if taken, is released last.
    """
    already = own_children()
    try:
        with stopping_on_signals(), raised_priority(run.niceness):
            for step in steps:
                if run.done:
                    break
                if step.when is None or step.when(run):
                    perform(run, step)
            if not run.done:
                run.ret.update(result=True, changed=True)
    except StepFailed as exc:
        put_back(run, exc.step, exc.message)
    except Interrupted as exc:
        ended = end_own_children(already)
        run.note(f"stopped by {exc}" + (f"; ended {ended}" if ended else ""))
        put_back(run, run.step, f"stopped by {exc} during {run.step}")
    except Exception as exc:  # a bug or an unexpected system error: still recorded
        log.exception("djangoapp %s failed unexpectedly", run.action)
        put_back(run, "internal", f"{type(exc).__name__}: {exc}")
    try:
        record_in_ledger(run)
        if run.ret["result"] and not run.done:
            for step in (s for s in finishing if s.when is None or s.when(run)):
                try:
                    perform(run, step)
                except StepFailed as exc:
                    run.note(f"{step.name} failed (the {run.action} stands): {exc}")
    finally:
        release_migration_lock(run)
        if run.preflight_process:
            run.preflight_process.close()
        if run.standby:  # unless it took over
            run.service.drop_standby(run.standby)
        if run.lock:
            run.lock.release()
        run.ret["seconds"] = round(time.monotonic() - run.clock, 3)
    return run.ret


def put_back(run, step, message):
    """The one failure handler: what was live before is live again, a release
    that failed is removed, and the result says what was done."""
    layout = run.layout
    if run.preflight_process:
        run.preflight_process.close(kill=True)
    if run.lock is None:
        restored = ["nothing changed"]
    elif run.switched:
        restored = restore(run.service, layout, run.current)
    else:
        restored = [
            "current unchanged ({})".format(run.current or "nothing deployed yet")
        ]
    if run.built and layout.current_id() != run.rid:
        if run.rid not in releases_in_use(layout):
            remove_release(layout, run.rid)
            restored.append(f"removed the failed release {run.rid}")
        else:
            restored.append(f"kept {run.rid} until its processes exit (pruned later)")
    if run.ret.get("backup"):
        restored.append(f"database dump taken before migrating: {run.ret['backup']}")
    run.ret.update(
        result=False, failed_step=step, error=run.redact(message), restored=restored
    )
    if run.entry:
        switched_back = run.switched and run.action == "release"
        run.entry["status"] = "rolled_back" if switched_back else "failed"


def open_entry(run, **fields):
    """The ledger entry of the run, recorded when it ends (failed until it
    succeeds)."""
    run.entry = {
        "event": run.action,
        "status": "failed",
        "started": run.started,
        "user": run.user,
        "jid": run.jid,
        **fields,
    }


def record_in_ledger(run):
    if not run.entry:
        return
    run.entry["finished"] = now_iso()
    if run.ret["result"]:
        run.entry["status"] = "success"
    else:
        run.entry["failed_step"] = run.ret.get("failed_step")
        run.entry["error"] = tail(run.ret.get("error"), 500)
    ledger_append(run.layout.ledger, run.entry)


# --------------------------------------------------------------------------
# starting: the lock, and what is live


def lock(run, info):
    """One release, rollback or reload of an app at a time; a lock left by a
    killed run is taken over (the kernel freed it) and said so."""
    holder = lock_holder(
        run.action, run.version or run.to, run.user, run.jid, run.started
    )
    os.makedirs(run.layout.releases, mode=0o755, exist_ok=True)
    run.lock = ReleaseLock(run.layout.lock, holder).acquire()
    stale = run.lock.stale
    if stale:
        run.note(
            f"took over from a {stale.get('action') or 'release'} that did not "
            f"finish (pid {stale.get('pid')}, version {stale.get('version')}, "
            f"started {stale.get('started')}, in step {stale.get('step')})"
        )
        run.ret["recovered"] = recover(run.cfg, run.layout, run.service, stale)
    run.current = run.layout.current_id()
    if run.current and not os.path.isdir(run.layout.release(run.current)):
        run.note(f"current points at a missing release {run.current}")
        run.current = None
    if run.current:
        live = run.layout.release_json(run.current) or {}
        run.ret["previous"] = {"id": run.current, "version": live.get("version")}


# --------------------------------------------------------------------------
# updating: the new release, built and checked beside the live one


def fetch(run, info):
    fields = {"id": None, "sha": None, "migrations_ran": False, "backup": None}
    open_entry(run, **fields, version=run.version, previous=run.current)
    Git(run.cfg, run.layout, run.host).fetch()


def resolve(run, info):
    sha = Git(run.cfg, run.layout, run.host).resolve(run.version)
    if not sha:
        raise StepFailed("resolve", unknown_ref(run.version))
    info["sha"] = run.sha = sha
    run.rid = release_id(run.version, sha)
    run.rdir = run.layout.release(run.rid)
    run.ret.update(sha=sha, id=run.rid)
    run.entry.update(id=run.rid, sha=sha)
    if run.current == run.rid:
        run.finish_early(f"{run.rid} is already the current release")
    else:
        # Something is to be released: only now do listeners hear of it.
        run.event("start", id=run.rid, sha=sha)


def build(run, info):
    """A good release still on disk is used as it is; else built anew."""
    rdir = run.rdir
    run.reused = (
        run.rid in successful_releases(ledger_read(run.layout.ledger))
        and os.path.isfile(os.path.join(rdir, "release.json"))
        and os.path.exists(os.path.join(rdir, "venv", "bin", "python"))
    )
    if run.reused:
        info["reused"] = True
        run.note(f"{run.rid} is already built on disk (a good release): reused")
        run.deps_digest = (run.layout.release_json(run.rid) or {}).get("requirements")
        return
    if os.path.lexists(rdir):
        run.note(f"removed a half-built {run.rid} left by an earlier attempt")
        remove_release(run.layout, run.rid)
    run.built = True
    os.makedirs(rdir, mode=0o755)
    live = run.layout.release(run.current) if run.current else None
    builder = Builder(run.cfg, run.host, run.notes, rdir, previous=live)
    info.update(builder.build(Git(run.cfg, run.layout, run.host), run.sha))
    run.deps_digest = info["requirements"]
    info["timings"] = builder.timings
    info["bytecode_linked"] = builder.linked
    info["compiled"] = builder.compiled


def preflight(run, info):
    """Django's checks with the production environment, collectstatic and the
    pending migrations, in the new release, as the app's user."""
    live = run.layout.release_json(run.current) if run.current else None
    check_config = not gunicorn_checked(run.cfg, live, run.rdir, run.deps_digest)
    request = None
    if not built_with_hooks(run):  # else after them: they may change what it imports
        request = standby_request(run, live, check_config)
        start_standby(run, info, request)
    found = checked_in_standby(run, request, info)
    if found is None:
        found, run.preflight_process = run_preflight(
            run.cfg,
            run.host,
            run.rdir,
            run.env,
            run.redact,
            not run.reused,
            run.version,
            check_config,
        )
    info["timings"] = found.get("timings")
    info["gunicorn_check_config"] = bool(found.get("also_checked"))
    run.ret["check_warnings"] = [
        run.redact("{} {}: {}".format(m["level"], m["id"], m["msg"]))
        for m in found.get("checks") or []
    ]
    run.pending = run.ret["pending_migrations"] = found.get("pending_migrations") or []
    plan_in_preflight(run, found)
    if not run.reused:
        run.preflight_static = place_static(run.layout, run.rdir, found)
        prepare_media_root(run.cfg, run.layout, run.rdir, found.get("media_root"))
        write_json_atomic(
            os.path.join(run.rdir, "release.json"), release_record(run, found)
        )


def release_record(run, found):
    """``release.json``: what the release is, built and checked with (read later)."""
    venv = os.path.join(run.rdir, "venv")
    record = {
        "id": run.rid,
        "version": run.version,
        "sha": run.sha,
        "created": now_iso(),
        "static_url": found.get("static_url"),
        "static_root": found.get("static_root"),
        "media_url": found.get("media_url"),
        "media_root": found.get("media_root"),
        "check_warnings": run.ret["check_warnings"],
        "python": found.get("python"),
        "django": found.get("django"),
        "requirements": run.deps_digest,
        "gunicorn": venv_package_version(venv, "gunicorn"),
        "gunicorn_config": file_sha256(run.cfg["gunicorn_config"]),
        "known_migrations": found.get("known_migrations"),
    }
    record.update(Git(run.cfg, run.layout, run.host).commit_info(run.sha))
    return record


def hooks_at(point):
    """The condition of a hook step: the pillar names commands for ``point``."""

    def due(run):
        return bool((run.cfg["hooks"] or {}).get(point))

    due.__name__ = f"hooks_{point}"
    return due


def built_with_hooks(run):
    """A release built now (not a good one reused) with commands after its build."""
    return not run.reused and hooks_at("after_build")(run)


def after_build(run, info):
    """The project's commands after the build (compilemessages, an offline
    compression of assets...): they may write into the release's code and its
    collected static files, which are the app user's while they run."""
    static = run.preflight_static
    with lent_to(run.cfg["user"], [os.path.join(run.rdir, "src"), static]):
        info["commands"] = run_app_hooks(run, "after_build")
    start_standby(run, info)


def start_standby(run, info, request=None):
    """``preload_app``: a master of the release imports the app meanwhile (and
    runs the preflight in itself: ``request``)."""
    run.standby = info["standby"] = run.service.prepare_standby(
        run.rdir, run.version, preflight=request
    )


def run_app_hooks(run, point):
    return run_hooks(
        run.cfg, run.host, run.rdir, run.env, run.redact, run.version, point
    )


def after_migrate(run, info):
    info["commands"] = run_app_hooks(run, "after_migrate")


def after_switch(run, info):
    info["commands"] = run_app_hooks(run, "after_switch")


# --------------------------------------------------------------------------
# publishing: the release goes live, and is switched back unless it proves good


def switch(run, info):
    switch_current(run.layout, run.rid)
    run.switched = True
    run.master = run.service.master_pid()
    run.ret["service_running"] = bool(run.master)


def service_running(run):
    if not run.master:
        run.note(
            f"service {run.service.name} is not running: skipped reload, worker "
            "and health verification (the formula starts it)"
        )
    return bool(run.master)


def reload(run, info):
    info.update(reload_workers(run.service, run.layout, run.rid, run.master))
    run.master = info["master"]


def verify(run, info):
    info["workers"] = run.service.verify_workers(run.layout, run.rid, run.master)


def health_due(run):
    if not service_running(run):
        return False
    if not (run.cfg["health"] or {}).get("url"):
        run.note("no health URL configured: skipped the health check")
        return False
    return True


def health(run, info):
    try:
        info["response"] = check_health(run.cfg)["response"]
    except CommandExecutionError as exc:
        raise StepFailed("health", str(exc)) from exc


# --------------------------------------------------------------------------
# finishing


def prune_releases(run, info):
    """Releases beyond ``keep_releases`` go, never the live one, the one a
    rollback would take, one a process uses, or the one a Gunicorn master may
    need for as long as it lives."""
    layout = run.layout
    entries = ledger_read(layout.ledger)
    previous = rollback_target(entries, run.rid, layout.on_disk())
    master = run.service.master_pid()
    pinned = master_birth_release(layout, entries, master)
    if pinned and pinned not in {run.rid, previous}:
        info["pinned"] = pinned
        if layout.release_of(proc_cwd(master)) != pinned:
            run.note(
                f"kept {pinned}: the gunicorn master started while it was "
                "live and has no PWD outside releases/ in its environment, "
                "so its reloads may need it (kept until the service restarts)"
            )
    info["removed"] = prune(
        layout,
        entries,
        run.cfg["keep_releases"],
        run.rid,
        previous,
        protect={pinned} - {None},
        delete=lambda paths: run.host.run_background(["rm", "-rf", "--", *paths]),
    )


# --------------------------------------------------------------------------
# rollback


def select(run, info):
    """The release to go back to: ``to`` (an id or a version), else the one before."""
    layout = run.layout
    entries = ledger_read(layout.ledger)
    on_disk = layout.on_disk()
    to = run.to
    if to:
        target = to if to in on_disk else newest_good_of_version(layout, entries, to)
        if not target:
            raise StepFailed(
                "select", f"{to} is neither a release on disk nor the version of one"
            )
        if target not in successful_releases(entries):
            raise StepFailed("select", f"release {target} never released successfully")
    elif (run.ret.get("recovered") or {}).get("put_back"):
        run.finish_early(f"{run.current} is live again: the stopped run was undone")
        return
    else:
        target = rollback_target(entries, run.current, on_disk)
        if not target:
            raise StepFailed(
                "select", "no previous good release on disk to roll back to"
            )
    run.rid = info["id"] = target
    refuse_crossing_contracts(run, entries, target)
    if target == run.current:
        run.ret["id"] = target
        run.finish_early(f"{target} is already current")
        return
    live = layout.release_json(target) or {}
    run.ret.update(id=target, version=live.get("version"), sha=live.get("sha"))
    open_entry(
        run,
        id=target,
        version=live.get("version"),
        sha=live.get("sha"),
        **{"from": run.current},
    )
    # Beside the switch: the migrations of the database that the target lacks.
    run.ahead_check = start_check(run.cfg, run.host, layout.release(target), run.note)


def migrations_ahead(run, info):
    """A rollback does not undo migrations: it names those the target lacks."""
    found = run.ahead_check.result(run.layout, run.rid, run.current)
    info["by"] = run.ahead_check.by
    if found.get("error"):
        return run.note(f"migrations {run.rid} lacks: unknown ({found['error']})")
    run.ret["migrations_ahead"] = run.entry["migrations_ahead"] = found["ahead"]
    if found.get("warning"):
        run.ret["warnings"] = [found["warning"]]


def keep_next_warm(run, info):
    """``preload_app``: a standby of the release the next rollback would take."""
    layout = run.layout
    after = rollback_target(ledger_read(layout.ledger), run.rid, layout.on_disk())
    if after:
        info["standby"] = run.service.prepare_standby(layout.release(after), later=True)


PUBLISHING = (
    Step("switch", switch),
    Step("after_switch", after_switch, when=hooks_at("after_switch")),
    Step("reload", reload, when=service_running),
    Step("verify", verify, when=service_running),
    Step("health", health, when=health_due),
)

RELEASE = (
    Step("lock", lock),
    Step("fetch", fetch),
    Step("resolve", resolve),
    Step("build", build),
    Step("preflight", preflight),
    Step("after_build", after_build, when=built_with_hooks),
    Step("backup", backup, when=backup_due),
    Step("migrate", migrate_before_switch, when=before_switch_due),
    Step("after_migrate", after_migrate, when=hooks_at("after_migrate")),
    *PUBLISHING[:-1],
    Step("migrate_after_switch", migrate_after_switch, when=after_switch_due),
    PUBLISHING[-1],
)
RELEASE_FINISHING = (Step("prune", prune_releases),)

ROLLBACK = (
    Step("lock", lock),
    Step("select", select),
    *PUBLISHING,
    Step("migrations", migrations_ahead, when=lambda run: run.ahead_check),
)
ROLLBACK_FINISHING = (
    Step("keep_warm", keep_next_warm, when=lambda run: run.service.preloaded),
)


def release(cfg, version, host, user=None, jid=None, defer_after_switch=False):
    """Release ``version`` of the app described by ``cfg``. Returns a dict."""
    run = Run(cfg, host, "release", version=version, user=user, jid=jid)
    run.defer_after_switch = defer_after_switch
    ret = execute(run, RELEASE, RELEASE_FINISHING)
    report(run)
    return ret


def rollback(cfg, host, to=None, user=None, jid=None, force=False):
    """Make the previous good release (or ``to``) live again; no rebuild."""
    run = Run(cfg, host, "rollback", to=to, user=user, jid=jid, force=force)
    run.ret["event"] = "rollback"
    ret = execute(run, ROLLBACK, ROLLBACK_FINISHING)
    report(run)
    return ret


def report(run):
    """The event that ends a run: success (or, for a rollback, ``rollback``),
    or failure with the step, the error and what was put back. A run that
    changed nothing (the version already live) sends none."""
    ret = run.ret
    if ret["result"] and not ret["changed"]:
        return
    if ret["result"] and run.action == "rollback":
        ahead = {"migrations_ahead": ret.get("migrations_ahead")}
        run.event("rollback", id=ret["id"], **{"from": run.current}, **ahead)
    elif ret["result"]:
        run.event(
            "success",
            id=ret["id"],
            sha=ret["sha"],
            seconds=ret["seconds"],
            migrations=ret.get("migrations"),
        )
    else:
        run.event(
            "failure",
            id=ret["id"],
            sha=ret["sha"],
            seconds=ret["seconds"],
            failed_step=ret.get("failed_step"),
            error=ret.get("error"),
            restored=ret.get("restored"),
        )


def plan_release(cfg, version, host):
    """
    What a release of ``version`` would do, without changing anything (test
    mode). Resolves the ref against the origin with ``git ls-remote``.
    """
    layout = Layout(cfg["base_dir"])
    ret = new_result(cfg["name"], version)
    sha, how = Git(cfg, layout, host).remote_resolve(version)
    current = layout.current_id()
    if current:
        live = layout.release_json(current) or {}
        ret["previous"] = {"id": current, "version": live.get("version")}
    if not sha:
        if how == "unknown ref":
            how = unknown_ref(version)
        ret.update(result=False, failed_step="resolve", error=how)
        return ret
    rid = release_id(version, sha)
    # The plan itself succeeds (exit code 0); ``changed`` says a release would
    # happen. The state turns that into Salt's ``result: None``.
    ret.update(sha=sha, id=rid, resolved_from=how, result=True)
    if current == rid:
        ret["comment"] = f"{rid} is already the current release"
    else:
        ret["changed"] = True
        ret["comment"] = "would release {} (current: {})".format(rid, current or "none")
        ret["migrations"] = preview(cfg, host, layout, sha, version, current)
        if "refused" in ret["migrations"]:
            ret.update(result=False, failed_step="preflight")
            ret["error"] = ret["migrations"]["refused"]
    return ret


def reload_service(cfg, host, user=None, jid=None, wait=RELOAD_LOCK_WAIT):
    """
    Have gunicorn take up a changed environment file or gunicorn config
    (state.apply calls this when either changed). Once no release or rollback
    of the app runs (waiting up to ``wait`` seconds for it), the workers are
    handed over (``reload_workers``). Returns once every worker is a new one
    that has loaded the app: ``{"result": True, "method", "master", "workers":
    [pids]}``, or ``{"result": False, "comment": ...}`` when gunicorn is not
    running.
    """
    layout = Layout(cfg["base_dir"])
    service = Service(cfg, host)
    holder = lock_holder("reload", user=user, jid=jid)
    lock = ReleaseLock(layout.lock, holder).acquire(wait=wait)
    try:
        if lock.stale:
            recover(cfg, layout, service, lock.stale)
        master = service.master_pid()
        # preloaded: a keeper starting its first master hands over all the same
        if not (master or service.preloaded and service.keeper_pid(KEEPER_START)):
            return {"result": False, "comment": f"{cfg['service']} is not running"}
        rid = layout.current_id()
        if rid is None:
            service.hup(master)
            return {"result": True, "method": "hup", "reason": "no release is live"}
        before = set(children(master)) if master else set()
        service.drop_standby()  # it read the environment and config before this
        how = reload_workers(service, layout, rid, master)
        pids = service.verify_workers(layout, rid, how["master"], replaced=before)
        return {"result": True, **how, "workers": pids}
    finally:
        lock.release()
