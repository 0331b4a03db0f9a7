"""The demo Django project and the builder of its git repository (test/demorepo.py).

The first tests only need git. The others run the project's versions for real: a
virtualenv with the project's requirements (built once, cached under
$DJANGOAPP_TEST_CACHE or /var/cache/djangoapp-test), SQLite, ``manage.py`` and
Django's test client. ``manage.py test`` uses $DATABASE_URL when it is set.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

TEST_DIR = Path(__file__).resolve().parents[1]
BUILDER = TEST_DIR / "demorepo.py"

_spec = importlib.util.spec_from_file_location("demorepo", BUILDER)
demorepo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demorepo)

MAIN_LINE = ["v1.0.0", "v1.0.1", "v1.1.0", "v1.2.0"]
VARIANTS = [
    "bad-requirement",
    "broken-import",
    "failing-migration",
    "failing-collectstatic",
    "unhealthy",
]
# Works only where the host's Python is 3.12 or later.
PLATFORM_VARIANTS = ["django6"]
MIGRATION_VARIANTS = ["drop-author", "expand-author", "contract-author", "add-nullable"]
ALL_TAGS = MAIN_LINE + VARIANTS + PLATFORM_VARIANTS + MIGRATION_VARIANTS

SECRET = "k3y-" + "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PRODUCTION_ENV = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECURE_SSL_REDIRECT": "1",
    "DJANGO_SESSION_COOKIE_SECURE": "1",
    "DJANGO_CSRF_COOKIE_SECURE": "1",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_ALLOWED_HOSTS": "example.com",
}
# Environment variables of the app that must not leak in from the caller.
APP_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "MEMCACHED_URL",
    "SENTRY_DSN",
    "SENTRY_RELEASE",
    "SENTRY_ENVIRONMENT",
    "PYTHONPATH",
    "VIRTUAL_ENV",
)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repo), *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()


def is_ancestor(repo: Path, a: str, b: str) -> bool:
    result = subprocess.run(
        ["git", "--git-dir", str(repo), "merge-base", "--is-ancestor", a, b]
    )
    assert result.returncode in (0, 1)
    return result.returncode == 0


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    dest = tmp_path_factory.mktemp("git") / "demo.git"
    return dest, demorepo.build_repo(dest)


@pytest.fixture(scope="module")
def repo(built):
    return built[0]


# --- the repository --------------------------------------------------------------


def test_tags_are_annotated_and_distinct(built):
    repo, shas = built
    assert list(shas) == ALL_TAGS
    assert len(set(shas.values())) == len(shas)
    refs = git(
        repo,
        "for-each-ref",
        "refs/tags",
        "--format=%(objecttype) %(refname:short) %(*objectname)",
    )
    seen = {}
    for line in refs.splitlines():
        kind, tag, peeled = line.split()
        assert kind == "tag", f"{tag} is not an annotated tag"
        seen[tag] = peeled
    assert seen == shas


def test_main_line(built):
    repo, shas = built
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert git(repo, "rev-parse", "refs/heads/main") == shas["v1.2.0"]
    assert (
        git(repo, "for-each-ref", "--format=%(refname)", "refs/heads")
        == "refs/heads/main"
    )
    for older, newer in zip(MAIN_LINE, MAIN_LINE[1:], strict=False):
        assert git(repo, "rev-parse", f"{newer}^") == shas[older]
    assert git(repo, "rev-list", "--count", "v1.0.0") == "1"


@pytest.mark.parametrize("tag", VARIANTS + PLATFORM_VARIANTS)
def test_variants_branch_off_v1_0_0(built, tag):
    repo, shas = built
    assert git(repo, "rev-parse", f"{tag}^") == shas["v1.0.0"]
    for release in ("v1.0.1", "v1.1.0", "v1.2.0"):
        assert not is_ancestor(repo, tag, release)
        assert not is_ancestor(repo, release, tag)


def test_migration_variants_branch_off_v1_2_0(built):
    repo, shas = built
    assert tuple(MIGRATION_VARIANTS) == demorepo.MIGRATION_VARIANTS
    assert not set(MIGRATION_VARIANTS) & set(demorepo.FAILURE_VARIANTS)
    for tag in ("drop-author", "expand-author", "add-nullable"):
        assert git(repo, "rev-parse", f"{tag}^") == shas["v1.2.0"]
    assert git(repo, "rev-parse", "contract-author^") == shas["expand-author"]
    assert not is_ancestor(repo, "drop-author", "refs/heads/main")


def test_build_is_deterministic_and_refreshes(built, tmp_path):
    repo, shas = built
    other = tmp_path / "again.git"
    assert demorepo.build_repo(other) == shas
    tags = git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/tags")
    assert (
        git(other, "for-each-ref", "--format=%(objectname) %(refname)", "refs/tags")
        == tags
    )
    # Rebuilding into an existing repository drops refs that are not ours.
    subprocess.run(
        ["git", "--git-dir", str(other), "tag", "stray", shas["v1.0.0"]], check=True
    )
    assert demorepo.build_repo(other) == shas
    assert "stray" not in git(other, "tag", "--list")


def test_refuses_a_directory_that_is_not_a_repository(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me\n")
    with pytest.raises(FileExistsError):
        demorepo.build_repo(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me\n"


def test_command_line(tmp_path, built):
    _, shas = built
    result = subprocess.run(
        [sys.executable, str(BUILDER), str(tmp_path / "cli.git")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert json.loads(result.stdout) == shas
    bad = subprocess.run(
        [sys.executable, str(BUILDER), str(TEST_DIR)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "not a bare git repository" in bad.stderr


def changed(repo: Path, a: str, b: str) -> set[str]:
    return set(git(repo, "diff", "--name-only", a, b).splitlines())


def test_contents(repo):
    files = set(git(repo, "ls-tree", "-r", "--name-only", "v1.0.0").splitlines())
    for name in (
        "manage.py",
        "requirements.txt",
        "demosite/settings.py",
        "demosite/urls.py",
        "demosite/wsgi.py",
        "demosite/asgi.py",
        "notes/models.py",
        "notes/views.py",
        "notes/migrations/0001_initial.py",
        "notes/templates/notes/index.html",
        "notes/static/notes/site.css",
    ):
        assert name in files
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in files)
    assert "100755 blob" in git(repo, "ls-tree", "v1.0.0", "manage.py")

    for tag in ALL_TAGS:
        assert git(repo, "show", f"{tag}:demosite/version.py") == f'VERSION = "{tag}"'
        requirements = git(repo, "show", f"{tag}:requirements.txt").lower()
        assert "gunicorn" not in requirements
        django = "django==6.0." if tag in PLATFORM_VARIANTS else "django==5.2."
        assert django in requirements
        for name in (
            "dj-database-url==",
            "psycopg[binary]==",
            "redis==",
            "pymemcache==",
            "pymysql==",
        ):
            assert name in requirements

    assert "RunPython" in git(repo, "show", "v1.0.0:notes/migrations/0001_initial.py")
    assert "hello from the database" in git(
        repo, "show", "v1.0.0:notes/migrations/0001_initial.py"
    )
    assert changed(repo, "v1.0.0", "v1.0.1") == {
        "demosite/version.py",
        "notes/templates/notes/index.html",
    }
    v110 = changed(repo, "v1.0.1", "v1.1.0")
    assert "notes/migrations/0002_note_author.py" in v110
    assert "requirements.txt" not in v110
    v120 = changed(repo, "v1.1.0", "v1.2.0")
    assert {"requirements.txt", "notes/migrations/0003_note_pinned.py"} <= v120
    assert "humanize==" in git(repo, "show", "v1.2.0:requirements.txt")
    assert "humanize" not in git(repo, "show", "v1.1.0:requirements.txt")
    assert "djangoapp-no-such-package-xyz==1.0" in git(
        repo, "show", "bad-requirement:requirements.txt"
    )
    assert changed(repo, "v1.0.0", "django6") == {
        "demosite/version.py",
        "requirements.txt",
        "pyproject.toml",
    }
    django6 = tomllib.loads(git(repo, "show", "django6:pyproject.toml"))
    assert django6["project"]["requires-python"] == ">=3.12"
    assert changed(repo, "v1.2.0", "add-nullable") == {
        "demosite/version.py",
        "notes/models.py",
        "notes/migrations/0004_note_mood.py",
        "notes/tests.py",
    }
    assert "django-safemigrate==6.0" in git(
        repo, "show", "contract-author:requirements.txt"
    )
    assert "safemigrate" not in git(repo, "show", "expand-author:requirements.txt")
    for tag in ("drop-author", "expand-author"):
        for name in (
            "notes/models.py",
            "notes/views.py",
            "notes/templates/notes/index.html",
        ):
            assert "author" not in git(repo, "show", f"{tag}:{name}"), (tag, name)
    assert changed(repo, "v1.0.0", "broken-import") == {
        "demosite/version.py",
        "demosite/wsgi.py",
        "demosite/asgi.py",
    }


# --- running the versions ----------------------------------------------------------


def _cache_root(tmp_path_factory) -> Path:
    root = Path(os.environ.get("DJANGOAPP_TEST_CACHE", "/var/cache/djangoapp-test"))
    with contextlib.suppress(OSError):
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def demo_python(tmp_path_factory) -> Path:
    """A virtualenv with the requirements of contract-author (v1.2.0's and
    django-safemigrate, a superset of the older ones)."""
    dest = tmp_path_factory.mktemp("reqs") / "demo.git"
    demorepo.build_repo(dest)
    requirements = git(dest, "show", "contract-author:requirements.txt") + "\n"
    newest = set(requirements.split())
    for tag in ("v1.0.0", "v1.1.0", "v1.2.0"):
        assert set(git(dest, "show", f"{tag}:requirements.txt").split()) <= newest

    key = hashlib.sha256((sys.version + "\0" + requirements).encode()).hexdigest()[:16]
    root = _cache_root(tmp_path_factory) / "venvs"
    root.mkdir(parents=True, exist_ok=True)
    venv = root / key
    python = venv / "bin" / "python"
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            (venv / "requirements.txt").write_text(requirements)
            result = subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "-q",
                    "-r",
                    str(venv / "requirements.txt"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            if result.returncode != 0:
                pytest.fail(f"pip install failed:\n{result.stdout[-4000:]}")
            (venv / ".complete").write_text(requirements)
    return python


def app_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DJANGO_") and key not in APP_VARS
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "demosite.settings",
            "DJANGO_SECRET_KEY": SECRET,
            "DJANGO_ALLOWED_HOSTS": "testserver,localhost",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(extra)
    return env


def run(python: Path, src: Path, *args: str, env: dict | None = None, ok: bool = True):
    result = subprocess.run(
        [str(python), *args],
        cwd=src,
        env=env or app_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if ok and result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        pytest.fail(f"{' '.join(args)} failed ({result.returncode}):\n{output}")
    if not ok:
        assert result.returncode != 0, f"{' '.join(args)} unexpectedly succeeded"
    return result


def manage(python: Path, src: Path, *args: str, **kwargs):
    return run(python, src, "manage.py", *args, **kwargs)


# Renders pages through Django's test client; prints JSON on stdout.
FETCH = """
import json, sys, time
start = time.monotonic()
import django
django.setup()
setup = time.monotonic() - start
from django.test import Client
client = Client(raise_request_exception=False)
pages = {}
for path in sys.argv[1:]:
    response = client.get(path)
    pages[path] = {"status": response.status_code, "body": response.content.decode()}
