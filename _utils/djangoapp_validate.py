"""
Validation rules shared by the djangoapp execution module, state module and
state tree.

Every rule that decides whether an app name, a git ref, a release id or a
pillar key is acceptable lives here, so that ``djangoapp.validate_pillar``
(called from ``map.jinja`` at render time) and ``djangoapp.release`` (called
from the CLI or a state) can never disagree.

The allowed keys of an app in the pillar are listed once, in ``APP_KEYS`` and
``RESERVED_APP_KEYS`` below. Add a key there when the state tree starts to use
it.
"""

import re

from salt.exceptions import SaltInvocationError

__virtualname__ = "djangoapp_validate"

APP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,29}$")
REF_CHARS_RE = re.compile(r"^[A-Za-z0-9._/-]+$")
RELEASE_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
DOTTED_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
CALLABLE_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
    r"(:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\(\))?)?$"
)
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DB_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
PYTHON_RE = re.compile(r"^[A-Za-z0-9_./+-]+$")
SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9*._~^\\()|?+\[\]-]+$")
CHECK_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DB_ENGINES = ("postgresql", "mysql", "none")
CACHE_ENGINES = ("none", "redis", "memcached")
PROCESS_MANAGERS = ("supervisor", "systemd")

# Keys of ``djangoapp:apps:<name>`` that are validated below.
APP_KEYS = (
    "repo",
    "version",
    "deploy_key",
    "known_hosts",
    "python",
    "requirements",
    "pip_extra",
    "settings_module",
    "wsgi",
    "asgi",
    "project_dir",
    "server_names",
    "env",
    "database",
    "cache",
    "keep_releases",
    "health_path",
    "process_manager",
    "workers",
    "timeout",
    "graceful_timeout",
    "check_deploy_fail_level",
)

# Keys accepted without validation: reserved for the state tree and for later.
RESERVED_APP_KEYS = (
    "tls",
    "media",
    "static",
    "threads",
    "worker_class",
    "client_max_body_size",
    "user",
    "group",
    "base_dir",
    "health",
    "nginx",
    "gunicorn",
    "cron",
    "backup",
    "monitoring",
    "proxy",
    "uv",
)

# Top-level keys of the ``djangoapp`` pillar besides ``apps``.
SECTION_KEYS = (
    "firewall",
    "ssh",
    "fail2ban",
    "auto_updates",
    "backups",
    "monitoring",
    "proxy",
)

# Top-level keys accepted without validation (template-formula conventions
# and settings of the state tree).
RESERVED_TOP_KEYS = (
    "lookup",
    "tofs",
    "nginx",
    "postgresql",
    "mariadb",
    "redis",
    "memcached",
    "supervisor",
    "process_manager",
    "tls",
    "uv",
    "python",
)


def __virtual__():
    return __virtualname__


def _fail(message):
    raise SaltInvocationError(message)


def app_name(name, argument="app"):
    """
    Return ``name`` if it is a valid app name, raise SaltInvocationError
    naming ``argument`` otherwise.
    """
    problem = app_name_problem(name)
    if problem:
        _fail(f"{argument} {problem}")
    return name


def app_name_problem(name):
    if not isinstance(name, str) or not name:
        return "is required"
    if not APP_NAME_RE.match(name):
        return (
            f"{name!r} is not a valid app name "
            "(lower-case letter, then up to 29 of a-z, 0-9 and _)"
        )
    return None


def ref_problem(ref):
    """
    Return why ``ref`` is not an acceptable git ref for a release, or None.

    Accepted: characters ``A-Z a-z 0-9 . _ / -``; no leading ``-``, no
    ``..``, not ending in ``/`` or ``.lock``, no empty path component and no
    component starting with ``.``.
    """
    if ref is None or (isinstance(ref, str) and not ref.strip()):
        return "is required"
    if not isinstance(ref, str):
        return f"must be a string (quote it in YAML), not {type(ref).__name__}"
    if len(ref) > 200:
        return "is longer than 200 characters"
    if not REF_CHARS_RE.match(ref):
        bad = sorted({c for c in ref if not re.match(r"[A-Za-z0-9._/-]", c)})
        shown = " ".join(repr(c) for c in bad)
        return (
            f"{ref!r} contains characters not allowed in a ref: {shown} "
            "(allowed: A-Z a-z 0-9 . _ / -)"
        )
    if ref.startswith("-"):
        return f"{ref!r} must not start with '-'"
    if ref.startswith("/"):
        return f"{ref!r} must not start with '/'"
    if ".." in ref:
        return f"{ref!r} must not contain '..'"
    if ref.endswith("/") or ref.endswith(".lock") or ref.endswith("."):
        return f"{ref!r} must not end in '/', '.' or '.lock'"
    if "//" in ref:
        return f"{ref!r} must not contain '//'"
    if any(part.startswith(".") for part in ref.split("/")):
        return f"{ref!r} must not have a component starting with '.'"
    return None


