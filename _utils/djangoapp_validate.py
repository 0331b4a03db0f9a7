"""
Validation rules shared by the djangoapp execution module, state module and
state tree.

Every rule that decides whether an app name, a git ref, a release id or a
pillar key is acceptable lives here, so that ``djangoapp.validate_pillar``
(called from ``map.jinja`` at render time) and ``djangoapp.release`` (called
from the CLI or a state) can never disagree.

The pillar's keys and what each may hold are declared once, in
``djangoapp_schema.SCHEMA``; ``pillar`` walks a pillar along it. What a
pattern cannot say is a named function here: a value's problem (``CHECKS``),
a value made canonical before it is checked (``COERCIONS``) and a rule across
keys (``RULES``). Add a key to the schema when the state tree starts to use
it, and document it in ``pillar.example``.
"""

import difflib
import ipaddress
import re
import urllib.parse

from djangoapp_schema import ON_A_SERVER, SCHEMA
from salt.exceptions import SaltInvocationError

__virtualname__ = "djangoapp_validate"

APP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,29}$")
REF_CHARS_RE = re.compile(r"^[A-Za-z0-9._/-]+$")
RELEASE_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
CALLABLE_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
    r"(:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\(\))?)?$"
)
PYTHON_RE = re.compile(r"^[A-Za-z0-9_./+-]+$")
PORT_RE = re.compile(r"^([0-9]{1,5})(/(tcp|udp))?$")
# Well-known communities that scanners try first.
DEFAULT_COMMUNITIES = ("public", "private")

_APP = SCHEMA["keys"]["apps"]["values"]["keys"]
# Keys of ``djangoapp:apps:<name>`` that are validated, and those accepted as
# they are (read by the state tree as they are, or kept for later).
APP_KEYS = tuple(key for key, node in _APP.items() if not node.get("reserved"))
RESERVED_APP_KEYS = tuple(key for key, node in _APP.items() if node.get("reserved"))


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


def apps_versions(apps, version=None, argument="apps"):
    """
    ``[(app, ref or None)]`` from ``apps``: a list of app names, names
    separated by commas, or a mapping of app to ref (then ``version`` must
    be None). Every name and ref checked, each once; SaltInvocationError
    naming ``argument`` (or ``version``) otherwise.
    """
    version = None if version in (None, "") else ref(str(version))
    if isinstance(apps, dict):
        if version is not None:
            _fail("version: give it for every app, or each app's in apps, not both")
        named = [
            (str(name), None if ref in (None, "") else str(ref))
            for name, ref in apps.items()
        ]
    elif isinstance(apps, (list, tuple)):
        named = [(str(name), version) for name in apps]
    elif isinstance(apps, str) and apps.strip():
        named = [(name.strip(), version) for name in apps.split(",")]
    else:
        _fail(f"{argument} is required: app names, or a mapping of app to version")
    names = [name for name, _ref in named]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        _fail(f"{argument}: named more than once: {', '.join(repeated)}")
    for name, ref_ in named:
        app_name(name, argument)
        if ref_ is not None and isinstance(apps, dict):
            ref(ref_, f"{argument}: {name}: version")
    return named


def release_id(value, argument="to"):
    """
    Return ``value`` if it has the shape of a release id (a directory name
    under ``releases/``), raise SaltInvocationError otherwise.
    """
    if not isinstance(value, str) or not RELEASE_ID_RE.match(value) or ".." in value:
        _fail(f"{argument} {value!r} is not a valid release id")
    return value


def tls_mode(tls):
    """The ``tls.mode`` of an app's pillar, ``off`` when unset (or YAML's false)."""
    mode = (tls or {}).get("mode") if isinstance(tls, dict) else None
    return _yaml_false_off(mode)


# --------------------------------------------------------------------------
# CHECKS: the problem of one value (a message, a list of them, or None)


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


def requirements_problem(value):
    """A requirements file, or a list of them."""
    if isinstance(value, list):
        if not value:
            return "must name at least one file"
        found = []
        for index, item in enumerate(value):
            problem = relative_path_problem(item)
            if problem:
                found.append(f"item {index}: {problem}")
        return found
    return relative_path_problem(value)


