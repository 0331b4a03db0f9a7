"""
The djangoapp release engine: everything that takes an app from a git ref to
a live, verified release, and back.

Used by the ``djangoapp`` execution module (``_modules/djangoapp.py``), which
hands in a ``Host`` built from ``__salt__`` so that every command goes through
``cmd.run_all`` with a list argv. Validation of names and refs lives in
``djangoapp_validate``; the execution module applies it before calling here.

Layout of an app (``base_dir``, default ``/srv/djangoapp/<app>``)::

    repo.git/            bare mirror (heads and tags of the origin)
    releases/<id>/       src/, venv/, release.json
    current -> releases/<id>
    ledger.jsonl         one JSON object per release or rollback
    .release.lock        flock'ed while a release or rollback runs
"""

import contextlib
import contextvars
import errno
import fcntl
import getpass
import hashlib
import http.client
import json
import logging
import os
import pwd
import py_compile
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import UTC, datetime

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "djangoapp_release"

CONFIG_DIR = "/etc/djangoapp"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
HEX_RE = re.compile(r"^[0-9a-f]{7,64}$")
PREFLIGHT_MARKER = "DJANGOAPP-PREFLIGHT "
STATIC_STAGING = ".static-staging"
# Where a release keeps its collected files when STATIC_ROOT lies outside it.
STATIC_KEPT = "static"
OUTPUT_LIMIT = 4000
CONTROL_MESSAGE_LIMIT = 16 * 1024 * 1024
SECRET_NAME_RE = re.compile(
    r"SECRET|PASSW|PASSPHRASE|PWD|TOKEN|KEY|PRIVATE|CREDENTIAL|AUTH|SALT|DSN|COOKIE",
    re.IGNORECASE,
)


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------
# small helpers


def now_iso():
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def inside(path, directory):
    """True when ``path`` is ``directory`` or lies below it (no resolving)."""
    if not path or not directory:
        return False
    directory = directory.rstrip("/")
    return path == directory or path.startswith(directory + "/")


def _read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default


def _write_json_atomic(path, data, mode=0o644):
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(path):
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


# --------------------------------------------------------------------------
# the host: commands and events through Salt


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
        subprocess.Popen(  # pylint: disable=consider-using-with
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
            env={"PATH": SAFE_PATH, "LC_ALL": "C"},
        )

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


# --------------------------------------------------------------------------
# configuration


def app_defaults(name, config_dir=CONFIG_DIR):
    etc = os.path.join(config_dir, name)
    return {
        "name": name,
        "user": name,
        "group": name,
        "repo": None,
        "version": None,
        "base_dir": f"/srv/djangoapp/{name}",
        "env_file": os.path.join(etc, "env.json"),
        "deploy_key": None,
        "known_hosts": None,
        "python": "python3",
        "requirements": "requirements.txt",
        "pip_extra": ["gunicorn"],
        "project_dir": ".",
        "settings_module": None,
        "wsgi": None,
        "asgi": None,
        "gunicorn_config": os.path.join(etc, "gunicorn.conf.py"),
        "process_manager": "supervisor",
        "service": f"djangoapp-{name}",
        "run_dir": f"/run/djangoapp/{name}",
        "control_socket": None,
        "health": None,
        "keep_releases": 5,
        "check_deploy_fail_level": "ERROR",
        "graceful_timeout": 30,
        "database": {"engine": "none"},
        "backup_dir": f"/var/backups/djangoapp/{name}",
        "uv": "/opt/djangoapp/tools/bin/uv",
        "uv_cache": "/var/cache/djangoapp/uv",
        "proxy": {},
    }


def list_apps(config_dir=CONFIG_DIR):
    try:
        names = sorted(os.listdir(config_dir))
    except FileNotFoundError:
        return []
    return [n for n in names if os.path.isfile(os.path.join(config_dir, n, "app.json"))]


def load_app(name, config_dir=CONFIG_DIR):
    path = os.path.join(config_dir, name, "app.json")
    try:
        data = _read_json(path)
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(f"cannot read {path}: {exc}") from exc
    if data is None:
        raise CommandExecutionError(
            f"app {name!r} is not configured on this host ({path} does not exist)"
        )
    cfg = app_defaults(name, config_dir)
    cfg.update({k: v for k, v in data.items() if v is not None or k in ("asgi",)})
    cfg["name"] = name
    cfg["config_dir"] = config_dir
    return cfg


def load_env(cfg):
    """The app's environment (env.json) plus what the engine always sets."""
    env = _read_json(cfg["env_file"], default={}) or {}
    if not isinstance(env, dict):
        raise CommandExecutionError(f"{cfg['env_file']} must hold a JSON object")
    env = {str(k): str(v) for k, v in env.items()}
    if cfg.get("settings_module"):
        env.setdefault("DJANGO_SETTINGS_MODULE", cfg["settings_module"])
    return env


def proxy_env(cfg):
    proxy = cfg.get("proxy") or {}
    env = {}
    if proxy.get("http"):
        env["http_proxy"] = env["HTTP_PROXY"] = proxy["http"]
    if proxy.get("https"):
        env["https_proxy"] = env["HTTPS_PROXY"] = proxy["https"]
    no_proxy = proxy.get("no_proxy")
    if no_proxy:
        if isinstance(no_proxy, (list, tuple)):
            no_proxy = ",".join(no_proxy)
        env["no_proxy"] = env["NO_PROXY"] = no_proxy
    return env


class Layout:
    def __init__(self, base):
        self.base = base.rstrip("/")
        self.releases = os.path.join(self.base, "releases")
        self.current = os.path.join(self.base, "current")
        self.mirror = os.path.join(self.base, "repo.git")
        self.ledger = os.path.join(self.base, "ledger.jsonl")
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

    def release_json(self, rid):
        try:
            return _read_json(os.path.join(self.release(rid), "release.json"))
        except (OSError, ValueError):
            return None


# --------------------------------------------------------------------------
# ledger


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


def last_deploy_of(entries, rid):
    """The ledger entry that last made ``rid`` live (release or rollback)."""
    for entry in reversed(entries):
        if entry.get("id") == rid and entry.get("status") == "success":
            return entry
    return None


# --------------------------------------------------------------------------
# lock


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
    def read_holder(path):
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


# --------------------------------------------------------------------------
# processes


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
    root = os.path.realpath(layout.releases) + "/"
    used = set()
    own = os.getpid()

    def note(path):
        if path and path.startswith(root):
            used.add(path[len(root) :].split("/", 1)[0])

    for pid in _proc_pids():
        if pid == own:
            continue
        for link in ("cwd", "exe"):
            with contextlib.suppress(OSError):
                note(os.readlink(f"/proc/{pid}/{link}"))
        try:
            with open(
                f"/proc/{pid}/maps", encoding="utf-8", errors="replace"
            ) as handle:
                for line in handle:
                    if root in line:
                        note(line[line.index(root) :].strip().split(" ")[0])
        except OSError:
            pass
    return used


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


