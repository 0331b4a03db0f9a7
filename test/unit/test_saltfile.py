"""The Saltfile and roster.example, read by Salt itself: what the README's masterless
and salt-ssh commands rely on."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import salt.client.ssh
import salt.config
import salt.roster
import salt.utils.parsers
import yaml

REPO = Path(__file__).resolve().parents[2]
SALT_CALL = Path(sys.executable).with_name("salt-call")
PARSERS = {
    "salt-call": salt.utils.parsers.SaltCallOptionParser,
    "salt-ssh": salt.utils.parsers.SaltSSHOptionParser,
}


def saltfile() -> dict:
    return yaml.safe_load((REPO / "Saltfile").read_text())


@pytest.fixture
def salt_call(tmp_path):
    """salt-call run from the repository's root with its Saltfile, its own config
    and cache under tmp_path."""
    (tmp_path / "minion").write_text(
        yaml.safe_dump({"root_dir": str(tmp_path / "root"), "file_client": "local"})
    )

    def call(*args: str):
        result = subprocess.run(
            [SALT_CALL, "--saltfile=Saltfile", f"--config-dir={tmp_path}"]
            + ["--out=json", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["local"]

    return call


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_saltfile_option_is_one_the_command_has(command):
    options = saltfile()[command]
    known = {option.dest for option in PARSERS[command]()._get_all_options()}
    assert options, command
    assert sorted(set(options) - known) == [], f"{command}: unknown options"


def test_saltfile_names_no_other_command():
    assert sorted(saltfile()) == sorted(PARSERS)


def test_salt_call_takes_the_repositorys_state_tree_and_pillar(salt_call):
    assert salt_call("config.get", "file_roots") == {"base": [str(REPO / "salt")]}
    assert salt_call("config.get", "pillar_roots") == {"base": [str(REPO / "pillar")]}
    assert "djangoapp" in salt_call("cp.list_states")
    demo = yaml.safe_load((REPO / "pillar" / "demo.sls").read_text())
    assert salt_call("pillar.keys", "djangoapp:apps") == list(demo["djangoapp"]["apps"])


def test_the_formula_ships_no_top_file(salt_call):
    """A master that serves salt/ keeps its own top file: salt/ has none, and the
    Saltfile's commands name the formula."""
    assert not (REPO / "salt" / "top.sls").exists()
    assert salt_call("state.show_top") == {}
    steps = "salt-call saltutil.sync_all\n#   salt-call state.apply djangoapp"
    assert steps in (REPO / "Saltfile").read_text()


def test_roster_example_gives_salt_ssh_its_targets(tmp_path):
    opts = salt.config.master_config("/dev/null")
    opts.update(
        roster_file=str(REPO / "roster.example"), cachedir=str(tmp_path / "cache")
    )
    targets = salt.roster.Roster(opts, "flat").targets("*", "glob")
    assert sorted(targets) == ["web1", "web2"]
    # each key is an argument of salt-ssh's connection to one target
    accepted = set(inspect.signature(salt.client.ssh.Single.__init__).parameters)
    for name, target in targets.items():
        assert target["host"], name
        assert sorted(set(target) - accepted) == [], name


def test_saltfile_roster_is_the_example_copied():
    assert saltfile()["salt-ssh"]["roster_file"] == "roster"
    ignored = (REPO / ".gitignore").read_text().split()
    assert "/roster" in ignored or "roster" in ignored
