"""
The app's Gunicorn: its master (found through the pidfile or the process
manager), the records its hooks write, its control socket, and the two ways of
putting its workers on a release: a rolling hand-over, or a HUP where a
hand-over cannot be right.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import time

from djangoapp_build import venv_package_version
from djangoapp_common import NotAFile, file_sha256, read_app_file, read_app_json
from djangoapp_procs import (
    children,
    pid_alive,
    proc_cmdline,
    proc_cwd,
    proc_exe,
    proc_ppid,
    renice,
)
from salt.exceptions import CommandExecutionError

CONTROL_MESSAGE_LIMIT = 16 * 1024 * 1024
# What the process manager runs in Gunicorn's place when the app preloads.
KEEPER = "gunicorn-keeper"


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


class ControlSocketError(CommandExecutionError):
    """Gunicorn's control socket did not answer."""


class AnswerLost(CommandExecutionError):
    """A command was sent to Gunicorn, and its answer did not come back."""


class HandOverUnavailable(CommandExecutionError):
    """The hand-over could not start; nothing was changed."""


class GunicornControl:
    """
    A client of Gunicorn's control socket (``control_socket``, gunicorn 25.1+;
    the protocol of gunicorn/ctl/protocol.py): every message is a 4-byte
    big-endian length and a JSON object, requests ``{"id", "command", "args"}``
    and answers ``{"id", "status": "ok", "data"}`` or ``{"status": "error",
    "error"}``.

    The master stops its control server around every fork (each new worker)
    and starts it again, which closes the connections and recreates the
    socket; a connection made in the middle of that may also land in a socket
    that a new worker inherited and nobody answers on. So each command gets
    its own connection and a short wait (``attempt``), and is tried again
    until ``timeout``. A command whose answer was lost may have been carried
    out: the worker count changes through ``set_workers``, which looks at the
    count again instead of repeating a change.
    """

    def __init__(self, path, timeout=20.0, attempt=2.0):
        self.path = path
        self.timeout = timeout
        self.attempt = attempt

    def command(self, text, repeatable=True):
        """
        Send one command (``"show stats"``); return its ``data``. A command
        that is not ``repeatable`` is sent once: when its answer is lost,
        ``AnswerLost`` says that it may or may not have been carried out.
        """
        payload = json.dumps({"id": 1, "command": text, "args": []}).encode()
        request = struct.pack(">I", len(payload)) + payload
        deadline = time.monotonic() + self.timeout
        while True:
            sent = False
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(self.attempt)
                    sock.connect(self.path)
                    sent = True
                    sock.sendall(request)
                    (length,) = struct.unpack(">I", _receive(sock, 4))
                    if length > CONTROL_MESSAGE_LIMIT:
                        raise ValueError(f"gunicorn answered {length} bytes")
                    answer = json.loads(_receive(sock, length).decode("utf-8"))
                break
            except (OSError, ValueError) as exc:
                if sent and not repeatable:
                    raise AnswerLost(f"{text!r}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise ControlSocketError(
                        f"gunicorn control socket {self.path}, {text!r}: {exc}"
                    ) from exc
                time.sleep(0.02)
        if answer.get("status") != "ok":
            raise CommandExecutionError(
                f"gunicorn refused {text!r}: {answer.get('error')}"
            )
        return answer.get("data") or {}

    def set_workers(self, target):
        """Make the master keep ``target`` workers (it stops the oldest first).
        A change whose answer names the new count ends it: another look would
        come while the master forks, when connections get lost."""
        deadline = time.monotonic() + self.timeout
        while True:
            current = int(self.command("show stats").get("workers_target") or 0)
            if current == target:
                return
            if current < target:
                change = f"worker add {target - current}"
            else:
                change = f"worker remove {current - target}"
            try:
                if self.command(change, repeatable=False).get("total") == target:
                    return
            except AnswerLost as exc:
                # carried out or not: the next look at the count tells
                if time.monotonic() >= deadline:
                    raise ControlSocketError(str(exc)) from exc


