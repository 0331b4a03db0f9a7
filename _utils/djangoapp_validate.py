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

import ipaddress
import re
import urllib.parse

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
TLS_MODES = ("off", "selfsigned", "provided", "acme")
CACHE_KEYS = ("engine", "db")
TLS_KEYS = ("mode", "cert", "key", "email", "hsts_max_age")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")

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
    "tls",
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
    "logrotate",
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


def _check_known_keys(errors, path, section, known):
    for key in section:
        if key not in known:
            errors.add(
                path + [key],
                "is not a known key (allowed: {})".format(", ".join(known)),
            )


def _check_cache(errors, path, cache):
    if cache is None:
        return
    if not isinstance(cache, dict):
        errors.add(path, "must be a mapping")
        return
    _check_known_keys(errors, path, cache, CACHE_KEYS)
    if cache.get("engine", "none") not in CACHE_ENGINES:
        errors.add(
            path + ["engine"], "must be one of {}".format(", ".join(CACHE_ENGINES))
        )
    _check_int(errors, path + ["db"], cache.get("db"), 0, 9999)


def tls_mode(tls):
    """The ``tls.mode`` of an app's pillar, ``off`` when unset (or YAML's false)."""
    mode = (tls or {}).get("mode") if isinstance(tls, dict) else None
    return "off" if mode in (None, False, "") else mode


def _check_pem(errors, path, value, label):
    if _check_str(errors, path, value, required=True) and (
        f"-----BEGIN {label}" not in value or "-----END " not in value
    ):
        errors.add(path, f"must be PEM text (-----BEGIN {label}...)")


def _check_tls(errors, path, tls):
    if tls is None:
        return
    if not isinstance(tls, dict):
        errors.add(path, "must be a mapping")
        return
    _check_known_keys(errors, path, tls, TLS_KEYS)
    mode = tls_mode(tls)
    if mode not in TLS_MODES:
        errors.add(path + ["mode"], "must be one of {}".format(", ".join(TLS_MODES)))
    if mode == "provided":
        _check_pem(errors, path + ["cert"], tls.get("cert"), "CERTIFICATE")
        # "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"
        key = tls.get("key")
        _check_pem(errors, path + ["key"], key, "")
        if isinstance(key, str) and "PRIVATE KEY-----" not in key:
            errors.add(path + ["key"], "must be a PEM private key")
    email = tls.get("email")
    if (
        _check_str(errors, path + ["email"], email)
        and email
        and (not EMAIL_RE.match(email) or email.startswith("-"))
    ):
        errors.add(path + ["email"], f"{email!r} is not an email address")
    _check_int(errors, path + ["hsts_max_age"], tls.get("hsts_max_age"), 0)


def _check_apps_apart(errors, apps):
    """What two apps of one host must not share: a server name, a Redis database
    number, a database or a database user on the same server."""
    seen = {}

    def claim(kind, key, shown, name, path):
        other = seen.setdefault((kind, key), name)
        if other != name:
            errors.add(path, f"{shown!r} is also the {kind} of app {other!r}")

    for name in sorted(apps):
        app = apps[name]
        if not isinstance(app, dict):
            continue
        path = ["djangoapp", "apps", name]
        names = app.get("server_names")
        for index, server_name in enumerate(names if isinstance(names, list) else []):
            if isinstance(server_name, str):
                claim(
                    "server name",
                    server_name,
                    server_name,
                    name,
                    path + ["server_names", index],
                )
        cache = app.get("cache")
        if (
            isinstance(cache, dict)
            and cache.get("engine") == "redis"
            and _is_int(cache.get("db"))
        ):
            db_number = cache["db"]
            claim("Redis database", db_number, db_number, name, path + ["cache", "db"])
        db = app.get("database")
        db = db if isinstance(db, dict) else {}
        engine = db.get("engine", "postgresql")
        if engine == "none":
            continue
        server = (engine, db.get("host") or "localhost", db.get("port"))
        for key in ("name", "user"):
            value = db.get(key) or name
            claim(
                f"database {key}" if key == "user" else "database",
                (*server, value),
                value,
                name,
                path + ["database", key],
            )


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

    _check_cache(errors, path + ["cache"], app.get("cache"))
    _check_tls(errors, path + ["tls"], app.get("tls"))

    _check_int(errors, path + ["keep_releases"], app.get("keep_releases"), 1)
    # 0: two per CPU plus one (the default)
    _check_int(errors, path + ["workers"], app.get("workers"), 0)
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


PORT_RE = re.compile(r"^([0-9]{1,5})(/(tcp|udp))?$")
FAIL2BAN_TIME_RE = re.compile(r"^-?[0-9]+(s|m|h|d|w)?$")
HOST_OR_NET_RE = re.compile(r"^[A-Za-z0-9.:/_-]+$")