def ref(value, argument="version"):
    """
    Return ``value`` if it is an acceptable git ref, raise
    SaltInvocationError naming ``argument`` otherwise.
    """
    problem = ref_problem(value)
    if problem:
        _fail(f"{argument} {problem}")
    return value


def release_id(value, argument="to"):
    """
    Return ``value`` if it has the shape of a release id (a directory name
    under ``releases/``), raise SaltInvocationError otherwise.
    """
    if not isinstance(value, str) or not RELEASE_ID_RE.match(value) or ".." in value:
        _fail(f"{argument} {value!r} is not a valid release id")
    return value


def relative_path_problem(value):
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if value.startswith("/"):
        return f"{value!r} must be relative to the repository"
    if value.startswith("-"):
        return f"{value!r} must not start with '-'"
    if any(part == ".." for part in value.split("/")):
        return f"{value!r} must not contain '..'"
    if any(ord(c) < 32 for c in value):
        return f"{value!r} must not contain control characters"
    return None


def pip_requirement_problem(value):
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string"
    if value.lstrip().startswith("-"):
        return f"{value!r} must be a requirement, not an option"
    if any(ord(c) < 32 for c in value):
        return f"{value!r} must not contain control characters"
    return None


def python_problem(value):
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if value.startswith("-") or not PYTHON_RE.match(value):
        return f"{value!r} is not a python interpreter name or path"
    return None


def callable_problem(value):
    if not isinstance(value, str) or not CALLABLE_RE.match(value):
        return f"{value!r} must look like 'package.module:callable'"
    return None


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class _Errors:
    def __init__(self):
        self.items = []

    def add(self, path, problem):
        self.items.append("{} {}".format(":".join(str(p) for p in path), problem))


def _check_str(errors, path, value, required=False):
    if value is None:
        if required:
            errors.add(path, "is required")
        return False
    if not isinstance(value, str):
        errors.add(path, "must be a string")
        return False
    if required and not value.strip():
        errors.add(path, "is required")
        return False
    return True