def file_sha256(path):
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def venv_package_version(venv, name):
    """The version of package ``name`` installed in ``venv`` (from its dist-info)."""
    _tag, lib = _pyc_tag(venv)
    prefix = name.replace("-", "_").lower() + "-"
    try:
        entries = os.listdir(os.path.join(lib, "site-packages")) if lib else []
    except OSError:
        return None
    for entry in entries:
        if entry.lower().startswith(prefix) and entry.endswith(".dist-info"):
            return entry[len(prefix) : -len(".dist-info")]
    return None


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
        """Make the master keep ``target`` workers (it stops the oldest first)."""
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
                self.command(change, repeatable=False)
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
        self.manager = cfg.get("process_manager") or "supervisor"
        self.name = cfg.get("service") or "djangoapp-{}".format(cfg["name"])
        run_dir = cfg.get("run_dir") or "/run/djangoapp/{}".format(cfg["name"])
        self.pidfile = os.path.join(run_dir, "gunicorn.pid")
        self.master_state_file = os.path.join(run_dir, "gunicorn.json")
        self.worker_state_dir = os.path.join(run_dir, "workers")
        self.control_socket = cfg.get("control_socket") or os.path.join(
            run_dir, "gunicorn.ctl"
        )

    def master_pid(self):
        return self.pidfile_master() or self.manager_master()

    def is_master(self, pid):
        """
        True when ``pid`` is this app's gunicorn master: gunicorn started with
        this app's config file, by the app's process manager.
        """
        argv = proc_cmdline(pid)
        config = self.cfg.get("gunicorn_config")
        if not any(os.path.basename(arg) == "gunicorn" for arg in argv[:3]):
            return False
        if config not in argv and f"--config={config}" not in argv:
            return False
        parent = proc_ppid(pid)
        if self.manager == "systemd":
            return parent == 1
        return any(
            os.path.basename(arg) == "supervisord" for arg in proc_cmdline(parent)[:2]
        )

    def pidfile_master(self):
        try:
            with open(self.pidfile, encoding="ascii") as handle:
                pid = int(handle.read().strip())
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
        try:
            os.kill(master, signal.SIGHUP)
        except OSError as exc:
            raise CommandExecutionError(f"HUP to gunicorn {master}: {exc}") from exc

    def master_state(self, master):
        """What the running master recorded when it read its config, or None."""
        try:
            state = _read_json(self.master_state_file)
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
                report = _read_json(os.path.join(self.worker_state_dir, name))
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
            found.append({"pid": pid, "cwd": cwd, "release": _release_of(layout, cwd)})
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
    if state.get("config_sha256") != file_sha256(service.cfg.get("gunicorn_config")):
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

# During a hand-over, relative to the master's own niceness: the old workers yield the
# CPU, and the new ones (forked while the master is boosted) load the app ahead of
# everything else on the host, until they report ready.
RETIRING_NICENESS = 10
BOOTING_NICENESS = -5


def _renice(pids, niceness):
    niceness = max(-20, min(19, niceness))
    for pid in pids:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, niceness)


def hand_over(service, layout, rid, master, timeout):
    """
    Replace the master's workers by new ones running ``releases/<rid>``
    without a moment with no worker ready: N more workers on the control
    socket, and each time a new worker has loaded the app (its report in the
    run directory, its cwd in the release), one worker fewer (Gunicorn stops
    the oldest first). Meanwhile the old workers yield the CPU to the booting
    ones until they are told to stop, and the new ones boot at a higher
    priority until they are ready. Returns details for the step; the old
    workers may still be finishing their requests.
    """
    started = time.monotonic()
    deadline = started + timeout
    control = GunicornControl(service.control_socket)
    try:
        stats = control.command("show stats")
    except ControlSocketError as exc:
        raise HandOverUnavailable(str(exc)) from exc
    if stats.get("pid") != master:
        raise HandOverUnavailable(
            f"the control socket answers for pid {stats.get('pid')}, not {master}"
        )
    count = int(control.command("show config").get("workers") or 1)
    before = int(stats.get("workers_target") or count)
    old = set(children(master))
    # oldest first, the order in which Gunicorn stops them
    retiring = [
        worker["pid"]
        for worker in control.command("show workers").get("workers") or []
        if worker.get("pid") in old
    ]
    for pid in set(service.worker_reports()) - old:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(service.worker_state_dir, f"{pid}.json"))
    try:
        niceness = os.getpriority(os.PRIO_PROCESS, master)
    except OSError as exc:
        raise CommandExecutionError(f"gunicorn master {master} is gone") from exc
    _renice(old, niceness + RETIRING_NICENESS)
    _renice([master], niceness + BOOTING_NICENESS)
    master_boosted = True
    settled = set()
    retired = 0
    try:
        control.set_workers(before + count)
        while True:
            if not pid_alive(master):
                raise CommandExecutionError(f"gunicorn master {master} is gone")
            reports = service.worker_reports()
            new = [pid for pid in children(master) if pid not in old]
            if master_boosted and len(new) >= count:
                _renice([master], niceness)
                master_boosted = False
            ready = [
                pid
                for pid in new
                if pid in reports and _release_of(layout, proc_cwd(pid)) == rid
            ]
            _renice(set(ready) - settled, niceness)
            settled.update(ready)
            due = before if len(ready) >= count else min(len(ready), before)
            if due > retired:
                control.set_workers(before + count - due)
                # told to stop: let them finish their request at full speed
                _renice(retiring[retired:due], niceness)
                retired = due
            if len(ready) >= count:
                break
            if time.monotonic() >= deadline:
                raise CommandExecutionError(
                    f"{len(ready)} of {count} new workers ready on {rid} "
                    f"after {timeout}s"
                )
            time.sleep(WORKER_POLL)
    finally:
        # the master and every worker it has back at the master's niceness
        _renice([master, *children(master)], niceness)
    return {
        "method": "rolling",
        "workers_added": count,
        "workers_retired": retired,
        "ready_seconds": round(time.monotonic() - started, 3),
    }


def reload_workers(service, layout, rid, master, timeout):
    """
    Have the master's workers run ``releases/<rid>`` (``current`` already
    points there): a rolling hand-over when it can be right, else a HUP.
    Returns ``{"method": "rolling"|"hup", ...}``; a HUP names its reason.
    """
    reason = hup_reason(service, layout, rid, master)
    if reason is None:
        try:
            return hand_over(service, layout, rid, master, timeout)
        except HandOverUnavailable as exc:
            reason = str(exc)
    service.hup(master)
    return {"method": "hup", "reason": reason}


# --------------------------------------------------------------------------
# health


class _SNIHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, sni=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._sni = sni

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(
            sock, server_hostname=self._sni or self.host
        )


def health_get(health):
    """One GET of the health URL; returns (status, detail)."""
    url = urllib.parse.urlsplit(health["url"])
    host_header = health.get("host") or url.hostname
    timeout = float(health.get("timeout") or 30)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    if url.scheme == "https":
        context = ssl.create_default_context()
        if not health.get("verify_tls", True):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        conn = _SNIHTTPSConnection(
            url.hostname,
            url.port or 443,
            timeout=timeout,
            context=context,
            sni=host_header,
        )
    else:
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    try:
        conn.request(
            "GET", path, headers={"Host": host_header, "User-Agent": "djangoapp"}
        )
        resp = conn.getresponse()
        resp.read(65536)
        detail = f"HTTP {resp.status}"
        if 300 <= resp.status < 400 and resp.getheader("Location"):
            detail += " -> " + resp.getheader("Location")
        return resp.status, detail
    finally:
        conn.close()


def health_check(health, tries=5, delay=1.0):
    last = "not tried"
    for attempt in range(tries):
        try:
            status, last = health_get(health)
            if 200 <= status < 300:
                return last
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if attempt + 1 < tries:
            time.sleep(delay)
    raise CommandExecutionError(
        f"GET {health['url']} (Host {health.get('host')}): {last}"
    )


# --------------------------------------------------------------------------
# the steps of a release


class Recorder:
    def __init__(self, redact):
        self.steps = []
        self.redact = redact

    def step(self, name):
        return _Step(self, name)


class _Step:
    def __init__(self, recorder, name):
        self.recorder = recorder
        self.name = name
        self.output = None
        self.info = {}

    def __enter__(self):
        self.started = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb):
        entry = {
            "name": self.name,
            "seconds": round(time.monotonic() - self.started, 3),
            "ok": exc is None,
        }
        entry.update(self.info)
        if exc is not None:
            message = exc.message if isinstance(exc, StepFailed) else str(exc)
            entry["output"] = self.recorder.redact(tail(self.output or message))
        self.recorder.steps.append(entry)
        expected = (CommandExecutionError, OSError, ValueError, KeyError)
        if isinstance(exc, expected) and not isinstance(exc, StepFailed):
            raise StepFailed(self.name, self.recorder.redact(str(exc))) from exc
        return False