def _receive(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("connection closed")
        data += chunk
    return data


class Service:
    """
    The gunicorn master of an app: found through Gunicorn's pidfile (checked
    against /proc) or else its process manager, and what the master and its
    workers record in the app's run directory (written by the hooks of the
    formula's gunicorn.conf.py).
    """

    def __init__(self, cfg, host):
        self.cfg = cfg
        self.host = host
        self.manager = cfg["process_manager"]
        self.name = cfg["service"]
        run_dir = cfg["run_dir"]
        self.pidfile = os.path.join(run_dir, "gunicorn.pid")
        self.master_state_file = os.path.join(run_dir, "gunicorn.json")
        self.worker_state_dir = os.path.join(run_dir, "workers")
        self.control_socket = cfg["control_socket"] or os.path.join(
            run_dir, "gunicorn.ctl"
        )
        # preload_app: the process manager runs gunicorn-keeper, which starts a
        # master per hand-over
        self.preloaded = bool(cfg.get("preload_app"))
        self.keeper_state_file = os.path.join(run_dir, "keeper.json")
        self.standby_file = os.path.join(run_dir, "standby.json")
        # what a standby is asked to check in itself (djangoapp_standby)
        self.preflight_request_file = os.path.join(run_dir, "preflight-request.json")

    @property
    def worker_timeout(self):
        """How long new workers may take to be ready, and old ones to exit."""
        return int(self.cfg["graceful_timeout"]) + 15

    def reports_ready(self, master):
        """
        Whether the master's workers report when they have loaded the app: its
        config has the hooks (it recorded what it loaded). A worker's cwd is in
        the new release from its fork on, before it has imported anything.
        """
        return self.master_state(master) is not None

    def verify_workers(self, layout, rid, master, replaced=()):
        """Wait until every worker runs ``rid`` (and has loaded it, where the
        workers report it). Returns their pids."""
        return self.wait_workers_on(
            layout,
            rid,
            self.worker_timeout,
            master,
            ready=self.reports_ready(master),
            replaced=replaced,
        )

    def master_pid(self):
        if self.preloaded:
            return self.pidfile_master() or self.keeper_master()
        return self.pidfile_master() or self.manager_master()

    def is_master(self, pid):
        """
        True when ``pid`` is this app's gunicorn master: gunicorn started with
        this app's config file, by the app's process manager (preloaded: by the
        app's gunicorn-keeper).
        """
        argv = proc_cmdline(pid)
        if not any(os.path.basename(arg) == "gunicorn" for arg in argv[:3]):
            return False
        if not self.names_config(argv):
            return False
        if self.preloaded:
            return self.is_keeper(proc_ppid(pid))
        return self.started_by_manager(pid)

    def started_by_manager(self, pid):
        parent = proc_ppid(pid)
        if self.manager == "systemd":
            return parent == 1
        return any(
            os.path.basename(arg) == "supervisord" for arg in proc_cmdline(parent)[:2]
        )

    def names_config(self, argv):
        config = self.cfg["gunicorn_config"]
        return config in argv or f"--config={config}" in argv

    def is_keeper(self, pid):
        argv = proc_cmdline(pid)
        keeper = any(os.path.basename(arg) == KEEPER for arg in argv[:2])
        return keeper and self.names_config(argv)

    def keeper_pid(self, wait=0.0):
        """
        The app's gunicorn-keeper, or 0: the pid keeper.json names, checked
        against /proc and the process manager. The keeper writes that file once
        it takes SIGHUP as a hand-over (until then a SIGHUP would end it): for
        a keeper the process manager has just started, wait up to ``wait`` s.
        """
        deadline = time.monotonic() + wait
        managed = None  # the process manager's main pid, asked once (a client)
        while True:
            pid = self.keeper_state().get("pid")
            if isinstance(pid, int) and self.is_keeper(pid):
                if self.started_by_manager(pid):
                    return pid
                managed = managed if managed is not None else self.manager_master()
                if managed == pid:
                    return pid
            if managed is None:
                managed = self.manager_master()
            if time.monotonic() >= deadline or not self.is_keeper(managed):
                return 0
            time.sleep(WORKER_POLL)

    def serving(self, master):
        """The app's Gunicorn processes: the master and its workers; preloaded,
        every master of the keeper (one may be starting) and their workers."""
        keeper = self.keeper_pid() if self.preloaded else 0
        masters = children(keeper) if keeper else [master] if master else []
        return {pid for each in masters for pid in (each, *children(each))}

    def keeper_state(self):
        try:
            state = read_app_json(self.keeper_state_file)
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def renew_keeper(self, keeper):
        """
        Have a gunicorn-keeper running an older program than the one installed
        (the formula updated it since the keeper started) execute the new one:
        it keeps its masters and the socket. Returns whether it did; a keeper
        from before renewals (no ``program`` in keeper.json) goes on as it is.
        Raises CommandExecutionError when it does not answer in KEEPER_START s.
        """
        running = self.keeper_state().get("program")
        argv = proc_cmdline(keeper)
        installed = [arg for arg in argv[:2] if os.path.basename(arg) == KEEPER]
        digest = file_sha256(installed[0]) if installed else None
        if not running or not digest or digest == running:
            return False
        os.kill(keeper, signal.SIGWINCH)
        deadline = time.monotonic() + KEEPER_START
        while time.monotonic() < deadline:
            state = self.keeper_state()
            if (state.get("pid"), state.get("program")) == (keeper, digest):
                return True
            time.sleep(WORKER_POLL)
        raise CommandExecutionError(
            f"gunicorn-keeper {keeper} did not renew itself in {KEEPER_START}s"
        )

    def keeper_processes(self, keeper):
        """gunicorn-keeper, its masters and their workers, but the standby it
        names (one kept for a switch-back waits at a niceness of its own)."""
        standby = self.keeper_state().get("standby")
        masters = [pid for pid in children(keeper) if pid != standby]
        return [keeper, *masters, *(w for m in masters for w in children(m))]

    def keeper_master(self):
        """The master the keeper says serves, checked against /proc."""
        pid = self.keeper_state().get("live")
        return pid if isinstance(pid, int) and self.is_master(pid) else 0

    def prepare_standby(self, rdir, version=None, later=False, preflight=None):
        """
        With ``preload_app``: have gunicorn-keeper start a standby master of the
        release in ``rdir``, which imports the app now and forks its workers at
        the hand-over to that release. By default for this run's hand-over: it
        imports at this thread's niceness (the release's own processes', ahead
        of the serving workers), and once it has taken over the keeper starts a
        standby of the release it replaced (``keep_previous``), for a
        switch-back or a rollback. ``later``: one for a later rollback, at the
        keeper's niceness, that keeps none. ``preflight``: a request for the
        standby to run the preflight once it has imported the app
        (``standby_answer``). Returns its pid, or 0 (no keeper, or no answer in
        STANDBY_ANSWER s).
        """
        if preflight:
            write_for_keeper(self.preflight_request_file, preflight)
        else:
            self.forget_preflight()
        keeper = self.keeper_pid() if self.preloaded else 0
        if keeper:
            try:
                self.renew_keeper(keeper)
            except CommandExecutionError:
                return 0  # the hand-over asks again, and fails if it must
        state = self.keeper_state() if keeper else {}
        if "standby" not in state:
            # none, or one started before the formula had standbys: SIGUSR1 would end it
            return 0
        asked = {"release": rdir, "version": version, "keep_previous": not later}
        write_for_keeper(self.standby_file, asked)
        os.kill(keeper, signal.SIGUSR1)
        deadline = time.monotonic() + STANDBY_ANSWER
        while time.monotonic() < deadline:
            standby = self.keeper_state().get("standby")
            if standby and standby != state["standby"]:
                if not later:
                    renice([standby], os.getpriority(os.PRIO_PROCESS, 0))
                return standby
            time.sleep(WORKER_POLL)
        return 0

    def preflight_answer_file(self, request_id):
        """Where the standby writes its answer to the request ``request_id``."""
        run_dir = os.path.dirname(self.preflight_request_file)
        return os.path.join(run_dir, f"preflight-{request_id}.json")

    def standby_answer(self, pid, request, timeout):
        """What the standby ``pid`` answered to the preflight ``request`` (in
        its ``answer`` file): the preflight's result, or ``{"failed":
        "standby", "error"}`` when it could not run it, ended first (or the
        keeper dropped it) or did not answer in ``timeout`` s. The request and
        its answer are removed."""
        answer_file = request["answer"]
        deadline = time.monotonic() + timeout
        try:
            while True:
                answer = read_answer(answer_file)
                if answer is not None and answer.get("request") == request["id"]:
                    return answer
                if answer is not None:
                    error = answer.get("error") or "an answer to another request"
                elif self.keeper_state().get("standby") != pid:
                    error = "the standby ended before it answered"
                elif time.monotonic() > deadline:
                    error = f"no answer in {timeout} s"
                else:
                    time.sleep(WORKER_POLL)
                    continue
                return {"failed": "standby", "error": error}
        finally:
            self.forget_preflight(answer_file)

    def forget_preflight(self, *answers):
        for path in (self.preflight_request_file, *answers):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def drop_standby(self, pid=None):
        """End the keeper's standby master (if it is ``pid``, when given); wait (up
        to STANDBY_ANSWER s) until the keeper says it has none."""
        keeper = self.keeper_pid() if self.preloaded else 0
        standby = self.keeper_state().get("standby") if keeper else None
        if not standby or pid not in (None, standby):
            return
        os.kill(keeper, signal.SIGUSR2)
        deadline = time.monotonic() + STANDBY_ANSWER
        while self.keeper_state().get("standby") and time.monotonic() < deadline:
            time.sleep(WORKER_POLL)

    def pidfile_master(self):
        try:
            pid = int(read_app_file(self.pidfile).decode("ascii").strip())
        except (OSError, ValueError):
            return 0
        return pid if self.is_master(pid) else 0

    def manager_master(self):
        if self.manager == "systemd":
            if not shutil.which("systemctl"):
                return 0
            ret = self.host.run(
                ["systemctl", "show", "--property=MainPID", "--value", self.name]
            )
        else:
            if not shutil.which("supervisorctl"):
                return 0
            ret = self.host.run(["supervisorctl", "pid", self.name])
        text = (ret.get("stdout") or "").strip()
        if ret.get("retcode") != 0 or not text.isdigit():
            return 0
        pid = int(text)
        return pid if pid_alive(pid) else 0

    def hup(self, master):
        """A graceful reload: what ``systemctl reload`` and ``supervisorctl
        signal HUP`` would send."""
        if not master:  # os.kill(0) would signal the whole process group
            raise CommandExecutionError("no gunicorn master to send HUP to")
        try:
            os.kill(master, signal.SIGHUP)
        except OSError as exc:
            raise CommandExecutionError(f"HUP to gunicorn {master}: {exc}") from exc

    def master_state(self, master):
        """What the running master recorded when it read its config, or None."""
        try:
            state = read_app_json(self.master_state_file)
        except (OSError, ValueError):
            return None
        if isinstance(state, dict) and state.get("pid") == master:
            return state
        return None

    def worker_reports(self):
        """pid -> the report each worker wrote once it had loaded the app."""
        reports = {}
        try:
            names = os.listdir(self.worker_state_dir)
        except OSError:
            return reports
        for name in names:
            stem, _, ext = name.partition(".")
            if ext != "json" or not stem.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError):
                report = read_app_json(os.path.join(self.worker_state_dir, name))
                if isinstance(report, dict):
                    reports[int(stem)] = report
        return reports

    def workers(self, layout, master=None):
        master = master if master is not None else self.master_pid()
        if not master:
            return []
        found = []
        for pid in children(master):
            cwd = proc_cwd(pid)
            found.append({"pid": pid, "cwd": cwd, "release": layout.release_of(cwd)})
        return found

    def wait_workers_on(
        self, layout, rid, timeout, master=None, ready=False, replaced=()
    ):
        """
        Wait until every worker of the master runs from ``releases/<rid>``,
        none of them is one of the pids in ``replaced``, and, with ``ready``,
        each has reported that it loaded the app. Returns the worker pids;
        raises CommandExecutionError on timeout.
        """
        master = master or self.master_pid()
        deadline = time.monotonic() + timeout
        workers = []
        settled = None
        while True:
            if not pid_alive(master):
                raise CommandExecutionError(f"gunicorn master {master} is gone")
            workers = self.workers(layout, master)
            reports = self.worker_reports() if ready else {}
            if workers and all(
                w["release"] == rid
                and w["pid"] not in replaced
                and (not ready or w["pid"] in reports)
                for w in workers
            ):
                # the same workers in two looks in a row: not a process
                # caught between fork and exec, nor one about to appear
                pids = sorted(w["pid"] for w in workers)
                if pids == settled:
                    return pids
                settled = pids
            else:
                settled = None
            if time.monotonic() >= deadline:
                break
            time.sleep(WORKER_POLL)
        detail = ", ".join(f"{w['pid']}:{w['release'] or w['cwd']}" for w in workers)
        raise CommandExecutionError(
            f"workers not all {'ready ' if ready else ''}on {rid} after {timeout}s "
            f"({detail or 'no workers'})"
        )


