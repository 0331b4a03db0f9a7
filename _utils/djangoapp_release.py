"""
The djangoapp release engine, as Salt's loader sees it: everything that takes
an app from a git ref to a live, verified release, and back.

The ``djangoapp`` execution module (``_modules/djangoapp.py``) calls the
functions below through ``__utils__``; it hands in a ``Host`` built from
``__salt__`` so that every command goes through ``cmd.run_all`` with a list
argv. Validation of names and refs lives in ``djangoapp_validate``; the
execution module applies it before calling here.

The engine itself is a set of plain modules beside this file, one per concern
(``docs/architecture.md`` shows them): the state on disk (``djangoapp_disk``),
the app's configuration (``djangoapp_config``), the source (``djangoapp_source``),
the dependencies a project declares (``djangoapp_deps``), the build
(``djangoapp_build``), Django and the database (``djangoapp_django``),
static and media files (``djangoapp_files``), the migrations a rollback
leaves in the database (``djangoapp_migrations``), Gunicorn (``djangoapp_gunicorn``),
the preflight in a preloaded release's standby master (``djangoapp_standby``),
the health check (``djangoapp_health``), several apps' runs at once
(``djangoapp_together``), maintenance mode
(``djangoapp_maintenance``), restoring a database dump (``djangoapp_restore``),
``/proc`` (``djangoapp_procs``), the
host (``djangoapp_host``), what they share (``djangoapp_common``), the procedures
(``djangoapp_flow``) and the reports (``djangoapp_status``).
"""

import importlib.util
import os
import sys
import time

__virtualname__ = "djangoapp_release"

# In the order they import each other.
ENGINE_MODULES = (
    "djangoapp_common",
    "djangoapp_procs",
    "djangoapp_host",
    "djangoapp_config",
    "djangoapp_deps",
    "djangoapp_disk",
    "djangoapp_source",
    "djangoapp_build",
    "djangoapp_files",
    "djangoapp_django",
    "djangoapp_migrations",
    "djangoapp_migration_policy",
    "djangoapp_gunicorn",
    "djangoapp_standby",
    "djangoapp_health",
    "djangoapp_maintenance",
    "djangoapp_restore",
    "djangoapp_deferred",
    "djangoapp_status",
    "djangoapp_recovery",
    "djangoapp_together",
    "djangoapp_flow",
)


def load_engine(directory=None):
    """
    Load the engine's modules from ``directory`` (default: this file's), each
    anew, replacing what an earlier load left in ``sys.modules``: a minion that
    runs for months and gets a new formula by ``saltutil.sync_all`` loads this
    file again, and a plain ``import`` would hand it the old engine. Returns
    the modules by name.
    """
    directory = directory or os.path.dirname(os.path.abspath(__file__))
    modules = {}
    for name in ENGINE_MODULES:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(directory, f"{name}.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        modules[name] = module
    return modules


_engine = load_engine()
_flow = _engine["djangoapp_flow"]
_status = _engine["djangoapp_status"]
_host = _engine["djangoapp_host"]
_config = _engine["djangoapp_config"]


def __virtual__():
    return __virtualname__


def make_host(run_all, send_event=None):
    """A ``Host`` for the execution module: commands through ``run_all``
    (``cmd.run_all``), events through ``send_event`` (``event.send``)."""
    return _host.Host(run_all, send_event)


def event_sender(opts, send_event):
    """``send_event``, or None when no one would receive an event."""
    return _host.event_sender(opts, send_event)


def os_user():
    """The name of the user running this process."""
    return _engine["djangoapp_common"].os_user()


def list_apps(config_dir):
    """The apps configured in ``config_dir``."""
    return _config.list_apps(config_dir)


def load_app(name, config_dir):
    """The app.json of ``name``."""
    return _config.load_app(name, config_dir)


def release(cfg, version, host, user=None, jid=None, defer_after_switch=False):
    """Release ``version``; see ``djangoapp_flow.release``."""
    return _flow.release(
        cfg, version, host, user=user, jid=jid, defer_after_switch=defer_after_switch
    )


def run_together(jobs):
    """Each of ``jobs`` in a process of its own, all at once; see
    ``djangoapp_together.run_together``."""
    return _engine["djangoapp_together"].run_together(jobs)


def plan_release(cfg, version, host):
    """What a release of ``version`` would do (test mode)."""
    return _flow.plan_release(cfg, version, host)


def rollback(cfg, host, to=None, user=None, jid=None, force=False):
    """Back to the previous good release, or ``to``."""
    return _flow.rollback(cfg, host, to=to, user=user, jid=jid, force=force)


def reload_service(cfg, host, user=None, jid=None):
    """Workers take up a changed env.json or gunicorn config."""
    return _flow.reload_service(cfg, host, user=user, jid=jid)


def status(cfg, host):
    """The live release, its service and its workers."""
    return _status.status(cfg, host)


def releases(cfg):
    """The ledger, the releases on disk and the rollback target."""
    return _status.releases(cfg)


def health(cfg):
    """The health check of a release, on the live one."""
    return _engine["djangoapp_health"].check_health(cfg)


def database_ready(cfg, host, timeout, poll=2.0):
    """Wait until the app's database accepts its credentials: ``{"result",
    "seconds", "comment"}``."""
    started = time.monotonic()
    env = _config.load_env(cfg)
    while True:
        problem = _engine["djangoapp_django"].database_answers(cfg, env, host)
        waited = round(time.monotonic() - started, 1)
        if problem is None:
            return {"result": True, "seconds": waited}
        if waited >= timeout:
            return {
                "result": False,
                "seconds": waited,
                "comment": f"the database did not answer in {timeout} s: {problem}",
            }
        time.sleep(poll)


def maintenance(cfg, on=None, message=None):
    """The app's maintenance mode: switched when ``on`` is True or False, and
    its state."""
    module = _engine["djangoapp_maintenance"]
    if on is None:
        return module.maintenance_state(cfg)
    return module.switch_maintenance(cfg, on, message)


def pillar_decision(cfg, version, policy):
    """Whether state.apply releases the pillar's ``version`` now."""
    return _status.pillar_decision(cfg, version, policy)


def record_pillar_version(cfg, version, jid=None):
    """state.apply left the pillar's ``version`` live."""
    disk = _engine["djangoapp_disk"]
    disk.record_pillar_version(disk.Layout(cfg["base_dir"]), version, jid)


def restore(cfg, host, backup=None, user=None, jid=None):
    """Restore the app's database from a dump; see ``djangoapp_restore``."""
    return _engine["djangoapp_restore"].restore(
        cfg, host, backup=backup, user=user, jid=jid
    )


def migrate_deferred(cfg, host, user=None, jid=None):
    """The migrations the live release left for later; see ``djangoapp_deferred``."""
    return _engine["djangoapp_deferred"].migrate_deferred(cfg, host, user=user, jid=jid)


def dump_now(cfg, host, label="manual", user=None, jid=None):
    """Dump the app's database now; see ``djangoapp_restore``."""
    return _engine["djangoapp_restore"].dump_now(
        cfg, host, label=label, user=user, jid=jid
    )


def static_location(cfg):
    """Where Nginx finds the live release's static and media files."""
    return _engine["djangoapp_files"].static_location(cfg)
