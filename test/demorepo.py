#!/usr/bin/env python3
"""Build the demo Django project's git repository, with one annotated tag per version.

The tree of ``v1.0.0`` is ``test/demoapp/base/``. Every other version is its parent's
tree with the overlay directory ``test/demoapp/overlays/<tag>/`` copied over it
(files replace or add; a top-level file named ``DELETE`` lists paths, one a line,
to remove). The main line is v1.0.0 -> v1.0.1 -> v1.1.0 -> v1.2.0 (branch ``main``);
each failure variant, and ``django6`` (the same site on Django 6, for Python 3.12
and later), is a single commit on top of v1.0.0, reachable only by its tag. The
migration variants branch off v1.2.0: ``drop-author`` removes the author column that
v1.2.0 reads on every page, in one plain migration; ``expand-author`` then
``contract-author`` remove it in two releases (the second marked with
django-safemigrate to run after the deploy); ``add-nullable`` only adds a column.

Authors, committers, taggers and dates are fixed, so the commit and tag ids are the
same on every run and every machine.

Usage: ``python test/demorepo.py DEST`` creates (or refreshes) the bare repository
DEST, e.g. ``/srv/git/demo.git``, and prints the tag -> commit map as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent / "demoapp"
BASE_DIR = APP_DIR / "base"
OVERLAYS_DIR = APP_DIR / "overlays"

BRANCH = "main"
MAIN_LINE = ("v1.0.0", "v1.0.1", "v1.1.0", "v1.2.0")

# tag -> (parent tag or None, commit message). Order matters: parents come first.
VERSIONS: dict[str, tuple[str | None, str]] = {
    "v1.0.0": (None, "Notes site: list notes, health view, static CSS"),
    "v1.0.1": ("v1.0.0", "Add a lead paragraph to the notes page"),
    "v1.1.0": ("v1.0.1", "Record the author of each note"),
    "v1.2.0": ("v1.1.0", "Pin notes and show their age with humanize"),
    "bad-requirement": ("v1.0.0", "Require a package that does not exist"),
    "broken-import": (
        "v1.0.0",
        "Wrap the WSGI application in a middleware that was never committed",
    ),
    "failing-migration": (
        "v1.0.0",
        "Add a title to notes with a data migration that fails",
    ),
    "failing-collectstatic": (
        "v1.0.0",
        "Reference a missing image from the stylesheet",
    ),
    "unhealthy": ("v1.0.0", "/healthz/ answers 503, pages render"),
    "django6": (
        "v1.0.0",
        "Move to Django 6, which needs Python 3.12 (requires-python in pyproject.toml)",
    ),
    "drop-author": (
        "v1.2.0",
        "Stop showing authors and drop the column in one migration",
    ),
    "expand-author": (
        "v1.2.0",
        "Stop showing authors; the column stays for the release before",
    ),
    "contract-author": (
        "expand-author",
        "Drop the author column after the deploy (django-safemigrate)",
    ),
    "add-nullable": ("v1.2.0", "Add an optional mood to notes, not shown yet"),
}

# Versions that work, but only where the host's Python is recent enough.
PLATFORM_VARIANTS = ("django6",)
# Versions that work, each with a migration that the release before it (v1.2.0, or
# expand-author for contract-author) may or may not survive while it still serves.
MIGRATION_VARIANTS = ("drop-author", "expand-author", "contract-author", "add-nullable")
FAILURE_VARIANTS = tuple(
    tag
    for tag in VERSIONS
    if tag not in MAIN_LINE + PLATFORM_VARIANTS + MIGRATION_VARIANTS
)

AUTHOR_NAME = "Demo Developer"
AUTHOR_EMAIL = "dev@demo.invalid"
# 2024-01-01 12:00:00 UTC; each version is one hour after the previous one.
EPOCH = 1704110400

# Leftovers of running the project in place are never part of a version.
IGNORED_ANYWHERE = {"__pycache__", ".pytest_cache", ".ruff_cache"}
IGNORED_AT_TOP = {"db.sqlite3", "staticfiles", "media"}
IGNORED_SUFFIXES = (".pyc", ".pyo")
EXECUTABLES = {"manage.py"}


def _git_env(when: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GIT_") and key not in {"EMAIL"}
    }
    date = f"{when} +0000"
    env.update(
        {
            "GIT_AUTHOR_NAME": AUTHOR_NAME,
            "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
            "GIT_AUTHOR_DATE": date,
            "GIT_COMMITTER_NAME": AUTHOR_NAME,
            "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
            "GIT_COMMITTER_DATE": date,
            # Neither the machine's nor the user's git configuration takes part.
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
        }
    )
    return env


def _git(args: list[str], cwd: Path | None = None, when: int = EPOCH) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=_git_env(when),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        command = " ".join(args)
        error = result.stderr.strip()
        raise RuntimeError(f"git {command} failed ({result.returncode}): {error}")
    return result.stdout.strip()


def _ignored(rel: Path) -> bool:
    if rel.parts[0] in IGNORED_AT_TOP:
        return True
    return any(
        part in IGNORED_ANYWHERE or part.endswith(IGNORED_SUFFIXES)
        for part in rel.parts
    )


def _copy_tree(src: Path, dest: Path, overlay: bool = False) -> None:
    """Copy the files under src over dest, replacing files, skipping build leftovers."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if _ignored(rel):
            continue
        if overlay and rel == Path("DELETE"):
            continue
        target = dest / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        shutil.copyfile(path, target)
        target.chmod(0o755 if rel.as_posix() in EXECUTABLES else 0o644)