def hup_reason(service, layout, rid, master):
    """
    Why a rolling hand-over to ``releases/<rid>`` cannot be right, or None.

    New workers are forked from the running master: they keep its Python,
    its Gunicorn and the settings it read from the config file, and take
    only the code, the virtualenv's packages and the environment file of the
    live release. Anything else that changed needs the master to read its
    config again (HUP).
    """
    state = service.master_state(master)
    if state is None:
        return "the master has not recorded what it loaded (started before the hooks)"
    if state.get("config_sha256") != file_sha256(service.cfg["gunicorn_config"]):
        return "the gunicorn config changed since the master read it"
    venv = os.path.join(layout.release(rid), "venv")
    gunicorn_version = venv_package_version(venv, "gunicorn")
    if gunicorn_version != state.get("gunicorn"):
        return "gunicorn {} runs, the release has {}".format(
            state.get("gunicorn"), gunicorn_version
        )
    master_python = proc_exe(master)
    release_python = os.path.realpath(os.path.join(venv, "bin", "python"))
    if master_python != release_python:
        return f"the master runs {master_python}, the release {release_python}"
    if not os.path.exists(service.control_socket):
        return f"no control socket at {service.control_socket}"
    return None


# How often the workers are looked at while they are replaced (a look reads /proc and
# the run directory: a few milliseconds).
WORKER_POLL = 0.02