def http_status_problem(value):
    """An HTTP status (302) or a class of them ("2xx")."""
    if _is_int(value) and 100 <= value <= 599:
        return None
    if isinstance(value, str) and re.match(r"^[1-5]xx\Z", value):
        return None
    return f"{value!r} must be an HTTP status (200) or a class of them ('2xx')"


def argv_problem(value):
    """A command as a list of arguments: no shell, no option for a program."""
    if not isinstance(value, list) or not value:
        return "must be a command as a non-empty list of arguments"
    if not all(isinstance(arg, (str, int)) for arg in value):
        return "must be a list of strings"
    if not str(value[0]) or str(value[0]).startswith("-"):
        return f"{value[0]!r} must be a program"
    if any("\x00" in str(arg) for arg in value):
        return "must not contain NUL characters"
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


def _port_problem(value):
    """Why ``value`` is not a port to allow (``443``, ``"443"``, ``"53/udp"``)."""
    if _is_int(value):
        value = str(value)
    match = PORT_RE.match(value) if isinstance(value, str) else None
    if not match or not 1 <= int(match.group(1)) <= 65535:
        return f"{value!r} must be a port 1..65535, optionally with /tcp or /udp"
    return None


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


def _addresses_problems(value):
    """Zabbix's ``Server=``: IP addresses, comma-separated."""
    problems = (
        _address_problem(address.strip(), networks=False)
        for address in filter(None, value.split(","))
    )
    return [problem for problem in problems if problem]


def _community_problem(value):
    """An SNMP community: a secret that goes into snmpd.conf as one word."""
    if len(value) > 64 or any(not 33 <= ord(c) <= 126 or c in "\"'\\#" for c in value):
        return (
            "must be 1 to 64 printable characters without spaces, quotes, "
            "backslashes or '#'"
        )
    if value.lower() in DEFAULT_COMMUNITIES:
        return f"must not be a well-known community such as {value!r}"
    return None


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


def _roles_problem(value):
    if not value:
        return "must name at least one role (leave it out for one host: web, db, cache)"
    if len(set(value)) != len(value):
        return "names a role twice"
    return None


CHECKS = {
    "roles": _roles_problem,
    "app_name": app_name_problem,
    "ref": ref_problem,
    "python": python_problem,
    "relative_path": relative_path_problem,
    "pip_requirement": pip_requirement_problem,
    "requirements": requirements_problem,
    "http_status": http_status_problem,
    "argv": argv_problem,
    "callable": callable_problem,
    "port": _port_problem,
    "ip_network": _address_problem,
    "ip_addresses": _addresses_problems,
    "snmp_community": _community_problem,
    "sentry_dsn": _sentry_dsn_problem,
}


# --------------------------------------------------------------------------
# COERCIONS: YAML reads an unquoted off or no as false


def _yaml_false_off(value):
    """``tls.mode``: false (an unquoted ``off``), empty or unset mean ``off``."""
    return "off" if value in (None, False, "") else value


def _yaml_false_no(value):
    """``ssh.permit_root_login``: false is an unquoted ``no``."""
    return "no" if value is False else value


COERCIONS = {"yaml_false_off": _yaml_false_off, "yaml_false_no": _yaml_false_no}


# --------------------------------------------------------------------------
# RULES: checks across the keys of one mapping, as (key path, problem) pairs


def _wsgi_or_asgi(app):
    """An app is served through WSGI or through ASGI: one of them, not both."""
    wsgi, asgi = app.get("wsgi"), app.get("asgi")
    if wsgi is None and asgi is None and app.get("absent") is not True:
        return [(["wsgi"], "is required unless asgi is set")]
    if wsgi is not None and asgi is not None:
        return [(["asgi"], "set either wsgi or asgi, not both")]
    return []


def _database_password(app):
    """A database on a server needs the app's password, while the app is present."""
    database = app.get("database")
    if app.get("absent") is True or not isinstance(database, dict):
        return []
    if database.get("engine", "postgresql") not in ON_A_SERVER["engine"]:
        return []
    password = database.get("password")
    if password is None or (isinstance(password, str) and not password.strip()):
        return [(["database", "password"], "is required")]
    return []


