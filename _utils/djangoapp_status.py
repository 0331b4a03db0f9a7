"""
What an operator asks about an app, read and never changed: the live release
and its workers (``status``), and the ledger with the releases on disk
(``releases``).
"""

from djangoapp_common import read_json
from djangoapp_disk import (
    Layout,
    ReleaseLock,
    last_deploy_of,
    ledger_read,
    rollback_target,
    successful_releases,
)
from djangoapp_gunicorn import Service
from djangoapp_maintenance import maintenance_state
from djangoapp_procs import proc_cwd


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def status(cfg, host):
    layout = Layout(cfg["base_dir"])
    entries = ledger_read(layout.ledger)
    current = layout.current_id()
    info = (layout.release_json(current) if current else None) or {}
    deploy = last_deploy_of(entries, current) if current else None
    service = Service(cfg, host)
    master = service.master_pid()
    workers = service.workers(layout, master) if master else []
    reports = service.worker_reports()
    lock_holder = stopped = None
    if ReleaseLock.is_held(layout.lock):
        lock_holder = ReleaseLock.read_holder(layout.lock) or {}
    else:
        # a run killed before its end: the next one puts right what it left
        stopped = ReleaseLock.read_holder(layout.lock)
    return {
        "app": cfg["name"],
        "current": current,
        "version": info.get("version"),
        "sha": info.get("sha"),
        "deployed": (deploy or {}).get("finished"),
        "deployed_by": (deploy or {}).get("user"),
        "deployed_how": (deploy or {}).get("event", "release") if deploy else None,
        "jid": (deploy or {}).get("jid"),
        "service": {
            "name": service.name,
            "manager": service.manager,
            "running": bool(master),
            "master_pid": master or None,
            "master_release": layout.release_of(proc_cwd(master)) if master else None,
            "keeper": keeper_status(service),
        },
        "workers": [
            {
                "pid": w["pid"],
                "release": w["release"],
                "version": (reports.get(w["pid"]) or {}).get("version"),
            }
            for w in workers
        ],
        "release_running": lock_holder,
        "release_stopped": stopped,
        "maintenance": maintenance_state(cfg),
        "previous_good": rollback_target(entries, current, layout.on_disk()),
    }


def keeper_status(service):
    """With ``preload_app``: the gunicorn-keeper, how its last hand-over ended
    (keeper.json's ``last``) and its standby master; else None."""
    if not service.preloaded:
        return None
    pid = service.keeper_pid()
    state = service.keeper_state() if pid else {}
    return {
        "pid": pid or None,
        "last_handover": state.get("last"),
        "standby": state.get("standby"),
    }


def releases(cfg):
    layout = Layout(cfg["base_dir"])
    entries = ledger_read(layout.ledger)
    on_disk = layout.on_disk()
    current = layout.current_id()
    successful = successful_releases(entries)
    return {
        "app": cfg["name"],
        "current": current,
        "previous_good": rollback_target(entries, current, on_disk),
        "on_disk": [
            {
                "id": rid,
                "version": (layout.release_json(rid) or {}).get("version"),
                "current": rid == current,
                "successful": rid in successful,
            }
            for rid in on_disk
        ],
        "history": entries,
    }


def pillar_decision(cfg, version, policy):
    """
    Whether ``state.apply`` releases ``version``, the pillar's: when nothing is
    live, when the pillar's version changed since state.apply last left it live,
    when it is the live version (a branch may have moved), or always with
    the ``policy`` (``version_policy``) ``pillar``. Otherwise the release or
    rollback made by hand since stays: ``{"release": False, "comment": ...}``
    says what is live.
    """
    layout = Layout(cfg["base_dir"])
    current = layout.current_id()
    live = (layout.release_json(current) if current else None) or {}
    recorded = read_json(layout.pillar_record) or {}
    if (
        policy == "pillar"
        or not current
        or recorded.get("version") != version
        or live.get("version") == version
    ):
        return {"release": True}
    deploy = last_deploy_of(ledger_read(layout.ledger), current) or {}
    return {
        "release": False,
        "id": current,
        "version": live.get("version"),
        "comment": (
            "{live} is live, {how} by {user} at {when}; the pillar's version "
            "{version} has not changed since state.apply released it, so the "
            "{how} stays (version_policy: pillar would put {version} back)".format(
                live=live.get("version"),
                how=deploy.get("event") or "release",
                user=deploy.get("user") or "someone",
                when=deploy.get("finished") or "an unknown time",
                version=version,
            )
        ),
    }