# How long a gunicorn-keeper just started may take to say that it takes SIGHUP, and
# one that runs to name the standby master it started.
KEEPER_START = 10.0
STANDBY_ANSWER = 1.0

# During a hand-over, relative to the master's own niceness: the old workers yield the
# CPU, and the new ones (forked while the master is boosted) load the app ahead of
# everything else on the host, until they report ready.
RETIRING_NICENESS = 10
BOOTING_NICENESS = -5


class HandOver:
    """
    Replace the master's workers by new ones running ``releases/<rid>``
    without a moment with no worker ready: N more workers on the control
    socket, and each time a new worker has loaded the app (its report in the
    run directory, its cwd in the release), one worker fewer (Gunicorn stops
    the oldest first). Meanwhile the old workers yield the CPU to the booting
    ones until they are told to stop, and the new ones boot at a higher
    priority until they are ready.
    """

    def __init__(self, service, layout, rid, master):
        self.service = service
        self.layout = layout
        self.rid = rid
        self.master = master
        self.control = GunicornControl(service.control_socket)
        self.retired = 0
        self.settled = set()

    def run(self, timeout):
        """Hand over; returns details for the step. The old workers may still be
        finishing their requests."""
        started = time.monotonic()
        self.look()
        renice(self.old, self.niceness + RETIRING_NICENESS)
        renice([self.master], self.niceness + BOOTING_NICENESS)
        try:
            self.control.set_workers(self.before + self.count)
            self.wait_ready(started + timeout, timeout)
        finally:
            # the master and every worker it has back at the master's niceness
            renice([self.master, *children(self.master)], self.niceness)
        return {
            "method": "rolling",
            "workers_added": self.count,
            "workers_retired": self.retired,
            "ready_seconds": round(time.monotonic() - started, 3),
        }

    def look(self):
        """What runs now; raises HandOverUnavailable when the socket cannot help."""
        try:
            stats = self.control.command("show stats")
        except ControlSocketError as exc:
            raise HandOverUnavailable(str(exc)) from exc
        if stats.get("pid") != self.master:
            raise HandOverUnavailable(
                f"the control socket answers for pid {stats.get('pid')}, "
                f"not {self.master}"
            )
        self.count = int(self.control.command("show config").get("workers") or 1)
        self.before = int(stats.get("workers_target") or self.count)
        self.old = set(children(self.master))
        # oldest first, the order in which Gunicorn stops them
        self.retiring = [
            worker["pid"]
            for worker in self.control.command("show workers").get("workers") or []
            if worker.get("pid") in self.old
        ]
        for pid in set(self.service.worker_reports()) - self.old:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.service.worker_state_dir, f"{pid}.json"))
        try:
            self.niceness = os.getpriority(os.PRIO_PROCESS, self.master)
        except OSError as exc:
            raise CommandExecutionError(
                f"gunicorn master {self.master} is gone"
            ) from exc

    def wait_ready(self, deadline, timeout):
        """Retire one old worker for each new one ready, until all are new."""
        master_boosted = True
        while True:
            if not pid_alive(self.master):
                raise CommandExecutionError(f"gunicorn master {self.master} is gone")
            new = [pid for pid in children(self.master) if pid not in self.old]
            if master_boosted and len(new) >= self.count:
                renice([self.master], self.niceness)
                master_boosted = False
            ready = self.ready_among(new)
            due = (
                self.before
                if len(ready) >= self.count
                else min(len(ready), self.before)
            )
            if due > self.retired:
                self.control.set_workers(self.before + self.count - due)
                # told to stop: let them finish their request at full speed
                renice(self.retiring[self.retired : due], self.niceness)
                self.retired = due
            if len(ready) >= self.count:
                return
            if time.monotonic() >= deadline:
                raise CommandExecutionError(
                    f"{len(ready)} of {self.count} new workers ready on {self.rid} "
                    f"after {timeout}s"
                )
            time.sleep(WORKER_POLL)

    def ready_among(self, new):
        """The new workers that loaded the app from the release; back to normal
        priority once ready."""
        reports = self.service.worker_reports()
        ready = [
            pid
            for pid in new
            if pid in reports and self.layout.release_of(proc_cwd(pid)) == self.rid
        ]
        renice(set(ready) - self.settled, self.niceness)
        self.settled.update(ready)
        return ready


