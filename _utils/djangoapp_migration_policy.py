"""
When each pending migration of a release runs: before the switch, while the
previous release still serves (the default), or after it, once the new code
serves. A migration that the code still serving cannot run with (a column it
reads removed or renamed, a NOT NULL column without a database default, a type
changed, a table dropped, code that is neither reversible nor elidable) breaks
its requests in the seconds between ``migrate`` and the hand-over.

The preflight (``djangoapp_preflight``, in the release's own Python) finds
them with django-migration-linter's rules and reads django-safemigrate's
markers. The linter runs in the release's interpreter because it needs the
project's Django, settings and database (it reads ``sqlmigrate``); it is not
installed into the release's virtualenv, whose packages are the project's own:
the formula installs it beside the tools and the preflight appends it to its
own ``sys.path`` only.

The app's policy (``migrations`` in the pillar) decides for an unmarked
backward-incompatible migration: ``safe`` stops the release at preflight,
``after_switch`` runs it after the switch, ``allow`` runs it before as any
other. A marked migration runs as marked (``before_deploy`` and ``always``:
before; ``after_deploy``: after), and a migration that needs one running after
the switch runs after it too.

The release's dump before migrating is here too, taken under the database's
migration lock, which the run holds until its migrations before the switch ran.

Not a Salt utility: ``djangoapp_release`` loads it with the engine's other modules.
"""

import contextlib
import os
import shutil
import time

from djangoapp_common import Redactor, StepFailed
from djangoapp_config import load_env
from djangoapp_django import (
    backup_database,
    migrate,
    migration_lock,
    needs_backup,
    read_migrations,
)
from djangoapp_source import Git

POLICIES = ("safe", "after_switch", "allow")
BEFORE_MARKERS = ("before_deploy", "always")


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def _operations(found):
    return [
        "{}{}".format(
            issue["code"],
            " ({})".format(
                ".".join(filter(None, (issue.get("table"), issue.get("column"))))
            )
            if issue.get("table")
            else "",
        )
        for issue in found
    ]


def _refusal(app, name, why):
    return (
        f"migration {name} {why}: the release is stopped before anything changed. "
        "Two ways forward: release it in two steps (first code that no longer "
        "uses what it changes, the schema kept; then this migration, marked "
        "after_deploy with django-safemigrate), or set the pillar's "
        f"djangoapp:apps:{app}:migrations to after_switch (it runs once the new "
        "code serves) or allow (it runs before the switch, breaking the requests "
        "of the code still serving that use what it changes)"
    )


def _unmarked_goes_after(app, policy, migration, serving):
    """Where an unmarked migration that depends on nothing run after the switch
    goes: True after, False before; StepFailed when the policy refuses it.
    With no release ``serving``, there is no code for it to break."""
    name, found = migration["name"], migration.get("incompatible")
    if not serving:
        return False
    if found is None and not migration.get("ignored"):
        if policy == "safe":
            error = migration.get("lint_error") or "the linter gave no answer"
            raise StepFailed(
                "preflight",
                _refusal(app, name, f"could not be checked ({error})"),
            )
        return policy == "after_switch"
    if not found:
        return False
    if policy == "safe":
        operations = ", ".join(_operations(found))
        raise StepFailed(
            "preflight",
            _refusal(app, name, f"breaks the release still serving ({operations})"),
        )
    return policy == "after_switch"


def decide(app, policy, migrations, serving=True):
    """
    ``migrations``: the preflight's classified pending migrations, in the order
    Django applies them; ``serving``: whether a release is live. Returns
    ``{"policy", "before_switch", "after_switch", "incompatible": {name:
    [operations]}, "markers": {name: marker}}``; raises
    StepFailed("preflight") when the policy or the markers refuse the release.
    """
    if policy not in POLICIES:
        raise StepFailed(
            "preflight", f"migrations policy {policy!r} is not one of {POLICIES}"
        )
    plan = {
        "policy": policy,
        "before_switch": [],
        "after_switch": [],
        "incompatible": {},
        "markers": {},
    }
    for migration in migrations:
        name, marker = migration["name"], migration.get("marker")
        if migration.get("incompatible"):
            plan["incompatible"][name] = _operations(migration["incompatible"])
        if marker:
            plan["markers"][name] = marker
        waits_for = [
            d for d in migration.get("depends_on") or () if d in plan["after_switch"]
        ]
        if marker in BEFORE_MARKERS and waits_for:
            raise StepFailed(
                "preflight",
                f"migration {name} is marked {marker} but depends on "
                f"{waits_for[0]}, which runs after the switch",
            )
        if marker == "after_deploy" or waits_for:
            after = True
        elif marker in BEFORE_MARKERS or migration.get("backwards"):
            after = False
        else:
            after = _unmarked_goes_after(app, policy, migration, serving)
        plan["after_switch" if after else "before_switch"].append(name)
    return plan


def targets_before(plan):
    """``migrate``'s targets for the migrations before the switch, each app's
    last one, or None when every pending migration runs before it."""
    if not plan["after_switch"]:
        return None
    last = {}
    for name in plan["before_switch"]:
        app, _, migration = name.partition(".")
        last[app] = migration
    return sorted(last.items())


# --------------------------------------------------------------------------
# the steps of a release that concern the migrations


def plan_in_preflight(run, found):
    """Decide, from the preflight's findings, when each pending migration runs."""
    plan = decide(
        run.cfg["name"],
        run.cfg["migrations"],
        found.get("migrations") or [],
        serving=bool(run.current),
    )
    run.migration_plan = run.ret["migrations"] = plan
    if run.entry is not None:
        run.entry["migrations"] = plan
    if run.defer_after_switch and plan["after_switch"]:
        deferred = run.ret["migrations_deferred"] = list(plan["after_switch"])
        if run.entry is not None:
            run.entry["migrations_deferred"] = deferred
        run.note(
            f"left for later (defer_after_switch): {', '.join(deferred)}; "
            "djangoapp.migrate applies them once no old code serves"
        )