def _purge_when_absent(app):
    """Purging removes what an app taken down left: only an absent app has it."""
    if app.get("purge") is True and app.get("absent") is not True:
        return [(["purge"], "is taken with absent: true only")]
    return []


def _pem_problem(value, label):
    if value is None or (isinstance(value, str) and not value.strip()):
        return "is required"
    if not isinstance(value, str):
        return "must be a string"
    if f"-----BEGIN {label}" not in value or "-----END " not in value:
        return f"must be PEM text (-----BEGIN {label}...)"
    return None


def _tls_files(tls):
    """``tls.mode: provided`` needs the certificate chain and its private key."""
    if tls_mode(tls) != "provided":
        return []
    cert, key = tls.get("cert"), tls.get("key")
    problems = [(["cert"], _pem_problem(cert, "CERTIFICATE"))]
    # "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"
    problems.append((["key"], _pem_problem(key, "")))
    if isinstance(key, str) and "PRIVATE KEY-----" not in key:
        problems.append((["key"], "must be a PEM private key"))
    return [(path, problem) for path, problem in problems if problem]


def _apps_apart(apps):
    """What two apps of one host must not share: a server name, a Redis database
    number, a database or a database user on the same server. An absent app's
    server names are free for another; its database is not (purge drops it)."""
    seen = {}
    problems = []

    def claim(kind, key, shown, name, path):
        other = seen.setdefault((kind, key), name)
        if other != name:
            problems.append((path, f"{shown!r} is also the {kind} of app {other!r}"))

    for name in sorted(apps):
        app = apps[name]
        if not isinstance(app, dict):
            continue
        names = app.get("server_names") if app.get("absent") is not True else []
        for index, server_name in enumerate(names if isinstance(names, list) else []):
            if isinstance(server_name, str):
                path = [name, "server_names", index]
                claim("server name", server_name, server_name, name, path)
        cache = app.get("cache")
        if (
            isinstance(cache, dict)
            and cache.get("engine") == "redis"
            and _is_int(cache.get("db"))
        ):
            db_number = cache["db"]
            path = [name, "cache", "db"]
            claim("Redis database", db_number, db_number, name, path)
        db = app.get("database")
        db = db if isinstance(db, dict) else {}
        engine = db.get("engine", "postgresql")
        if engine == "none":
            continue
        server = (engine, db.get("host") or "localhost", db.get("port"))
        for key in ("name", "user"):
            value = db.get(key) or name
            kind = f"database {key}" if key == "user" else "database"
            claim(kind, (*server, value), value, name, [name, "database", key])
    return problems


RULES = {
    "wsgi_or_asgi": _wsgi_or_asgi,
    "tls_files": _tls_files,
    "apps_apart": _apps_apart,
    "purge_when_absent": _purge_when_absent,
    "database_password": _database_password,
}


# --------------------------------------------------------------------------
# the walker

TYPES = {
    "mapping": (lambda value: isinstance(value, dict), "must be a mapping"),
    "list": (lambda value: isinstance(value, list), "must be a list"),
    "str": (lambda value: isinstance(value, str), "must be a string"),
    "int": (_is_int, "must be an integer {bounds}"),
    "bool": (lambda value: isinstance(value, bool), "must be true or false"),
}


class _Errors:
    def __init__(self):
        self.items = []

    def add(self, path, problem):
        self.items.append("{} {}".format(":".join(str(p) for p in path), problem))


def _message(template, node, value):
    minimum, maximum = node.get("min"), node.get("max")
    bounds = f">= {minimum}" if maximum is None else f"{minimum}..{maximum}"
    return template.format(value=value, pattern=node.get("pattern"), bounds=bounds)


def _empty(value, node):
    """Unset for ``required``: a blank string, or an empty list where a list is
    asked for."""
    if isinstance(value, str):
        return not value.strip()
    return node.get("type") == "list" and value == []


def _required(node, mapping):
    """The message for ``node`` left unset in ``mapping``, None if it may be."""
    if node.get("required"):
        return "is required"
    sibling = node.get("required_when")
    if sibling and mapping.get(sibling) is True:
        return f"is required when {sibling}"
    return None