class PreloadedHandOver:
    """
    A hand-over by gunicorn-keeper (``preload_app``): a SIGHUP has it start a
    new master of the release ``current`` names, which imports the app once
    and forks its workers; once they are all ready the keeper stops the old
    master, or, when the new one fails, stops it and keeps the old one. Here
    the new master loads the app ahead of everything else on the host while
    the old workers yield the CPU, as in the rolling hand-over.
    """

    def __init__(self, service, master):
        self.service = service
        self.master = master

    def run(self, timeout):
        keeper = self.service.keeper_pid(wait=KEEPER_START)
        if not keeper:
            raise CommandExecutionError(
                f"gunicorn-keeper of {self.service.name} is not running"
            )
        renewed = self.service.renew_keeper(keeper)
        asked = self.service.keeper_state().get("requests") or 0
        niceness = os.getpriority(os.PRIO_PROCESS, keeper)
        retiring = children(self.master) if self.master else []
        started = time.monotonic()
        # the master the keeper forks now inherits the boost; a standby has it too
        standby = [pid for pid in children(keeper) if pid != self.master]
        boosted = {*standby}
        renice([keeper, *standby], niceness + BOOTING_NICENESS)
        renice(retiring, niceness + RETIRING_NICENESS)
        try:
            os.kill(keeper, signal.SIGHUP)
            while True:
                state = self.service.keeper_state()
                last = state.get("last") or {}
                if (last.get("request") or 0) > asked:
                    break
                # A master the keeper starts from a standby that came after this
                # hand-over began (one kept for a switch-back, WARM_NICENESS
                # behind, when a hand-over stopped midway left the keeper
                # finishing it): under load it would hardly import at all.
                starting = state.get("starting")
                if isinstance(starting, int) and starting not in boosted:
                    renice([starting], niceness + BOOTING_NICENESS)
                    boosted.add(starting)
                if not pid_alive(keeper):
                    raise CommandExecutionError(f"gunicorn-keeper {keeper} is gone")
                if time.monotonic() - started > timeout:
                    raise CommandExecutionError(
                        f"gunicorn-keeper {keeper} did not answer in {timeout}s"
                    )
                time.sleep(WORKER_POLL)
        finally:
            renice([*retiring, *self.service.keeper_processes(keeper)], niceness)
        if last.get("result") != "ready":
            raise CommandExecutionError(
                f"the new gunicorn master kept nothing: {last.get('error')}"
            )
        return {
            "method": "preloaded",
            "master": last["master"],
            "standby": bool(last.get("standby")),
            "ready_seconds": round(time.monotonic() - started, 3),
            "keeper_renewed": renewed,
            "boosted": sorted(boosted),
        }


