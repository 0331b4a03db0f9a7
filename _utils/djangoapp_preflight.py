"""
Django-side checks of a new djangoapp release, in one Python process.

This file is not a Salt utility: the release engine runs it with the new
release's own interpreter (``<release>/venv/bin/python``), as the app user,
with the app's production environment and the project directory as working
directory. Salt syncs it with the other ``_utils`` files, and its loader may
import it: importing it does nothing (``__virtual__`` declines).

Arguments: one JSON object (``argv[1]``) with

- ``app_callable``: ``module:callable`` of the WSGI or ASGI application
- ``fail_level``: ``check --deploy`` messages at or above this level fail
- ``collectstatic``: run collectstatic (bool)
- ``static_staging``: a directory writable by this user inside the release;
  the files are collected there and the engine (as root) puts them in place
  afterwards
- ``stages``: the names of the stages to run (default: those of ``STAGES``),
  e.g. ``setup`` and ``migrate_plan`` alone to read the pending migrations, or
  ``setup`` and ``applied_migrations`` (run only when named)
- ``migration_linter``: the directory holding django-migration-linter (the
  formula installs it beside the tools); appended to ``sys.path``, after the
  release's own packages, for this process only
- ``gunicorn_check``: ``{"config", "chdir", "app"}`` to check as ``gunicorn
  --check-config -c CONFIG --chdir CHDIR APP`` would (left out: not checked)
- ``serve_migrations``: stay to migrate when asked even if no migration was
  pending when it looked (the standby master ran the checks, this process
  only sets Django up for the migrations it found)

Output: the last line of stdout is ``DJANGOAPP-PREFLIGHT <json>``. Anything
the project prints goes to stderr. Exit code 0 when every check passed.

Run as ``python -c BOOTSTRAP <length> <options>`` with this file's first
``<length>`` bytes on stdin (``BOOTSTRAP`` in ``djangoapp_django.py``), the
process stays after a preflight that found pending migrations: the engine
takes the backup meanwhile, then asks it to migrate (``serve_migrations``),
which spares a second Python and Django setup. With ``preload_app`` the
standby master of the release runs the same stages (``run_in_master``), the
app imported already.
"""

import json
import os
import sys
import time
import traceback

MARKER = "DJANGOAPP-PREFLIGHT "
MIGRATED_MARKER = "DJANGOAPP-MIGRATED "
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


def __virtual__():
    return (False, "run by the djangoapp release engine, not a Salt utility")


def _import_callable(spec):
    import importlib

    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    if not attr:
        attr = "application"
    factory = attr.endswith("()")
    obj = module
    for part in attr[: -2 if factory else None].split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return f"{type(obj).__module__}.{type(obj).__name__}"


def _run_checks(fail_level):
    from django.core import checks

    messages = checks.run_checks(include_deployment_checks=True)
    found = []
    failing = []
    for message in messages:
        if message.is_silenced():
            continue
        level_name = "DEBUG"
        for name, number in sorted(LEVELS.items(), key=lambda kv: kv[1]):
            if message.level >= number:
                level_name = name
        item = {
            "id": message.id or "",
            "level": level_name,
            "msg": str(message.msg),
            "hint": str(message.hint) if message.hint else None,
            "obj": str(message.obj) if message.obj is not None else None,
        }
        found.append(item)
        if message.level >= LEVELS.get(fail_level, 40):
            failing.append(item)
    return found, failing


def _missing_migrations():
    import io

    from django.core.management import call_command

    out = io.StringIO()
    try:
        call_command(
            "makemigrations",
            check=True,
            dry_run=True,
            interactive=False,
            verbosity=1,
            stdout=out,
            stderr=out,
        )
    except SystemExit as exc:
        if exc.code:
            return out.getvalue().strip() or "models have changes without migrations"
    return None


def _pending_migrations():
    """The plan of ``migrate``, and the migrations this code knows."""
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.db.migrations.executor import MigrationExecutor

    connection = connections[DEFAULT_DB_ALIAS]
    executor = MigrationExecutor(connection)
    targets = executor.loader.graph.leaf_nodes()
    plan = executor.migration_plan(targets)
    connection.close()
    return plan, _known_migrations(executor.loader)


