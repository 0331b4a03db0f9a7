"""The repository's lint checks, one test per tool.

`test/run lint` runs this file and so does a plain `pytest`: the commands and
the lists of files they cover live here and nowhere else. Configuration lives
in .yamllint, .salt-lint and pyproject.toml.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Python code: Salt modules, their shared utils, the tests and the benchmarks.
PYTHON_DIRS = ("_modules", "_states", "_utils", "test", "bench")
# Salt state trees, pillars and Jinja templates.
SALT_DIRS = ("salt", "pillar", "test")
SALT_SUFFIXES = (".sls", ".jinja")
# Shell scripts without a .sh suffix.
SHELL_SCRIPTS = ("test/run", "test/try", ".ci/run")
SKIP_DIRS = {"__pycache__", "node_modules"}


def tool(name):
    """The linter installed next to this interpreter (test/run's venv)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: test/run installs it")
    return found


def run(argv):
    result = subprocess.run(
        argv,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    status = result.returncode
    assert status == 0, f"{' '.join(argv)} exited {status}:\n{output}"
    return output


def walk(top, match):
    """Files under REPO/top for which match(path) is true, hidden dirs skipped."""
    found = []
    for root, dirs, files in os.walk(REPO / top):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
        )
        for name in sorted(files):
            path = Path(root, name)
            if match(path):
                found.append(str(path.relative_to(REPO)))
    return found


def existing(dirs):
    return [d for d in dirs if (REPO / d).is_dir()]


def test_yamllint():
    run([tool("yamllint"), "--strict", "--config-file", ".yamllint", "."])


def test_salt_lint():
    files = []
    for top in existing(SALT_DIRS):
        files += walk(top, lambda p: p.suffix in SALT_SUFFIXES)
    assert files, "no SLS or Jinja files found"
    run([tool("salt-lint"), "-c", ".salt-lint", *files])


def test_ruff_check():
    run(
        [
            tool("ruff"),
            "check",
            "--no-cache",
            "--output-format",
            "concise",
            *existing(PYTHON_DIRS),
        ]
    )


def test_ruff_format():
    run(
        [
            tool("ruff"),
            "format",
            "--check",
            "--no-cache",
            "--output-format",
            "concise",
            *existing(PYTHON_DIRS),
        ]
    )


def test_shellcheck():
    scripts = [s for s in SHELL_SCRIPTS if (REPO / s).is_file()]
    scripts += walk(".", lambda p: p.suffix == ".sh")
    assert scripts, "no shell scripts found"
    run([tool("shellcheck"), "--external-sources", *scripts])


def test_requirements_are_pinned():
    """requirements-test.txt pins every package, the direct ones as .in asks."""
    direct = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*(\S+))?")
    pinned = {}
    for line in (REPO / "requirements-test.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=;]+)", line)
        assert match, f"requirements-test.txt: not an exact pin: {line!r}"
        pinned[canonical(match.group(1))] = match.group(2)
    for line in (REPO / "requirements-test.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = direct.fullmatch(line)
        assert match, f"requirements-test.in: cannot read {line!r}"
        package, version = canonical(match.group(1)), match.group(2)
        assert package in pinned, f"{package} is in requirements-test.in only"
        if version:
            assert pinned[package] == version, (
                f"{package}: requirements-test.in asks for {version}, "
                f"requirements-test.txt pins {pinned[package]}"
            )


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


# The formula's own Python code: what Salt syncs to minions and what the states install.
FORMULA_PYTHON_DIRS = ("_modules", "_states", "_utils", "salt")
MAX_FILE_LINES = 800
MAX_FUNCTION_LINES = 80


def test_formula_code_stays_readable():
    """No file of the formula's Python code over 800 lines, no function over 80."""
    import ast

    too_long = []
    for top in FORMULA_PYTHON_DIRS:
        for path in walk(top, lambda p: p.suffix == ".py"):
            text = (REPO / path).read_text(encoding="utf-8")
            lines = len(text.splitlines())
            if lines > MAX_FILE_LINES:
                too_long.append(f"{path}: {lines} lines")
            for node in ast.walk(ast.parse(text, filename=path)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        too_long.append(f"{path}:{node.lineno} {node.name}: {length}")
    assert too_long == []
