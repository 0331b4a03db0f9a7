"""
The state of an app on disk: its directories (``Layout``), the ledger of every
release and rollback, the release lock, and the moves that change what is live
(the switch of ``current``, removing and pruning releases).

Layout of an app (``base_dir``, e.g. ``/srv/djangoapp/<app>``)::

    repo.git/            bare mirror (heads and tags of the origin)
    releases/<id>/       src/, venv/, release.json
    current -> releases/<id>
    shared/media/        uploads, outliving releases
    ledger.jsonl         one JSON object per release or rollback
    .release.lock        flock'ed while a release, rollback or reload runs
"""

import contextlib
import errno
import fcntl
import json
import os
import shutil
import threading
import time

from djangoapp_common import fsync_dir, now_iso, os_user, read_json, write_json_atomic
from djangoapp_procs import releases_in_use
from salt.exceptions import CommandExecutionError


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


class Layout:
    def __init__(self, base):
        self.base = base.rstrip("/")
        self.releases = os.path.join(self.base, "releases")
        # The virtualenvs the releases with the same requirements share, one per
        # digest: on the releases' filesystem, hidden from their listing.
        self.venvs = os.path.join(self.releases, ".venvs")
        self.current = os.path.join(self.base, "current")
        self.mirror = os.path.join(self.base, "repo.git")
        self.ledger = os.path.join(self.base, "ledger.jsonl")
        # The pillar's version that state.apply last left live (see pillar_decision).
        self.pillar_record = os.path.join(self.base, "pillar_version.json")
        self.lock = os.path.join(self.base, ".release.lock")
        self.shared_media = os.path.join(self.base, "shared", "media")

    def release(self, rid):
        return os.path.join(self.releases, rid)

    def current_id(self):
        """The id of the live release, or None."""
        try:
            target = os.readlink(self.current)
        except OSError:
            return None
        return os.path.basename(target.rstrip("/")) or None

    def on_disk(self):
        try:
            names = os.listdir(self.releases)
        except FileNotFoundError:
            return []
        return sorted(
            n
            for n in names
            if os.path.isdir(os.path.join(self.releases, n)) and not n.startswith(".")
        )

    def release_of(self, path):
        """The id of the release ``path`` (a real path) lies in, or None."""
        root = os.path.realpath(self.releases) + "/"
        if path and path.startswith(root):
            return path[len(root) :].split("/", 1)[0]
        return None

    def release_json(self, rid):
        try:
            return read_json(os.path.join(self.release(rid), "release.json"))
        except (OSError, ValueError):
            return None


def ledger_read(path):
    entries = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    entries.append(entry)
    except FileNotFoundError:
        pass
    return entries