def _apply_deletions(overlay: Path, work: Path) -> None:
    listing = overlay / "DELETE"
    if not listing.is_file():
        return
    for line in listing.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rel = Path(line)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{listing}: path outside the tree: {line}")
        target = work / rel
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        else:
            raise FileNotFoundError(f"{listing}: nothing to delete at {line}")


def _build_work_tree(work: Path) -> dict[str, str]:
    _git(["init", "-q", f"--initial-branch={BRANCH}", str(work)])
    for key, value in (
        ("core.autocrlf", "false"),
        ("core.fileMode", "true"),
        ("commit.gpgSign", "false"),
        ("tag.gpgSign", "false"),
    ):
        _git(["config", key, value], cwd=work)

    shas: dict[str, str] = {}
    for index, (tag, (parent, message)) in enumerate(VERSIONS.items()):
        when = EPOCH + 3600 * index
        if parent is None:
            _copy_tree(BASE_DIR, work)
        else:
            overlay = OVERLAYS_DIR / tag
            if not overlay.is_dir():
                raise FileNotFoundError(f"missing overlay directory {overlay}")
            if tag in MAIN_LINE:
                _git(["checkout", "-q", BRANCH], cwd=work)
                if shas[parent] != _git(["rev-parse", "HEAD"], cwd=work):
                    raise RuntimeError(f"{tag}: main line parent must be {parent}")
            else:
                _git(["checkout", "-q", "--detach", f"refs/tags/{parent}"], cwd=work)
            _git(["clean", "-q", "-f", "-d", "-x"], cwd=work)
            _apply_deletions(overlay, work)
            _copy_tree(overlay, work, overlay=True)
        _git(["add", "--all"], cwd=work)
        _git(
            ["commit", "-q", "-m", f"{message}\n\nVersion {tag}."],
            cwd=work,
            when=when,
        )
        _git(["tag", "-a", tag, "-m", f"demosite {tag}"], cwd=work, when=when)
        shas[tag] = _git(["rev-parse", f"refs/tags/{tag}^{{commit}}"], cwd=work)
    _git(["checkout", "-q", BRANCH], cwd=work)
    return shas


def build_repo(dest: Path | str) -> dict[str, str]:
    """Create or refresh the bare repository ``dest``; return {tag: commit sha}.

    An existing bare repository at ``dest`` is made to hold exactly the branch
    ``main`` and the tags built here (other refs are removed). A non-empty ``dest``
    that is not a bare git repository is refused.
    """
    dest = Path(dest).absolute()
    is_repo = (dest / "HEAD").is_file() and (dest / "objects").is_dir()
    if dest.exists() and any(dest.iterdir()) and not is_repo:
        raise FileExistsError(f"{dest} exists and is not a bare git repository")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demorepo-") as tmp:
        work = Path(tmp) / "work"
        shas = _build_work_tree(work)
        _git(["init", "-q", "--bare", f"--initial-branch={BRANCH}", str(dest)])
        _git(["symbolic-ref", "HEAD", f"refs/heads/{BRANCH}"], cwd=dest)
        _git(["push", "-q", "--mirror", str(dest)], cwd=work)
    return shas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "dest", type=Path, help="bare repository to create, e.g. /srv/git/demo.git"
    )
    args = parser.parse_args(argv)
    try:
        shas = build_repo(args.dest)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"demorepo: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(shas, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
