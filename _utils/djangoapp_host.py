"""
The host as the release engine sees it: commands (always a list argv, through
Salt's ``cmd.run_all``), commands as the app's user, events, background work.
"""

import contextvars
import logging
import pwd
import shutil
import subprocess
import threading

from djangoapp_common import SAFE_PATH, StepFailed, os_user, tail
from djangoapp_procs import at_normal_priority, pid_alive
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def as_user(user, argv):
    """
    ``argv`` run as ``user`` (its uid, gid and groups) through util-linux's
    setpriv, with the environment the caller gives: no login session and no
    shell. Salt's ``runas`` first starts a login shell and its own Python to
    read the user's environment, a tenth of a second or more per command,
    which the engine replaces anyway. None when setpriv is missing (then
    ``runas`` it is).
    """
    setpriv = shutil.which("setpriv", path=SAFE_PATH)
    if not setpriv:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise CommandExecutionError(f"user {user!r} does not exist") from exc
    return [
        setpriv,
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--init-groups",
        "--",
        *argv,
    ]


class Host:
    """
    What the engine needs from Salt: ``run_all`` (``cmd.run_all``) and
    ``send_event`` (``event.send``). Commands are always list argvs.
    """

    def __init__(self, run_all, send_event=None):
        self._run_all = run_all
        self._send_event = send_event
        self._events = []

    def run(self, argv, **kwargs):
        if not isinstance(argv, list):
            raise TypeError("argv must be a list")
        kwargs.setdefault("python_shell", False)
        kwargs.setdefault("output_loglevel", "quiet")
        kwargs.setdefault("ignore_retcode", True)
        kwargs.setdefault("redirect_stderr", False)
        runas = kwargs.get("runas")
        if runas and runas == os_user():
            kwargs.pop("runas")
        elif runas:
            dropped = as_user(runas, argv)
            if dropped:
                kwargs.pop("runas")
                argv = dropped
        return self._run_all(argv, **kwargs)

    @staticmethod
    def run_background(argv):
        """
        Start ``argv`` and leave it running, in a session of its own with no
        terminal and no output: neither this process nor whoever reads its
        output (``salt-call`` over ssh, a CI job) waits for it. Salt's
        ``cmd.run_bg`` would hand it this process's stdout and stderr.
        """
        process = subprocess.Popen(  # pylint: disable=consider-using-with
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
            env={"PATH": SAFE_PATH, "LC_ALL": "C"},
        )
        at_normal_priority(process.pid)
        return process

    def check(self, step, argv, redact=None, **kwargs):
        ret = self.run(argv, **kwargs)
        if ret.get("retcode") != 0:
            output = tail((ret.get("stderr") or "") + "\n" + (ret.get("stdout") or ""))
            if redact:
                output = redact(output)
            raise StepFailed(
                step,
                "{} failed (exit {}): {}".format(argv[0], ret.get("retcode"), output),
            )
        return ret

    def event(self, tag, data):
        """
        Send an event without waiting for it: an event must never slow down
        or fail a release. The thread is not a daemon, so the process still
        sends it before exiting (``event_sender`` leaves out the case where
        no one would receive it).
        """
        if not self._send_event:
            return None
        context = contextvars.copy_context()

        def send():
            try:
                context.run(self._send_event, tag, data)
            except Exception as exc:  # pylint: disable=broad-except
                log.debug("djangoapp: event %s not sent: %s", tag, exc)

        thread = threading.Thread(target=send, name=f"djangoapp-event-{tag}")
        thread.start()
        self._events.append(thread)
        return thread


def make_host(run_all, send_event=None):
    """A ``Host`` for the execution module (utilities expose functions only)."""
    return Host(run_all, send_event)


def event_sender(opts, send_event):
    """
    ``send_event`` (``event.send``), or None when no one would receive an
    event: masterless (``salt-call --local``) with no minion daemon running,
    ``event.send`` puts it on the local minion's event bus, waits a second
    for a daemon that is not there, and the process waits for that at exit.
    """
    masterless = (
        opts.get("local")
        or opts.get("file_client") == "local"
        or opts.get("master_type") == "disable"
    ) and not opts.get("use_master_when_local")
    if send_event is None or not masterless:
        return send_event
    try:
        with open(opts.get("pidfile") or "", encoding="ascii") as handle:
            daemon = int(handle.read().strip())
    except (OSError, ValueError):
        return None
    return send_event if pid_alive(daemon) else None


def run_in_thread(func, *args, **kwargs):
    """
    Start ``func`` in a thread that sees the caller's context variables (Salt's
    loader keeps ``__salt__`` and friends there). Returns a joiner.
    """
    context = contextvars.copy_context()
    box = {}

    def target():
        try:
            box["value"] = context.run(func, *args, **kwargs)
        except BaseException as exc:  # pylint: disable=broad-except
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join():
        thread.join()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    return join