def _known_migrations(loader):
    """What a rollback to this code compares the database's applied migrations
    with (djangoapp_migrations): the apps with migrations, and every migration
    of their files, with those a squashed one replaces."""
    known = set(loader.disk_migrations)
    for migration in loader.disk_migrations.values():
        known.update(tuple(key) for key in (migration.replaces or ()))
    return {
        "apps": sorted(loader.migrated_apps),
        "names": _listed(known),
    }


def _listed(pairs):
    return sorted(f"{app}.{name}" for app, name in pairs)


def _marker(migration):
    """django-safemigrate's ``safe`` of a migration: ``before_deploy``,
    ``after_deploy``, ``always`` or None (the enum of older versions, the
    ``Safe`` of newer ones)."""
    safe = getattr(migration, "safe", None)
    when = getattr(safe, "when", safe)
    value = getattr(when, "value", when)
    return value if value in ("before_deploy", "after_deploy", "always") else None


def _unaccounted_code(operation):
    """RunPython and RunSQL the engine cannot judge: neither reversible nor
    elidable (an operation that says nothing about what it does)."""
    from django.db.migrations import RunPython, RunSQL

    if not isinstance(operation, (RunPython, RunSQL)):
        return None
    if operation.reversible or getattr(operation, "elidable", False):
        return None
    kind = type(operation).__name__
    return {
        "code": f"{kind.upper()}_REVERSIBLE",
        "message": f"{kind} that is neither reversible nor elidable",
        "table": None,
        "column": None,
    }


def _incompatibilities(linter, migration):
    """What the linter's rules find in the migration's SQL (``sqlmigrate``) that
    the code still serving cannot run with, and its unaccounted code; None when
    the linter leaves it out (Django's own apps, ``IgnoreMigration``)."""
    from django_migration_linter.constants import DJANGO_APPS_WITH_MIGRATIONS
    from django_migration_linter.sql_analyser import analyse_sql_statements

    # Django's own apps are left out as the linter leaves them out: their
    # migrations come with a Django upgrade, written for it.
    if migration.app_label in DJANGO_APPS_WITH_MIGRATIONS or (
        linter.should_ignore_migration(
            migration.app_label, migration.name, migration.operations
        )
    ):
        return None
    sql = linter.get_sql(migration.app_label, migration.name)
    errors, _ignored, _warnings = analyse_sql_statements(linter.sql_analyser_class, sql)
    found = [
        {
            "code": issue.code,
            "message": issue.message,
            "table": issue.table,
            "column": issue.column,
        }
        for issue in errors
    ]
    found.extend(filter(None, map(_unaccounted_code, migration.operations)))
    return found


def _linter(directory):
    if not directory or not os.path.isdir(directory):
        raise RuntimeError(f"django-migration-linter is not in {directory}")
    if directory not in sys.path:
        sys.path.append(directory)
    from django_migration_linter import MigrationLinter

    return MigrationLinter(no_cache=True, no_output=True)


def _classified(plan, linter_dir):
    """Each pending migration: ``name``, ``marker``, ``depends_on`` (the pending
    ones it needs) and ``incompatible`` (None where the linter cannot say, with
    ``lint_error`` in the first)."""
    pending = {(m.app_label, m.name) for m, _ in plan}
    found = []
    try:
        linter = _linter(linter_dir) if plan else None
        lint_error = None
    except Exception as exc:  # the release goes on; the policy decides
        linter, lint_error = None, f"{type(exc).__name__}: {exc}"
    for migration, backwards in plan:
        entry = {
            "name": f"{migration.app_label}.{migration.name}",
            "backwards": backwards,
            "marker": _marker(migration),
            "depends_on": sorted(
                f"{app}.{name}"
                for app, name in migration.dependencies
                if (app, name) in pending
            ),
            "incompatible": None,
        }
        if linter is not None:
            try:
                entry["incompatible"] = _incompatibilities(linter, migration)
                entry["ignored"] = entry["incompatible"] is None
                entry["incompatible"] = entry["incompatible"] or []
            except Exception as exc:
                entry["lint_error"] = f"{type(exc).__name__}: {exc}"
        found.append(entry)
    if lint_error and found:
        found[0]["lint_error"] = lint_error
    return found