def reload_workers(service, layout, rid, master):
    """
    Have the workers run ``releases/<rid>`` (``current`` already points
    there): a new master by gunicorn-keeper when the app preloads; else a
    rolling hand-over when it can be right, else a HUP. Returns
    ``{"method": "preloaded"|"rolling"|"hup", "master": pid, ...}``; a HUP
    names its reason.
    """
    if service.preloaded:
        return PreloadedHandOver(service, master).run(service.worker_timeout)
    reason = hup_reason(service, layout, rid, master)
    if reason is None:
        try:
            how = HandOver(service, layout, rid, master).run(service.worker_timeout)
            return {**how, "master": master}
        except HandOverUnavailable as exc:
            reason = str(exc)
    service.hup(master)
    return {"method": "hup", "reason": reason, "master": master}


def read_answer(path):
    """A JSON object the app user wrote in the run directory (``read_app_json``);
    None while there is none, ``{"error": ...}`` for anything else."""
    try:
        found = read_app_json(path)
    except FileNotFoundError:
        return None
    except NotAFile as error:
        return {"error": str(error)}
    except (OSError, ValueError) as error:
        return {"error": f"{path}: {error}"}
    return found if isinstance(found, dict) else {"error": f"{path}: not an object"}


def write_for_keeper(path, data):
    """Write ``data`` as JSON at ``path`` in the run directory, which is the app
    user's: under a new name that no link of theirs can stand for, then renamed."""
    temporary = f"{path}.{os.getpid()}.{time.monotonic_ns()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(temporary, flags, 0o644), "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(temporary, path)