def _check_int(errors, path, value, minimum, maximum=None):
    if value is None:
        return
    if not _is_int(value) or value < minimum or (maximum and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"{minimum}..{maximum}"
        errors.add(path, f"must be an integer {bounds}")


def _check_database(errors, path, db):
    if db is None:
        return
    if not isinstance(db, dict):
        errors.add(path, "must be a mapping")
        return
    known = ("engine", "name", "user", "password", "host", "port", "options")
    for key in db:
        if key not in known:
            errors.add(
                path + [key],
                "is not a known key (allowed: {})".format(", ".join(known)),
            )
    engine = db.get("engine", "postgresql")
    if engine not in DB_ENGINES:
        errors.add(path + ["engine"], "must be one of {}".format(", ".join(DB_ENGINES)))
        return
    if engine == "none":
        return
    for key in ("name", "user"):  # both default to the app's name
        value = db.get(key)
        if _check_str(errors, path + [key], value) and not DB_IDENT_RE.match(value):
            errors.add(path + [key], f"{value!r} must match {DB_IDENT_RE.pattern}")
    _check_str(errors, path + ["password"], db.get("password"), required=True)
    host = db.get("host")
    if _check_str(errors, path + ["host"], host) and (
        host.startswith("-") or any(c.isspace() or c in "/@?#" for c in host)
    ):
        errors.add(path + ["host"], f"{host!r} is not a host name or address")
    _check_int(errors, path + ["port"], db.get("port"), 1, 65535)


def _check_app(errors, name, app):
    path = ["djangoapp", "apps", name]
    problem = app_name_problem(name)
    if problem:
        errors.add(path, problem)
    if not isinstance(app, dict):
        errors.add(path, "must be a mapping")
        return
    for key in app:
        if key not in APP_KEYS and key not in RESERVED_APP_KEYS:
            errors.add(path + [key], "is not a known key (typo?)")

    repo = app.get("repo")
    if _check_str(errors, path + ["repo"], repo, required=True) and (
        repo.startswith("-") or any(ord(c) < 32 for c in repo)
    ):
        errors.add(path + ["repo"], f"{repo!r} is not a repository URL")

    version = app.get("version")
    problem = ref_problem(version)
    if problem:
        errors.add(path + ["version"], problem)

    for key in ("deploy_key", "known_hosts"):
        _check_str(errors, path + [key], app.get(key))

    if app.get("python") is not None:
        problem = python_problem(app["python"])
        if problem:
            errors.add(path + ["python"], problem)

    if app.get("requirements") is not None:
        problem = relative_path_problem(app["requirements"])
        if problem:
            errors.add(path + ["requirements"], problem)

    extra = app.get("pip_extra")
    if extra is not None:
        if not isinstance(extra, list):
            errors.add(path + ["pip_extra"], "must be a list")
        else:
            for index, item in enumerate(extra):
                problem = pip_requirement_problem(item)
                if problem:
                    errors.add(path + ["pip_extra", index], problem)

    settings = app.get("settings_module")
    valid = _check_str(errors, path + ["settings_module"], settings, required=True)
    if valid and not DOTTED_RE.match(settings):
        errors.add(
            path + ["settings_module"],
            f"{settings!r} must be a dotted python path",
        )

    wsgi, asgi = app.get("wsgi"), app.get("asgi")
    if wsgi is None and asgi is None:
        errors.add(path + ["wsgi"], "is required unless asgi is set")
    if wsgi is not None and asgi is not None:
        errors.add(path + ["asgi"], "set either wsgi or asgi, not both")
    for key, value in (("wsgi", wsgi), ("asgi", asgi)):
        if value is not None:
            problem = callable_problem(value)
            if problem:
                errors.add(path + [key], problem)

    if app.get("project_dir") is not None:
        problem = relative_path_problem(app["project_dir"])
        if problem:
            errors.add(path + ["project_dir"], problem)

    names = app.get("server_names")
    if names is not None:
        if not isinstance(names, list):
            errors.add(path + ["server_names"], "must be a list")
        else:
            for index, item in enumerate(names):
                if not isinstance(item, str) or not SERVER_NAME_RE.match(item):
                    errors.add(
                        path + ["server_names", index],
                        f"{item!r} is not a server name",
                    )

    env = app.get("env")
    if env is not None:
        if not isinstance(env, dict):
            errors.add(path + ["env"], "must be a mapping of strings")
        else:
            for key, value in env.items():
                if not isinstance(key, str) or not ENV_KEY_RE.match(key):
                    errors.add(path + ["env", key], "is not a valid variable name")
                elif not isinstance(value, str):
                    errors.add(
                        path + ["env", key],
                        "must be a string (quote it in YAML)",
                    )
                elif "\0" in value:
                    errors.add(path + ["env", key], "must not contain NUL")

    _check_database(errors, path + ["database"], app.get("database"))

    cache = app.get("cache")
    if cache is not None:
        if not isinstance(cache, dict):
            errors.add(path + ["cache"], "must be a mapping")
        elif cache.get("engine", "none") not in CACHE_ENGINES:
            errors.add(
                path + ["cache", "engine"],
                "must be one of {}".format(", ".join(CACHE_ENGINES)),
            )

    _check_int(errors, path + ["keep_releases"], app.get("keep_releases"), 1)
    _check_int(errors, path + ["workers"], app.get("workers"), 1)
    _check_int(errors, path + ["timeout"], app.get("timeout"), 1)
    _check_int(errors, path + ["graceful_timeout"], app.get("graceful_timeout"), 0)

    health = app.get("health_path")
    if health is not None and (
        not isinstance(health, str)
        or not health.startswith("/")
        or any(c.isspace() or ord(c) < 32 for c in health)
    ):
        errors.add(
            path + ["health_path"], f"{health!r} must be a path starting with '/'"
        )

    manager = app.get("process_manager")
    if manager is not None and manager not in PROCESS_MANAGERS:
        errors.add(
            path + ["process_manager"],
            "must be one of {}".format(", ".join(PROCESS_MANAGERS)),
        )

    level = app.get("check_deploy_fail_level")
    if level is not None and level not in CHECK_LEVELS:
        errors.add(
            path + ["check_deploy_fail_level"],
            "must be one of {}".format(", ".join(CHECK_LEVELS)),
        )


def pillar(data):
    """
    Validate the ``djangoapp`` pillar mapping ``data``. Raise
    SaltInvocationError naming every offending key; return True otherwise.
    """
    errors = _Errors()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        _fail("djangoapp must be a mapping")
    for key, value in data.items():
        if key == "apps":
            continue
        if key in SECTION_KEYS:
            if value is not None and not isinstance(value, dict):
                errors.add(["djangoapp", key], "must be a mapping")
        elif key not in RESERVED_TOP_KEYS:
            errors.add(["djangoapp", key], "is not a known key (typo?)")
    apps = data.get("apps")
    if apps is not None:
        if not isinstance(apps, dict):
            errors.add(["djangoapp", "apps"], "must be a mapping of app names")
        else:
            for name, app in apps.items():
                _check_app(errors, name, app)
    if errors.items:
        _fail("; ".join(errors.items))
    return True
