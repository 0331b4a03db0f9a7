"""kitchen.yml is consistent with the repository it tests.

Test Kitchen itself does not run here (no Docker), so this reads the file and
checks what can be checked without it: the platforms, the provisioner and
verifier, and that every local path the file names, directly or as a path on
the instance under the copied repository, exists in the repository.
"""

import re
import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KITCHEN = REPO / "kitchen.yml"

PLATFORMS = {
    "debian-12": "debian:12",
    "debian-13": "debian:13",
    "rockylinux-9": "rockylinux/rockylinux:9",
    "almalinux-9": "almalinux:9",
    "centos-stream-9": "quay.io/centos/centos:stream9",
    "rockylinux-10": "rockylinux/rockylinux:10",
    "almalinux-10": "almalinux:10",
    "centos-stream-10": "quay.io/centos/centos:stream10",
}


@pytest.fixture(scope="module")
def kitchen():
    text = KITCHEN.read_text()
    assert "<%" not in text, "kitchen.yml must stay plain YAML (no ERB)"
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def provisioner(kitchen):
    return kitchen["provisioner"]


@pytest.fixture(scope="module")
def instance_root(provisioner):
    """Where the repository lands on the instance (is_file_root copies it all)."""
    assert provisioner.get("is_file_root") is True
    root = PurePosixPath(provisioner.get("root_path", "/tmp/kitchen"))
    file_root = provisioner.get("salt_file_root", "/srv/salt")
    return root / file_root.lstrip("/")


def repo_path(instance_path, instance_root):
    """The repository path that an instance path under the copied tree comes from."""
    relative = PurePosixPath(instance_path).relative_to(instance_root)
    return REPO.joinpath(*relative.parts)


def instance_paths(text, instance_root):
    return [
        word
        for word in shlex.split(text)
        if PurePosixPath(word).is_relative_to(instance_root)
    ]


def requirement_pins():
    pins = {}
    for line in (REPO / "requirements-test.txt").read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_platforms_boot_systemd(kitchen):
    platforms = {p["name"]: p for p in kitchen["platforms"]}
    assert set(platforms) == set(PLATFORMS)
    assert kitchen["driver"]["name"] == "docker"
    assert kitchen["driver"]["privileged"] is True
    for name, image in PLATFORMS.items():
        driver = platforms[name]["driver"]
        assert driver["image"] == image
        assert driver["run_command"] in ("/lib/systemd/systemd", "/usr/sbin/init")


def test_salt_is_installed_where_the_provisioner_looks(kitchen, provisioner):
    assert provisioner["name"] == "salt_solo"
    assert provisioner["salt_install"] == "pip"
    assert provisioner["salt_version"] == requirement_pins()["salt"]
    venv = PurePosixPath(provisioner["pip_bin"]).parent.parent
    for platform in kitchen["platforms"]:
        commands = platform["driver"]["provision_command"]
        assert any(
            re.fullmatch(rf"python3(\.1[12])? -m venv {venv}", c) for c in commands
        ), platform["name"]


def test_file_roots_exist(provisioner, instance_root):
    roots = provisioner["salt_minion_extra_config"]["file_roots"]["base"]
    assert roots
    for root in roots:
        local = repo_path(root, instance_root)
        assert local.is_dir(), f"file root {root}: {local} is missing"
        # kitchen-salt copies symlinked directories by their content.
        for entry in local.iterdir():
            if entry.is_symlink():
                assert entry.exists(), f"{entry} is a dangling symlink"


def test_copy_filter_keeps_what_salt_needs(provisioner, instance_root):
    needed = set()
    for root in provisioner["salt_minion_extra_config"]["file_roots"]["base"]:
        needed.update(PurePosixPath(root).relative_to(instance_root).parts)
    for path in instance_paths(provisioner.get("pre_salt_command", ""), instance_root):
        needed.update(PurePosixPath(path).relative_to(instance_root).parts)
    assert not needed & set(provisioner["salt_copy_filter"])


def test_top_states_exist(provisioner, instance_root):
    roots = [
        repo_path(root, instance_root)
        for root in provisioner["salt_minion_extra_config"]["file_roots"]["base"]
    ]
    states = [
        state
        for targets in provisioner["state_top"].values()
        for state_list in targets.values()
        for state in state_list
    ]
    assert "djangoapp" in states
    for state in states:
        parts = state.split(".")
        candidates = [
            root.joinpath(*parts[:-1], parts[-1] + ".sls") for root in roots
        ] + [root.joinpath(*parts, "init.sls") for root in roots]
        assert any(c.is_file() for c in candidates), f"state {state} not found"


def test_salt_reads_the_top_file_kitchen_writes(provisioner, instance_root):
    """kitchen writes state_top to top.sls at the root of the copied repository;
    Salt reads the first top.sls of the file roots, so no root before that one
    may hold one (salt/ ships none)."""
    roots = [
        PurePosixPath(root)
        for root in provisioner["salt_minion_extra_config"]["file_roots"]["base"]
    ]
    assert instance_root in roots
    for root in roots[: roots.index(instance_root)]:
        assert not (repo_path(root, instance_root) / "top.sls").exists(), root


def test_pillar_files_exist(provisioner):
    files = provisioner["pillars_from_files"]
    assert "top.sls" in files
    for name, source in files.items():
        assert (REPO / source).is_file(), f"pillar {name}: {source} is missing"
    top = yaml.safe_load((REPO / files["top.sls"]).read_text())
    for targets in top.values():
        for pillars in targets.values():
            for pillar in pillars:
                assert f"{pillar}.sls" in files, f"top.sls names {pillar}"


def test_pre_salt_command_scripts_exist(provisioner, instance_root):
    paths = instance_paths(provisioner["pre_salt_command"], instance_root)
    assert paths
    for path in paths:
        local = repo_path(path, instance_root)
        assert local.exists(), f"pre_salt_command: {local} is missing"


def test_verifier_runs_testinfra_over_docker(kitchen):
    verifier = kitchen["verifier"]
    assert verifier["name"] == "shell"
    argv = shlex.split(verifier["command"])
    executable, args = Path(argv[0]), argv[1:]
    # The test venv that test/run builds from requirements-test.txt.
    assert executable.parts[0] == ".venv"
    assert "pytest-testinfra" in requirement_pins()
    assert "--hosts=docker://${KITCHEN_CONTAINER_ID}" in args
    tests = [a for a in args if not a.startswith("-")]
    assert tests
    for test in tests:
        assert (REPO / test).exists(), f"verifier: {test} is missing"


def test_suites(kitchen):
    assert [s["name"] for s in kitchen["suites"]] == ["default"]
