"""
What every part of the djangoapp release engine shares: the failure of a step,
secrets kept out of what people see, JSON files written atomically, paths.

Not a Salt utility: ``djangoapp_release`` (the one the execution module calls)
loads it with the engine's other modules.
"""

import contextlib
import errno
import getpass
import hashlib
import json
import os
import pwd
import re
import stat
import urllib.parse
from datetime import UTC, datetime

CONFIG_DIR = "/etc/djangoapp"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUT_LIMIT = 4000
SECRET_NAME_RE = re.compile(
    r"SECRET|PASSW|PASSPHRASE|PWD|TOKEN|KEY|PRIVATE|CREDENTIAL|AUTH|SALT|DSN|COOKIE",
    re.IGNORECASE,
)


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def now_iso():
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def inside(path, directory):
    """True when ``path`` is ``directory`` or lies below it (no resolving)."""
    if not path or not directory:
        return False
    directory = directory.rstrip("/")
    return path == directory or path.startswith(directory + "/")


def read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default


# The most root reads of a file the app's user writes.
APP_FILE_LIMIT = 16 * 1024 * 1024


class NotAFile(OSError):
    """A link or a pipe where the app's user should have written a file."""


def read_app_file(path):
    """
    The bytes of ``path``, a file that the app's user writes (in its run
    directory), read as root: never through a link, and only when it is a
    regular file (a pipe in its place would keep this process waiting).
    Raises FileNotFoundError when there is none, ``NotAFile`` (an OSError)
    for a link or anything but a file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotAFile(f"{path}: a link, not a file") from exc
        raise
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise NotAFile(f"{path}: not a file")
        return handle.read(APP_FILE_LIMIT)


def read_app_json(path):
    """The JSON of ``read_app_file(path)``; ValueError when it is not JSON."""
    return json.loads(read_app_file(path))


def write_json_atomic(path, data, mode=0o644):
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_user():
    try:
        return getpass.getuser()
    except Exception:  # pylint: disable=broad-except
        return str(os.getuid())


class Redactor:
    """Replaces secret values (from env.json) in text shown to people."""

    def __init__(self, secrets=()):
        self.secrets = sorted(
            {s for s in secrets if isinstance(s, str) and len(s) >= 4},
            key=len,
            reverse=True,
        )

    def __call__(self, text):
        if text is None:
            return None
        text = str(text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    @classmethod
    def from_env(cls, env):
        """
        Secrets of an app environment: the values of variables whose name
        says secret (``SECRET``, ``PASSWORD``, ``TOKEN``, ``KEY``, ``DSN``...)
        and the password part of every URL-like value.
        """
        secrets = []
        for key, value in (env or {}).items():
            if not isinstance(value, str):
                continue
            if SECRET_NAME_RE.search(key):
                secrets.append(value)
            if "://" in value:
                try:
                    parts = urllib.parse.urlsplit(value)
                    password = parts.password
                except ValueError:
                    password = None
                if password:
                    secrets.append(password)
                    secrets.append(urllib.parse.unquote(password))
        return cls(secrets)


def tail(text, limit=OUTPUT_LIMIT):
    text = (text or "").strip()
    if len(text) > limit:
        return "..." + text[-limit:]
    return text


class StepFailed(Exception):
    def __init__(self, step, message):
        super().__init__(message)
        self.step = step
        self.message = message


NO_SPACE = os.strerror(errno.ENOSPC)  # what most tools say: "No space left on device"
# mysqldump and mariadb-dump give the number only: "mysqldump: Got errno 28 on write".
NO_SPACE_ERRNO = f"Got errno {errno.ENOSPC} on write"
MIB = 1024 * 1024


def says_no_space(text):
    """Whether a tool's words say that a write found its filesystem full."""
    return NO_SPACE in text or NO_SPACE_ERRNO in text


def mount_point(path):
    """The mount point of the filesystem that holds ``path`` (or would hold it)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def no_space_on(path):
    """Which filesystem ``path`` is on, and how much it has free now."""
    mount = mount_point(path)
    try:
        fs = os.statvfs(mount)
    except OSError:
        return f"no space left on {mount} (the filesystem of {path})"
    free = fs.f_bavail * fs.f_frsize / MIB
    size = fs.f_blocks * fs.f_frsize / MIB
    return (
        f"no space left on {mount} (the filesystem of {path}: "
        f"{free:.1f} MiB free of {size:.1f} MiB)"
    )


@contextlib.contextmanager
def naming_a_full_disk(step, path):
    """
    A failure of ``step`` for want of space (ENOSPC in this process, or a command
    that says so) becomes one whose first line names the filesystem of ``path``:
    the tools' own words ("could not write to output file") seldom say which.
    """
    try:
        yield
    except (StepFailed, OSError) as exc:
        detail = exc.message if isinstance(exc, StepFailed) else str(exc)
        if not says_no_space(detail):
            raise
        raise StepFailed(step, f"{no_space_on(path)}\n{tail(detail, 1000)}") from exc


# --------------------------------------------------------------------------
# the host: commands and events through Salt


def user_ids(name):
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def file_sha256(path):
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None
