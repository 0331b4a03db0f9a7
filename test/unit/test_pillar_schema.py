"""
The pillar's schema (``_utils/djangoapp_schema.py``) and ``pillar.example``
held to each other: every key the example sets is in the schema, and every
key of the schema is documented in the example, set or commented out. And
the walker's messages name the full key path.
"""

import pathlib
import re

import djangoapp_schema
import djangoapp_validate
import pytest
import yaml
from salt.exceptions import SaltInvocationError

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = (REPO / "pillar.example").read_text()
ANY = "*"  # a name in a mapping of names (an app, a variable), in a path

# A YAML key line, and a commented-out one: the '#' stands where the key would
# (``# asgi: ...`` at the indentation of ``wsgi:``), one more space per level.
KEY_LINE = re.compile(r"^( *)([A-Za-z0-9_][A-Za-z0-9_.-]*):(?: +(.*))?$")
COMMENTED_KEY_LINE = re.compile(r"^( *)#( +)([a-z_][a-z0-9_]*):(?: +(.*))?$")
COMMENT_LINE = re.compile(r"^( *)#( *)")
BLOCK_SCALAR = re.compile(r"^[|>][+-]?\s*(#.*)?$")


def node_at(path):
    """The schema's node for ``path`` (a tuple of keys under ``djangoapp``),
    "free" below a reserved key whose content is not described, or None when
    the schema has no such key."""
    node = djangoapp_schema.SCHEMA
    for key in path:
        if "keys" in node:
            node = node["keys"].get(key)
            if node is None:
                return None
        elif "values" in node:
            node = node["values"]
        elif node.get("reserved"):
            return "free"
        else:
            return None
    return node


def generalised(path):
    """``path`` with the names of mappings of names replaced by ``*``
    (``apps:shop:repo`` -> ``apps:*:repo``), or None if not in the schema."""
    node, out = djangoapp_schema.SCHEMA, []
    for key in path:
        if "keys" in node:
            node = node["keys"].get(key)
            out.append(key)
        elif "values" in node:
            node = node["values"]
            out.append(ANY)
        elif node.get("reserved"):
            return tuple(out)
        else:
            return None
        if node is None:
            return None
    return tuple(out)


def schema_paths(node=djangoapp_schema.SCHEMA, prefix=()):
    """Every key path the schema names, ``*`` for a name."""
    paths = []
    for key, child in node.get("keys", {}).items():
        paths.append(prefix + (key,))
        paths.extend(schema_paths(child, prefix + (key,)))
    if "values" in node:
        paths.append(prefix + (ANY,))
        paths.extend(schema_paths(node["values"], prefix + (ANY,)))
    return paths


def yaml_paths(value, prefix=()):
    """Every key path of a loaded YAML document."""
    paths = []
    if isinstance(value, dict):
        for key, child in value.items():
            paths.append(prefix + (key,))
            paths.extend(yaml_paths(child, prefix + (key,)))
    return paths


def commented_key(match):
    """A commented-out key, not prose that happens to start with a word and a
    colon: uncommented, the line is a YAML mapping of that one key, to a value
    that is not a string of several words (quote such a value)."""
    key, rest = match.group(3), match.group(4) or ""
    try:
        loaded = yaml.safe_load(f"{key}: {rest}")
    except yaml.YAMLError:
        return False
    if not isinstance(loaded, dict) or list(loaded) != [key]:
        return False
    value = loaded[key]
    quoted = rest[:1] in ("'", '"')
    return quoted or not (isinstance(value, str) and " " in value.strip())


def documented_paths(text):
    """Every key path the text sets or shows commented out, by indentation,
    with the line it is on."""
    found, stack, block = {}, [], None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        comment = COMMENT_LINE.match(line)
        if comment:  # where the text would stand with its "# " taken away
            indent = len(comment.group(1)) + len(comment.group(2)) - 1
        if block is not None and indent > block:
            continue  # inside a block scalar (`key: |`)
        block = None
        real = KEY_LINE.match(line)
        commented = COMMENTED_KEY_LINE.match(line)
        if real:
            key, rest = real.group(2), real.group(3) or ""
        elif commented and commented_key(commented):
            key, rest = commented.group(3), commented.group(4) or ""
        else:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        found.setdefault(tuple(k for _, k in stack), number)
        if BLOCK_SCALAR.match(rest):
            block = indent
    return found


def undocumented(text):
    """The schema's key paths that ``text`` neither sets nor shows."""
    shown = {
        generalised(path[1:])
        for path in documented_paths(text)
        if path[0] == "djangoapp" and len(path) > 1
    }
    return [":".join(path) for path in schema_paths() if path not in shown]


def unknown_to_schema(text):
    """The key paths ``text`` sets that the schema does not have."""
    data = yaml.safe_load(text)["djangoapp"]
    return [":".join(map(str, p)) for p in yaml_paths(data) if node_at(p) is None]