def _port_problem(value):
    """Why ``value`` is not a port to allow (``443``, ``"443"``, ``"53/udp"``)."""
    if _is_int(value):
        value = str(value)
    match = PORT_RE.match(value) if isinstance(value, str) else None
    if not match or not 1 <= int(match.group(1)) <= 65535:
        return f"{value!r} must be a port 1..65535, optionally with /tcp or /udp"
    return None


def _check_choice(errors, path, value, choices):
    if value is not None and value not in choices:
        errors.add(path, "must be one of {}".format(", ".join(map(str, choices))))


def _check_host_section(errors, key, section):
    """The keys of the host features (host.sls) that the state tree reads."""
    path = ["djangoapp", key]
    allowed = {
        "firewall": ("enabled", "allow", "zone"),
        "ssh": ("harden", "permit_root_login", "max_auth_tries"),
        "fail2ban": ("enabled", "bantime", "findtime", "maxretry", "ignoreip"),
        "auto_updates": ("enabled", "upgrade_type", "reboot"),
        "backups": ("enabled", "keep", "hour", "minute"),
        "logrotate": ("enabled", "frequency", "rotate"),
        "monitoring": MONITORING_KEYS,
    }.get(key)
    if allowed is None:
        return
    for name, value in section.items():
        if name not in allowed:
            errors.add(
                path + [name],
                "is not a known key (allowed: {})".format(", ".join(allowed)),
            )
        elif name in ("enabled", "harden", "reboot") and not isinstance(value, bool):
            errors.add(path + [name], "must be true or false")
    if key == "firewall":
        allow = section.get("allow")
        if allow is not None and not isinstance(allow, list):
            errors.add(path + ["allow"], "must be a list of ports")
        for index, port in enumerate(allow if isinstance(allow, list) else []):
            problem = _port_problem(port)
            if problem:
                errors.add(path + ["allow", index], problem)
        zone = section.get("zone")
        if _check_str(errors, path + ["zone"], zone) and not DB_IDENT_RE.match(zone):
            errors.add(path + ["zone"], f"{zone!r} is not a firewalld zone name")
    elif key == "ssh":
        # YAML reads an unquoted `no` as false.
        root_login = section.get("permit_root_login")
        _check_choice(
            errors,
            path + ["permit_root_login"],
            "no" if root_login is False else root_login,
            ("no", "prohibit-password"),
        )
        _check_int(
            errors, path + ["max_auth_tries"], section.get("max_auth_tries"), 1, 10
        )
    elif key == "fail2ban":
        for name in ("bantime", "findtime"):
            value = section.get(name)
            if value is not None and not FAIL2BAN_TIME_RE.match(str(value)):
                errors.add(
                    path + [name], f"{value!r} must be seconds or like 10m, 1h, 1d"
                )
        _check_int(errors, path + ["maxretry"], section.get("maxretry"), 1)
        ignore = section.get("ignoreip")
        if ignore is not None and (
            not isinstance(ignore, list)
            or not all(
                isinstance(item, str) and HOST_OR_NET_RE.match(item) for item in ignore
            )
        ):
            errors.add(path + ["ignoreip"], "must be a list of addresses or networks")
    elif key == "auto_updates":
        _check_choice(
            errors,
            path + ["upgrade_type"],
            section.get("upgrade_type"),
            ("security", "default"),
        )
    elif key == "backups":
        _check_int(errors, path + ["keep"], section.get("keep"), 1)
        _check_int(errors, path + ["hour"], section.get("hour"), 0, 23)
        _check_int(errors, path + ["minute"], section.get("minute"), 0, 59)
    elif key == "logrotate":
        _check_choice(
            errors,
            path + ["frequency"],
            section.get("frequency"),
            ("daily", "weekly", "monthly"),
        )
        _check_int(errors, path + ["rotate"], section.get("rotate"), 1)
    elif key == "monitoring":
        _check_monitoring(errors, path, section)


MONITORING_KEYS = ("sentry_dsn", "sentry_environment", "nrpe", "zabbix", "snmp")
MONITORING_PART_KEYS = {
    "nrpe": ("enabled", "allowed_hosts"),
    "zabbix": ("enabled", "server"),
    "snmp": ("enabled", "community", "allowed", "location", "contact"),
}
# Well-known communities that scanners try first.
DEFAULT_COMMUNITIES = ("public", "private")