class Git:
    def __init__(self, cfg, layout, host):
        self.cfg = cfg
        self.layout = layout
        self.host = host

    def env(self):
        env = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        env.update(proxy_env(self.cfg))
        key = self.cfg.get("deploy_key")
        if key:
            parts = [
                "ssh",
                "-i",
                key,
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ]
            if self.cfg.get("known_hosts"):
                parts += ["-o", "UserKnownHostsFile=" + self.cfg["known_hosts"]]
            env["GIT_SSH_COMMAND"] = " ".join(_shell_word(p) for p in parts)
        return env

    def git(self, *args):
        return ["git", f"--git-dir={self.layout.mirror}", *args]

    def run(self, step, argv, **kwargs):
        kwargs.setdefault("env", self.env())
        return self.host.check(step, argv, **kwargs)

    def fetch(self):
        repo = self.cfg.get("repo")
        if not repo or repo.startswith("-"):
            raise StepFailed("fetch", f"app.json repo {repo!r} is not a repository URL")
        if not shutil.which("git", path=os.environ.get("PATH") or SAFE_PATH):
            raise StepFailed("fetch", "git is not installed")
        mirror = self.layout.mirror
        if not os.path.exists(os.path.join(mirror, "HEAD")):
            self.run("fetch", ["git", "init", "--quiet", "--bare", mirror])
        ret = self.host.run(self.git("remote", "get-url", "origin"))
        url = (ret.get("stdout") or "").strip()
        if ret.get("retcode") != 0:
            self.run("fetch", self.git("remote", "add", "origin", repo))
        elif url != repo:
            self.run("fetch", self.git("remote", "set-url", "origin", repo))
        self.run(
            "fetch",
            self.git(
                "fetch",
                "--quiet",
                "--prune",
                "--prune-tags",
                "--force",
                "--no-write-fetch-head",
                "origin",
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ),
            timeout=900,
        )

    def resolve(self, ref):
        """The commit sha of ``ref`` in the mirror, or None."""
        if not os.path.exists(os.path.join(self.layout.mirror, "HEAD")):
            return None
        ret = self.host.run(
            self.git(
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                f"{ref}^{{commit}}",
            )
        )
        sha = (ret.get("stdout") or "").strip()
        if ret.get("retcode") == 0 and SHA_RE.match(sha):
            return sha
        return None

    def is_branch(self, ref):
        ret = self.host.run(
            self.git("show-ref", "--verify", "--quiet", f"refs/heads/{ref}")
        )
        return ret.get("retcode") == 0

    def remote_resolve(self, ref):
        """
        Resolve ``ref`` against the origin without changing anything
        (``git ls-remote``). Falls back to the mirror for commit ids.
        Returns (sha or None, detail).
        """
        repo = self.cfg.get("repo")
        if not repo or repo.startswith("-"):
            return None, f"app.json repo {repo!r} is not a repository URL"
        ret = self.host.run(["git", "ls-remote", repo], env=self.env(), timeout=120)
        if ret.get("retcode") != 0:
            local = self.resolve(ref)
            if local:
                return local, "origin unreachable; resolved in the local mirror"
            return None, "cannot read the repository: " + tail(ret.get("stderr"), 500)
        refs = {}
        for line in (ret.get("stdout") or "").splitlines():
            parts = line.split("\t")
            if len(parts) == 2:
                refs[parts[1]] = parts[0]
        for name in (
            f"refs/tags/{ref}^{{}}",
            f"refs/tags/{ref}",
            f"refs/heads/{ref}",
            ref,
        ):
            if name in refs:
                return refs[name], name
        if HEX_RE.match(ref):
            local = self.resolve(ref)
            if local:
                return local, "commit"
        return None, "unknown ref"

    def commit_info(self, sha):
        ret = self.host.run(self.git("log", "-1", "--format=%ct%n%an%n%s", sha, "--"))
        lines = (ret.get("stdout") or "").splitlines()
        if ret.get("retcode") != 0 or len(lines) < 2:
            return {}
        return {
            "committed": datetime.fromtimestamp(int(lines[0]), UTC).isoformat(),
            "author": lines[1],
            "subject": lines[2] if len(lines) > 2 else "",
        }

    def export(self, sha, dest):
        """Write the tree of ``sha`` into ``dest`` (created)."""
        tarball = dest.rstrip("/") + ".tar"
        self.run(
            "build",
            self.git(
                "-c", "tar.umask=0022", "archive", "--format=tar", "-o", tarball, sha
            ),
        )
        try:
            os.makedirs(dest, exist_ok=True)
            self.host.check(
                "build",
                ["tar", "-x", "-f", tarball, "-C", dest, "--no-same-owner"],
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tarball)


def _shell_word(word):
    if re.match(r"^[A-Za-z0-9_./=@:+-]+$", word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def _user_ids(name):
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def fix_permissions(path):
    """Code and venv: nobody but the owner writes, everybody reads."""

    def fix(item, is_dir):
        try:
            st = os.lstat(item)
        except FileNotFoundError:
            return
        if os.path.islink(item):
            return
        mode = st.st_mode & 0o7777
        new = (mode & ~0o022) | 0o444
        if is_dir or mode & 0o100:
            new |= 0o111
        if new != mode:
            os.chmod(item, new)

    fix(path, True)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            fix(os.path.join(root, name), True)
        for name in files:
            fix(os.path.join(root, name), False)


def chown_tree(path, uid, gid):
    os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def _pyc_tag(venv):
    """``cpython-311`` for the venv's interpreter, from its lib dir name."""
    try:
        for name in os.listdir(os.path.join(venv, "lib")):
            match = re.match(r"^python(\d+)\.(\d+)$", name)
            if match:
                return "cpython-{}{}".format(*match.groups()), os.path.join(
                    venv, "lib", name
                )
    except OSError:
        pass
    return None, None


def venv_bytecode(old_venv, new_venv):
    """
    One pass over the new venv's packages: hard-link the old venv's
    ``__pycache__/*.pyc`` for every source file that is the very same file
    (same inode: uv links both from its cache). Returns (number linked,
    the sources left without byte-code).
    """
    tag, new_lib = _pyc_tag(new_venv)
    old_tag, old_lib = _pyc_tag(old_venv) if old_venv else (None, None)
    if not new_lib:
        return 0, []
    suffix = f".{tag}.pyc"
    linked = 0
    missing = []
    pending = [""]
    while pending:
        rel = pending.pop()
        new_dir = os.path.join(new_lib, rel)
        try:
            entries = list(os.scandir(new_dir))
        except OSError:
            continue
        sources = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name != "__pycache__":
                    pending.append(os.path.join(rel, entry.name))
            elif entry.name.endswith(".py"):
                sources.append(entry)
        if not sources:
            continue
        old_inodes, old_pycs = {}, set()
        if old_lib and old_tag == tag:
            old_dir = os.path.join(old_lib, rel)
            with contextlib.suppress(OSError):
                old_inodes = {e.name: e.inode() for e in os.scandir(old_dir)}
            with contextlib.suppress(OSError):
                old_pycs = set(os.listdir(os.path.join(old_dir, "__pycache__")))
        made_cache = False
        for entry in sources:
            pyc = entry.name[:-3] + suffix
            if pyc in old_pycs and old_inodes.get(entry.name) == entry.inode():
                try:
                    if not made_cache:
                        os.makedirs(
                            os.path.join(new_dir, "__pycache__"), 0o755, exist_ok=True
                        )
                        made_cache = True
                    os.link(
                        os.path.join(old_lib, rel, "__pycache__", pyc),
                        os.path.join(new_dir, "__pycache__", pyc),
                    )
                    linked += 1
                    continue
                except OSError:
                    pass
            missing.append(entry.path)
    return linked, missing


def link_project_bytecode(old_src, new_src, tag):
    """
    For each Python file of the project that did not change since the live
    release, give it the old file's modification time and hard-link the old
    byte-code: Python checks a ``.pyc`` against its source's size and
    modification time. Returns the set of source paths so served.
    """
    linked = set()
    suffix = f".{tag}.pyc"
    for root, dirs, files in os.walk(new_src):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(root, new_src)
        for name in files:
            if not name.endswith(".py"):
                continue
            new_path = os.path.join(root, name)
            old_path = os.path.normpath(os.path.join(old_src, rel, name))
            old_pyc = os.path.join(
                os.path.dirname(old_path), "__pycache__", name[:-3] + suffix
            )
            try:
                old_stat = os.stat(old_path)
                if old_stat.st_size != os.path.getsize(new_path) or not os.path.isfile(
                    old_pyc
                ):
                    continue
                with open(old_path, "rb") as old_file, open(new_path, "rb") as new_file:
                    if old_file.read() != new_file.read():
                        continue
                os.utime(new_path, ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))
                cache = os.path.join(root, "__pycache__")
                os.makedirs(cache, mode=0o755, exist_ok=True)
                os.link(old_pyc, os.path.join(cache, name[:-3] + suffix))
            except OSError:
                continue
            linked.add(new_path)
    return linked