def before_switch_due(run):
    return bool(run.migration_plan and run.migration_plan["before_switch"])


def after_switch_due(run):
    plan = run.migration_plan
    return bool(plan and plan["after_switch"]) and not run.defer_after_switch


def backup_due(run):
    return bool(run.pending) and needs_backup(run.cfg)


def backup(run, info):
    """The dump before migrating, under the migration lock, which the run keeps
    until the migrations before the switch have run: another release migrating
    the same database meanwhile (a fleet's web minions, their first apply at
    once) would change a table while it is dumped, and the dump would not be
    of the schema this release migrates from."""
    started = time.monotonic()
    hold_migration_lock(run, step="backup")
    info["lock_wait"] = round(time.monotonic() - started, 3)
    run.ret["backup"] = backup_database(run.cfg, run.host, run.env, run.rid)
    run.entry["backup"] = info["path"] = run.ret["backup"]
    if not before_switch_due(run):
        release_migration_lock(run)


def hold_migration_lock(run, step):
    """The database's migration lock, taken for the run (``run.migration_lock``)
    until ``release_migration_lock``."""
    if run.migration_lock is None:
        held = contextlib.ExitStack()
        held.enter_context(migration_lock(run.cfg, run.env, run.redact, step=step))
        run.migration_lock = held


def release_migration_lock(run):
    held, run.migration_lock = run.migration_lock, None
    if held is not None:
        held.close()


def migrate_before_switch(run, info):
    run.entry["migrations_ran"] = run.ret["migrations_ran"] = True
    info["migrations"] = list(run.migration_plan["before_switch"])
    preflight = run.preflight_process
    info["in_preflight_process"] = bool(preflight and preflight.serving)
    try:
        migrate(
            run.cfg,
            run.host,
            run.rdir,
            run.env,
            run.redact,
            run.version,
            targets=targets_before(run.migration_plan),
            preflight=preflight,
            locked=run.migration_lock is not None,  # since the backup
        )
    finally:
        release_migration_lock(run)
        if preflight:
            preflight.close()


def migrate_after_switch(run, info):
    run.entry["migrations_ran"] = run.ret["migrations_ran"] = True
    info["migrations"] = list(run.migration_plan["after_switch"])
    try:
        migrate(run.cfg, run.host, run.rdir, run.env, run.redact, run.version)
    except StepFailed as exc:
        raise StepFailed("migrate_after_switch", exc.message) from exc


def contracts_since(entries, target):
    """The successful releases of the ledger ``entries`` since ``target`` was
    last made live whose migrations old code cannot run with (those run after
    the switch, and the backward-incompatible ones let through; those a
    release left for later count once a ``migrate`` run applied them):
    ``[{"id", "migrations", "backup"}]``."""
    since = 0
    for index, entry in enumerate(entries):
        if entry.get("id") == target and entry.get("status") == "success":
            since = index + 1
    crossed = []
    for entry in entries[since:]:
        plan = entry.get("migrations") or {}
        if entry.get("event") not in ("release", "migrate"):
            continue
        if entry.get("status") != "success":
            continue
        later = entry.get("migrations_deferred") or []
        names = [n for n in plan.get("after_switch") or [] if n not in later]
        names += [n for n in plan.get("incompatible") or {} if n not in names + later]
        if names and entry.get("migrations_ran"):
            crossed.append(
                {
                    "id": entry.get("id"),
                    "migrations": names,
                    "backup": entry.get("backup"),
                }
            )
    return crossed


def refuse_crossing_contracts(run, entries, target):
    """A rollback to ``target`` over such migrations is refused unless forced
    (then it is noted)."""
    crossed = contracts_since(entries, target)
    if not crossed:
        return
    text = "; ".join(
        "{} ran {} (the dump taken before: {})".format(
            c["id"], ", ".join(c["migrations"]), c["backup"] or "none"
        )
        for c in crossed
    )
    run.ret["contract_migrations"] = crossed
    if not run.force:
        raise StepFailed(
            "select",
            f"rolling back to {target} crosses migrations its code cannot run "
            f"with: {text}. Roll forward instead, restore the dump "
            "(djangoapp.restore) and roll back, or roll back with force=True",
        )
    run.note(f"forced over migrations {target}'s code cannot run with: {text}")


def preview(cfg, host, layout, sha, version, current):
    """
    How the pending migrations of ``sha`` would run (test mode): its code,
    exported beside the releases, read by the live release's Python and
    packages as the app's user, then decided as a release would. Returns the
    plan, ``{"refused": why}``, or ``{"error": why}`` when it cannot be read
    this way (a new dependency the settings import, say).
    """
    live = layout.release(current) if current else None
    if not live or not os.path.exists(os.path.join(live, "venv", "bin", "python")):
        return {"error": "no live release to read them with: the release reads them"}
    scratch = os.path.join(layout.releases, f".preview-{os.getpid()}")
    env = load_env(cfg)
    redact = Redactor.from_env(env)
    try:
        os.makedirs(scratch, mode=0o755)
        git = Git(cfg, layout, host)
        git.fetch()
        git.export(sha, os.path.join(scratch, "src"))
        os.symlink(os.path.join(live, "venv"), os.path.join(scratch, "venv"))
        found = read_migrations(cfg, host, scratch, env, redact, version)
        return decide(cfg["name"], cfg["migrations"], found["migrations"])
    except StepFailed as exc:
        if exc.step == "preflight" and exc.message.startswith("migration "):
            return {"refused": exc.message}
        return {"error": redact(exc.message)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
