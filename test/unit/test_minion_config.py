"""minion.conf.example turns on the loader's strict matching: safe only while every
loader module that Salt ships, and the formula's own, carries its virtual name in
its file name. This checks the Salt pinned here, and that salt-call with the
example's configuration runs states with `creates` and `unless`, the outputters and
the formula's module as without it; and that its grains cache is read by the next
salt-call and taken afresh on request."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import salt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import testhost

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "minion.conf.example"
SALT_CALL = Path(sys.executable).with_name("salt-call")
SALT_PACKAGE = Path(salt.__file__).parent
# the kinds of loader module a minion loads by name
LOADER_DIRECTORIES = (
    "modules",
    "states",
    "output",
    "renderers",
    "returners",
    "executors",
    "matchers",
    "serializers",
    "sdb",
    "beacons",
    "engines",
    "grains",
    "pillar",
    "utils",
)
FORMULA_DIRECTORIES = ("_modules", "_states")


def string_constant(node) -> str | None:
    if isinstance(node, ast.Tuple) and node.elts:
        node = node.elts[0]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def virtual_names(source: str) -> set[str]:
    """The names a loader module may load under: its ``__virtualname__`` and any
    string constant its ``__virtual__`` returns (alone or first in a tuple)."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            if any(getattr(t, "id", None) == "__virtualname__" for t in node.targets):
                names.add(string_constant(node.value))
        elif isinstance(node, ast.FunctionDef) and node.name == "__virtual__":
            names.update(
                string_constant(inner.value)
                for inner in ast.walk(node)
                if isinstance(inner, ast.Return) and inner.value is not None
            )
    names.discard(None)
    return names


def misnamed(directory: Path) -> list[str]:
    found = []
    for path in sorted(directory.glob("*.py")):
        names = virtual_names(path.read_text(encoding="utf-8", errors="replace"))
        found += [f"{path}: {name}" for name in names if name not in path.stem]
    return found


def test_the_example_sets_strict_matching_and_the_grains_cache():
    assert yaml.safe_load(EXAMPLE.read_text()) == {
        "lazy_loader_strict_matching": True,
        "grains_cache": True,
    }


def test_kitchen_and_the_test_hosts_use_the_example(tmp_path):
    kitchen = yaml.safe_load((REPO / "kitchen.yml").read_text())
    extra = kitchen["provisioner"]["salt_minion_extra_config"]
    assert yaml.safe_load(EXAMPLE.read_text()).items() <= extra.items()
    (tmp_path / "etc/salt/minion.d").mkdir(parents=True)
    testhost.configure_minion(tmp_path)
    written = tmp_path / testhost.MINION_CONFIG_FILE.lstrip("/")
    assert written.read_text() == EXAMPLE.read_text()


@pytest.mark.parametrize("kind", LOADER_DIRECTORIES)
def test_every_module_salt_ships_is_found_by_its_file_name(kind):
    directory = SALT_PACKAGE / kind
    assert list(directory.glob("*.py")), f"no loader modules in {directory}"
    assert misnamed(directory) == []


@pytest.mark.parametrize("kind", FORMULA_DIRECTORIES)
def test_the_formulas_modules_are_found_by_their_file_name(kind):
    assert misnamed(REPO / kind) == []


def test_a_module_named_otherwise_is_caught(tmp_path):
    (tmp_path / "tools.py").write_text('__virtualname__ = "acme"\n')
    (tmp_path / "acme_tools.py").write_text(
        'def __virtual__():\n    return ("acme", None)\n'
    )
    assert misnamed(tmp_path) == [f"{tmp_path / 'tools.py'}: acme"]


@pytest.fixture
def salt_call(tmp_path):
    """salt-call --local with the example's setting or without, its file roots
    holding one SLS with a `creates` and an `unless` state."""
    states = tmp_path / "states"
    states.mkdir()
    marker = tmp_path / "marker"
    (states / "guarded.sls").write_text(
        yaml.safe_dump(
            {
                "created-already": {
                    "cmd.run": [{"name": f"touch {marker}"}, {"creates": "/"}]
                },
                "unless-true": {
                    "cmd.run": [{"name": f"touch {marker}"}, {"unless": "true"}]
                },
                "made-once": {
                    "cmd.run": [{"name": f"touch {marker}"}, {"creates": str(marker)}]
                },
            }
        )
    )

    def call(strict: bool, *args: str) -> dict:
        config_dir = tmp_path / ("strict" if strict else "default")
        (config_dir / "minion.d").mkdir(parents=True, exist_ok=True)
        (config_dir / "minion").write_text(
            yaml.safe_dump(
                {
                    "root_dir": str(config_dir / "root"),
                    "file_client": "local",
                    "file_roots": {"base": [str(states)]},
                    "module_dirs": [str(REPO / "_modules")],
                    "states_dirs": [str(REPO / "_states")],
                    "utils_dirs": [str(REPO / "_utils")],
                }
            )
        )
        if strict:
            (config_dir / "minion.d" / "loader.conf").write_text(EXAMPLE.read_text())
        result = subprocess.run(
            [str(SALT_CALL), "--config-dir", str(config_dir), "--local"]
            + ["--out=json", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,  # not the repository's Saltfile
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["local"]

    return call, marker


def test_states_with_creates_and_unless_run_the_same(salt_call):
    call, marker = salt_call
    for strict in (False, True):
        marker.unlink(missing_ok=True)
        states = call(strict, "state.apply", "guarded")
        outcome = {
            state["__id__"]: (state["result"], bool(state["changes"]))
            for state in states.values()
        }
        assert outcome == {
            "created-already": (True, False),
            "unless-true": (True, False),
            "made-once": (True, True),
        }, (strict, states)
        assert marker.exists()


def test_the_formulas_module_is_loaded_the_same(salt_call):
    call, _marker = salt_call
    functions = [
        set(call(strict, "sys.list_functions", "djangoapp")) for strict in (False, True)
    ]
    assert functions[0] == functions[1]
    assert {"djangoapp.release", "djangoapp.rollback", "djangoapp.status"} <= functions[
        1
    ]


def test_the_next_salt_call_reads_the_cached_grains(salt_call, tmp_path):
    """The first salt-call writes the cache; one that finds a grain planted in
    it has read it instead of working the grains out;
    ``--refresh-grains-cache`` does not."""
    import salt.payload

    call, _marker = salt_call
    assert call(True, "grains.get", "os_family") == "Debian"
    [cache] = (tmp_path / "strict" / "root").rglob("grains.cache.p")
    grains = salt.payload.loads(cache.read_bytes())
    cache.write_bytes(salt.payload.dumps({**grains, "planted": "from the cache"}))
    assert call(True, "grains.get", "planted") == "from the cache"
    assert call(True, "--refresh-grains-cache", "grains.get", "planted") == ""