def project_sources(src, done=frozenset()):
    """Python files of the project, but those in ``done``."""
    found = []
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".py") and path not in done:
                found.append(path)
    return found


def compile_sources(host, python, tag, sources):
    """
    Byte-compile ``sources`` for the interpreter ``python`` (cache tag
    ``tag``): a few files (those a code change brings) in this process when
    it is the same Python version, else with that python.
    """
    if not sources:
        return
    if sys.implementation.cache_tag == tag and len(sources) <= 200:
        for path in sources:
            with contextlib.suppress(py_compile.PyCompileError, OSError):
                py_compile.compile(path, doraise=True)
        return
    host.run(
        [python, "-m", "compileall", "-q", "-j", "0", "-i", "-"],
        stdin="\n".join(sources) + "\n",
        stdin_raw_newlines=True,
        env={"PATH": SAFE_PATH},
        umask="022",
        timeout=1800,
    )


def requirements_digest(cfg, src):
    digest = hashlib.sha256()
    digest.update(json.dumps([cfg.get("python"), cfg.get("pip_extra")]).encode())
    req = cfg.get("requirements")
    if req:
        try:
            with open(os.path.join(src, req), "rb") as handle:
                digest.update(handle.read())
        except OSError:
            pass
    return digest.hexdigest()[:16]


class Builder:
    """Builds ``src/`` and ``venv/`` of a release, as root, world-readable."""

    def __init__(self, cfg, layout, host, notes):
        self.cfg = cfg
        self.layout = layout
        self.host = host
        self.notes = notes
        self.timings = {}
        self._lap = time.monotonic()

    def lap(self, name):
        now = time.monotonic()
        self.timings[name] = round(now - self._lap, 3)
        self._lap = now

    def build_env(self):
        env = {
            "PATH": SAFE_PATH,
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_PROGRESS": "1",
            # Trust the host's CA store (corporate or proxy CAs), as pip and git do.
            "UV_SYSTEM_CERTS": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        env.update(proxy_env(self.cfg))
        return env

    def uv(self):
        uv = self.cfg.get("uv")
        if uv and os.access(uv, os.X_OK):
            return uv
        return shutil.which("uv", path=SAFE_PATH)

    def requirement_args(self, src):
        req = self.cfg.get("requirements")
        args = []
        if req:
            path = os.path.realpath(os.path.join(src, req))
            if not inside(path, os.path.realpath(src)) or not os.path.isfile(path):
                raise StepFailed(
                    "build", f"requirements file {req!r} not found in the repository"
                )
            args = ["-r", path]
        extra = [str(x) for x in (self.cfg.get("pip_extra") or [])]
        if any(x.startswith("-") for x in extra):
            raise StepFailed(
                "build", "pip_extra entries must be requirements, not options"
            )
        if not args and not extra:
            raise StepFailed(
                "build", "nothing to install: no requirements and no pip_extra"
            )
        return args + extra

    def build(self, git, sha, rdir, previous=None):
        """
        Build ``rdir``. ``previous`` is the live release dir, if any: when the
        requirements did not change, packages come from uv's cache without
        asking the index, and the byte-code of unchanged files is linked from
        it instead of compiled again.
        """
        src = os.path.join(rdir, "src")
        venv = os.path.join(rdir, "venv")
        vpython = os.path.join(venv, "bin", "python")
        python = self.cfg.get("python") or "python3"
        git.export(sha, src)
        self.lap("export")
        install = self.requirement_args(src)
        self.digest = requirements_digest(self.cfg, src)
        same_requirements = False
        if previous:
            info = _read_json(os.path.join(previous, "release.json"), default={}) or {}
            same_requirements = info.get("requirements") == self.digest
        env = self.build_env()
        common = {"env": env, "cwd": rdir, "umask": "022"}
        uv = self.uv()
        if uv:
            cache = self.cfg.get("uv_cache")
            if cache:
                os.makedirs(cache, mode=0o755, exist_ok=True)
                env["UV_CACHE_DIR"] = cache
                same_fs = os.stat(cache).st_dev == os.stat(rdir).st_dev
                env["UV_LINK_MODE"] = "hardlink" if same_fs else "copy"
            self.host.check(
                "build",
                [
                    uv,
                    "venv",
                    "--quiet",
                    "--python",
                    python,
                    "--python-preference",
                    "only-system",
                    venv,
                ],
                timeout=300,
                **common,
            )
            self.lap("venv")
            argv = [uv, "pip", "install", "--quiet", "--python", vpython, *install]
            done = False
            if same_requirements:
                # Same requirements as the live release: resolve from the
                # cache alone (fast, and the same versions as last time).
                offline = self.host.run(
                    argv[:3] + ["--offline"] + argv[3:], timeout=1800, **common
                )
                done = offline.get("retcode") == 0
                if done:
                    self.notes.append(
                        "requirements unchanged: installed from the uv cache"
                    )
            if not done:
                self.host.check("build", argv, timeout=1800, **common)
            self.lap("install")
            tool = "uv"
        else:
            self.notes.append("uv not found: built the virtualenv with pip (slower)")
            self.host.check(
                "build", [python, "-m", "venv", venv], timeout=300, **common
            )
            self.lap("venv")
            self.host.check(
                "build",
                [os.path.join(venv, "bin", "pip"), "install", "--quiet", *install],
                timeout=1800,
                **common,
            )
            self.lap("install")
            tool = "pip"
        # Byte-compile as root: the app user cannot write __pycache__ into
        # its own code and virtualenv, so without this every worker start
        # would compile Django again in memory.
        tag, _lib = _pyc_tag(venv)
        old_venv = os.path.join(previous, "venv") if previous else None
        linked, sources = venv_bytecode(old_venv, venv)
        unchanged = set()
        if old_venv and tag and tag == _pyc_tag(old_venv)[0]:
            unchanged = link_project_bytecode(os.path.join(previous, "src"), src, tag)
        sources += project_sources(src, unchanged)
        compile_sources(self.host, vpython, tag, sources)
        self.linked = linked + len(unchanged)
        self.compiled = len(sources)
        self.lap("compile")
        self.host.check("build", ["chmod", "-R", "go-w,a+rX", "--", rdir])
        self.lap("permissions")
        return tool


def _app_env(cfg, env, rdir, version):
    """The environment of the app's commands in ``rdir``: env.json, and
    SENTRY_RELEASE naming the release (as the gunicorn workers have it)."""
    full = {
        "PATH": os.path.join(rdir, "venv", "bin") + ":" + SAFE_PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": cfg["base_dir"],
    }
    full.update(env)
    full["SENTRY_RELEASE"] = version
    return full


def gunicorn_checked(cfg, live_info, rdir):
    """
    True when ``gunicorn --check-config`` can tell nothing new about the
    release in ``rdir``: the live release passed it with the same config file,
    the same Gunicorn and the same requirements (the worker class), and the
    preflight imports the app itself.
    """
    if not live_info or not live_info.get("gunicorn_config"):
        return False
    venv = os.path.join(rdir, "venv")
    return (
        live_info["gunicorn_config"] == file_sha256(cfg.get("gunicorn_config"))
        and live_info.get("gunicorn") == venv_package_version(venv, "gunicorn")
        and live_info.get("requirements")
        == requirements_digest(cfg, os.path.join(rdir, "src"))
    )


def run_preflight(cfg, host, rdir, env, redact, collect, version, check_config=True):
    """
    One process of the new release's python runs the Django checks
    (djangoapp_preflight.py) while gunicorn --check-config (when
    ``check_config``) runs beside it. Returns the preflight result dict;
    raises StepFailed.
    """
    user = cfg["user"]
    project = os.path.join(rdir, "src", cfg.get("project_dir") or ".")
    python = os.path.join(rdir, "venv", "bin", "python")
    if not os.path.isdir(project):
        raise StepFailed(
            "preflight", f"project_dir {cfg.get('project_dir')!r} not found"
        )
    script = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "djangoapp_preflight.py"
    )
    with open(script, encoding="utf-8") as handle:
        source = handle.read()
    staging = os.path.join(rdir, STATIC_STAGING)
    if collect:
        if os.path.lexists(staging):
            shutil.rmtree(staging)
        os.mkdir(staging, 0o755)
        try:
            uid, gid = _user_ids(user)
            os.chown(staging, uid, gid)
        except KeyError:
            raise StepFailed("preflight", f"user {user!r} does not exist") from None
    app_callable = cfg.get("asgi") or cfg.get("wsgi")
    options = {
        "app_callable": app_callable,
        "fail_level": cfg.get("check_deploy_fail_level") or "ERROR",
        "collectstatic": bool(collect),
        "static_staging": staging if collect else None,
    }
    run_env = _app_env(cfg, env, rdir, version)
    common = {
        "runas": user,
        "cwd": project,
        "env": run_env,
        "clean_env": True,
        "reset_system_locale": False,
        "timeout": 900,
    }
    checks = []
    gconf = cfg.get("gunicorn_config")
    gargv = [python, "-m", "gunicorn", "--check-config", "--chdir", project]
    if gconf and os.path.isfile(gconf):
        gargv += ["-c", gconf]
    gargv.append(app_callable)
    join_gunicorn = None
    if check_config and os.path.exists(os.path.join(rdir, "venv", "bin", "gunicorn")):
        join_gunicorn = run_in_thread(host.run, gargv, **common)
    ret = host.run(
        [python, "-", json.dumps(options)],
        stdin=source,
        stdin_raw_newlines=True,
        **common,
    )
    result = None
    for line in reversed((ret.get("stdout") or "").splitlines()):
        if line.startswith(PREFLIGHT_MARKER):
            with contextlib.suppress(ValueError):
                result = json.loads(line[len(PREFLIGHT_MARKER) :])
            break
    gret = join_gunicorn() if join_gunicorn else None
    if result is None:
        raise StepFailed(
            "preflight",
            redact(
                "the preflight process gave no result (exit {}): {}".format(
                    ret.get("retcode"), tail(ret.get("stderr"))
                )
            ),
        )
    if not result.get("ok"):
        raise StepFailed(
            "preflight",
            redact(
                "{} failed: {}\n{}".format(
                    result.get("failed"),
                    result.get("error"),
                    tail(result.get("traceback"), 1500),
                )
            ),
        )
    if gret is not None:
        if gret.get("retcode") != 0:
            raise StepFailed(
                "preflight",
                redact("gunicorn --check-config failed: " + tail(gret.get("stderr"))),
            )
        checks.append("gunicorn --check-config")
    result["also_checked"] = checks
    return result


