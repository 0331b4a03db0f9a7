"""
What ``/proc`` tells about the processes of an app: parents and children,
working directories, environments, start times, and which releases are in use.
"""

import contextlib
import contextvars
import os
from datetime import datetime

from djangoapp_common import inside


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def renice(pids, niceness):
    niceness = max(-20, min(19, niceness))
    for pid in pids:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, niceness)


# The niceness the engine's thread had before ``raised_priority``; what the
# processes it leaves running go back to.
_normal_niceness = contextvars.ContextVar("djangoapp_normal_niceness", default=None)


@contextlib.contextmanager
def raised_priority(change):
    """
    The calling thread, and every process it starts meanwhile (build, checks,
    migrations, as root or as the app's user), at its niceness plus ``change``
    (negative: ahead of the app's serving workers), back as it was on leaving.
    Linux sets a niceness per thread: a minion running jobs in threads keeps
    its other threads as they are. Without the right to raise it (not root),
    the niceness stays.
    """
    before = os.getpriority(os.PRIO_PROCESS, 0)
    token = _normal_niceness.set(before)
    raised = False
    if change:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, max(-20, min(19, before + change)))
            raised = True
        except OSError:
            pass
    try:
        yield
    finally:
        _normal_niceness.reset(token)
        if raised:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, before)


def at_normal_priority(pid):
    """A process started under ``raised_priority`` that outlives the step
    (work left in the background) back at the niceness from before."""
    niceness = _normal_niceness.get()
    if niceness is not None:
        renice([pid], niceness)


def _proc_pids():
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def proc_ppid(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return None


def proc_cwd(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def children(pid):
    return sorted(p for p in _proc_pids() if proc_ppid(p) == pid)


def pid_alive(pid):
    return bool(pid) and os.path.exists(f"/proc/{pid}")


def releases_in_use(layout):
    """
    Release ids that some process uses: its working directory, executable or a
    mapped file lies inside ``releases/<id>/``.
    """
    return set(release_users(layout))


def release_users(layout):
    """The pids that use each release (see ``releases_in_use``), by release id."""
    root = os.path.realpath(layout.releases) + "/"
    users = {}
    own = os.getpid()

    def note(pid, path):
        if path and path.startswith(root):
            rid = path[len(root) :].split("/", 1)[0]
            # not a release: the shared virtualenvs (.venvs), the trash
            if not rid.startswith("."):
                users.setdefault(rid, set()).add(pid)

    for pid in _proc_pids():
        if pid == own:
            continue
        for link in ("cwd", "exe"):
            with contextlib.suppress(OSError):
                note(pid, os.readlink(f"/proc/{pid}/{link}"))
        try:
            with open(
                f"/proc/{pid}/maps", encoding="utf-8", errors="replace"
            ) as handle:
                for line in handle:
                    if root in line:
                        note(pid, line[line.index(root) :].strip().split(" ")[0])
        except OSError:
            pass
    return users


def proc_start_time(pid):
    """When ``pid`` started, in seconds since the epoch (None if unknown)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="utf-8") as handle:
            btime = next(
                int(line.split()[1]) for line in handle if line.startswith("btime ")
            )
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def proc_environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def _epoch(iso):
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return None


def master_birth_release(layout, entries, master):
    """
    The release a gunicorn master may need on disk for as long as it lives.

    Gunicorn computes its default ``chdir`` once, at start, from ``$PWD`` when
    that names the working directory, else from the real path of the working
    directory, and each HUP changes there first: it dies if that directory is
    gone. When the process manager sets ``PWD`` to a path outside
    ``releases/`` (the base dir, or the ``current`` path), nothing is pinned.
    Otherwise the master may have started inside the release that was live
    then, which is returned so that pruning keeps it.
    """
    if not master:
        return None
    env = proc_environ(master)
    if not env:  # unreadable (or a process still in exec): nothing known
        return None
    pwd_value = env.get("PWD") or ""
    if pwd_value and not inside(pwd_value, layout.releases):
        return None
    started = proc_start_time(master)
    if started is None:
        return None
    live = None
    for entry in entries:
        if entry.get("status") != "success" or not entry.get("id"):
            continue
        finished = _epoch(entry.get("finished"))
        if finished is not None and finished <= started + 1:
            live = entry["id"]
    return live


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg]


def proc_exe(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
