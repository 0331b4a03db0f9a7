"""
What a rollback leaves in the database: the migrations applied there that the
release it goes back to does not have. A rollback does not undo migrations (the
code put back runs on the schema as it is, which backward-compatible migrations
allow); it says which ones are ahead, so that whoever rolled back knows what the
old code does not know of, and where the dump taken before they ran is.

The check runs the target release's Django as the app's user with the production
environment, in a thread beside the switch and the hand-over of the workers:
Django's migration loader reads the ``django_migrations`` table and the migration
files of the release (its own apps' and those of its virtualenv's packages).
"""

import json
import os

from djangoapp_common import Redactor, read_json, tail
from djangoapp_config import load_env
from djangoapp_disk import ledger_read
from djangoapp_django import as_app, needs_backup
from djangoapp_host import run_in_thread
from salt.exceptions import CommandExecutionError

MARKER = "DJANGOAPP-MIGRATIONS "
CHECK_TIMEOUT = 120

# Fed on stdin to the release's python, in the project's directory. Applied
# migrations of apps the release does not install are left out (no code of it
# reads their tables), and so are those a squashed migration of it replaces.
CHECK_SCRIPT = r"""
import json, sys
marker = sys.argv[1]
try:
    import django
    django.setup()
    from django.db import connection
    from django.db.migrations.loader import MigrationLoader
    loader = MigrationLoader(connection, ignore_no_migrations=True)
    known = set(loader.disk_migrations)
    for migration in loader.disk_migrations.values():
        known.update(tuple(key) for key in (migration.replaces or ()))
    ahead = sorted(
        "{}.{}".format(app, name)
        for app, name in loader.applied_migrations
        if app in loader.migrated_apps and (app, name) not in known
    )
    print(marker + json.dumps({"ok": True, "ahead": ahead}))
except Exception as exc:
    print(marker + json.dumps({"ok": False, "error": "{}: {}".format(
        type(exc).__name__, exc)}))
"""


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


class AheadCheck:
    """
    The migrations applied in the app's database that the release in ``rdir``
    does not have, found by that release's Django in a thread started at once;
    ``result()`` waits for it.
    """

    def __init__(self, cfg, host, rdir, version):
        env = load_env(cfg)
        self.redact = Redactor.from_env(env)
        python = os.path.join(rdir, "venv", "bin", "python")
        self._join = run_in_thread(
            host.run,
            [python, "-", MARKER],
            stdin=CHECK_SCRIPT,
            stdin_raw_newlines=True,
            **as_app(cfg, env, rdir, version, timeout=CHECK_TIMEOUT),
        )

    def result(self, layout, target, left):
        """``{"ok": True, "ahead": ["app.migration", ...], "warning": ...}``
        (a warning when some are ahead, naming the dump taken before the release
        ``left`` migrated, if any), or ``{"ok": False, "error": ...}`` when
        Django or the database could not tell."""
        try:
            found = parse_result(self._join(), self.redact)
        except Exception as exc:  # pylint: disable=broad-except
            return {"ok": False, "error": self.redact(f"{type(exc).__name__}: {exc}")}
        if found["ok"] and found["ahead"]:
            backups = [
                entry.get("backup")
                for entry in ledger_read(layout.ledger)
                if entry.get("event") == "release" and entry.get("id") == left
            ]
            backup = next(filter(None, reversed(backups)), None)
            found["warning"] = ahead_warning(target, found["ahead"], backup)
        return found


def parse_result(ret, redact=str):
    """The check's last ``MARKER`` line of ``ret`` (``cmd.run_all``'s return)."""
    for line in reversed((ret.get("stdout") or "").splitlines()):
        if line.startswith(MARKER):
            try:
                found = json.loads(line[len(MARKER) :])
            except ValueError:
                break
            if found.get("ok"):
                return {"ok": True, "ahead": list(found.get("ahead") or [])}
            return {"ok": False, "error": redact(str(found.get("error")))}
    return {
        "ok": False,
        "error": redact(
            "the migration check gave no result (exit {}): {}".format(
                ret.get("retcode"), tail(ret.get("stderr"), 500)
            )
        ),
    }


def start_check(cfg, host, rdir, note):
    """An ``AheadCheck`` of the release in ``rdir`` started, or None when the app
    has no database, the release no python, or the check cannot start (said
    through ``note``)."""
    if not needs_backup(cfg):
        return None
    if not os.path.exists(os.path.join(rdir, "venv", "bin", "python")):
        return None
    try:
        record = read_json(os.path.join(rdir, "release.json"), default={}) or {}
        return AheadCheck(cfg, host, rdir, record.get("version") or "")
    except (CommandExecutionError, OSError, ValueError) as exc:
        note(f"could not check the migrations of {os.path.basename(rdir)}: {exc}")
        return None


def ahead_warning(target, ahead, backup=None):
    """What a rollback to ``target`` says when the database is ``ahead``."""
    text = (
        "the database keeps {} migration(s) that {} does not have ({}): a "
        "rollback does not undo migrations".format(len(ahead), target, ", ".join(ahead))
    )
    if backup:
        text += f"; the dump taken before they ran: {backup}"
    return text