def place_static(layout, rdir, result):
    """
    Move the collected files from the staging dir (as root) to STATIC_ROOT when it
    lies inside the release; else keep them in ``releases/<id>/static`` and make
    STATIC_ROOT a link to the live release's copy (link_static_root).
    """
    staging = os.path.join(rdir, STATIC_STAGING)
    collected = (result.get("collectstatic") or {}).get("staged")
    if not collected or not os.path.isdir(staging):
        if os.path.lexists(staging):
            shutil.rmtree(staging)
        return None
    static_root = os.path.abspath(result["static_root"])
    target = os.path.realpath(static_root)
    if not inside(target, os.path.realpath(rdir)):
        try:
            link_static_root(layout, static_root)
        except StepFailed:
            shutil.rmtree(staging)
            raise
        target = os.path.join(rdir, STATIC_KEPT)
    chown_tree(staging, os.getuid(), os.getgid())
    fix_permissions(staging)
    if os.path.lexists(target):
        shutil.rmtree(target)
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    os.rename(staging, target)
    return target


def link_static_root(layout, static_root):
    """
    Make ``static_root``, a path outside the releases, a link to the live
    release's collected files (``<base>/current/static``): switching ``current``
    switches them too. Raises StepFailed, with nothing changed, when that path is
    something else: a directory with files, a file, or a link to anywhere else.
    """
    target = os.path.join(layout.current, STATIC_KEPT)
    if os.path.islink(static_root):
        if os.readlink(static_root) == target:
            return
        raise StepFailed(
            "preflight",
            f"STATIC_ROOT {static_root} is a link to {os.readlink(static_root)}, "
            f"not to this app's releases ({target})",
        )
    if os.path.isdir(static_root):
        if os.listdir(static_root):
            raise StepFailed(
                "preflight",
                f"STATIC_ROOT {static_root} is a directory with files in it: each "
                "release keeps its own static files and STATIC_ROOT becomes a link "
                f"to the live release's ({target}); move that directory away "
                "(the release collects the files again)",
            )
        os.rmdir(static_root)
    elif os.path.lexists(static_root):
        raise StepFailed(
            "preflight", f"STATIC_ROOT {static_root} exists and is not a directory"
        )
    os.makedirs(os.path.dirname(static_root), mode=0o755, exist_ok=True)
    os.symlink(target, static_root)


def prepare_media_root(cfg, layout, rdir, media_root):
    """
    Where the app's uploads go. A MEDIA_ROOT inside the release (``BASE_DIR /
    "media"``, Django's usual setting) becomes a link to ``<base>/shared/media``,
    so that uploads outlive the release; what the repository holds there (a
    placeholder) goes. A MEDIA_ROOT elsewhere that does not exist yet is made,
    owned by the app's user. Returns MEDIA_ROOT, or None when there is none.
    """
    if not media_root:
        return None
    media_root = os.path.abspath(media_root)
    if inside(media_root, os.path.realpath(rdir)) or inside(media_root, rdir):
        if os.path.islink(media_root):
            if os.readlink(media_root) == layout.shared_media:
                return media_root
            os.unlink(media_root)
        elif os.path.isdir(media_root):
            shutil.rmtree(media_root)
        elif os.path.lexists(media_root):
            os.unlink(media_root)
        os.makedirs(os.path.dirname(media_root), mode=0o755, exist_ok=True)
        os.symlink(layout.shared_media, media_root)
    elif not os.path.lexists(media_root):
        os.makedirs(os.path.dirname(media_root), mode=0o755, exist_ok=True)
        os.mkdir(media_root, 0o755)
        uid, gid = _user_ids(cfg["user"])
        os.chown(media_root, uid, gid)
    return media_root


def parse_database_url(url):
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    engines = {
        "postgres": "postgresql",
        "postgresql": "postgresql",
        "pgsql": "postgresql",
        "mysql": "mysql",
        "mariadb": "mysql",
    }
    return {
        "engine": engines.get(scheme, scheme),
        "user": urllib.parse.unquote(parts.username or ""),
        "password": urllib.parse.unquote(parts.password or ""),
        "host": parts.hostname or "localhost",
        "port": parts.port,
        "name": urllib.parse.unquote(parts.path.lstrip("/")),
    }