print(json.dumps({"setup_seconds": setup, "pages": pages}))
"""


def fetch(python: Path, src: Path, *paths: str, env: dict | None = None) -> dict:
    result = run(python, src, "-c", FETCH, *(paths or ("/", "/healthz/")), env=env)
    return json.loads(result.stdout)["pages"]


def checkout(repo: Path, tag: str, dest: Path) -> Path:
    subprocess.run(
        [
            "git",
            "-c",
            "advice.detachedHead=false",
            "clone",
            "-q",
            "--branch",
            tag,
            str(repo),
            str(dest),
        ],
        check=True,
    )
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("tag", ["v1.0.0", "v1.1.0", "v1.2.0", *MIGRATION_VARIANTS])
def test_release_runs(repo, demo_python, tmp_path, tag):
    src = checkout(repo, tag, tmp_path / tag)
    manage(demo_python, src, "check")
    out = manage(demo_python, src, "makemigrations", "--check", "--dry-run").stdout
    assert "No changes detected" in out
    deploy = manage(
        demo_python,
        src,
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env=app_env(**PRODUCTION_ENV),
    )
    assert "no issues" in deploy.stdout + deploy.stderr

    manage(demo_python, src, "migrate", "--noinput")
    assert (src / "db.sqlite3").is_file(), (
        "without DATABASE_URL the database is SQLite in the project"
    )
    manage(demo_python, src, "collectstatic", "--noinput")
    manifest = json.loads((src / "staticfiles" / "staticfiles.json").read_text())
    hashed_css = manifest["paths"]["notes/site.css"]
    assert (src / "staticfiles" / hashed_css).is_file()

    pages = fetch(demo_python, src)
    index = pages["/"]
    assert index["status"] == 200
    assert f'<span class="version">{tag}</span>' in index["body"]
    assert "hello from the database" in index["body"]
    assert f'href="/static/{hashed_css}"' in index["body"]
    assert "cache: none" in index["body"]
    assert pages["/healthz/"] == {"status": 200, "body": "ok\n"}

    run(demo_python, src, "-c", "import demosite.wsgi, demosite.asgi")

    # Django's own tests: against $DATABASE_URL when set, else SQLite.
    test_env = app_env()
    if os.environ.get("DATABASE_URL"):
        test_env["DATABASE_URL"] = os.environ["DATABASE_URL"]
    tests = manage(demo_python, src, "test", "notes", "--noinput", env=test_env)
    assert "OK" in tests.stderr


@pytest.mark.slow
def test_old_code_runs_on_migrated_schema(repo, demo_python, tmp_path):
    """Migrations run while the previous release serves: it must keep working."""
    src = {
        tag: checkout(repo, tag, tmp_path / tag)
        for tag in ("v1.0.0", "v1.1.0", "v1.2.0")
    }
    db = tmp_path / "shared.sqlite3"
    env = app_env(DATABASE_URL=f"sqlite:///{db}")
    for tag in src:
        manage(demo_python, src[tag], "collectstatic", "--noinput", "-v0", env=env)

    manage(demo_python, src["v1.0.0"], "migrate", "--noinput", env=env)
    manage(demo_python, src["v1.1.0"], "migrate", "--noinput", env=env)
    manage(
        demo_python, src["v1.0.0"], "add_note", "written by v1.0.0 after 0002", env=env
    )
    pages = fetch(demo_python, src["v1.0.0"], env=env)
    assert pages["/"]["status"] == 200
    assert "written by v1.0.0 after 0002" in pages["/"]["body"]
    assert pages["/healthz/"]["status"] == 200

    manage(demo_python, src["v1.2.0"], "migrate", "--noinput", env=env)
    manage(
        demo_python, src["v1.0.0"], "add_note", "written by v1.0.0 after 0003", env=env
    )
    manage(
        demo_python,
        src["v1.1.0"],
        "add_note",
        "written by v1.1.0 after 0003",
        "--author",
        "ann",
        env=env,
    )
    for tag in src:
        pages = fetch(demo_python, src[tag], env=env)
        assert pages["/"]["status"] == 200, tag
        assert pages["/healthz/"]["status"] == 200, tag
        assert "written by v1.0.0 after 0003" in pages["/"]["body"]
        assert "written by v1.1.0 after 0003" in pages["/"]["body"]
    newest = fetch(demo_python, src["v1.2.0"], "/", env=env)["/"]["body"]
    assert 'written by v1.0.0 after 0002 <span class="author">by anonymous' in newest
    assert "by ann" in newest


@pytest.mark.slow
def test_v1_2_0_on_the_schema_of_each_migration_variant(repo, demo_python, tmp_path):
    """What v1.2.0 meets when a migration variant migrates while it still serves."""
    old = checkout(repo, "v1.2.0", tmp_path / "v1.2.0")
    migrated = tmp_path / "v1.2.0.sqlite3"
    env = app_env(DATABASE_URL=f"sqlite:///{migrated}")
    manage(demo_python, old, "collectstatic", "--noinput", "-v0", env=env)
    manage(demo_python, old, "migrate", "--noinput", "-v0", env=env)
    expected = {
        "drop-author": 500,
        "expand-author": 200,
        "contract-author": 500,
        "add-nullable": 200,
    }
    for tag, status in expected.items():
        db = tmp_path / f"{tag}.sqlite3"
        shutil.copyfile(migrated, db)
        env = app_env(DATABASE_URL=f"sqlite:///{db}")
        new = checkout(repo, tag, tmp_path / tag)
        manage(demo_python, new, "migrate", "--noinput", "-v0", env=env)
        pages = fetch(demo_python, old, env=env)
        assert pages["/"]["status"] == status, tag
        assert pages["/healthz/"]["status"] == 200, tag
        # writing fails where reading does: ok=False expects a failure
        manage(demo_python, old, "add_note", "by v1.2.0", env=env, ok=status == 200)
        manage(demo_python, new, "collectstatic", "--noinput", "-v0", env=env)
        assert fetch(demo_python, new, "/", env=env)["/"]["status"] == 200, tag

    # contract-author's migration goes back: the column returns with its default.
    env = app_env(DATABASE_URL=f"sqlite:///{tmp_path / 'contract-author.sqlite3'}")
    new = tmp_path / "contract-author"
    manage(demo_python, new, "migrate", "notes", "0004", "--noinput", "-v0", env=env)
    manage(demo_python, old, "add_note", "after the way back", env=env)
    assert "after the way back" in fetch(demo_python, old, "/", env=env)["/"]["body"]


@pytest.mark.slow
def test_cache_settings(repo, demo_python, tmp_path):
    src = checkout(repo, "v1.0.0", tmp_path / "src")
    manage(demo_python, src, "migrate", "--noinput", "-v0")
    manage(demo_python, src, "collectstatic", "--noinput", "-v0")
    show = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.CACHES['default']['BACKEND'])"
    )
    assert run(
        demo_python, src, "-c", show, env=app_env(REDIS_URL="redis://127.0.0.1:1/0")
    ).stdout.strip() == ("django.core.cache.backends.redis.RedisCache")
    assert run(
        demo_python, src, "-c", show, env=app_env(MEMCACHED_URL="127.0.0.1:1")
    ).stdout.strip() == ("django.core.cache.backends.memcached.PyMemcacheCache")
    # A configured cache that is down shows on the page, which still renders.
    pages = fetch(demo_python, src, "/", env=app_env(REDIS_URL="redis://127.0.0.1:1/0"))
    assert pages["/"]["status"] == 200
    assert "cache: error (ConnectionError)" in pages["/"]["body"]


@pytest.mark.slow
def test_mysql_through_pymysql(repo, demo_python, tmp_path):
    src = checkout(repo, "v1.0.0", tmp_path / "src")
    show = (
        "import django; django.setup(); from django.conf import settings; "
        "from django.db import connection; "
        "print(settings.DATABASES['default']['ENGINE'], connection.vendor, "
        "connection.Database.__name__)"
    )
    shown = run(
        demo_python,
        src,
        "-c",
        show,
        env=app_env(DATABASE_URL="mysql://demo:secret@127.0.0.1:1/demo"),
    ).stdout.split()
    # The backend module loaded: Django accepted PyMySQL in place of mysqlclient.
    assert shown == ["django.db.backends.mysql", "mysql", "pymysql"]


@pytest.mark.slow
def test_secret_key_is_required_unless_debug(repo, demo_python, tmp_path):
    src = checkout(repo, "v1.0.0", tmp_path / "src")
    env = app_env()
    del env["DJANGO_SECRET_KEY"]
    failed = manage(demo_python, src, "check", env=env, ok=False)
    assert "DJANGO_SECRET_KEY must be set" in failed.stderr
    manage(demo_python, src, "check", env={**env, "DJANGO_DEBUG": "1"})


@pytest.mark.slow
def test_broken_import(repo, demo_python, tmp_path):
    src = checkout(repo, "broken-import", tmp_path / "src")
    manage(demo_python, src, "check")
    manage(demo_python, src, "migrate", "--noinput", "-v0")
    manage(demo_python, src, "collectstatic", "--noinput", "-v0")
    for module in ("demosite.wsgi", "demosite.asgi"):
        failed = run(demo_python, src, "-c", f"import {module}", ok=False)
        assert (
            "ModuleNotFoundError: No module named 'demosite.middleware'"
            in failed.stderr
        )


@pytest.mark.slow
def test_unhealthy(repo, demo_python, tmp_path):
    src = checkout(repo, "unhealthy", tmp_path / "src")
    manage(demo_python, src, "check")
    manage(
        demo_python,
        src,
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env=app_env(**PRODUCTION_ENV),
    )
    manage(demo_python, src, "migrate", "--noinput", "-v0")
    manage(demo_python, src, "collectstatic", "--noinput", "-v0")
    run(demo_python, src, "-c", "import demosite.wsgi, demosite.asgi")
    pages = fetch(demo_python, src)
    assert pages["/"]["status"] == 200
    assert pages["/healthz/"]["status"] == 503


@pytest.mark.slow
def test_failing_collectstatic(repo, demo_python, tmp_path):
    src = checkout(repo, "failing-collectstatic", tmp_path / "src")
    manage(demo_python, src, "check")
    failed = manage(demo_python, src, "collectstatic", "--noinput", ok=False)
    assert (
        "ValueError: The file 'notes/img/banner.png' could not be found"
        in failed.stderr
    )


@pytest.mark.slow
def test_failing_migration_leaves_data_alone(repo, demo_python, tmp_path):
    old = checkout(repo, "v1.0.0", tmp_path / "old")
    new = checkout(repo, "failing-migration", tmp_path / "new")
    db = tmp_path / "db.sqlite3"
    env = app_env(DATABASE_URL=f"sqlite:///{db}")
    manage(demo_python, old, "migrate", "--noinput", "-v0", env=env)
    manage(demo_python, old, "add_note", "precious", env=env)

    def snapshot():
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return (
                conn.execute(
                    "SELECT id, text, created FROM notes_note ORDER BY id"
                ).fetchall(),
                [row[1] for row in conn.execute("PRAGMA table_info(notes_note)")],
                conn.execute(
                    "SELECT name FROM django_migrations WHERE app = 'notes'"
                ).fetchall(),
            )

    before = snapshot()
    manage(demo_python, new, "check", env=env)
    failed = manage(demo_python, new, "migrate", "--noinput", env=env, ok=False)
    assert "RuntimeError: 0002_note_title: cannot derive titles" in failed.stderr
    assert snapshot() == before
    assert "title" not in before[1]
    assert [text for _, text, _ in before[0]] == ["hello from the database", "precious"]

    manage(demo_python, old, "collectstatic", "--noinput", "-v0", env=env)
    assert fetch(demo_python, old, "/", env=env)["/"]["status"] == 200


@pytest.mark.slow
def test_bad_requirement_does_not_exist(repo, demo_python, tmp_path):
    line = git(repo, "show", "bad-requirement:requirements.txt").splitlines()[-1]
    assert line == "djangoapp-no-such-package-xyz==1.0"
    result = subprocess.run(
        [
            str(demo_python),
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-deps",
            "-d",
            str(tmp_path),
            line,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert (
        "No matching distribution found for djangoapp-no-such-package-xyz==1.0"
        in result.stdout
    )


def test_overlay_deletions(tmp_path):
    work = tmp_path / "work"
    (work / "notes" / "old").mkdir(parents=True)
    (work / "notes" / "old" / "a.py").write_text("")
    (work / "README.md").write_text("")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "DELETE").write_text("# gone in this version\nnotes/old\n\nREADME.md\n")
    demorepo._apply_deletions(overlay, work)
    assert sorted(p.name for p in work.rglob("*")) == ["notes"]

    (overlay / "DELETE").write_text("../outside\n")
    with pytest.raises(ValueError):
        demorepo._apply_deletions(overlay, work)
    (overlay / "DELETE").write_text("missing.txt\n")
    with pytest.raises(FileNotFoundError):
        demorepo._apply_deletions(overlay, work)
