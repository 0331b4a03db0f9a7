"""
The contract of the ``djangoapp`` pillar, as data: every key the formula
accepts, what each may hold, and which keys it accepts without checking.
``djangoapp_validate.pillar`` walks a pillar along ``SCHEMA``;
``test/unit/test_pillar_schema.py`` holds it and ``pillar.example`` to each
other (every key of one is in the other).

Not a Salt utility: ``djangoapp_validate`` imports it.

A node says what one value may be. Every rule is optional:

``type``
    ``mapping``, ``list``, ``str``, ``int`` or ``bool`` (``int`` is not
    ``bool``). A wrong type is reported with ``message`` (default: "must be a
    string", "must be an integer 1..10", ...) and nothing else is checked.
``keys``
    A mapping's known keys, each with its node, in the order they are
    checked. ``unknown`` says what other keys get: ``allowed`` (the default:
    "is not a known key (allowed: <the keys>)"), ``typo`` ("is not a known
    key", with the closest known key when one is close) or ``accept`` (not checked).
``key``, ``values``
    A mapping whose keys are names (apps, environment variables): every key
    must pass ``key``, every value ``values``. With ``skip_bad_keys`` the value
    of a bad key is not checked.
``items``
    Every item of a list must pass it. With ``one_error`` a wrong item is
    reported once, at the list, with the list's ``message``.
``required``
    Unset (missing or null), a blank string or, for a list, an empty list:
    "is required". ``required_when: <sibling>``: the same while the sibling
    is true ("is required when enabled").
``nullable``
    False: null is a value to check, not an unset key (default: true, an
    unset key is not checked).
``default``
    The value the rules assume for a missing key (``when`` reads it).
``when``
    ``{sibling: (values...)}``: the key is checked only while the sibling (or
    its default) is one of the values.
``empty_ok``
    The empty string means unset: not checked further.
``choices``
    The allowed values: "must be one of a, b, c".
``min``, ``max``
    Bounds of an ``int``.
``pattern``, ``invalid``
    A regular expression (``re.match``: anchor it) the value (or, without a
    ``type``, its text) must match, and the message when it does not
    (``str.format`` with ``value`` and ``pattern``).
``check``
    The name of a function of ``djangoapp_validate.CHECKS``: the value's
    problem, or problems, or None.
``coerce``
    The name of a function of ``djangoapp_validate.COERCIONS`` applied to the
    value before it is checked (YAML reads an unquoted ``off`` as false).
``rule``
    The name of a function of ``djangoapp_validate.RULES``: a check of the
    mapping that holds the key across its keys ("wsgi or asgi, not both"),
    run when the walk reaches the key, whether it is set or not.
``rules``
    Names of ``RULES`` run on a mapping after its keys (what apps must not
    share).
``reserved``
    Accepted as it is: a key the state tree reads without a rule here, or
    one kept for later. Its ``keys`` or ``values``, if any, only document it.

Patterns written with ``$`` keep what the hand-written checks accepted
(``$`` also matches before a final newline); those that replace a loop over
the characters end in ``\\Z``.
"""


def __virtual__():
    return (False, "imported by djangoapp_validate, not a Salt utility")


RESERVED = {"reserved": True}

# The values a few keys may take.
DB_ENGINES = ("postgresql", "mysql", "none")
CACHE_ENGINES = ("none", "redis", "memcached")
TLS_MODES = ("off", "selfsigned", "provided", "acme")
PROCESS_MANAGERS = ("supervisor", "systemd")
VERSION_POLICIES = ("changes", "pillar")
MIGRATION_POLICIES = ("safe", "after_switch", "allow")
CHECK_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEPENDENCY_FORMATS = ("auto", "requirements", "uv.lock", "pyproject")
# What a minion runs (djangoapp_fleet.ROLES).
ROLES = ("web", "db", "cache", "lb")
# The points of a release where the project's own commands run.
HOOKS = ("after_build", "after_migrate", "after_switch")

# Patterns of names, paths, hosts and addresses.
DOTTED = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
ENV_KEY = r"^[A-Za-z_][A-Za-z0-9_]*$"
DB_IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
SERVER_NAME = r"^[A-Za-z0-9*._~^\\()|?+\[\]-]+$"
EMAIL = r"^(?!-)[^@\s]+@[^@\s]+$"
FAIL2BAN_TIME = r"^-?[0-9]+(s|m|h|d|w)?$"
HOST_OR_NET = r"^[A-Za-z0-9.:/_-]+$"