def test_every_key_of_the_example_is_in_the_schema():
    assert unknown_to_schema(EXAMPLE) == []
    # and the example itself passes the walker
    assert djangoapp_validate.pillar(yaml.safe_load(EXAMPLE)["djangoapp"]) is True


def test_every_key_of_the_schema_is_documented_in_the_example():
    assert undocumented(EXAMPLE) == []


def test_the_reading_of_the_example_sees_what_yaml_sees():
    """Keys set in the example are read as YAML reads them; a commented-out
    key counts where it stands, prose does not."""
    documented = documented_paths(EXAMPLE)
    loaded = set(yaml_paths(yaml.safe_load(EXAMPLE)))
    assert loaded <= set(documented)
    commented = set(documented) - loaded
    shop = ("djangoapp", "apps", "shop")
    for path in [("asgi",), ("cache", "db"), ("tls", "cert"), ("tls", "key")]:
        assert shop + path in commented
    # prose: "# off: plain HTTP only (...", "# acme: certbot (webroot ..."
    assert shop + ("tls", "off") not in commented
    assert shop + ("tls", "acme") not in commented
    assert not any("BEGIN" in key for path in documented for key in path)


def _without_line(text, path):
    number = documented_paths(text)[path]
    lines = text.splitlines()
    return "\n".join(lines[: number - 1] + lines[number:]) + "\n"


@pytest.mark.parametrize(
    "path, expected",
    [
        (("apps", "shop", "tls", "hsts_max_age"), "apps:*:tls:hsts_max_age"),
        (("apps", "shop", "cache", "db"), "apps:*:cache:db"),  # commented out
        (("monitoring", "snmp", "contact"), "monitoring:snmp:contact"),
        (("logrotate", "rotate"), "logrotate:rotate"),
    ],
)
def test_a_key_missing_from_the_example_is_noticed(path, expected):
    text = _without_line(EXAMPLE, ("djangoapp",) + path)
    assert undocumented(text) == [expected]


def test_a_key_the_schema_lacks_is_noticed():
    text = EXAMPLE.replace(
        "      keep_releases: 5\n", "      keep_releases: 5\n      keep_relases: 5\n"
    ).replace("    rotate: 14\n", "    rotate: 14\n    compress: true\n")
    assert unknown_to_schema(text) == [
        "apps:shop:keep_relases",
        "logrotate:compress",
    ]


# --------------------------------------------------------------------------
# the schema is well formed: a misspelt rule would be ignored silently

NODE_RULES = {
    "type",
    "message",
    "keys",
    "unknown",
    "key",
    "values",
    "skip_bad_keys",
    "items",
    "one_error",
    "required",
    "required_when",
    "nullable",
    "default",
    "when",
    "empty_ok",
    "choices",
    "min",
    "max",
    "pattern",
    "invalid",
    "check",
    "coerce",
    "rule",
    "rules",
    "reserved",
}


def nodes(node=djangoapp_schema.SCHEMA, path=("djangoapp",)):
    yield path, node
    for key, child in node.get("keys", {}).items():
        yield from nodes(child, path + (key,))
    for part in ("key", "values", "items"):
        if part in node:
            yield from nodes(node[part], path + (f"<{part}>",))


@pytest.mark.parametrize(
    "node", [pytest.param(node, id=":".join(path)) for path, node in nodes()]
)
def test_schema_node_is_well_formed(node):
    assert set(node) <= NODE_RULES
    assert node.get("type", "mapping") in djangoapp_validate.TYPES
    assert node.get("unknown", "allowed") in ("allowed", "typo", "accept")
    assert node.get("check", "ref") in djangoapp_validate.CHECKS
    assert node.get("coerce", "yaml_false_no") in djangoapp_validate.COERCIONS
    for rule in [node.get("rule", "wsgi_or_asgi")] + list(node.get("rules", [])):
        assert rule in djangoapp_validate.RULES
    if "pattern" in node:
        re.compile(node["pattern"])
        assert "invalid" in node
    if "min" in node or "max" in node:
        assert node["type"] == "int" and "min" in node
    siblings = node.get("keys", {})
    for child in siblings.values():
        assert set(child.get("when", {})) <= set(siblings)
        if "required_when" in child:
            assert child["required_when"] in siblings
    if node.get("one_error"):
        assert "message" in node and "items" in node


def test_app_keys_come_from_the_schema():
    app = djangoapp_schema.SCHEMA["keys"]["apps"]["values"]["keys"]
    assert set(djangoapp_validate.APP_KEYS) | set(
        djangoapp_validate.RESERVED_APP_KEYS
    ) == set(app)
    assert "repo" in djangoapp_validate.APP_KEYS
    assert "worker_class" in djangoapp_validate.RESERVED_APP_KEYS


# --------------------------------------------------------------------------
# the walker's messages, whole


def app(**changes):
    base = {
        "repo": "https://git.example.com/demo.git",
        "version": "v1.0.0",
        "settings_module": "demo.settings",
        "wsgi": "demo.wsgi:application",
        "database": {"password": "pw"},
    }
    return {**base, **changes}


