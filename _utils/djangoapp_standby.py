"""
The preflight of a preloaded release in its standby master.

With ``preload_app`` the release engine has gunicorn-keeper start a standby
master of the new release at the start of the preflight, which imports the app
(docs/architecture.md). Asked by a request in the run directory, that master
runs the preflight's stages itself once the app is imported
(``djangoapp_preflight.run_in_master``, called from gunicorn.conf.py), instead
of a second Python process of the release setting Django up beside it. When the
standby cannot answer (it died importing the app, or its keeper dropped it) the
engine runs the preflight in a process of its own, which reports why.
"""

import secrets
import time

from djangoapp_django import (
    PREFLIGHT_SCRIPT,
    checked_preflight,
    preflight_options,
    start_preflight_process,
    with_checks,
)
from djangoapp_source import Git

# As long as the preflight process may take (djangoapp_django.PreflightProcess).
STANDBY_PREFLIGHT_TIMEOUT = 900


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def standby_request(run, live, check_config):
    """
    What the standby of the release is asked to run: the preflight's options
    and source, for this run only (``id``, ``until``), and where to answer
    (``answer``); None when the release
    likely brings migrations (``migrations_unlikely``): then the preflight's
    own process stays to run them, with Django set up already, while the
    standby imports the app beside it.
    """
    if not (run.service.preloaded and migrations_unlikely(run, live)):
        return None
    with open(PREFLIGHT_SCRIPT, encoding="utf-8") as handle:
        source = handle.read()
    collect = not run.reused
    request_id = secrets.token_hex(8)
    return {
        "id": request_id,
        "answer": run.service.preflight_answer_file(request_id),
        "release": run.rdir,
        "until": time.time() + STANDBY_PREFLIGHT_TIMEOUT,
        "options": preflight_options(run.cfg, run.rdir, collect, check_config),
        "source": source,
    }


def migrations_unlikely(run, live):
    """Whether the release should find no migration pending: its requirements
    are those of the live release (``live``: its release.json), and no file of a
    ``migrations`` directory changed since that one's commit. A hint: wrong
    either way, the release is checked all the same (a migration found then
    runs in a process of its own, started at once)."""
    if not live or not live.get("sha") or live.get("requirements") != run.deps_digest:
        return False
    changed = Git(run.cfg, run.layout, run.host).changed_paths(live["sha"], run.sha)
    return changed is not None and not any(
        "migrations" in path.split("/")[:-1] for path in changed
    )


def checked_in_standby(run, request, info):
    """
    The preflight's result as the standby master ``run.standby`` found it
    (checked: raises StepFailed as the preflight process would); None when it
    did not answer. With migrations pending, a process of the release starts
    setting Django up to run them (``run.preflight_process``) while the
    release goes on to its backup.
    """
    if not request:
        if run.service.preloaded:  # asked of a process: migrations likely
            info["in_standby"] = False
        return None
    if not run.standby:  # no keeper, or one from before standbys
        run.service.forget_preflight()
        info["in_standby"] = False
        return None
    answer = run.service.standby_answer(run.standby, request, STANDBY_PREFLIGHT_TIMEOUT)
    info["in_standby"] = answer.get("failed") != "standby"
    if not info["in_standby"]:
        # it ended first (the app did not import), or could not run the stages
        info["standby_answer"] = run.redact(str(answer.get("error")))
        return None
    found = with_checks(checked_preflight(answer, run.redact))
    if found.get("pending_migrations"):
        run.preflight_process = migrations_process(run)
    return found


def migrations_process(run):
    """A process of the release that sets Django up and migrates when asked
    (``djangoapp_django.migrate``); None without setpriv (``migrate`` starts
    one then)."""
    options = {"stages": ["setup"], "serve_migrations": True}
    return start_preflight_process(
        run.cfg, run.rdir, run.env, run.redact, run.version, options
    )