def _value_problems(node, value):
    """What the rules of ``node`` that look at the value itself say of it."""
    problems = []
    if "choices" in node and value not in node["choices"]:
        problems.append("must be one of " + ", ".join(map(str, node["choices"])))
    if node.get("type") == "int" and not (
        node["min"] <= value <= node.get("max", value)
    ):
        problems.append(_message(TYPES["int"][1], node, value))
    if "pattern" in node:
        text = value if isinstance(value, str) else str(value)
        if not re.match(node["pattern"], text):
            problems.append(_message(node["invalid"], node, value))
    if "check" in node:
        found = CHECKS[node["check"]](value)
        problems.extend([found] if isinstance(found, str) else found or [])
    return problems


def _walk(errors, path, value, node, parent=None):
    """Check ``value`` against ``node``, reporting at ``path``; True if no error
    was found. ``parent``: the mapping that holds the value."""
    if node.get("reserved"):
        return True
    before = len(errors.items)
    if "coerce" in node:
        value = COERCIONS[node["coerce"]](value)
    kind = node.get("type")
    if kind and not TYPES[kind][0](value):
        errors.add(path, _message(node.get("message", TYPES[kind][1]), node, value))
        return False
    if _empty(value, node):
        missing = _required(node, parent or {})
        if missing:
            errors.add(path, missing)
            return False
    if node.get("empty_ok") and value == "":
        return True
    for problem in _value_problems(node, value):
        errors.add(path, problem)
    if "keys" in node:
        _walk_keys(errors, path, value, node)
    if "values" in node:
        _walk_values(errors, path, value, node)
    if "items" in node:
        _walk_items(errors, path, value, node)
    for rule in node.get("rules", ()):
        for subpath, problem in RULES[rule](value):
            errors.add(path + subpath, problem)
    return len(errors.items) == before


def _hint(key, keys, unknown):
    """What an unknown key may have meant: the closest known key, or them all."""
    if unknown != "typo":
        return "allowed: {}".format(", ".join(keys))
    close = difflib.get_close_matches(str(key), list(keys), n=1)
    return f"did you mean {close[0]}?" if close else "typo?"


def _walk_keys(errors, path, mapping, node):
    """A mapping of fixed keys: the unknown ones, then each known one in turn."""
    keys = node["keys"]
    unknown = node.get("unknown", "allowed")
    if unknown != "accept":
        for key in mapping:
            if key not in keys:
                errors.add(
                    path + [key], f"is not a known key ({_hint(key, keys, unknown)})"
                )
    for key, field in keys.items():
        if "rule" in field:
            for subpath, problem in RULES[field["rule"]](mapping):
                errors.add(path + subpath, problem)
        if not all(
            mapping.get(sibling, keys[sibling].get("default")) in allowed
            for sibling, allowed in field.get("when", {}).items()
        ):
            continue
        value = mapping.get(key)
        if key not in mapping or (value is None and field.get("nullable", True)):
            missing = _required(field, mapping)
            if missing:
                errors.add(path + [key], missing)
            continue
        _walk(errors, path + [key], value, field, mapping)


def _walk_values(errors, path, mapping, node):
    """A mapping of names (apps, environment variables) to values alike."""
    for key, value in mapping.items():
        good_key = _walk(errors, path + [key], key, node.get("key", {}))
        if good_key or not node.get("skip_bad_keys"):
            _walk(errors, path + [key], value, node["values"])


def _walk_items(errors, path, items, node):
    if node.get("one_error"):
        if not all(_walk(_Errors(), path, item, node["items"]) for item in items):
            errors.add(path, _message(node["message"], node, items))
        return
    for index, item in enumerate(items):
        _walk(errors, path + [index], item, node["items"])


def pillar(data):
    """
    Validate the ``djangoapp`` pillar mapping ``data``. Raise
    SaltInvocationError naming every offending key; return True otherwise.
    """
    errors = _Errors()
    _walk(errors, ["djangoapp"], {} if data is None else data, SCHEMA)
    if errors.items:
        _fail("; ".join(errors.items))
    return True
