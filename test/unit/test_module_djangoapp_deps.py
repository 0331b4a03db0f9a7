"""
How the engine reads a project's dependencies before building it: the format
(requirements files, pyproject.toml with uv.lock, pyproject.toml alone), the
files that go into the release's digest, and requires-python.
"""

import djangoapp_build
import djangoapp_deps
import pytest
from djangoapp_common import StepFailed


def app(**settings):
    cfg = {
        "requirements": "requirements.txt",
        "dependencies": "auto",
        "python": "python3",
        "pip_extra": ["gunicorn"],
        "dependency_groups": [],
        "extras": [],
    }
    cfg.update(settings)
    return cfg


def repository(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


PYPROJECT = '[project]\nname = "shop"\nversion = "1"\nrequires-python = ">=3.12"\n'


@pytest.mark.parametrize(
    ("files", "settings", "expected"),
    [
        ({"requirements.txt": "Django\n"}, {}, "requirements"),
        ({"pyproject.toml": PYPROJECT, "uv.lock": ""}, {}, "uv.lock"),
        # a lock wins over an exported requirements file
        (
            {"pyproject.toml": PYPROJECT, "uv.lock": "", "requirements.txt": "x\n"},
            {},
            "uv.lock",
        ),
        ({"pyproject.toml": PYPROJECT}, {}, "pyproject"),
        ({"pyproject.toml": PYPROJECT, "requirements.txt": "x\n"}, {}, "requirements"),
        (
            {"pyproject.toml": PYPROJECT, "uv.lock": "", "requirements.txt": "x\n"},
            {"dependencies": "requirements"},
            "requirements",
        ),
        (
            {"pyproject.toml": PYPROJECT, "requirements.txt": "x\n"},
            {"dependencies": "pyproject"},
            "pyproject",
        ),
    ],
)
def test_format_is_found_or_forced(tmp_path, files, settings, expected):
    deps = djangoapp_deps.Dependencies(app(**settings), repository(tmp_path, files))
    assert deps.format == expected


@pytest.mark.parametrize(
    ("files", "settings", "message"),
    [
        (
            {"poetry.lock": ""},
            {},
            "the repository declares its dependencies in poetry.lock, which the "
            "engine does not install: export it: poetry export --format "
            "requirements.txt --output requirements.txt (or move to uv: uv lock), "
            "commit the file, and set the app's requirements in the pillar",
        ),
        (
            {"Pipfile.lock": ""},
            {},
            "the repository declares its dependencies in Pipfile.lock, which the "
            "engine does not install: export it: pipenv requirements > "
            "requirements.txt (or move to uv: uv lock), commit the file, and set "
            "the app's requirements in the pillar",
        ),
        (
            {"README": ""},
            {},
            "no dependencies found in the repository: no uv.lock, no requirements "
            "file (requirements.txt: the pillar's requirements) and no pyproject.toml",
        ),
        (
            {"requirements.txt": ""},
            {"dependencies": "uv.lock"},
            "dependencies is uv.lock and there is no pyproject.toml",
        ),
        (
            {"requirements.txt": ""},
            {"dependencies": "pipenv"},
            "dependencies 'pipenv' is none of auto, requirements, uv.lock, pyproject",
        ),
    ],
)
def test_what_cannot_be_installed_is_said(tmp_path, files, settings, message):
    with pytest.raises(StepFailed) as failed:
        djangoapp_deps.Dependencies(app(**settings), repository(tmp_path, files))
    assert (failed.value.step, failed.value.message) == ("build", message)


def test_requirement_files_and_their_includes_make_the_digest(tmp_path):
    src = repository(
        tmp_path,
        {
            "requirements/production.txt": (
                "-r base.txt\n-c constraints.txt\ngunicorn\n"
            ),
            "requirements/base.txt": "--requirement=common.txt\nDjango\n",
            "requirements/common.txt": "requests\n",
            "requirements/constraints.txt": "Django<7\n",
            "requirements/unused.txt": "nothing\n",
        },
    )
    cfg = app(requirements=["requirements/production.txt"])
    deps = djangoapp_deps.Dependencies(cfg, src)
    assert [path[len(src) + 1 :] for path in deps.files] == [
        "requirements/production.txt",
        "requirements/base.txt",
        "requirements/constraints.txt",
        "requirements/common.txt",
    ]
    before = deps.digest()
    (tmp_path / "requirements" / "unused.txt").write_text("changed\n")
    assert djangoapp_deps.Dependencies(cfg, src).digest() == before
    (tmp_path / "requirements" / "common.txt").write_text("requests\nhumanize\n")
    assert djangoapp_deps.Dependencies(cfg, src).digest() != before
    grouped = app(requirements=["requirements/production.txt"], extras=["s3"])
    assert djangoapp_deps.Dependencies(grouped, src).digest() != before


def test_an_include_outside_the_repository_is_refused(tmp_path):
    src = repository(tmp_path / "src", {"requirements.txt": "-r ../../etc/x.txt\n"})
    with pytest.raises(StepFailed) as failed:
        djangoapp_deps.Dependencies(app(), src)
    assert failed.value.message == (
        "requirements.txt includes ../../etc/x.txt, which is not a file of the "
        "repository"
    )


def test_requires_python_is_checked_against_the_interpreter(tmp_path):
    deps = djangoapp_deps.Dependencies(
        app(python="python3"), repository(tmp_path, {"pyproject.toml": PYPROJECT})
    )
    deps.check_python("3.12.1")
    deps.check_python("3.13.5")
    with pytest.raises(StepFailed) as failed:
        deps.check_python("3.11.2")
    assert failed.value.message == (
        "the project requires Python >=3.12 (pyproject.toml) and python3 is Python "
        "3.11.2: set the app's python in the pillar to an interpreter that fits (a "
        'version such as "3.12" or a path)'
    )


def test_interpreter_version_comes_from_pyvenv_cfg(tmp_path):
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\nversion_info = 3.11.2\n")
    assert djangoapp_deps.interpreter_version(str(tmp_path)) == "3.11.2"
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.13.5\n")
    assert djangoapp_deps.interpreter_version(str(tmp_path)) == "3.13.5"


@pytest.mark.parametrize(
    ("files", "settings", "commands"),
    [
        (
            {"requirements/prod.txt": "-r base.txt\n", "requirements/base.txt": ""},
            {"requirements": ["requirements/prod.txt"]},
            [
                [
                    "uv",
                    "pip",
                    "install",
                    "--quiet",
                    "--python",
                    "PY",
                    "-r",
                    "SRC/requirements/prod.txt",
                    "gunicorn",
                ]
            ],
        ),
        (
            {"pyproject.toml": PYPROJECT, "uv.lock": ""},
            {"dependency_groups": ["prod"], "extras": ["s3"]},
            [
                [
                    "uv",
                    "sync",
                    "--quiet",
                    "--frozen",
                    "--no-dev",
                    "--python",
                    "python3",
                    "--group",
                    "prod",
                    "--extra",
                    "s3",
                ],
                ["uv", "pip", "install", "--quiet", "--python", "PY", "gunicorn"],
            ],
        ),
        (
            {"pyproject.toml": PYPROJECT},
            {"pip_extra": []},
            [
                [
                    "uv",
                    "pip",
                    "install",
                    "--quiet",
                    "--python",
                    "PY",
                    "-r",
                    "SRC/pyproject.toml",
                ]
            ],
        ),
    ],
)
def test_install_commands_by_format(tmp_path, files, settings, commands):
    src = repository(tmp_path / "src", files)
    builder = djangoapp_build.Builder(app(**settings), None, [], str(tmp_path))
    builder.deps = djangoapp_deps.Dependencies(builder.cfg, src)
    python = f"{tmp_path}/venv/bin/python"
    got = [
        [arg.replace(python, "PY").replace(src, "SRC") for arg in argv]
        for argv in builder.install_commands("uv")
    ]
    assert got == commands


class Commands:
    """A host that answers every command with ``answer`` and keeps what it ran."""

    def __init__(self, answer):
        self.answer = answer
        self.ran = []

    def run(self, argv, **options):
        self.ran.append((argv, options["env"]))
        return self.answer


@pytest.mark.parametrize(
    ("python", "mirror", "preference", "downloads"),
    [
        ("python3", None, "only-system", "never"),
        ("3.12", None, "only-system", "never"),
        ("3.12", "https://mirror.example.com/pbs", "system", "automatic"),
        # a mirror is for versions only: an interpreter named is the host's
        (
            "/usr/bin/python3.12",
            "https://mirror.example.com/pbs",
            "only-system",
            "never",
        ),
    ],
)
def test_the_virtualenv_takes_the_hosts_python_or_one_from_the_mirror(
    tmp_path, python, mirror, preference, downloads
):
    cfg = app(python=python, python_install_mirror=mirror)
    cfg["python_install_dir"] = "/opt/djangoapp/python"
    host = Commands({"retcode": 0})
    builder = djangoapp_build.Builder(cfg, host, [], str(tmp_path))
    builder.make_venv("uv", {"env": {"UV_PYTHON_DOWNLOADS": "never"}})
    ((argv, env),) = host.ran
    assert argv[:5] == ["uv", "venv", "--quiet", "--python", python]
    assert argv[5:7] == ["--python-preference", preference]
    assert env["UV_PYTHON_DOWNLOADS"] == downloads
    assert env.get("UV_PYTHON_INSTALL_MIRROR") == (
        mirror if downloads != "never" else None
    )


def test_a_missing_python_version_says_what_to_do(tmp_path):
    host = Commands({"retcode": 2, "stderr": "No interpreter found for Python 3.12"})
    cfg = app(python="3.12", python_install_mirror=None)
    builder = djangoapp_build.Builder(cfg, host, [], str(tmp_path))
    with pytest.raises(StepFailed) as failed:
        builder.make_venv("uv", {"env": {}})
    assert (failed.value.step, failed.value.message) == (
        "build",
        "no Python '3.12' for the virtualenv (No interpreter found for Python 3.12): "
        "install it (the OS package where the OS has one), or name another "
        "interpreter in the app's python, or set the app's python_install_mirror for "
        "uv to install it",
    )
