"""
A release, rollback or reload that was stopped before its end.

Stopped by a signal (``saltutil.term_job``'s SIGTERM, Ctrl-C, a closed
terminal): the run ends through its own failure handler, which puts back what
was live (``stopping_on_signals``, ``Interrupted``).

Killed (SIGKILL, ``saltutil.kill_job``, the power): the kernel frees the lock,
and the run's last word is what it wrote into the lock file: the step it was
in, the release it was making and the one live when it began. The next run of
the app takes the lock over and, before anything else, puts that right
(``recover``): the release that was live before the stopped run (or the one
it had already recorded as released) is live again, workers included, in the
number the config gives; what the stopped run left running or half-written is
ended or removed; the ledger records the run as ``interrupted``.
"""

import contextlib
import glob
import os
import signal
import threading
import time

from djangoapp_common import now_iso
from djangoapp_disk import (
    ledger_append,
    ledger_read,
    remove_release,
    successful_releases,
    switch_current,
)
from djangoapp_django import PARTIAL_SUFFIX
from djangoapp_gunicorn import GunicornControl, reload_workers
from djangoapp_procs import (
    children,
    proc_ppid,
    proc_start_time,
    release_users,
    renice,
)
from salt.exceptions import CommandExecutionError


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# How long the processes a run started get to end after SIGTERM.
CHILD_GRACE = 5.0


class Interrupted(BaseException):
    """A signal stopped the run: raised where it was, caught by ``execute``."""


@contextlib.contextmanager
def signals_handled_by(handler):
    """
    The stopping signals go to ``handler`` while the body runs, and back to
    their handlers before it after. Signals reach only the main thread;
    elsewhere (a minion running its jobs in threads) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {each: signal.signal(each, handler) for each in STOPPING_SIGNALS}
    try:
        yield
    finally:
        for each, previous in before.items():
            signal.signal(each, previous)


def stopping_on_signals():
    """
    While the body runs, a stopping signal raises ``Interrupted`` in it. The
    first one also ignores the next ones: putting back what was live must not
    be stopped in turn.
    """

    def stop(signum, _frame):
        for each in STOPPING_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    return signals_handled_by(stop)


def running(pid):
    """Alive and not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def end_processes(pids, grace=CHILD_GRACE):
    """SIGTERM, then SIGKILL for those still there after ``grace`` seconds.
    Returns the pids that were signalled."""
    pids = [pid for pid in pids if running(pid)]
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return pids


def own_children():
    """This process's children now, each with its start time (a pid can be
    taken again by a later process)."""
    return {(pid, proc_start_time(pid)) for pid in children(os.getpid())}


def end_own_children(already):
    """The commands the run started and left running (a build, a migration, a
    dump) end with it; children the process had before the run (``already``,
    from ``own_children``), which are not the run's, are left alone."""
    started = own_children() - already
    return end_processes(sorted(pid for pid, _start in started))


def restore(service, layout, previous):
    """Put ``previous`` back live, workers included. Returns what was done."""
    if not previous:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(layout.current)
        return ["no previous release: removed current"]
    switch_current(layout, previous)
    restored = [f"current -> releases/{previous}"]
    master = service.master_pid()
    if not master:
        return restored + ["service not running: nothing to reload"]
    restored += settle_workers(service, master)
    try:
        how = reload_workers(service, layout, previous, master)
        if how["method"] == "hup":
            restored.append(f"sent HUP to gunicorn: {how['reason']}")
        else:
            restored.append(f"handed the workers over to it ({how['method']})")
        pids = service.verify_workers(layout, previous, how["master"])
        restored.append(f"workers back on {previous}: {pids}")
    except CommandExecutionError as exc:
        restored.append(f"restore incomplete: {exc}")
    return restored


def was_confirmed(entries, stopped):
    """The stopped run had recorded its release or rollback as a success (it
    was killed while pruning): what it made live stays."""
    return any(
        entry.get("status") == "success"
        and entry.get("started") == stopped.get("started")
        and entry.get("id") == stopped.get("rid")
        for entry in entries
    )