def _address_problem(value, networks=True):
    """Why ``value`` is not an IP address (or, with ``networks``, a network such as
    ``192.0.2.0/24``), or None. The firewall matches sources by address: no names."""
    kind = "an IP address or network" if networks else "an IP address"
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        if networks:
            ipaddress.ip_network(value, strict=True)
        else:
            ipaddress.ip_address(value)
    except ValueError as error:
        if "host bits" in str(error):
            return f"{value!r} has host bits set (a network ends in zeros)"
        return f"{value!r} is not {kind}"
    return None


def _check_sources(errors, path, value, enabled):
    """A list of IP addresses or networks, required (non-empty) when ``enabled``."""
    if value is not None and not isinstance(value, list):
        errors.add(path, "must be a list of IP addresses or networks")
        return
    if enabled and not value:
        errors.add(path, "is required when enabled")
    for index, item in enumerate(value or []):
        problem = _address_problem(item)
        if problem:
            errors.add(path + [index], problem)


def _check_config_text(errors, path, value):
    """A string that goes into a configuration file line: no control characters."""
    if _check_str(errors, path, value) and any(ord(c) < 32 for c in value):
        errors.add(path, "must not contain control characters")


def _check_str_when_enabled(errors, path, value, enabled):
    """Like _check_str, and required (non-empty) when the part is enabled."""
    if enabled and (value is None or (isinstance(value, str) and not value.strip())):
        errors.add(path, "is required when enabled")
        return False
    return _check_str(errors, path, value)


def _check_community(errors, path, value, enabled):
    if not _check_str_when_enabled(errors, path, value, enabled) or not value:
        return
    if len(value) > 64 or any(not 33 <= ord(c) <= 126 or c in "\"'\\#" for c in value):
        errors.add(
            path,
            "must be 1 to 64 printable characters without spaces, quotes, "
            "backslashes or '#'",
        )
    elif value.lower() in DEFAULT_COMMUNITIES:
        errors.add(path, f"must not be a well-known community such as {value!r}")


def _sentry_dsn_problem(value):
    """Why ``value`` is not a Sentry DSN (https://KEY@host/PROJECT), or None."""
    if any(c.isspace() for c in value):
        return "must not contain spaces"
    parts = urllib.parse.urlsplit(value)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if (
        parts.scheme not in ("http", "https")
        or not parts.username
        or not parts.hostname
        or not port_ok
        or not parts.path.strip("/")
    ):
        return "must be empty or a DSN like https://KEY@sentry.example.com/PROJECT"
    return None


def _check_monitoring(errors, path, section):
    """``djangoapp:monitoring``: the Sentry DSN the apps report to, and the NRPE,
    Zabbix and SNMP agents with the sources allowed to ask them."""
    dsn = section.get("sentry_dsn")
    if _check_str(errors, path + ["sentry_dsn"], dsn) and dsn:
        problem = _sentry_dsn_problem(dsn)
        if problem:
            errors.add(path + ["sentry_dsn"], problem)
    _check_config_text(
        errors, path + ["sentry_environment"], section.get("sentry_environment")
    )
    for part, known in MONITORING_PART_KEYS.items():
        part_path = path + [part]
        settings = section.get(part)
        if settings is None:
            continue
        if not isinstance(settings, dict):
            errors.add(part_path, "must be a mapping")
            continue
        _check_known_keys(errors, part_path, settings, known)
        enabled = settings.get("enabled", False)
        if not isinstance(enabled, bool):
            errors.add(part_path + ["enabled"], "must be true or false")
            enabled = False
        if part == "nrpe":
            _check_sources(
                errors,
                part_path + ["allowed_hosts"],
                settings.get("allowed_hosts"),
                enabled,
            )
        elif part == "zabbix":
            server = settings.get("server")
            if _check_str_when_enabled(errors, part_path + ["server"], server, enabled):
                for address in filter(None, server.split(",")):
                    problem = _address_problem(address.strip(), networks=False)
                    if problem:
                        errors.add(part_path + ["server"], problem)
        else:
            _check_community(
                errors, part_path + ["community"], settings.get("community"), enabled
            )
            _check_sources(
                errors, part_path + ["allowed"], settings.get("allowed"), enabled
            )
            for key in ("location", "contact"):
                _check_config_text(errors, part_path + [key], settings.get(key))


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
            elif value:
                _check_host_section(errors, key, value)
        elif key not in RESERVED_TOP_KEYS:
            errors.add(["djangoapp", key], "is not a known key (typo?)")
    apps = data.get("apps")
    if apps is not None:
        if not isinstance(apps, dict):
            errors.add(["djangoapp", "apps"], "must be a mapping of app names")
        else:
            for name, app in apps.items():
                _check_app(errors, name, app)
            _check_apps_apart(errors, apps)
    if errors.items:
        _fail("; ".join(errors.items))
    return True