def ledger_append(path, entry):
    line = json.dumps(entry, sort_keys=True, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_release(entry):
    return entry.get("event", "release") == "release"


def successful_releases(entries):
    """Ids that were released successfully, ordered by their last success."""
    order = []
    for entry in entries:
        if _is_release(entry) and entry.get("status") == "success" and entry.get("id"):
            if entry["id"] in order:
                order.remove(entry["id"])
            order.append(entry["id"])
    return order


def good_releases(entries):
    """
    Ids fit to roll back to, oldest first: successful releases, minus those a
    rollback moved away from (they were judged bad) until released again.
    """
    order = []
    for entry in entries:
        rid = entry.get("id")
        if not rid or entry.get("status") != "success":
            continue
        if _is_release(entry):
            if rid in order:
                order.remove(rid)
            order.append(rid)
        elif entry.get("event") == "rollback":
            left = entry.get("from")
            if left in order:
                order.remove(left)
    return order


def rollback_target(entries, current_id, on_disk):
    """The previous good release: the newest good one that is not current."""
    for rid in reversed(good_releases(entries)):
        if rid != current_id and rid in on_disk:
            return rid
    return None


def newest_good_of_version(layout, entries, version):
    """The release on disk of ``version`` that was last released successfully."""
    on_disk = layout.on_disk()
    for rid in reversed(successful_releases(entries)):
        if (
            rid in on_disk
            and (layout.release_json(rid) or {}).get("version") == version
        ):
            return rid
    return None


def last_deploy_of(entries, rid):
    """The ledger entry that last made ``rid`` live (release or rollback)."""
    for entry in reversed(entries):
        if entry.get("id") == rid and entry.get("status") == "success":
            return entry
    return None


def record_pillar_version(layout, version, jid=None):
    """state.apply left the pillar's ``version`` live (see ``pillar_decision``)."""
    write_json_atomic(
        layout.pillar_record, {"version": version, "recorded": now_iso(), "jid": jid}
    )


class LockBusy(CommandExecutionError):
    pass


class ReleaseLock:
    """
    ``fcntl.flock`` on ``<base>/.release.lock``; the holder writes who it is
    into the file. The kernel drops the lock when its holder dies, so a lock
    left by a killed release is free; its details are kept as ``stale``.
    """

    def __init__(self, path, holder):
        self.path = path
        self.holder = holder
        self.fd = None
        self.stale = None

    @staticmethod
    def read_holder(path, tries=5):
        """Who holds the lock, as the holder wrote it. The holder rewrites the
        file in place (the lock is the file's): a read in the middle of that
        sees half of each, and is made again."""
        for attempt in range(tries):
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read().strip()
            except OSError:
                return None
            if not text:
                return None
            try:
                return json.loads(text)
            except ValueError:
                if attempt + 1 < tries:
                    time.sleep(0.01)
        return {"raw": text[:200]}

    @staticmethod
    def is_held(path):
        """True when some process holds the lock right now."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def acquire(self, wait=0):
        """Take the lock, waiting up to ``wait`` seconds for its holder."""
        deadline = time.monotonic() + wait
        busy = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno in busy and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                os.close(fd)
                if exc.errno in busy:
                    raise self._busy() from exc
                raise
        self.fd = fd
        stale = os.read(fd, 4096).decode("utf-8", "replace").strip()
        if stale:
            try:
                self.stale = json.loads(stale)
            except ValueError:
                self.stale = {"raw": stale[:200]}
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(self.holder, sort_keys=True).encode("utf-8"))
        os.fsync(fd)
        return self

    def update(self, **fields):
        """Add ``fields`` to what the holder says of itself (its progress):
        what a run that takes the lock over finds, if this one is killed."""
        if self.fd is None:
            return
        self.holder.update(fields)
        data = json.dumps(self.holder, sort_keys=True).encode("utf-8")
        # padded over what it replaces, so that a reader never finds half of it
        size = os.fstat(self.fd).st_size
        os.pwrite(self.fd, data.ljust(size), 0)
        os.ftruncate(self.fd, len(data))

    def _busy(self):
        holder = self.read_holder(self.path) or {}
        details = ", ".join(
            f"{k}={holder[k]}"
            for k in ("pid", "action", "version", "user", "jid", "started")
            if holder.get(k) is not None
        )
        return LockBusy(
            "another release, rollback or reload is running for this app ({})".format(
                details or "holder unknown"
            )
        )

    def release(self):
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def lock_holder(action, version=None, user=None, jid=None, started=None):
    """
    What a run writes into the app's lock (``ReleaseLock``) while it holds it,
    and what a run that takes a killed one's lock over reports of it: its
    pid, ``action``, ``version``, ``user`` (this process's by default),
    ``jid``, ``started`` (now by default) and ``step``, ``lock`` until the
    run says more (``ReleaseLock.update``).
    """
    return {
        "pid": os.getpid(),
        "action": action,
        "version": version,
        "user": user or os_user(),
        "jid": jid,
        "started": started or now_iso(),
        "step": "lock",
    }


def switch_current(layout, rid):
    """Point ``current`` at ``releases/<rid>`` atomically."""
    tmp = layout.current + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join("releases", rid), tmp)
    os.replace(tmp, layout.current)
    fsync_dir(layout.base)


def remove_release(layout, rid):
    path = layout.release(rid)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path + ".tar"):
        os.unlink(path + ".tar")


def discard_release(layout, rid):
    """
    Take ``releases/<rid>`` out of the way at once: a rename into
    ``releases/.trash-*``, which no listing counts. Returns the trash path to
    delete (None when the rename failed and the release was deleted in place).
    """
    path = layout.release(rid)
    trash = os.path.join(layout.releases, f".trash-{rid}-{os.getpid()}")
    try:
        os.rename(path, trash)
    except OSError:
        remove_release(layout, rid)
        return None
    return trash


def earlier_trash(layout):
    """Trash that an earlier run renamed but did not finish deleting."""
    try:
        names = os.listdir(layout.releases)
    except FileNotFoundError:
        return []
    return [
        os.path.join(layout.releases, name)
        for name in names
        if name.startswith(".trash-") and not name.endswith(f"-{os.getpid()}")
    ]


def unlinked_venvs(layout):
    """The shared virtualenvs that no release on disk links to, renamed into
    the trash at once; returns the trash paths."""
    linked = {
        os.path.realpath(os.path.join(layout.release(rid), "venv"))
        for rid in layout.on_disk()
    }
    try:
        names = os.listdir(layout.venvs)
    except FileNotFoundError:
        return []
    trash = []
    for name in names:
        path = os.path.join(layout.venvs, name)
        if os.path.realpath(path) in linked:
            continue
        doomed = os.path.join(layout.releases, f".trash-venv-{name}-{os.getpid()}")
        with contextlib.suppress(OSError):
            os.rename(path, doomed)
            trash.append(doomed)
    return trash


def delete_in_thread(paths):
    for path in paths:
        threading.Thread(
            target=shutil.rmtree, args=(path,), kwargs={"ignore_errors": True}
        ).start()


def prune(
    layout,
    entries,
    keep,
    current_id,
    previous_id,
    in_use=None,
    protect=(),
    delete=None,
):
    """
    Remove release dirs beyond ``keep`` successful ones on disk, oldest first,
    leftovers that never succeeded, and the shared virtualenvs that no release
    left links to. Never removes the current release, the
    previous good one, those in ``protect``, or one a running process uses
    (``in_use``, looked up only when something is to go). Returns removed
    ids. The dirs are renamed into the trash at once; ``delete`` (default: a
    thread each) deletes the trash and what earlier runs left there.
    """
    trash = earlier_trash(layout)
    on_disk = layout.on_disk()
    successful = [rid for rid in successful_releases(entries) if rid in on_disk]
    excess = len(successful) - max(1, int(keep))
    doomed = [rid for rid in on_disk if rid not in successful]
    if excess > 0 or doomed:
        if in_use is None:
            in_use = releases_in_use(layout)
        protected = {current_id, previous_id} | set(in_use) | set(protect)
        doomed = [rid for rid in doomed if rid not in protected]
        for rid in successful:
            if excess <= 0:
                break
            if rid not in protected:
                doomed.append(rid)
                excess -= 1
    removed = []
    for rid in doomed:
        path = discard_release(layout, rid)
        if path:
            trash.append(path)
        removed.append(rid)
    trash += unlinked_venvs(layout)
    if trash:
        (delete or delete_in_thread)(trash)
    return removed