def needs_backup(cfg):
    engine = (cfg.get("database") or {}).get("engine", "none")
    return engine not in (None, "", "none", "sqlite")


def backup_database(cfg, host, env, rid):
    """
    Dump the database before migrating; returns the dump's path. Credentials
    come from DATABASE_URL and travel in the environment only.
    """
    engine = (cfg.get("database") or {}).get("engine", "none")
    if engine in (None, "none", "sqlite"):
        return None
    db = dict(cfg.get("database") or {})
    if env.get("DATABASE_URL"):
        db.update(
            {k: v for k, v in parse_database_url(env["DATABASE_URL"]).items() if v}
        )
    for key in ("name", "user"):
        if not db.get(key) or str(db[key]).startswith("-"):
            raise StepFailed(
                "backup", f"database {key} unknown: set DATABASE_URL in env.json"
            )
    backup_dir = cfg.get("backup_dir") or f"/var/backups/djangoapp/{cfg['name']}"
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)
    host_name = str(db.get("host") or "localhost")
    run_env = {"PATH": SAFE_PATH, "LC_ALL": "C"}
    if engine == "postgresql":
        path = os.path.join(backup_dir, f"{rid}.dump")
        port = str(db.get("port") or 5432)
        if db.get("password"):
            run_env["PGPASSWORD"] = db["password"]
        host.check(
            "backup",
            [
                "pg_dump",
                "--format=custom",
                "--no-password",
                f"--host={host_name}",
                f"--port={port}",
                f"--username={db['user']}",
                f"--file={path}",
                f"--dbname={db['name']}",
            ],
            env=run_env,
            clean_env=True,
            umask="077",
            timeout=7200,
        )
        listing = host.check("backup", ["pg_restore", "--list", path], env=run_env)
        if "Archive created at" not in (listing.get("stdout") or ""):
            raise StepFailed("backup", f"pg_restore --list cannot read {path}")
    elif engine == "mysql":
        path = os.path.join(backup_dir, f"{rid}.sql")
        port = str(db.get("port") or 3306)
        if db.get("password"):
            run_env["MYSQL_PWD"] = db["password"]
        host.check(
            "backup",
            [
                "mysqldump",
                "--single-transaction",
                "--routines",
                "--triggers",
                f"--host={host_name}",
                f"--port={port}",
                f"--user={db['user']}",
                f"--result-file={path}",
                "--databases",
                db["name"],
            ],
            env=run_env,
            clean_env=True,
            umask="077",
            timeout=7200,
        )
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - 512))
            if b"-- Dump completed" not in handle.read():
                raise StepFailed("backup", f"{path} has no '-- Dump completed' trailer")
    else:
        raise StepFailed("backup", f"database engine {engine!r} has no backup method")
    os.chmod(path, 0o600)
    return path


def migrate(cfg, host, rdir, env, redact, version):
    """``manage.py migrate --noinput`` in the new release, as the app user."""
    project = os.path.join(rdir, "src", cfg.get("project_dir") or ".")
    python = os.path.join(rdir, "venv", "bin", "python")
    if os.path.isfile(os.path.join(project, "manage.py")):
        argv = [python, "manage.py", "migrate", "--noinput"]
    else:
        argv = [python, "-m", "django", "migrate", "--noinput"]
    ret = host.run(
        argv,
        runas=cfg["user"],
        cwd=project,
        env=_app_env(cfg, env, rdir, version),
        clean_env=True,
        reset_system_locale=False,
        timeout=int(cfg.get("migrate_timeout") or 3600),
    )
    if ret.get("retcode") != 0:
        output = tail((ret.get("stderr") or "") + "\n" + (ret.get("stdout") or ""))
        raise StepFailed(
            "migrate", redact(f"migrate failed (exit {ret.get('retcode')}): {output}")
        )
    return ret


def switch_current(layout, rid):
    """Point ``current`` at ``releases/<rid>`` atomically."""
    tmp = layout.current + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join("releases", rid), tmp)
    os.replace(tmp, layout.current)
    _fsync_dir(layout.base)


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
    and leftovers that never succeeded. Never removes the current release, the
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
    if trash:
        (delete or delete_in_thread)(trash)
    return removed


# --------------------------------------------------------------------------
# release, rollback, status


def _holder(action, version, user, jid):
    return {
        "pid": os.getpid(),
        "action": action,
        "version": version,
        "user": user,
        "jid": jid,
        "started": now_iso(),
    }


def _result_base(cfg, version):
    return {
        "app": cfg["name"],
        "version": version,
        "sha": None,
        "id": None,
        "previous": None,
        "steps": [],
        "seconds": 0.0,
        "migrations_ran": False,
        "backup": None,
        "check_warnings": [],
        "changed": False,
        "result": False,
        "notes": [],
    }


def plan_release(cfg, version, host):
    """
    What a release of ``version`` would do, without changing anything (test
    mode). Resolves the ref against the origin with ``git ls-remote``.
    """
    layout = Layout(cfg["base_dir"])
    git = Git(cfg, layout, host)
    ret = _result_base(cfg, version)
    sha, how = git.remote_resolve(version)
    current = layout.current_id()
    info = layout.release_json(current) if current else None
    ret["previous"] = (
        {"id": current, "version": (info or {}).get("version")} if current else None
    )
    if not sha:
        ret["result"] = False
        ret["failed_step"] = "resolve"
        if how == "unknown ref":
            how = (
                f"version {version!r} is not a branch, tag or commit of the repository"
            )
        ret["error"] = how
        return ret
    ret["sha"] = sha
    ret["id"] = rid = _rid(version, sha)
    ret["resolved_from"] = how
    if current == rid:
        ret["result"] = True
        ret["comment"] = f"{rid} is already the current release"
    else:
        # The plan itself succeeded (exit code 0); ``changed`` says a release
        # would happen. The state turns that into Salt's ``result: None``.
        ret["result"] = True
        ret["changed"] = True
        ret["comment"] = "would release {} (current: {})".format(rid, current or "none")
    return ret


def _rid(version, sha):
    return "{}-{}".format(version.replace("/", "_"), sha[:8])


def release(cfg, version, host, user=None, jid=None):
    """Release ``version`` of the app described by ``cfg``. Returns a dict."""
    started_clock = time.monotonic()
    layout = Layout(cfg["base_dir"])
    user = user or os_user()
    env = load_env(cfg)
    redact = Redactor.from_env(env)
    rec = Recorder(redact)
    ret = _result_base(cfg, version)
    ret["steps"] = rec.steps
    notes = ret["notes"]
    started = now_iso()
    base_event = {"app": cfg["name"], "version": version, "user": user, "jid": jid}
    host.event("djangoapp/release/start", dict(base_event))

    os.makedirs(layout.releases, mode=0o755, exist_ok=True)
    lock = ReleaseLock(layout.lock, _holder("release", version, user, jid))
    try:
        with rec.step("lock"):
            lock.acquire()
    except StepFailed as exc:
        ret.update(failed_step="lock", error=exc.message, restored=["nothing changed"])
        ret["seconds"] = round(time.monotonic() - started_clock, 3)
        host.event("djangoapp/release/failure", dict(base_event, failed_step="lock"))
        return ret
    if lock.stale:
        notes.append(
            "took over from a release that did not finish (pid {}, version {}, "
            "started {})".format(
                lock.stale.get("pid"),
                lock.stale.get("version"),
                lock.stale.get("started"),
            )
        )
    try:
        _release_locked(
            cfg, version, host, layout, env, redact, rec, ret, user, jid, started
        )
    finally:
        lock.release()
        ret["seconds"] = round(time.monotonic() - started_clock, 3)
    data = dict(
        base_event, id=ret.get("id"), sha=ret.get("sha"), seconds=ret["seconds"]
    )
    if ret["result"]:
        host.event("djangoapp/release/success", data)
    else:
        data.update(
            failed_step=ret.get("failed_step"),
            error=ret.get("error"),
            restored=ret.get("restored"),
        )
        host.event("djangoapp/release/failure", data)
    return ret