def _int(minimum, maximum=None):
    node = {"type": "int", "min": minimum}
    if maximum is not None:
        node["max"] = maximum
    return node


# Patterns matched to the end of the text (re.match with \Z).
# A repository URL or a host: no leading '-' (it would read as an option).
REPO_URL = r"(?!-)[^\x00-\x1f]*\Z"
DB_HOST = r"(?!-)[^\s/@?#]*\Z"
# Nginx compares it in a double-quoted string: no quote, backslash or variable.
URL_PATH = r"/[^\s\x00-\x1f\"\\$]*\Z"
NO_CONTROL = r"[^\x00-\x1f]*\Z"
NO_NUL = r"[^\x00]*\Z"


def _section(keys):
    """A mapping of fixed keys; an unknown key is named with the allowed ones."""
    return {"type": "mapping", "keys": keys}


SWITCH = {"type": "bool", "nullable": False}
PACKAGE_NAME = {
    "type": "str",
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z",
    "invalid": "{value!r} must be a name of letters, digits, '.', '_' and '-'",
}
# A name of the OS package manager (libpq-dev, libxml2-devel, libstdc++-dev,
# libfoo:amd64): what an app's build needs besides its Python packages.
OS_PACKAGE = {
    "type": "str",
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9.+_:-]*\Z",
    "invalid": "{value!r} must be a package name of letters, digits and '.+_:-'",
}
TEXT = {
    "type": "str",
    "pattern": NO_CONTROL,
    "invalid": "must not contain control characters",
}


# djangoapp:apps:<name>
# A database's keys other than `engine` are checked unless the engine is none.
ON_A_SERVER = {"engine": ("postgresql", "mysql")}
DB_IDENTIFIER = {
    "when": ON_A_SERVER,
    "type": "str",
    "pattern": DB_IDENT,
    "invalid": "{value!r} must match {pattern}",
}
DATABASE = _section(
    {
        "engine": {"choices": DB_ENGINES, "default": "postgresql", "nullable": False},
        "name": DB_IDENTIFIER,  # default: the app's name
        "user": DB_IDENTIFIER,  # default: the app's name
        # Required while the app is present (rule database_password).
        "password": {"when": ON_A_SERVER, "type": "str"},
        "host": {
            "when": ON_A_SERVER,
            "type": "str",
            "pattern": DB_HOST,
            "invalid": "{value!r} is not a host name or address",
        },
        "port": {"when": ON_A_SERVER, **_int(1, 65535)},
        "options": RESERVED,
    }
)

CACHE = _section(
    {
        "engine": {"choices": CACHE_ENGINES, "default": "none", "nullable": False},
        "db": _int(0, 9999),
    }
)

TLS = _section(
    {
        "mode": {"coerce": "yaml_false_off", "choices": TLS_MODES, "default": "off"},
        # Read by the rule (mode provided), written by tls.sls from the pillar.
        "cert": {"rule": "tls_files"},
        "key": {},
        "email": {
            "type": "str",
            "empty_ok": True,
            "pattern": EMAIL,
            "invalid": "{value!r} is not an email address",
        },
        "hsts_max_age": _int(0),
    }
)

# What an app needs while it is deployed; an app marked absent needs none of it.
WHILE_PRESENT = {"absent": (False,)}