def _collectstatic(target):
    import io

    from django.core.management import call_command

    out = io.StringIO()
    if target:
        from django.test.utils import override_settings

        with override_settings(STATIC_ROOT=target):
            call_command("collectstatic", interactive=False, verbosity=1, stdout=out)
    else:
        call_command("collectstatic", interactive=False, verbosity=1, stdout=out)
    return out.getvalue().strip().splitlines()[-1:] or [""]


def _new_result():
    return {
        "ok": False,
        "failed": None,
        "error": None,
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "timings": {},
        "checks": [],
        "missing_migrations": None,
        "pending_migrations": [],
        "migrations": [],
        "known_migrations": None,
        "applied_migrations": None,
        "static_url": None,
        "static_root": None,
        "media_url": None,
        "media_root": None,
        "collectstatic": None,
        "gunicorn_checked": False,
    }


def setup(options, result):
    import django

    result["django"] = django.get_version()
    django.setup()


def import_app(options, result):
    result["app_type"] = _import_callable(options.get("app_callable") or "")


def check(options, result):
    """``check --deploy``; then what the settings say of static and media files."""
    found, failing = _run_checks(options.get("fail_level") or "ERROR")
    result["checks"] = found
    if failing:
        raise RuntimeError(
            "check --deploy: "
            + "; ".join(
                "{} {}: {}".format(m["level"], m["id"], m["msg"]) for m in failing
            )
        )
    from django.conf import settings

    result["static_url"] = settings.STATIC_URL
    result["static_root"] = str(settings.STATIC_ROOT) if settings.STATIC_ROOT else None
    result["media_url"] = settings.MEDIA_URL or None
    result["media_root"] = str(settings.MEDIA_ROOT) if settings.MEDIA_ROOT else None


def makemigrations(options, result):
    result["missing_migrations"] = _missing_migrations()
    if result["missing_migrations"]:
        raise RuntimeError(
            "models have changes that have no migration: "
            + result["missing_migrations"]
        )


def migrate_plan(options, result):
    plan, result["known_migrations"] = _pending_migrations()
    result["pending_migrations"] = [
        "{}.{}{}".format(m.app_label, m.name, " (unapply)" if backwards else "")
        for m, backwards in plan
    ]
    result["migrations"] = _classified(plan, options.get("migration_linter"))


def collectstatic(options, result):
    from django.apps import apps

    if not options.get("collectstatic", True):
        result["collectstatic"] = {"ran": False, "reason": "not requested"}
    elif not apps.is_installed("django.contrib.staticfiles"):
        result["collectstatic"] = {"ran": False, "reason": "staticfiles not installed"}
    elif not result["static_root"]:
        raise RuntimeError(
            "STATIC_ROOT is not set, and django.contrib.staticfiles is installed: "
            "the release cannot collect its static files. Set it in the settings from "
            'the environment, e.g. STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT"): '
            "the engine gives every release's commands and workers DJANGO_STATIC_ROOT"
        )
    else:
        # Always into the staging dir: the engine puts the files in place, in the
        # release or beside it (STATIC_ROOT outside the release).
        staging = options.get("static_staging")
        summary = _collectstatic(staging)
        result["collectstatic"] = {
            "ran": True,
            "staged": staging,
            "summary": summary[0],
        }


def gunicorn_config(options, result):
    """
    What ``gunicorn --check-config`` checks, without a second process that
    loads the app again: the release's Gunicorn reads its config file and
    command line, and loads the app (imported already). Last: the config file
    may change this process's environment. Its own error output (Gunicorn
    prints a broken config file's traceback and exits) is the stage's error.
    """
    check = options.get("gunicorn_check")
    if not check:
        return
    import contextlib
    import io

    from gunicorn.app.wsgiapp import WSGIApplication

    argv = ["gunicorn", "--check-config", "--chdir", check["chdir"]]
    if check.get("config"):
        argv += ["-c", check["config"]]
    saved = (sys.argv, os.getcwd(), dict(os.environ))
    sys.argv = [*argv, check["app"]]
    output = io.StringIO()
    try:
        with contextlib.redirect_stderr(output):
            application = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]")
            application.load()
    except BaseException as exc:
        said = output.getvalue().strip()[-1500:]
        raise RuntimeError(
            "gunicorn --check-config failed: "
            + (said or f"{type(exc).__name__}: {exc}")
        ) from None
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        os.environ.clear()
        os.environ.update(saved[2])
    result["gunicorn_checked"] = True