def message(pillar):
    with pytest.raises(SaltInvocationError) as info:
        djangoapp_validate.pillar(pillar)
    return str(info.value)


@pytest.mark.parametrize(
    "pillar, expected",
    [
        # wrong types
        (
            {"backups": {"hour": "3"}},
            "djangoapp:backups:hour must be an integer 0..23",
        ),
        (
            {"firewall": {"enabled": "yes"}},
            "djangoapp:firewall:enabled must be true or false",
        ),
        (
            {"apps": {"demo": app(env={"DEBUG": 1})}},
            "djangoapp:apps:demo:env:DEBUG must be a string (quote it in YAML)",
        ),
        (
            {"apps": {"demo": app(server_names="demo.example.com")}},
            "djangoapp:apps:demo:server_names must be a list",
        ),
        ("yes", "djangoapp must be a mapping"),
        # unknown keys
        (
            {"apps": {"demo": app(reqirements="r.txt")}},
            "djangoapp:apps:demo:reqirements is not a known key "
            "(did you mean requirements?)",
        ),
        (
            {"monitoring": {"nrpe": {"enabeld": True}}},
            "djangoapp:monitoring:nrpe:enabeld is not a known key "
            "(allowed: enabled, allowed_hosts)",
        ),
        # values not allowed
        (
            {"apps": {"demo": app(cache={"engine": "couchbase"})}},
            "djangoapp:apps:demo:cache:engine must be one of none, redis, memcached",
        ),
        (
            {"firewall": {"allow": [22, "http"]}},
            "djangoapp:firewall:allow:1 'http' must be a port 1..65535, "
            "optionally with /tcp or /udp",
        ),
        (
            {"apps": {"demo": app(database={"password": "pw", "host": "-db"})}},
            "djangoapp:apps:demo:database:host '-db' is not a host name or address",
        ),
        (
            {"ssh": {"permit_root_login": "yes"}},
            "djangoapp:ssh:permit_root_login must be one of no, prohibit-password",
        ),
        # what a project declares and runs
        (
            {"apps": {"demo": app(dependencies="poetry")}},
            "djangoapp:apps:demo:dependencies must be one of auto, requirements, "
            "uv.lock, pyproject",
        ),
        (
            {"apps": {"demo": app(requirements=["base.txt", "../prod.txt"])}},
            "djangoapp:apps:demo:requirements item 1: '../prod.txt' must not "
            "contain '..'",
        ),
        (
            {"apps": {"demo": app(extras=["s3", "a b"])}},
            "djangoapp:apps:demo:extras:1 'a b' must be a name of letters, digits, "
            "'.', '_' and '-'",
        ),
        (
            {"apps": {"demo": app(health_statuses=[200, "3XX"])}},
            "djangoapp:apps:demo:health_statuses:1 '3XX' must be an HTTP status (200) "
            "or a class of them ('2xx')",
        ),
        (
            {"apps": {"demo": app(hooks={"after_build": [["--help"]]})}},
            "djangoapp:apps:demo:hooks:after_build:0 '--help' must be a program",
        ),
        (
            {"apps": {"demo": app(hooks={"after_build": ["manage.py compress"]})}},
            "djangoapp:apps:demo:hooks:after_build:0 must be a command as a "
            "non-empty list of arguments",
        ),
        (
            {"apps": {"demo": app(release_niceness=-21)}},
            "djangoapp:apps:demo:release_niceness must be an integer -20..19",
        ),
        (
            {"apps": {"demo": app(preload_app="yes")}},
            "djangoapp:apps:demo:preload_app must be true or false",
        ),
        (
            {"apps": {"demo": app(hooks={"before_build": []})}},
            "djangoapp:apps:demo:hooks:before_build is not a known key (allowed: "
            "after_build, after_migrate, after_switch)",
        ),
    ],
)
def test_walker_names_the_key_path(pillar, expected):
    assert message(pillar) == expected


def test_walker_reports_every_problem_at_once():
    pillar = {
        "apps": {"Demo": app(version=None, tls={"mode": "provided"})},
        "firewal": {},
    }
    assert message(pillar) == "; ".join(
        [
            "djangoapp:firewal is not a known key (did you mean firewall?)",
            "djangoapp:apps:Demo 'Demo' is not a valid app name "
            "(lower-case letter, then up to 29 of a-z, 0-9 and _)",
            "djangoapp:apps:Demo:version is required",
            "djangoapp:apps:Demo:tls:cert is required",
            "djangoapp:apps:Demo:tls:key is required",
        ]
    )


@pytest.mark.parametrize("mode", [False, "", None, "off"])
def test_yaml_false_is_tls_mode_off(mode):
    assert djangoapp_validate.tls_mode({"mode": mode}) == "off"
    assert djangoapp_validate.pillar({"apps": {"demo": app(tls={"mode": mode})}})