APP = {
    "type": "mapping",
    "unknown": "typo",
    "keys": {
        # Checked first: the keys below are required only while it is false.
        "absent": {**SWITCH, "default": False},
        "purge": {**SWITCH, "rule": "purge_when_absent"},
        "repo": {
            "type": "str",
            "required": True,
            "when": WHILE_PRESENT,
            "pattern": REPO_URL,
            "invalid": "{value!r} is not a repository URL",
        },
        "version": {"required": True, "check": "ref", "when": WHILE_PRESENT},
        "version_policy": {"choices": VERSION_POLICIES},
        "migrations": {"choices": MIGRATION_POLICIES},
        "deploy_key": {"type": "str"},
        "known_hosts": {"type": "str"},
        "python": {"check": "python"},
        "python_install_mirror": {
            "type": "str",
            "empty_ok": True,
            "pattern": r"^(https?|file)://[^\s\x00-\x1f]+\Z",
            "invalid": "{value!r} must be an http(s):// or file:// URL",
        },
        "requirements": {"check": "requirements"},
        "dependencies": {"choices": DEPENDENCY_FORMATS},
        "dependency_groups": {"type": "list", "items": PACKAGE_NAME},
        "extras": {"type": "list", "items": PACKAGE_NAME},
        "pip_extra": {"type": "list", "items": {"check": "pip_requirement"}},
        "packages": {"type": "list", "items": OS_PACKAGE},
        "settings_module": {
            "type": "str",
            "required": True,
            "when": WHILE_PRESENT,
            "pattern": DOTTED,
            "invalid": "{value!r} must be a dotted python path",
        },
        "wsgi": {"rule": "wsgi_or_asgi", "check": "callable"},
        "asgi": {"check": "callable"},
        "project_dir": {"check": "relative_path"},
        "server_names": {
            "type": "list",
            "items": {
                "type": "str",
                "message": "{value!r} is not a server name",
                "pattern": SERVER_NAME,
                "invalid": "{value!r} is not a server name",
            },
        },
        "env": {
            "type": "mapping",
            "message": "must be a mapping of strings",
            "key": {
                "type": "str",
                "message": "is not a valid variable name",
                "pattern": ENV_KEY,
                "invalid": "is not a valid variable name",
            },
            "skip_bad_keys": True,
            "values": {
                "type": "str",
                "message": "must be a string (quote it in YAML)",
                "pattern": NO_NUL,
                "invalid": "must not contain NUL",
            },
        },
        "database": {**DATABASE, "rule": "database_password"},
        "cache": CACHE,
        "tls": TLS,
        "keep_releases": _int(1),
        "workers": _int(0),  # 0: two per CPU plus one
        "preload_app": SWITCH,
        "timeout": _int(1),
        "graceful_timeout": _int(0),
        "health_path": {
            "type": "str",
            "message": "{value!r} must be a path starting with '/'",
            "pattern": URL_PATH,
            "invalid": "{value!r} must be a path starting with '/'",
        },
        "health_statuses": {"type": "list", "items": {"check": "http_status"}},
        "maintenance_retry_after": _int(1),
        "hooks": _section(
            {point: {"type": "list", "items": {"check": "argv"}} for point in HOOKS}
        ),
        "process_manager": {"choices": PROCESS_MANAGERS},
        "check_deploy_fail_level": {"choices": CHECK_LEVELS},
        "release_niceness": _int(-20, 19),
        # Read by the state tree as they are (Gunicorn, Nginx).
        "worker_class": RESERVED,
        "threads": RESERVED,
        "client_max_body_size": RESERVED,
        # Kept for later: accepted, not read.
        "media": RESERVED,
        "static": RESERVED,
        "user": RESERVED,
        "group": RESERVED,
        "base_dir": RESERVED,
        "health": RESERVED,
        "nginx": RESERVED,
        "gunicorn": RESERVED,
        "cron": RESERVED,
        "backup": RESERVED,
        "monitoring": RESERVED,
        "proxy": RESERVED,
        "uv": RESERVED,
    },
}


# djangoapp:<host feature> (host.sls, monitoring.sls)
FIREWALL = _section(
    {
        "enabled": SWITCH,
        "allow": {
            "type": "list",
            "message": "must be a list of ports",
            "items": {"check": "port"},
        },
        "zone": {
            "type": "str",
            "pattern": DB_IDENT,
            "invalid": "{value!r} is not a firewalld zone name",
        },
    }
)

SSH = _section(
    {
        "harden": SWITCH,
        "permit_root_login": {
            "coerce": "yaml_false_no",
            "choices": ("no", "prohibit-password"),
        },
        "max_auth_tries": _int(1, 10),
    }
)

FAIL2BAN_TIME = {
    "pattern": FAIL2BAN_TIME,
    "invalid": "{value!r} must be seconds or like 10m, 1h, 1d",
}
FAIL2BAN = _section(
    {
        "enabled": SWITCH,
        "bantime": FAIL2BAN_TIME,
        "findtime": FAIL2BAN_TIME,
        "maxretry": _int(1),
        "ignoreip": {
            "type": "list",
            "message": "must be a list of addresses or networks",
            "one_error": True,
            "items": {
                "type": "str",
                "pattern": HOST_OR_NET,
                "invalid": "{value!r} is not an address or network",
            },
        },
    }
)

AUTO_UPDATES = _section(
    {
        "enabled": SWITCH,
        "upgrade_type": {"choices": ("security", "default")},
        "reboot": SWITCH,
    }
)

BACKUPS = _section(
    {
        "enabled": SWITCH,
        "keep": _int(1),
        "hour": _int(0, 23),
        "minute": _int(0, 59),
        # The timer runs once a day: less would be CRITICAL every day.
        "max_age_hours": _int(24),
    }
)