def settle_workers(service, master):
    """
    A hand-over stopped midway leaves the master with more workers than its
    config gives and priorities shifted: both back. The niceness the master
    was started with is its process manager's, which the formula leaves at the
    default.
    """
    done = []
    if not os.path.exists(service.control_socket):
        return done  # a Gunicorn without one: no hand-over could have been stopped
    control = GunicornControl(service.control_socket, timeout=5.0)
    try:
        configured = int(control.command("show config").get("workers") or 0)
        target = int(control.command("show stats").get("workers_target") or 0)
        if configured and target != configured:
            control.set_workers(configured)
            done.append(f"workers back to {configured} (were {target})")
            # the next hand-over counts the workers: the extra ones gone first
            deadline = time.monotonic() + service.worker_timeout
            while len(children(master)) > configured and time.monotonic() < deadline:
                time.sleep(0.1)
    except CommandExecutionError as exc:
        done.append(f"worker count not checked: {exc}")
    manager = proc_ppid(master)
    with contextlib.suppress(OSError, TypeError):
        niceness = os.getpriority(os.PRIO_PROCESS, manager)
        renice([master, *children(master)], niceness)
    return done


def settle_keeper(service):
    """
    A preloaded hand-over stopped midway leaves gunicorn-keeper and the masters
    it starts boosted, and the old master's workers held back: all back at the
    niceness of the keeper's process manager (the standby the keeper names keeps
    its own).
    """
    keeper = service.keeper_pid()
    manager = proc_ppid(keeper) if keeper else None
    try:
        niceness = os.getpriority(os.PRIO_PROCESS, manager)
    except (OSError, TypeError):
        return []
    shifted = []
    for pid in service.keeper_processes(keeper):
        with contextlib.suppress(OSError):
            if os.getpriority(os.PRIO_PROCESS, pid) != niceness:
                shifted.append(pid)
    renice(shifted, niceness)
    return [f"priorities back to {niceness}: {shifted}"] if shifted else []


def orphans(layout, rid, service, master):
    """Processes still using the stopped run's release that are not the app's
    Gunicorn (a build or a migration whose parent was killed)."""
    return sorted(release_users(layout).get(rid, set()) - service.serving(master))


def recover(cfg, layout, service, stopped):
    """
    Put right what the run described by ``stopped`` (its lock file) left;
    returns what was found and done, also recorded in the ledger. The caller
    holds the lock.
    """
    rid = stopped.get("rid")
    entries = ledger_read(layout.ledger)
    done = []
    put_back = None
    master = service.master_pid()
    if rid:
        ended = end_processes(orphans(layout, rid, service, master))
        if ended:
            done.append(f"ended the processes it left running: {ended}")
    if master:
        done += settle_workers(service, master)
    if service.preloaded:
        done += settle_keeper(service)
    current = layout.current_id()
    if "previous" in stopped and stopped.get("action") in ("release", "rollback"):
        live = rid if was_confirmed(entries, stopped) else stopped["previous"]
        if current != live:
            done += restore(service, layout, live)
            current = put_back = live
            master = service.master_pid()  # preloaded: a new one
    if master and current and service.workers(layout, master):
        stray = {w["release"] for w in service.workers(layout, master)} - {current}
        if stray:
            done.append(f"workers of {sorted(stray)} handed over to {current}")
            how = reload_workers(service, layout, current, master)
            service.verify_workers(layout, current, how["master"])
    # kept: what serves or is live, and a release that succeeded before (the
    # stopped run was taking it up again)
    kept = {w["release"] for w in service.workers(layout)} | {current}
    kept.update(successful_releases(entries))
    if rid and rid not in kept and os.path.isdir(layout.release(rid)):
        remove_release(layout, rid)
        done.append(f"removed its release {rid}")
    for partial in glob.glob(os.path.join(cfg["backup_dir"], "*" + PARTIAL_SUFFIX)):
        with contextlib.suppress(OSError):
            os.remove(partial)
            done.append(f"removed the unfinished dump {partial}")
    found = {
        key: stopped.get(key)
        for key in ("action", "version", "step", "pid", "user", "jid", "started")
    }
    ledger_append(
        layout.ledger,
        {
            "event": stopped.get("action") or "release",
            "status": "interrupted",
            "started": stopped.get("started"),
            "finished": now_iso(),
            "failed_step": stopped.get("step"),
            "id": rid,
            "version": stopped.get("version"),
            "user": stopped.get("user"),
            "jid": stopped.get("jid"),
            "recovered": done,
        },
    )
    done = done or ["nothing was left to put right"]
    return {**found, "put_back": put_back, "done": done}