def _release_locked(
    cfg, version, host, layout, env, redact, rec, ret, user, jid, started
):
    notes = ret["notes"]
    entries = ledger_read(layout.ledger)
    current = layout.current_id()
    if current and not os.path.isdir(layout.release(current)):
        notes.append(f"current points at a missing release {current}")
        current = None
    if current:
        info = layout.release_json(current) or {}
        ret["previous"] = {"id": current, "version": info.get("version")}
    git = Git(cfg, layout, host)
    service = Service(cfg, host)
    rid = rdir = None
    built = False
    switched = False

    def fail(step, message, restored):
        ret.update(
            result=False, failed_step=step, error=redact(message), restored=restored
        )

    ledger_entry = {
        "event": "release",
        "id": None,
        "version": version,
        "sha": None,
        "status": "failed",
        "started": started,
        "user": user,
        "jid": jid,
        "migrations_ran": False,
        "backup": None,
        "previous": current,
    }

    try:
        with rec.step("fetch"):
            git.fetch()
        with rec.step("resolve") as step:
            sha = git.resolve(version)
            if not sha:
                raise StepFailed(
                    "resolve",
                    f"version {version!r} is not a branch, tag or commit "
                    "of the repository",
                )
            step.info["sha"] = sha
        rid = _rid(version, sha)
        rdir = layout.release(rid)
        ret.update(sha=sha, id=rid)

        ledger_entry.update(id=rid, sha=sha)
        if current == rid:
            ledger_entry = None
            ret.update(
                result=True,
                changed=False,
                comment=f"{rid} is already the current release",
            )
            return

        successful = successful_releases(entries)
        reuse = (
            rid in successful
            and os.path.isfile(os.path.join(rdir, "release.json"))
            and os.path.exists(os.path.join(rdir, "venv", "bin", "python"))
        )
        with rec.step("build") as step:
            if reuse:
                step.info["reused"] = True
                notes.append(f"{rid} is already built on disk (a good release): reused")
            else:
                if os.path.lexists(rdir):
                    notes.append(
                        f"removed a half-built {rid} left by an earlier attempt"
                    )
                    remove_release(layout, rid)
                built = True
                os.makedirs(rdir, mode=0o755)
                builder = Builder(cfg, layout, host, notes)
                live = layout.release(current) if current else None
                step.info["tool"] = builder.build(git, sha, rdir, previous=live)
                step.info["timings"] = builder.timings
                step.info["bytecode_linked"] = getattr(builder, "linked", 0)
                step.info["compiled"] = getattr(builder, "compiled", 0)

        with rec.step("preflight") as step:
            live_info = layout.release_json(current) if current else None
            check_config = not gunicorn_checked(cfg, live_info, rdir)
            pre = run_preflight(
                cfg, host, rdir, env, redact, not reuse, version, check_config
            )
            step.info["timings"] = pre.get("timings")
            step.info["gunicorn_check_config"] = bool(pre.get("also_checked"))
            if not reuse:
                place_static(layout, rdir, pre)
                prepare_media_root(cfg, layout, rdir, pre.get("media_root"))
            warnings = [
                "{} {}: {}".format(m["level"], m["id"], m["msg"])
                for m in pre.get("checks") or []
            ]
            ret["check_warnings"] = [redact(w) for w in warnings]
            pending = pre.get("pending_migrations") or []
            ret["pending_migrations"] = pending
            if not reuse:
                info = {
                    "id": rid,
                    "version": version,
                    "sha": sha,
                    "created": now_iso(),
                    "static_url": pre.get("static_url"),
                    "static_root": pre.get("static_root"),
                    "media_url": pre.get("media_url"),
                    "media_root": pre.get("media_root"),
                    "check_warnings": ret["check_warnings"],
                    "python": pre.get("python"),
                    "django": pre.get("django"),
                    "requirements": requirements_digest(cfg, os.path.join(rdir, "src")),
                    "gunicorn": venv_package_version(
                        os.path.join(rdir, "venv"), "gunicorn"
                    ),
                    "gunicorn_config": file_sha256(cfg.get("gunicorn_config")),
                }
                info.update(git.commit_info(sha))
                _write_json_atomic(os.path.join(rdir, "release.json"), info)

        if pending:
            if needs_backup(cfg):
                with rec.step("backup") as step:
                    ret["backup"] = backup_database(cfg, host, env, rid)
                    ledger_entry["backup"] = ret["backup"]
                    step.info["path"] = ret["backup"]
            with rec.step("migrate") as step:
                ledger_entry["migrations_ran"] = ret["migrations_ran"] = True
                step.info["migrations"] = len(pending)
                migrate(cfg, host, rdir, env, redact, version)

        with rec.step("switch"):
            switch_current(layout, rid)
            switched = True

        master = service.master_pid()
        if not master:
            notes.append(
                f"service {service.name} is not running: skipped reload, worker "
                "and health verification (the formula starts it)"
            )
            ret["service_running"] = False
        else:
            ret["service_running"] = True
            _reload_and_verify(cfg, rec, service, layout, rid, master)
            if cfg.get("health") and cfg["health"].get("url"):
                with rec.step("health") as step:
                    step.info["response"] = health_check(cfg["health"])
            else:
                notes.append("no health URL configured: skipped the health check")

        ledger_entry["status"] = "success"
        ret.update(result=True, changed=True)
    except StepFailed as exc:
        step = exc.step
        restored = []
        if switched:
            restored = _restore(cfg, layout, service, current, rid, notes)
            if ledger_entry:
                ledger_entry["status"] = "rolled_back"
        else:
            restored.append(
                "current unchanged ({})".format(current or "nothing deployed yet")
            )
        if built and rid and layout.current_id() != rid:
            if rid not in releases_in_use(layout):
                remove_release(layout, rid)
                restored.append(f"removed the failed release {rid}")
            else:
                restored.append(f"kept {rid} until its processes exit (pruned later)")
        if ret.get("backup"):
            restored.append(f"database dump taken before migrating: {ret['backup']}")
        fail(step, exc.message, restored)
    except Exception as exc:  # a bug or an unexpected system error: still record it
        log.exception("djangoapp release failed unexpectedly")
        restored = []
        if switched:
            restored = _restore(cfg, layout, service, current, rid, notes)
        if (
            built
            and rid
            and layout.current_id() != rid
            and rid not in releases_in_use(layout)
        ):
            remove_release(layout, rid)
            restored.append(f"removed the failed release {rid}")
        fail(
            "internal",
            f"{type(exc).__name__}: {exc}",
            restored or ["current unchanged"],
        )
        if ledger_entry:
            ledger_entry["status"] = "rolled_back" if switched else "failed"
    finally:
        if ledger_entry:
            ledger_entry["finished"] = now_iso()
            if not ret.get("result"):
                ledger_entry["failed_step"] = ret.get("failed_step")
                ledger_entry["error"] = tail(ret.get("error"), 500)
            ledger_append(layout.ledger, ledger_entry)

    if ret["result"]:
        with rec.step("prune") as step:
            entries = ledger_read(layout.ledger)
            previous = rollback_target(entries, rid, layout.on_disk())
            master = service.master_pid()
            pinned = master_birth_release(layout, entries, master)
            if pinned and pinned not in {rid, previous}:
                step.info["pinned"] = pinned
                if _release_of(layout, proc_cwd(master)) != pinned:
                    notes.append(
                        f"kept {pinned}: the gunicorn master started while it was "
                        "live and has no PWD outside releases/ in its environment, "
                        "so its reloads may need it (kept until the service restarts)"
                    )
            step.info["removed"] = prune(
                layout,
                entries,
                cfg.get("keep_releases") or 5,
                rid,
                previous,
                protect={pinned} - {None},
                delete=lambda paths: host.run_background(["rm", "-rf", "--", *paths]),
            )


