"""
Several apps' runs at once, each in a process of its own.

``djangoapp.release_apps`` releases several apps of a host with one start of
Salt: each release runs in a child forked from the calling process, exactly as
``djangoapp.release`` runs it alone (its own lock, steps, signal handling and
put-back), and hands its return back through a pipe. A stopping signal that
reaches the calling process is passed on to every child still running, each of
which puts back what it changed; the caller waits for all of them.
"""

import contextlib
import json
import logging
import os
import signal
import threading
import time

from djangoapp_recovery import STOPPING_SIGNALS, signals_handled_by

log = logging.getLogger(__name__)

# How long a child waits, after its answer, for the threads its run left running.
THREADS_GRACE = 30.0


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def run_together(jobs):
    """
    Run each of ``jobs`` (name: a function of no argument returning a dict that
    JSON can carry) in a forked child, all at once; return name: its dict. A
    child that ends without an answer (killed) gets ``{"result": False,
    "error": ...}``; so does a job not started because a stopping signal came
    first.
    """
    running = {}  # pid: (name, the pipe's reading end)
    stopped_by = []

    def pass_on(signum, _frame):
        stopped_by.append(signal.Signals(signum).name)
        for pid in running:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)

    results = {}
    with signals_handled_by(pass_on):
        for name, job in jobs.items():
            if stopped_by:
                results[name] = {
                    "result": False,
                    "error": f"not started: stopped by {stopped_by[0]}",
                }
                continue
            # held back until the child is known here, to be passed on to it
            signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING_SIGNALS)
            try:
                pid, reading = _start(job)
                running[pid] = (name, reading)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPPING_SIGNALS)
        for pid, (name, reading) in list(running.items()):
            results[name] = _answer(pid, reading)
            del running[pid]
    return {name: results[name] for name in jobs}


def _start(job):
    """Fork a child running ``job``; return its pid and the pipe it answers on.
    Called with the stopping signals held back: the child gives them their
    default action before it lets them in, until the job's own handling
    replaces it (``djangoapp_recovery.stopping_on_signals``)."""
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reading)
        for each in STOPPING_SIGNALS:
            signal.signal(each, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPPING_SIGNALS)
        _run_child(job, writing)
    os.close(writing)
    return pid, reading


def _run_child(job, writing):
    """In the child: run ``job``, write its answer, wait for the threads it left
    (the release's events are sent by threads of their own, which an interpreter
    would wait for at exit), and end without running the parent's exit handlers
    (Salt's, pytest's)."""
    status = 0
    try:
        answer = json.dumps(job(), default=str)
    except BaseException as exc:  # the parent reports it; the child ends either way
        log.exception("djangoapp: a run in a child process failed")
        answer = json.dumps({"result": False, "error": f"{type(exc).__name__}: {exc}"})
        status = 1
    try:
        with os.fdopen(writing, "w", encoding="utf-8") as pipe:
            pipe.write(answer)
        deadline = time.monotonic() + THREADS_GRACE
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join(max(0.0, deadline - time.monotonic()))
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
    finally:
        os._exit(status)


def _answer(pid, reading):
    """The child's answer, once it has ended."""
    with os.fdopen(reading, "r", encoding="utf-8") as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    try:
        return json.loads(text)
    except ValueError:
        pass
    if os.WIFSIGNALED(status):
        how = f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    else:
        how = f"ended with status {os.waitstatus_to_exitcode(status)}"
    return {"result": False, "error": f"the run's process {how} before it answered"}