LOGROTATE = _section(
    {
        "enabled": SWITCH,
        "frequency": {"choices": ("daily", "weekly", "monthly")},
        "rotate": _int(1),
    }
)

# clean.sls: whether it removes the apps' databases, users and files too.
CLEAN = _section({"purge": SWITCH})

AGENT_SWITCH = {"type": "bool", "nullable": False, "default": False}
SOURCES = {
    "type": "list",
    "message": "must be a list of IP addresses or networks",
    "required_when": "enabled",
    "items": {"check": "ip_network"},
}
MONITORING = _section(
    {
        "sentry_dsn": {"type": "str", "empty_ok": True, "check": "sentry_dsn"},
        "sentry_environment": TEXT,
        "nrpe": _section({"enabled": AGENT_SWITCH, "allowed_hosts": SOURCES}),
        "zabbix": _section(
            {
                "enabled": AGENT_SWITCH,
                "server": {
                    "type": "str",
                    "required_when": "enabled",
                    "check": "ip_addresses",
                },
            }
        ),
        "snmp": _section(
            {
                "enabled": AGENT_SWITCH,
                "community": {
                    "type": "str",
                    "required_when": "enabled",
                    "empty_ok": True,
                    "check": "snmp_community",
                },
                "allowed": SOURCES,
                "location": TEXT,
                "contact": TEXT,
            }
        ),
    }
)


ROLE_LIST = {
    "type": "list",
    "message": "must be a list of roles: " + ", ".join(ROLES),
    "check": "roles",
    "items": {"choices": ROLES},
}
FLEET = _section(
    {
        "network": {"type": "str", "empty_ok": True, "check": "ip_network"},
        "drain_timeout": _int(1, 3600),
    }
)
LB = _section(
    {
        "socket": RESERVED,
        "config_file": RESERVED,
        "check_interval": RESERVED,
        "tls_dir": RESERVED,
    }
)


# djangoapp
SCHEMA = {
    "type": "mapping",
    "unknown": "typo",
    "keys": {
        "roles": ROLE_LIST,
        "fleet": FLEET,
        "lb": LB,
        "firewall": FIREWALL,
        "ssh": SSH,
        "fail2ban": FAIL2BAN,
        "auto_updates": AUTO_UPDATES,
        "backups": BACKUPS,
        "logrotate": LOGROTATE,
        "clean": CLEAN,
        "monitoring": MONITORING,
        # An egress proxy: read by the state tree as it is.
        "proxy": {
            "type": "mapping",
            "unknown": "accept",
            "keys": {"http": RESERVED, "https": RESERVED, "no_proxy": RESERVED},
        },
        # The formula's parameters (parameters/*.yaml), merged under the
        # pillar: template-formula's conventions and the shared services.
        "lookup": RESERVED,
        "tofs": RESERVED,
        # Nginx's parameters, merged under the pillar; trusted_proxies is checked.
        "nginx": {
            "type": "mapping",
            "unknown": "accept",
            "keys": {
                "security_headers": {**RESERVED, "values": {}},
                "trusted_proxies": {
                    "type": "list",
                    "message": "must be a list of IP addresses or networks",
                    "items": {"check": "ip_network"},
                },
            },
        },
        "postgresql": RESERVED,
        "mariadb": RESERVED,
        "redis": {
            "type": "mapping",
            "unknown": "accept",
            "keys": {
                "port": RESERVED,
                "bind": RESERVED,
                # In redis.conf and in each app's REDIS_URL.
                "password": {
                    "type": "str",
                    "pattern": r"[A-Za-z0-9._~+=-]*\Z",
                    "invalid": "must be letters, digits and ._~+=- only",
                },
            },
        },
        "memcached": {
            **RESERVED,
            "keys": {
                "port": RESERVED,
                "memory_mb": RESERVED,
                "max_connections": RESERVED,
            },
        },
        "supervisor": RESERVED,
        "process_manager": RESERVED,
        "tls": {
            **RESERVED,
            "keys": {
                "protocols": RESERVED,
                "ciphers": RESERVED,
                "ecdh_curve": RESERVED,
                "session_timeout": RESERVED,
                "session_cache": RESERVED,
                "selfsigned_days": RESERVED,
                "acme_webroot": RESERVED,
                "acme_server": RESERVED,
            },
        },
        "uv": RESERVED,
        "python": RESERVED,
        # Checked last: what apps must not share needs every app.
        "apps": {
            "type": "mapping",
            "message": "must be a mapping of app names",
            "key": {"check": "app_name"},
            "values": APP,
            "rules": ["apps_apart"],
        },
    },
}
