"""
How a project declares its dependencies, read from its repository before
anything is installed: requirements files (one or several, with their ``-r``
and ``-c`` includes), a ``pyproject.toml`` with a ``uv.lock``, or a
``pyproject.toml`` alone; and the Python versions it supports
(``requires-python``).
"""

import hashlib
import json
import os
import re

from djangoapp_common import StepFailed, inside

try:
    import tomllib
except ImportError:  # Python before 3.11 (some Salt packages): no pyproject support
    tomllib = None

try:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
except ImportError:  # pragma: no cover - Salt depends on packaging
    SpecifierSet = None

# The formats the engine installs, as the pillar's ``dependencies`` names them.
FORMATS = ("requirements", "uv.lock", "pyproject")
# Lock files of tools the engine does not run, and what to do about each.
FOREIGN_LOCKS = {
    "poetry.lock": "export it: poetry export --format requirements.txt --output "
    "requirements.txt (or move to uv: uv lock), commit the file",
    "Pipfile.lock": "export it: pipenv requirements > requirements.txt "
    "(or move to uv: uv lock), commit the file",
}
INCLUDE_RE = re.compile(r"^\s*(-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+)(\S+)")


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


class Dependencies:
    """
    What a release of the project in ``src`` installs: ``format`` (one of
    FORMATS), the ``files`` that declare it (paths inside ``src``) and where
    ``pyproject.toml`` lies, if anywhere.
    """

    def __init__(self, cfg, src):
        self.cfg = cfg
        self.src = src
        self.pyproject = self._found("pyproject.toml")
        self.format = self._format()
        self.files = self._files()
        self._digest = None

    def _found(self, name):
        path = os.path.join(self.src, name)
        return path if os.path.isfile(path) else None

    def requirement_files(self):
        """The pillar's ``requirements``: one path or a list, in the repository."""
        names = self.cfg["requirements"] or []
        if isinstance(names, str):
            names = [names]
        paths = []
        for name in names:
            path = os.path.realpath(os.path.join(self.src, name))
            if not inside(path, os.path.realpath(self.src)) or not os.path.isfile(path):
                raise StepFailed(
                    "build", f"requirements file {name!r} not found in the repository"
                )
            paths.append(path)
        return paths

    def _format(self):
        wanted = self.cfg["dependencies"] or "auto"
        if wanted != "auto":
            if wanted not in FORMATS:
                raise StepFailed(
                    "build",
                    f"dependencies {wanted!r} is none of auto, {', '.join(FORMATS)}",
                )
            if wanted != "requirements" and not self.pyproject:
                raise StepFailed(
                    "build", f"dependencies is {wanted} and there is no pyproject.toml"
                )
            if wanted == "uv.lock" and not self._found("uv.lock"):
                raise StepFailed("build", "dependencies is uv.lock and there is none")
            return wanted
        if self.pyproject and self._found("uv.lock"):
            return "uv.lock"
        if any(
            os.path.isfile(os.path.join(self.src, name))
            for name in self._named_requirements()
        ):
            return "requirements"
        if self.pyproject:
            return "pyproject"
        for lock, advice in FOREIGN_LOCKS.items():
            if self._found(lock):
                raise StepFailed(
                    "build",
                    f"the repository declares its dependencies in {lock}, which the "
                    f"engine does not install: {advice}, and set the app's "
                    "requirements in the pillar",
                )
        named = ", ".join(self._named_requirements()) or "none named"
        raise StepFailed(
            "build",
            "no dependencies found in the repository: no uv.lock, no requirements "
            f"file ({named}: the pillar's requirements) and no pyproject.toml",
        )

    def _named_requirements(self):
        names = self.cfg["requirements"] or []
        return [names] if isinstance(names, str) else list(names)

    def _files(self):
        if self.format == "requirements":
            return with_includes(self.requirement_files(), self.src)
        files = [self.pyproject]
        if self.format == "uv.lock":
            files.append(self._found("uv.lock"))
        return files

    def digest(self):
        """What the virtualenv depends on, in 16 hex digits: the format, the
        interpreter, the extra packages, the groups and extras, every file."""
        if self._digest is None:
            self._digest = self._compute_digest()
        return self._digest

    def _compute_digest(self):
        digest = hashlib.sha256()
        cfg = self.cfg
        digest.update(
            json.dumps(
                [
                    self.format,
                    cfg["python"],
                    cfg["pip_extra"],
                    cfg["dependency_groups"],
                    cfg["extras"],
                    [os.path.relpath(path, self.src) for path in self.files],
                ]
            ).encode()
        )
        for path in self.files:
            with open(path, "rb") as handle:
                digest.update(handle.read())
        return digest.hexdigest()[:16]

    def requires_python(self):
        """The ``requires-python`` of pyproject.toml, or None."""
        if not self.pyproject or tomllib is None:
            return None
        try:
            with open(self.pyproject, "rb") as handle:
                project = tomllib.load(handle).get("project") or {}
        except (OSError, ValueError) as exc:
            raise StepFailed("build", f"pyproject.toml cannot be read: {exc}") from exc
        return project.get("requires-python")

    def check_python(self, version):
        """StepFailed when the interpreter ``version`` ("3.11.2") is not one the
        project supports."""
        wanted = self.requires_python()
        if not wanted or SpecifierSet is None or not version:
            return
        try:
            supported = version in SpecifierSet(wanted)
        except InvalidSpecifier as exc:
            raise StepFailed(
                "build", f"pyproject.toml: requires-python {wanted!r}: {exc}"
            ) from exc
        if not supported:
            raise StepFailed(
                "build",
                f"the project requires Python {wanted} (pyproject.toml) and "
                f"{self.cfg['python']} is Python {version}: set the app's python in "
                'the pillar to an interpreter that fits (a version such as "3.12" '
                "or a path)",
            )


def with_includes(paths, src):
    """``paths`` and every file they include (``-r``, ``-c``), each once, in the
    order they are met; an include outside the repository is refused."""
    found = []
    pending = list(paths)
    root = os.path.realpath(src)
    while pending:
        path = pending.pop(0)
        if path in found:
            continue
        found.append(path)
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                match = INCLUDE_RE.match(line)
                if not match or "://" in match.group(2):
                    continue
                included = os.path.realpath(
                    os.path.join(os.path.dirname(path), match.group(2))
                )
                if not inside(included, root) or not os.path.isfile(included):
                    raise StepFailed(
                        "build",
                        f"{os.path.relpath(path, root)} includes {match.group(2)}, "
                        "which is not a file of the repository",
                    )
                pending.append(included)
    return found


def interpreter_version(venv):
    """The Python version of a virtualenv, from its ``pyvenv.cfg``."""
    try:
        with open(os.path.join(venv, "pyvenv.cfg"), encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition("=")
                if key.strip() in ("version_info", "version"):
                    return value.strip()
    except OSError:
        pass
    return None
