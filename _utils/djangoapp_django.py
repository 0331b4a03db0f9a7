"""
Django's side of a release, run as the app's user with the production
environment: the preflight (checks, collectstatic, pending migrations, in one
process of the release's Python, see ``djangoapp_preflight.py``), the database
backup taken before migrating, and ``migrate``.
"""

import contextlib
import json
import os
import queue
import selectors
import shutil
import subprocess
import threading
import time
import urllib.parse

from djangoapp_build import venv_package_version
from djangoapp_common import (
    SAFE_PATH,
    StepFailed,
    file_sha256,
    naming_a_full_disk,
    os_user,
    tail,
    user_ids,
)
from djangoapp_files import STATIC_STAGING
from djangoapp_host import as_user

PREFLIGHT_MARKER = "DJANGOAPP-PREFLIGHT "
MIGRATED_MARKER = "DJANGOAPP-MIGRATED "
PREFLIGHT_SCRIPT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "djangoapp_preflight.py"
)
MIGRATE_TIMEOUT = 3600
# How long a release waits for another one's migrations on the same database (the
# web minions of a fleet share it).
MIGRATION_LOCK_WAIT = 1800
MIGRATION_LOCK_KEY = "djangoapp:migrate"
MIGRATION_LOCK_MARKER = "djangoapp-migration-lock-held"
HOOK_TIMEOUT = 3600
BACKUP_TIMEOUT = 7200
DATABASE_ENGINES = {
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "pgsql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def app_env(cfg, env, rdir, version):
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


def project_dir(cfg, rdir):
    """Where the project's ``manage.py`` lies in the release ``rdir``."""
    return os.path.join(rdir, "src", cfg["project_dir"] or ".")


def as_app(cfg, env, rdir, version, timeout):
    """``Host.run`` options for a command of the app in ``rdir``, as its user."""
    return {
        "runas": cfg["user"],
        "cwd": project_dir(cfg, rdir),
        "env": app_env(cfg, env, rdir, version),
        "clean_env": True,
        "reset_system_locale": False,
        "timeout": timeout,
    }


def gunicorn_checked(cfg, live_info, rdir, requirements):
    """
    True when ``gunicorn --check-config`` can tell nothing new about the
    release in ``rdir``, built from the dependencies whose digest is
    ``requirements``: the live release passed it with the same config file,
    the same Gunicorn and the same requirements (the worker class), and the
    preflight imports the app itself.
    """
    if not live_info or not live_info.get("gunicorn_config"):
        return False
    venv = os.path.join(rdir, "venv")
    return (
        live_info["gunicorn_config"] == file_sha256(cfg["gunicorn_config"])
        and live_info.get("gunicorn") == venv_package_version(venv, "gunicorn")
        and live_info.get("requirements") == requirements
    )


def _static_staging(cfg, rdir):
    """An empty directory in the release that the app's user may collect into."""
    staging = os.path.join(rdir, STATIC_STAGING)
    if os.path.lexists(staging):
        shutil.rmtree(staging)
    os.mkdir(staging, 0o755)
    try:
        uid, gid = user_ids(cfg["user"])
    except KeyError:
        raise StepFailed("preflight", f"user {cfg['user']!r} does not exist") from None
    os.chown(staging, uid, gid)
    return staging


def _gunicorn_check(cfg, rdir):
    """What the preflight checks as ``gunicorn --check-config`` would."""
    config = cfg["gunicorn_config"]
    return {
        "config": config if os.path.isfile(config or "") else None,
        "chdir": project_dir(cfg, rdir),
        "app": cfg["asgi"] or cfg["wsgi"],
    }


def _preflight_result(ret, redact):
    """The JSON the preflight printed last, checked; raises StepFailed."""
    result = None
    for line in reversed((ret.get("stdout") or "").splitlines()):
        if line.startswith(PREFLIGHT_MARKER):
            with contextlib.suppress(ValueError):
                result = json.loads(line[len(PREFLIGHT_MARKER) :])
            break
    if result is None:
        raise StepFailed(
            "preflight",
            redact(
                "the preflight process gave no result (exit {}): {}".format(
                    ret.get("retcode"), tail(ret.get("stderr"))
                )
            ),
        )
    return checked_preflight(result, redact)


def checked_preflight(result, redact):
    """The preflight's ``result``; raises StepFailed when a stage failed."""
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
    return result


def preflight_options(cfg, rdir, collect, check_config):
    options = {
        "app_callable": cfg["asgi"] or cfg["wsgi"],
        "fail_level": cfg["check_deploy_fail_level"] or "ERROR",
        "collectstatic": bool(collect),
        "static_staging": _static_staging(cfg, rdir) if collect else None,
        "migration_linter": cfg["migration_linter"],
    }
    if check_config and os.path.exists(os.path.join(rdir, "venv", "bin", "gunicorn")):
        options["gunicorn_check"] = _gunicorn_check(cfg, rdir)
    return options


def with_checks(result):
    result["also_checked"] = (
        ["gunicorn --check-config"] if result.get("gunicorn_checked") else []
    )
    return result


# Runs djangoapp_preflight.py from its first argv[1] bytes of stdin, and keeps
# the rest of stdin for its requests.
BOOTSTRAP = (
    "import sys\n"
    "source = sys.stdin.buffer.read(int(sys.argv[1]))\n"
    "namespace = {'__name__': 'djangoapp_preflight'}\n"
    "exec(compile(source, 'djangoapp_preflight.py', 'exec'), namespace)\n"
    "sys.exit(namespace['main'](sys.argv[:1] + sys.argv[2:], sys.stdin.buffer))\n"
)


class PreflightProcess:
    """
    The preflight in a process that stays, when it found pending migrations,
    to run them later in the release (``migrate``) with Django set up already:
    a second process would start Python and set Django up again. Started and
    read as Salt's ``cmd.run_all`` would; ``close`` ends it (``migrate`` does,
    and the release does at its end whatever happened).
    """

    def __init__(self, redact):
        self.redact = redact
        self.process = None
        self.said = {"stdout": [], "stderr": []}
        self.lines = queue.Queue()

    def start(self, argv, options, run_as):
        """``argv``: the release's python, as the app's user; ``run_as``: its
        ``cwd`` and ``env`` (``as_app``)."""
        with open(PREFLIGHT_SCRIPT, "rb") as handle:
            source = handle.read()
        self.process = subprocess.Popen(  # pylint: disable=consider-using-with
            [*argv, "-c", BOOTSTRAP, str(len(source)), json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=run_as["cwd"],
            env=run_as["env"],
        )
        for name in ("stdout", "stderr"):
            threading.Thread(target=self._read, args=(name,), daemon=True).start()
        self.process.stdin.write(source)
        self.process.stdin.flush()

    def _read(self, name):
        """Every line of ``name``: stdout's to the queue, both kept (the end)."""
        stream = getattr(self.process, name)
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            kept = self.said[name]
            kept.append(line)
            del kept[:-200]
            if name == "stdout":
                self.lines.put(line)
        if name == "stdout":
            self.lines.put(None)

    def answer(self, marker, timeout):
        """The JSON after ``marker`` on the next line that has it; None when the
        process ends first or ``timeout`` seconds pass (then it is killed)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close(kill=True)
                return None
            if line is None:
                return None
            if line.startswith(marker):
                with contextlib.suppress(ValueError):
                    return json.loads(line[len(marker) :])

    def output(self):
        self.close(wait=2)
        return {
            "retcode": self.process.returncode,
            "stdout": "\n".join(self.said["stdout"]),
            "stderr": "\n".join(self.said["stderr"]),
        }

    def result(self, timeout=900):
        """The preflight's result; raises StepFailed."""
        found = self.answer(PREFLIGHT_MARKER, timeout)
        if found is None or not found.get("ok"):
            return _preflight_result(self.output(), self.redact)
        return with_checks(found)

    def migrate(self, targets, timeout=MIGRATE_TIMEOUT):
        """``migrate`` up to each of ``targets`` (all: None); raises StepFailed."""
        request = {"targets": [list(target) for target in targets or []]}
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            pass  # it ended: said below
        found = self.answer(MIGRATED_MARKER, timeout)
        if found is None or not found.get("ok"):
            ret = self.output()
            detail = (found or {}).get("traceback") or tail(
                ret["stderr"] + "\n" + ret["stdout"]
            )
            raise StepFailed("migrate", self.redact(f"migrate failed: {tail(detail)}"))

    @property
    def serving(self):
        return self.process is not None and self.process.poll() is None

    def close(self, wait=10, kill=False):
        if self.process is not None:
            end_process(self.process, wait, kill)


def end_process(process, wait, kill=False):
    """End a process that reads its stdin until it closes: stdin closed, then
    ``wait`` seconds for it to exit before it is killed (at once: ``kill``)."""
    if process.returncode is not None:
        return
    with contextlib.suppress(OSError):
        process.stdin.close()
    if kill:
        process.kill()
    try:
        process.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_preflight(cfg, host, rdir, env, redact, collect, version, check_config=True):
    """
    One process of the new release's python runs the Django checks
    (djangoapp_preflight.py) and, when ``check_config``, what ``gunicorn
    --check-config`` checks. Returns (the preflight result dict, the
    ``PreflightProcess``, there to migrate with when it found pending
    migrations, or None); raises StepFailed.
    """
    if not os.path.isdir(project_dir(cfg, rdir)):
        raise StepFailed("preflight", f"project_dir {cfg['project_dir']!r} not found")
    options = preflight_options(cfg, rdir, collect, check_config)
    preflight = start_preflight_process(cfg, rdir, env, redact, version, options)
    if preflight is None:  # no setpriv: Salt's runas, one process per command
        ret = _run_preflight_script(cfg, host, rdir, env, version, options, 900)
        return with_checks(_preflight_result(ret, redact)), None
    try:
        result = preflight.result()
    except BaseException:
        preflight.close(kill=True)
        raise
    # With nothing to migrate it ends by itself, while the release goes on.
    return result, preflight


def start_preflight_process(cfg, rdir, env, redact, version, options):
    """A ``PreflightProcess`` of the release's python, as the app's user,
    started with ``options``; None without setpriv."""
    argv = [os.path.join(rdir, "venv", "bin", "python")]
    if cfg["user"] != os_user():
        argv = as_user(cfg["user"], argv)
    if argv is None:
        return None
    preflight = PreflightProcess(redact)
    try:
        preflight.start(argv, options, as_app(cfg, env, rdir, version, timeout=None))
    except BaseException:
        preflight.close(kill=True)
        raise
    return preflight


def read_migrations(cfg, host, rdir, env, redact, version):
    """The pending migrations of the code in ``rdir``, classified as the
    preflight does (its ``setup`` and ``migrate_plan`` stages alone); raises
    StepFailed."""
    options = {
        "stages": ["setup", "migrate_plan"],
        "migration_linter": cfg["migration_linter"],
    }
    ret = _run_preflight_script(cfg, host, rdir, env, version, options, 300)
    return _preflight_result(ret, redact)


def read_applied_migrations(cfg, host, rdir, env, redact, version, timeout):
    """The migrations the code in ``rdir`` knows (``known_migrations``) and
    those its database has applied (``applied_migrations``), as its own Django
    sees them: the preflight's ``setup`` and ``applied_migrations`` stages;
    raises StepFailed."""
    options = {"stages": ["setup", "applied_migrations"]}
    ret = _run_preflight_script(cfg, host, rdir, env, version, options, timeout)
    return _preflight_result(ret, redact)


def _run_preflight_script(cfg, host, rdir, env, version, options, timeout):
    """The preflight script with ``options``, run once by ``host.run`` as the
    app user in the release's python (the script on stdin)."""
    with open(PREFLIGHT_SCRIPT, encoding="utf-8") as handle:
        source = handle.read()
    return host.run(
        [os.path.join(rdir, "venv", "bin", "python"), "-", json.dumps(options)],
        stdin=source,
        stdin_raw_newlines=True,
        **as_app(cfg, env, rdir, version, timeout=timeout),
    )


def migrate(
    cfg, host, rdir, env, redact, version, targets=None, preflight=None, locked=False
):
    """``manage.py migrate --noinput`` in the new release, as the app user; with
    ``targets`` (``[(app_label, migration), ...]``), up to each of them only.
    With ``preflight`` (a ``PreflightProcess`` still there), in that process.
    Under the migration lock, taken here unless the caller holds it (``locked``)."""
    lock = contextlib.nullcontext() if locked else migration_lock(cfg, env, redact)
    if preflight is not None and preflight.serving:
        with lock:
            preflight.migrate(targets)
        return
    python = os.path.join(rdir, "venv", "bin", "python")
    if os.path.isfile(os.path.join(project_dir(cfg, rdir), "manage.py")):
        command = [python, "manage.py", "migrate", "--noinput"]
    else:
        command = [python, "-m", "django", "migrate", "--noinput"]
    run_as_app = as_app(cfg, env, rdir, version, timeout=MIGRATE_TIMEOUT)
    with lock:
        for target in targets or [()]:
            ret = host.run([*command, *target], **run_as_app)
            if ret.get("retcode") != 0:
                output = tail(
                    (ret.get("stderr") or "") + "\n" + (ret.get("stdout") or "")
                )
                raise StepFailed(
                    "migrate",
                    redact(f"migrate failed (exit {ret.get('retcode')}): {output}"),
                )


@contextlib.contextmanager
def migration_lock(cfg, env, redact, wait=MIGRATION_LOCK_WAIT, step="migrate"):
    """
    One ``migrate`` at a time on the app's database, whoever runs it: the web
    minions of a fleet share the database, and their first ``state.apply``
    releases at once. A lock of the database server, held by a client session
    of its own for as long as the block runs (``_lock_session``); Django's
    migrate has none. An engine without a server (SQLite): no lock. Failing to
    take it fails ``step``.
    """
    if (cfg["database"] or {}).get("engine") not in ("postgresql", "mysql"):
        yield
        return
    argv, run_env, request = _lock_session(database_of(cfg, env, step="migrate"), wait)
    holder = subprocess.Popen(  # pylint: disable=consider-using-with
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=run_env,
        start_new_session=True,
    )
    try:
        holder.stdin.write(request)
        holder.stdin.flush()
        _wait_for_marker(holder, wait, redact, step)
        yield
    finally:
        end_process(holder, wait=10)


def _lock_session(db, wait):
    """The client that takes the migration lock of ``db`` and prints
    MIGRATION_LOCK_MARKER once it holds it: its argv, environment and input.
    PostgreSQL: an advisory lock (a database's own), the marker on psql's
    stderr, which it does not buffer. MariaDB: GET_LOCK, whose locks are the
    server's, on a name that holds the database's; the marker a row of the
    unbuffered client."""
    login, run_env = client_login(db)
    run_env.update(PATH=SAFE_PATH, LANG="C.UTF-8")
    if db["engine"] == "mysql":
        argv = ["mysql", "--batch", "--skip-column-names", "--unbuffered"]
        argv += login + [db["name"]]
        name = _sql_string(f"{MIGRATION_LOCK_KEY}:{db['name']}"[:64])
        request = (
            f"SELECT IF(GET_LOCK({name}, {int(wait)}) = 1, "
            f"'{MIGRATION_LOCK_MARKER}', 'not taken');\n"
        )
        return argv, run_env, request
    argv = ["psql", "--no-psqlrc", "--no-password", "--quiet", "--tuples-only"]
    argv += ["--set=ON_ERROR_STOP=1"] + login + [f"--dbname={db['name']}"]
    request = (
        f"SELECT pg_advisory_lock(hashtext('{MIGRATION_LOCK_KEY}'));\n"
        f"\\warn {MIGRATION_LOCK_MARKER}\n"
    )
    return argv, run_env, request


def _sql_string(value):
    """A quoted SQL string literal (MariaDB's escapes)."""
    return "'{}'".format(value.replace("\\", "\\\\").replace("'", "\\'"))


def _wait_for_marker(holder, wait, redact, step):
    """Until the lock's session says it holds the lock; StepFailed when it
    exits first or ``wait`` seconds pass. Read from the pipe's descriptor: a
    buffered reader would keep a second line that came with the first, out of
    the selector's sight."""
    deadline = time.monotonic() + wait
    said = b""
    fd = holder.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(
                    step, f"another release held the migration lock for {wait} s"
                )
            if not selector.select(timeout=min(left, 1.0)):
                continue
            chunk = os.read(fd, 4096)
            said += chunk
            lines = said.decode("utf-8", "replace").splitlines()
            if MIGRATION_LOCK_MARKER in (line.strip() for line in lines):
                return
            if not chunk:
                raise StepFailed(
                    step,
                    redact(
                        "could not take the migration lock: "
                        + said.decode("utf-8", "replace").strip()
                    ),
                )


def run_hooks(cfg, host, rdir, env, redact, version, point):
    """
    The pillar's commands for ``point`` (``after_build``, ``after_migrate``,
    ``after_switch``), each an argv run as the app's user in the project
    directory of ``rdir`` with the production environment. Returns what ran and
    how long each took; raises StepFailed on the first that fails.
    """
    ran = []
    current_static = os.path.join(cfg["base_dir"], "current", "static")
    if point == "after_build" and env.get("DJANGO_STATIC_ROOT") == current_static:
        # Before the switch, `current` is the live release (or nothing yet): the
        # hook works on this release's collected files, where STATIC_ROOT will be
        # once it is live.
        env = {**env, "DJANGO_STATIC_ROOT": os.path.join(rdir, "static")}
    for argv in (cfg["hooks"] or {}).get(point) or []:
        argv = [str(arg) for arg in argv]
        started = time.monotonic()
        ret = host.run(argv, **as_app(cfg, env, rdir, version, timeout=HOOK_TIMEOUT))
        ran.append({"argv": argv, "seconds": round(time.monotonic() - started, 3)})
        if ret.get("retcode") != 0:
            output = tail((ret.get("stderr") or "") + "\n" + (ret.get("stdout") or ""))
            raise StepFailed(
                point,
                redact(
                    f"{' '.join(argv)} failed (exit {ret.get('retcode')}): {output}"
                ),
            )
    return ran


def parse_database_url(url):
    """The parts of a ``DATABASE_URL`` that a dump needs."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    return {
        "engine": DATABASE_ENGINES.get(scheme, scheme),
        "user": urllib.parse.unquote(parts.username or ""),
        "password": urllib.parse.unquote(parts.password or ""),
        "host": parts.hostname or "localhost",
        "port": parts.port,
        "name": urllib.parse.unquote(parts.path.lstrip("/")),
    }


def needs_backup(cfg):
    """True when the app has a database: it is dumped before migrating."""
    return (cfg["database"] or {}).get("engine") not in (None, "", "none")


def database_of(cfg, env, step="backup"):
    """app.json's database, completed by DATABASE_URL from the environment;
    StepFailed for ``step`` when its name or user is unknown."""
    db = dict(cfg["database"] or {})
    if env.get("DATABASE_URL"):
        db.update(
            {k: v for k, v in parse_database_url(env["DATABASE_URL"]).items() if v}
        )
    for key in ("name", "user"):
        if not db.get(key) or str(db[key]).startswith("-"):
            raise StepFailed(
                step, f"database {key} unknown: set DATABASE_URL in env.json"
            )
    db["host"] = str(db.get("host") or "localhost")
    return db


def client_login(db):
    """The options that name ``db``'s server and user to its own clients (psql,
    pg_dump, mysql, mysqldump), and the environment that carries its password."""
    if db.get("engine") == "mysql":
        env = {"MYSQL_PWD": db["password"]} if db.get("password") else {}
        user, port = f"--user={db['user']}", db.get("port") or 3306
    else:
        env = {"PGPASSWORD": db["password"]} if db.get("password") else {}
        user, port = f"--username={db['user']}", db.get("port") or 5432
    return [f"--host={db['host']}", f"--port={port}", user], env


def sql_query(db, sql):
    """The argv and environment of ``db``'s own client running ``sql``: one row
    a line, its columns separated by tabs, no header."""
    login, run_env = client_login(db)
    run_env["PATH"] = SAFE_PATH
    if db.get("engine") == "mysql":
        argv = ["mysql", "--batch", "--skip-column-names"] + login
        return argv + [f"--execute={sql}", db["name"]], run_env
    argv = ["psql", "--no-psqlrc", "--no-password", "--quiet", "--no-align"]
    argv += ["--tuples-only", "--field-separator=\t"] + login
    return argv + [f"--dbname={db['name']}", f"--command={sql}"], run_env


def database_answers(cfg, env, host):
    """None when the app's database server accepts the app's own credentials
    (``SELECT 1``), else what the client said: the first release on a web
    minion of a fleet waits for the db minion with it."""
    db = database_of(cfg, env, step="database")
    argv, run_env = sql_query(db, "SELECT 1")
    result = host.run(argv, env=run_env, clean_env=True, timeout=15)
    if result.get("retcode") == 0:
        return None
    return (result.get("stderr") or result.get("stdout") or "no answer").strip()


def _dump(host, argv, run_env):
    """Run a dump command: credentials in the environment, the file private."""
    host.check(
        "backup",
        argv,
        env=run_env,
        clean_env=True,
        umask="077",
        timeout=BACKUP_TIMEOUT,
    )


def _dump_postgresql(host, db, path, run_env):
    login, password = client_login(db)
    run_env.update(password)
    argv = ["pg_dump", "--format=custom", "--no-password"] + login
    argv += [f"--file={path}", f"--dbname={db['name']}"]
    _dump(host, argv, run_env)
    listing = host.check("backup", ["pg_restore", "--list", path], env=run_env)
    if "Archive created at" not in (listing.get("stdout") or ""):
        raise StepFailed("backup", f"pg_restore --list cannot read {path}")


# mysqldump's snapshot met a table that another session altered after it began
# (another web minion of a fleet migrating the shared database): "Error 1412 ...
# please retry transaction". Tried again, a second apart, while that goes on.
TABLE_CHANGED = "Error 1412"
TABLE_CHANGED_TRIES = 30


def _dump_mysql(host, db, path, run_env, pause=1.0):
    login, password = client_login(db)
    run_env.update(password)
    argv = ["mysqldump", "--single-transaction", "--routines", "--triggers"] + login
    argv += [f"--result-file={path}", "--databases", db["name"]]
    for attempt in range(1, TABLE_CHANGED_TRIES + 1):
        try:
            _dump(host, argv, run_env)
            break
        except StepFailed as exc:
            if TABLE_CHANGED not in str(exc) or attempt == TABLE_CHANGED_TRIES:
                raise
            time.sleep(pause)
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - 512))
        if b"-- Dump completed" not in handle.read():
            raise StepFailed("backup", f"{path} has no '-- Dump completed' trailer")


# What a dump is called until it is complete.
PARTIAL_SUFFIX = ".partial"
DUMPS = {"postgresql": (".dump", _dump_postgresql), "mysql": (".sql", _dump_mysql)}


def backup_database(cfg, host, env, rid):
    """
    Dump the database before migrating, named after the release, and check the
    dump; returns its path. Credentials travel in the environment only.
    """
    engine = (cfg["database"] or {}).get("engine")
    if engine not in DUMPS:
        raise StepFailed("backup", f"database engine {engine!r} has no backup method")
    db = database_of(cfg, env)
    os.makedirs(cfg["backup_dir"], mode=0o700, exist_ok=True)
    suffix, dump = DUMPS[engine]
    path = os.path.join(cfg["backup_dir"], rid + suffix)
    # Written under another name until complete: a partial dump, left by a
    # failure or by a killed run, must never pass for one to restore.
    partial = path + PARTIAL_SUFFIX
    try:
        with naming_a_full_disk("backup", path):
            dump(host, db, partial, {"PATH": SAFE_PATH, "LC_ALL": "C"})
    except StepFailed:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise
    os.chmod(partial, 0o600)
    os.replace(partial, path)
    return path