def applied_migrations(options, result):
    """The migrations this code knows and those its database has applied: what a
    rollback to a release recorded without the former compares
    (djangoapp_migrations)."""
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.db.migrations.loader import MigrationLoader

    connection = connections[DEFAULT_DB_ALIAS]
    loader = MigrationLoader(connection, ignore_no_migrations=True)
    result["known_migrations"] = _known_migrations(loader)
    result["applied_migrations"] = _listed(loader.applied_migrations)
    connection.close()


STAGES = (
    ("setup", setup),
    ("import", import_app),
    ("check", check),
    ("makemigrations", makemigrations),
    ("migrate_plan", migrate_plan),
    ("collectstatic", collectstatic),
    ("gunicorn_config", gunicorn_config),
)
ON_REQUEST = (("applied_migrations", applied_migrations),)


def serve_migrations(result_stream, requests):
    """
    Run ``migrate`` in this process, with Django set up already, each time the
    engine asks: a JSON line ``{"targets": [[app_label, migration], ...]}``
    (empty: all of them) on ``requests``, answered by a line
    ``DJANGOAPP-MIGRATED {"ok", "error", "traceback"}``. Ends with its input.
    """
    from django.core.management import call_command
    from django.db import connections

    for line in iter(requests.readline, b""):
        answer = {"ok": False, "error": None}
        try:
            for target in json.loads(line).get("targets") or [[]]:
                call_command("migrate", *target, interactive=False, verbosity=1)
            answer["ok"] = True
        except BaseException as exc:  # answered; the engine decides
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            answer["error"] = text
            answer["traceback"] = traceback.format_exc()[-4000:]
        finally:
            connections.close_all()
        result_stream.write(MIGRATED_MARKER + json.dumps(answer) + "\n")
        result_stream.flush()


def run_stages(options, result):
    """The stages ``options`` names (default: all of ``STAGES``), in order, into
    ``result``; a failure is reported in it (``failed``, ``error``)."""
    step = "setup"
    try:
        chosen = options.get("stages") or [name for name, _ in STAGES]
        for step, stage in (*STAGES, *ON_REQUEST):
            if step not in chosen:
                continue
            started = time.monotonic()
            stage(options, result)
            result["timings"][step] = round(time.monotonic() - started, 3)
        result["ok"] = True
    except BaseException as exc:  # report everything, including SystemExit
        result["failed"] = step
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        result["error"] = text
        result["traceback"] = traceback.format_exc()[-4000:]
    return result


def run_in_master(options):
    """
    The preflight in a standby master (``preload_app``: gunicorn.conf.py runs
    this when the release engine asks), where the app is imported already: no
    Python of its own to start, no second Django setup. Django is not set up
    again (that would configure logging anew in the master); the master has read
    the release's Gunicorn config and loaded its app, which is what ``gunicorn
    --check-config`` checks. What the checks opened is closed before the
    workers are forked from this process.
    """
    from django.apps import apps

    result = _new_result()
    stages = [name for name, _ in STAGES if name != "gunicorn_config"]
    if apps.ready:
        import django

        result["django"] = django.get_version()
        stages.remove("setup")
    try:
        run_stages(dict(options, stages=stages), result)
    finally:
        _close_connections()
    result["gunicorn_checked"] = result["ok"] and bool(options.get("gunicorn_check"))
    return result


def _close_connections():
    from django.core.cache import close_caches
    from django.db import connections

    connections.close_all()
    close_caches()


def main(argv, requests=None):
    options = json.loads(argv[1]) if len(argv) > 1 else {}
    # Keep stdout for the result alone: the project's own output (and any C
    # extension writing to fd 1) goes to stderr.
    result_stream = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    result = run_stages(options, _new_result())
    result_stream.write("\n" + MARKER + json.dumps(result, default=str) + "\n")
    result_stream.flush()
    serve = result["pending_migrations"] or options.get("serve_migrations")
    if result["ok"] and serve and requests is not None:
        serve_migrations(result_stream, requests)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