def _worker_timeout(cfg):
    """How long new workers may take to be ready, and old ones to exit."""
    return int(cfg.get("graceful_timeout") or 30) + 15


def _reports_ready(service, master):
    """
    Whether the master's workers report when they have loaded the app: its
    config has the hooks (it recorded what it loaded). A worker's cwd is in
    the new release from its fork on, before it has imported anything.
    """
    return service.master_state(master) is not None


def _reload_and_verify(cfg, rec, service, layout, rid, master):
    """The ``reload`` and ``verify`` steps: every worker on ``releases/<rid>``."""
    timeout = _worker_timeout(cfg)
    with rec.step("reload") as step:
        step.info.update(reload_workers(service, layout, rid, master, timeout))
    with rec.step("verify") as step:
        step.info["workers"] = service.wait_workers_on(
            layout, rid, timeout, master, ready=_reports_ready(service, master)
        )


def _restore(cfg, layout, service, previous, failed, notes):
    """Put ``previous`` back live after a failed verification."""
    restored = []
    if not previous:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(layout.current)
        restored.append("no previous release: removed current")
        return restored
    switch_current(layout, previous)
    restored.append(f"current -> releases/{previous}")
    master = service.master_pid()
    if not master:
        restored.append("service not running: nothing to reload")
        return restored
    try:
        timeout = _worker_timeout(cfg)
        how = reload_workers(service, layout, previous, master, timeout)
        if how["method"] == "rolling":
            restored.append("handed the workers over to it (rolling)")
        else:
            restored.append("sent HUP to gunicorn")
        pids = service.wait_workers_on(
            layout, previous, timeout, master, ready=_reports_ready(service, master)
        )
        restored.append(f"workers back on {previous}: {pids}")
    except CommandExecutionError as exc:
        restored.append(f"restore incomplete: {exc}")
    return restored


def rollback(cfg, host, to=None, user=None, jid=None):
    """Make the previous good release (or ``to``) live again; no rebuild."""
    started_clock = time.monotonic()
    layout = Layout(cfg["base_dir"])
    user = user or os_user()
    rec = Recorder(Redactor())
    ret = _result_base(cfg, None)
    ret["steps"] = rec.steps
    ret["event"] = "rollback"
    started = now_iso()
    lock = ReleaseLock(layout.lock, _holder("rollback", to, user, jid))
    try:
        with rec.step("lock"):
            lock.acquire()
    except StepFailed as exc:
        ret.update(failed_step="lock", error=exc.message, restored=["nothing changed"])
        return ret
    service = Service(cfg, host)
    entry = None
    try:
        entries = ledger_read(layout.ledger)
        current = layout.current_id()
        on_disk = layout.on_disk()
        if current:
            ret["previous"] = {
                "id": current,
                "version": (layout.release_json(current) or {}).get("version"),
            }
        if to:
            if to not in on_disk:
                raise StepFailed("select", f"release {to} is not on disk")
            if to not in successful_releases(entries):
                raise StepFailed("select", f"release {to} never released successfully")
            target = to
        else:
            target = rollback_target(entries, current, on_disk)
            if not target:
                raise StepFailed(
                    "select", "no previous good release on disk to roll back to"
                )
        if target == current:
            ret.update(id=target, result=True, comment=f"{target} is already current")
            return ret
        info = layout.release_json(target) or {}
        ret.update(id=target, version=info.get("version"), sha=info.get("sha"))
        entry = {
            "event": "rollback",
            "id": target,
            "version": info.get("version"),
            "sha": info.get("sha"),
            "from": current,
            "status": "failed",
            "started": started,
            "user": user,
            "jid": jid,
        }
        with rec.step("switch"):
            switch_current(layout, target)
        master = service.master_pid()
        if not master:
            ret["notes"].append(
                f"service {service.name} is not running: skipped reload"
            )
        else:
            try:
                _reload_and_verify(cfg, rec, service, layout, target, master)
                if cfg.get("health") and cfg["health"].get("url"):
                    with rec.step("health") as step:
                        step.info["response"] = health_check(cfg["health"])
            except StepFailed:
                if current:
                    ret["restored"] = _restore(
                        cfg, layout, service, current, target, []
                    )
                raise
        entry["status"] = "success"
        ret.update(result=True, changed=True)
        host.event(
            "djangoapp/release/rollback",
            {
                "app": cfg["name"],
                "id": target,
                "from": current,
                "user": user,
                "jid": jid,
            },
        )
    except StepFailed as exc:
        ret.update(result=False, failed_step=exc.step, error=exc.message)
        ret.setdefault("restored", ["current unchanged"])
    finally:
        if entry:
            entry["finished"] = now_iso()
            ledger_append(layout.ledger, entry)
        lock.release()
        ret["seconds"] = round(time.monotonic() - started_clock, 3)
    return ret


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
    lock_holder = None
    if ReleaseLock.is_held(layout.lock):
        lock_holder = ReleaseLock.read_holder(layout.lock) or {}
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
            "master_release": _release_of(layout, proc_cwd(master)) if master else None,
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
        "previous_good": rollback_target(entries, current, layout.on_disk()),
    }


def _release_of(layout, path):
    root = os.path.realpath(layout.releases) + "/"
    if path and path.startswith(root):
        return path[len(root) :].split("/", 1)[0]
    return None


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


def map_to_current(layout, rid, path):
    """``releases/<rid>/x`` seen through ``current/x``; other paths as they are."""
    if not path:
        return None
    for root in {
        layout.release(rid),
        os.path.join(os.path.realpath(layout.releases), rid),
    }:
        if inside(path, root):
            return layout.current + path[len(root) :]
    return path


def static_location(cfg):
    layout = Layout(cfg["base_dir"])
    current = layout.current_id()
    info = layout.release_json(current) if current else None
    if not info:
        return {"static": None, "media": None, "release": None}
    static = media = None
    if info.get("static_url"):
        static_path = map_to_current(layout, current, info.get("static_root"))
        if os.path.isdir(os.path.join(layout.release(current), STATIC_KEPT)):
            static_path = os.path.join(layout.current, STATIC_KEPT)
        static = {"url": info["static_url"], "path": static_path}
    if info.get("media_url"):
        media = {
            "url": info["media_url"],
            "path": map_to_current(layout, current, info.get("media_root")),
        }
    return {"static": static, "media": media, "release": current}


# How long a reload waits for a release or rollback of the app to finish.
RELOAD_LOCK_WAIT = 900


def reload_service(cfg, host, user=None, jid=None, wait=RELOAD_LOCK_WAIT):
    """
    Have gunicorn take up a changed environment file or gunicorn config
    (state.apply calls this when either changed). Once no release or rollback
    of the app runs (waiting up to ``wait`` seconds for it), the workers are
    handed over to new ones of the live release, which read the environment
    file when forked; when the master must read its config again, a HUP.
    Either way, returns once every worker is a new one that has loaded the
    app: ``{"result": True, "method": "rolling"|"hup", "workers": [pids]}``
    (a HUP names its ``reason``), or ``{"result": False, "comment": ...}``
    when gunicorn is not running.
    """
    layout = Layout(cfg["base_dir"])
    service = Service(cfg, host)
    lock = ReleaseLock(layout.lock, _holder("reload", None, user or os_user(), jid))
    lock.acquire(wait=wait)
    try:
        master = service.master_pid()
        if not master:
            return {"result": False, "comment": f"{cfg['service']} is not running"}
        rid = layout.current_id()
        if rid is None:
            service.hup(master)
            return {"result": True, "method": "hup", "reason": "no release is live"}
        timeout = _worker_timeout(cfg)
        before = set(children(master))
        how = reload_workers(service, layout, rid, master, timeout)
        how["workers"] = service.wait_workers_on(
            layout,
            rid,
            timeout,
            master,
            ready=_reports_ready(service, master),
            replaced=before,
        )
        return {"result": True, **how}
    finally:
        lock.release()
