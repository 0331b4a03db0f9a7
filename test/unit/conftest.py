"""
Fixtures for the unit tests of the djangoapp execution and state modules.

The modules are loaded by Salt's own loader from the repository's
``_modules``, ``_states`` and ``_utils`` directories, with a minion
configuration whose every path lies in a temporary directory, so that
``__salt__["cmd.run_all"]`` and friends are the real ones.
"""

import http.server
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import threading

import pytest
import standins
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
FORMULA_FILES = REPO / "salt" / "djangoapp" / "files"


@pytest.fixture(scope="session")
def repo_root():
    return REPO


@pytest.fixture(scope="session")
def salt_root(tmp_path_factory):
    return tmp_path_factory.mktemp("salt")


@pytest.fixture(scope="session")
def minion_opts(salt_root):
    import salt.config

    root = str(salt_root)
    opts = salt.config.minion_config(None)
    opts.update(
        {
            "id": "djangoapp-unit",
            "root_dir": root,
            "cachedir": os.path.join(root, "cache"),
            "pki_dir": os.path.join(root, "pki"),
            "sock_dir": os.path.join(root, "sock"),
            "log_file": os.path.join(root, "minion.log"),
            "file_client": "local",
            "local": True,
            "master_type": "disable",
            "file_roots": {"base": [str(REPO)]},
            "pillar_roots": {"base": [os.path.join(root, "pillar")]},
            "module_dirs": [str(REPO / "_modules")],
            "states_dirs": [str(REPO / "_states")],
            "utils_dirs": [str(REPO / "_utils")],
            "djangoapp.config_dir": os.path.join(root, "etc"),
            "test": False,
        }
    )
    for key in ("cachedir", "pki_dir", "sock_dir"):
        os.makedirs(opts[key], exist_ok=True)
    os.makedirs(opts["djangoapp.config_dir"], exist_ok=True)
    import salt.loader

    opts["grains"] = salt.loader.grains(opts)
    opts["pillar"] = {}
    return opts


@pytest.fixture(scope="session")
def loaders(minion_opts):
    import salt.loader

    context = {}
    utils = salt.loader.utils(minion_opts, context=context)
    funcs = salt.loader.minion_mods(minion_opts, context=context, utils=utils)
    serializers = salt.loader.serializers(minion_opts)
    states = salt.loader.states(minion_opts, funcs, utils, serializers, context=context)
    return {"utils": utils, "salt": funcs, "states": states, "context": context}


@pytest.fixture
def utils(loaders):
    return loaders["utils"]


@pytest.fixture
def mods(loaders):
    return loaders["salt"]


@pytest.fixture
def states(loaders):
    return loaders["states"]


@pytest.fixture
def config_dir(minion_opts):
    path = pathlib.Path(minion_opts["djangoapp.config_dir"])
    for child in path.iterdir():
        subprocess.run(["rm", "-rf", str(child)], check=True)
    return path


def write_app(config_dir, name, base_dir, **overrides):
    """Write /etc/djangoapp/<name>/app.json (in the test's config dir)."""
    etc = pathlib.Path(config_dir) / name
    etc.mkdir(parents=True, exist_ok=True)
    cfg = {
        "name": name,
        "user": overrides.pop("user", None) or _me(),
        "group": _me(),
        "repo": None,
        "version": "v1.0.0",
        "version_policy": "changes",
        "migrations": "safe",
        "migration_linter": None,
        "base_dir": str(base_dir),
        "env_file": str(etc / "env.json"),
        "python": "python3",
        "requirements": "requirements.txt",
        "pip_extra": [],
        "dependencies": "auto",
        "dependency_groups": [],
        "extras": [],
        "hooks": {},
        "project_dir": ".",
        "settings_module": "site.settings",
        "wsgi": "site.wsgi:application",
        "asgi": None,
        "deploy_key": None,
        "known_hosts": None,
        "gunicorn_config": str(etc / "gunicorn.conf.py"),
        "process_manager": "supervisor",
        "service": f"djangoapp-{name}",
        "socket": f"/run/djangoapp/{name}/gunicorn.sock",
        "run_dir": f"/run/djangoapp/{name}",
        "control_socket": None,
        "health": None,
        "keep_releases": 3,
        "check_deploy_fail_level": "ERROR",
        "release_niceness": 0,
        "graceful_timeout": 30,
        "database": {"engine": "none"},
        "backup_dir": str(pathlib.Path(base_dir).parent / "backups" / name),
        "log_dir": str(pathlib.Path(base_dir).parent / "log" / name),
        "maintenance_page": str(pathlib.Path(base_dir) / "maintenance.html"),
        "maintenance_flag": str(pathlib.Path(base_dir) / "maintenance.on"),
        "python_install_mirror": None,
        "python_install_dir": "/opt/djangoapp/python",
        "uv": "/opt/djangoapp/tools/bin/uv",
        "uv_cache": "/var/cache/djangoapp/uv",
        "proxy": {},
    }
    cfg.update(overrides)
    (etc / "app.json").write_text(json.dumps(cfg))
    if not (etc / "env.json").exists():
        (etc / "env.json").write_text(json.dumps({}))
    pathlib.Path(base_dir).mkdir(parents=True, exist_ok=True)
    return cfg


def _me():
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def make_app(config_dir, tmp_path):
    def factory(name="demo", **overrides):
        base = overrides.pop("base_dir", None) or tmp_path / "srv" / name
        return write_app(config_dir, name, base, **overrides)

    return factory


# --------------------------------------------------------------------------
# a tiny Django project in a local git repository, for real releases

TINY_FILES = {
    "requirements.txt": "Django==5.2.19\n",
    "manage.py": (
        "#!/usr/bin/env python\n"
        "import os, sys\n"
        "if __name__ == '__main__':\n"
        "    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tinysite.settings')\n"
        "    from django.core.management import execute_from_command_line\n"
        "    execute_from_command_line(sys.argv)\n"
    ),
    "tinysite/__init__.py": "",
    "tinysite/settings.py": (
        "import os\n"
        "from pathlib import Path\n"
        "BASE_DIR = Path(__file__).resolve().parent.parent\n"
        "SECRET_KEY = os.environ['DJANGO_SECRET_KEY']\n"
        "DEBUG = False\n"
        "ALLOWED_HOSTS = ['example.com']\n"
        "INSTALLED_APPS = ['django.contrib.contenttypes', 'django.contrib.staticfiles',"
        " 'tinyapp']\n"
        "ROOT_URLCONF = 'tinysite.urls'\n"
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3',"
        " 'NAME': os.environ['TINY_DB']}}\n"
        "DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'\n"
        "STATIC_URL = '/static/'\n"
        "STATIC_ROOT = BASE_DIR / 'staticfiles'\n"
        "MEDIA_URL = '/media/'\n"
        "MEDIA_ROOT = os.environ['TINY_MEDIA']\n"
    ),
    "tinysite/urls.py": (
        "from django.urls import path\n"
        "from tinyapp.views import index\n"
        "urlpatterns = [path('', index)]\n"
    ),
    "tinysite/wsgi.py": (
        "import os\n"
        "from django.core.wsgi import get_wsgi_application\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tinysite.settings')\n"
        "application = get_wsgi_application()\n"
    ),
    "tinyapp/__init__.py": "",
    "tinyapp/models.py": (
        "from django.db import models\n"
        "class Item(models.Model):\n"
        "    name = models.CharField(max_length=20)\n"
    ),
    "tinyapp/migrations/__init__.py": "",
    "tinyapp/migrations/0001_initial.py": (
        "from django.db import migrations, models\n"
        "class Migration(migrations.Migration):\n"
        "    initial = True\n"
        "    dependencies = []\n"
        "    operations = [migrations.CreateModel(name='Item', fields=["
        "('id', models.BigAutoField(auto_created=True, primary_key=True,"
        " serialize=False, verbose_name='ID')),"
        " ('name', models.CharField(max_length=20))])]\n"
    ),
    "tinyapp/views.py": (
        "from django.http import HttpResponse\n"
        "def index(request):\n"
        "    return HttpResponse('version 1')\n"
    ),
    "tinyapp/static/tinyapp/site.css": "body { color: black; }\n",
}

# tag -> files changed on top of the previous tag (None deletes)
TINY_VERSIONS = [
    ("v1.0.0", {}),
    ("v1.1.0", {"tinyapp/views.py": TINY_FILES["tinyapp/views.py"].replace("1", "2")}),
    (
        "v1.2.0",
        {
            "tinyapp/models.py": TINY_FILES["tinyapp/models.py"]
            + "    note = models.CharField(max_length=20, null=True)\n",
            "tinyapp/migrations/0002_item_note.py": (
                "from django.db import migrations, models\n"
                "class Migration(migrations.Migration):\n"
                "    dependencies = [('tinyapp', '0001_initial')]\n"
                "    operations = [migrations.AddField(model_name='item', name='note',"
                " field=models.CharField(max_length=20, null=True))]\n"
            ),
        },
    ),
]
# Tags off the main line, each on top of v1.1.0.
TINY_BROKEN = {
    "missing-migration": {
        "tinyapp/models.py": TINY_FILES["tinyapp/models.py"]
        + "    size = models.IntegerField(default=0)\n"
    },
    "broken-import": {"tinysite/wsgi.py": "import no_such_module\n"},
    "no-static-root": {
        "tinysite/settings.py": TINY_FILES["tinysite/settings.py"].replace(
            "STATIC_ROOT = BASE_DIR / 'staticfiles'\n", ""
        )
    },
}


def _tiny_migration(name, operations, head=""):
    return {
        f"tinyapp/migrations/{name}.py": (
            "from django.db import migrations, models\n"
            f"{head}"
            "def touch(apps, schema_editor):\n"
            "    apps.get_model('tinyapp', 'Item').objects.update(name='x')\n"
            "class Migration(migrations.Migration):\n"
            "    dependencies = [('tinyapp', '0002_item_note')]\n"
            f"    operations = [{operations}]\n"
        )
    }


# Tags on top of v1.2.0, each with one migration of a kind.
TINY_MIGRATIONS = {
    "drop-note": {
        "tinyapp/models.py": TINY_FILES["tinyapp/models.py"],
        **_tiny_migration(
            "0003_remove_item_note",
            "migrations.RemoveField(model_name='item', name='note')",
        ),
    },
    "code-unaccounted": _tiny_migration("0003_touch", "migrations.RunPython(touch)"),
    "code-accounted": _tiny_migration(
        "0003_touch",
        "migrations.RunPython(touch, elidable=True), "
        "migrations.RunPython(touch, migrations.RunPython.noop)",
    ),
    "failing-migration": _tiny_migration(
        "0003_fail",
        "migrations.RunPython(fail, migrations.RunPython.noop)",
        head="def fail(apps, schema_editor):\n"
        "    raise RuntimeError('the tiny migration fails')\n",
    ),
}

# Tags that change no migration file of the tag they are made on:
# (tag, the tag below it, files).
TINY_FOLLOW_UPS = [
    ("broken-import-v1.2", "v1.2.0", TINY_BROKEN["broken-import"]),
    (
        "code-accounted-views",
        "code-accounted",
        {"tinyapp/views.py": TINY_FILES["tinyapp/views.py"].replace("1", "3")},
    ),
]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Tiny",
    "GIT_AUTHOR_EMAIL": "tiny@example.invalid",
    "GIT_COMMITTER_NAME": "Tiny",
    "GIT_COMMITTER_EMAIL": "tiny@example.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


class TinyRepo:
    """A bare git repository of the tiny project and a work tree to commit."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.bare = self.root / "tiny.git"
        self.work = self.root / "work"
        self.tags = {}

    def git(self, *args, cwd=None):
        env = dict(os.environ, **GIT_ENV)
        out = subprocess.run(
            ["git", *args],
            cwd=cwd or self.work,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def write(self, files):
        for name, text in files.items():
            path = self.work / name
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def commit(self, message, tag=None, branch="main"):
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        sha = self.git("rev-parse", "HEAD")
        if tag:
            self.git("tag", "-a", "-m", tag, tag)
            self.tags[tag] = sha
        self.git(
            "push", "-q", "--force", "origin", f"HEAD:refs/heads/{branch}", "--tags"
        )
        return sha

    def build(self):
        subprocess.run(["git", "init", "-q", "--bare", str(self.bare)], check=True)
        self.work.mkdir()
        self.git("init", "-q", "-b", "main")
        self.git("remote", "add", "origin", str(self.bare))
        self.write(TINY_FILES)
        for tag, files in TINY_VERSIONS:
            self.write(files)
            self.commit(f"release {tag}", tag=tag)
        head = self.tags[TINY_VERSIONS[-1][0]]
        for tag, files in TINY_BROKEN.items():
            self.git("checkout", "-q", self.tags["v1.1.0"])
            self.write(files)
            self.commit(tag, tag=tag, branch=f"broken/{tag}")
        for tag, files in TINY_MIGRATIONS.items():
            self.git("checkout", "-q", self.tags["v1.2.0"])
            self.write(files)
            self.commit(tag, tag=tag, branch=f"migrations/{tag}")
        for tag, below, files in TINY_FOLLOW_UPS:
            self.git("checkout", "-q", self.tags[below])
            self.write(files)
            self.commit(tag, tag=tag, branch=f"follow-ups/{tag}")
        self.git("checkout", "-q", "main")
        self.git("reset", "-q", "--hard", head)
        return self

    @property
    def url(self):
        return f"file://{self.bare}"


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory):
    return TinyRepo(tmp_path_factory.mktemp("tinyrepo")).build()


@pytest.fixture(scope="session")
def uv_binary(tmp_path_factory):
    """uv from the formula's tools venv or PATH, else installed from PyPI."""
    import shutil

    for candidate in ("/opt/djangoapp/tools/bin/uv", shutil.which("uv")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    tools = tmp_path_factory.mktemp("uvtools")
    subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True)
    subprocess.run(
        [str(tools / "bin" / "pip"), "install", "-q", "uv"], check=True, timeout=600
    )
    return str(tools / "bin" / "uv")


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("uvcache"))


def tiny_app_config(repo, base, uv, cache, **overrides):
    """app.json values for a tiny-project app living under ``base``."""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    cfg = {
        "repo": repo.url,
        "version": "v1.0.0",
        "base_dir": str(base),
        "python": python,
        "requirements": "requirements.txt",
        "pip_extra": ["gunicorn"],
        "project_dir": ".",
        "settings_module": "tinysite.settings",
        "wsgi": "tinysite.wsgi:application",
        "gunicorn_config": str(base / "no-gunicorn.conf.py"),
        "process_manager": "supervisor",
        "service": "djangoapp-unit-test-no-such-service",
        "run_dir": str(base / "run"),
        "keep_releases": 2,
        "uv": uv,
        "uv_cache": cache,
        "backup_dir": str(base / "backups"),
        "database": {"engine": "none"},
    }
    cfg.update(overrides)
    return cfg


def tiny_env(base):
    return {
        "DJANGO_SECRET_KEY": "unit-test-secret-" + "k" * 40,
        "TINY_DB": str(base / "shared" / "db.sqlite3"),
        "TINY_MEDIA": str(base / "shared" / "media"),
    }


@pytest.fixture(scope="session")
def migration_linter(tmp_path_factory):
    """django-migration-linter as the formula installs it (tools.sls): its
    pinned packages, apart from any release."""
    defaults = yaml.safe_load(
        (REPO / "salt" / "djangoapp" / "parameters" / "defaults.yaml").read_text()
    )
    target = tmp_path_factory.mktemp("migration-linter")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
        + ["--target", str(target)]
        + defaults["djangoapp"]["tools"]["migration_linter"],
        check=True,
        timeout=600,
    )
    return str(target)


@pytest.fixture
def tiny_app(config_dir, tiny_repo, uv_binary, uv_cache, migration_linter):
    """Write app.json/env.json of a tiny app; returns a factory(name, base)."""

    def factory(name, base, **overrides):
        base = pathlib.Path(base)
        (base / "shared" / "media").mkdir(parents=True, exist_ok=True)
        overrides.setdefault("migration_linter", migration_linter)
        values = tiny_app_config(tiny_repo, base, uv_binary, uv_cache, **overrides)
        values.pop("base_dir")
        cfg = write_app(config_dir, name, base, **values)
        (pathlib.Path(config_dir) / name / "env.json").write_text(
            json.dumps(tiny_env(base))
        )
        return cfg

    return factory


@pytest.fixture
def load_script(monkeypatch):
    """A script of salt/djangoapp/files as a module, able to import the modules
    installed beside it (as it does in lib_dir)."""
    monkeypatch.syspath_prepend(str(FORMULA_FILES))

    def load(filename):
        name = filename.removesuffix(".py").replace("-", "_")
        spec = importlib.util.spec_from_file_location(name, FORMULA_FILES / filename)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="module")
def health_server():
    """The health URL (answering as ``standins.Health.status`` says), per module."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), standins.Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def fake_pm(tmp_path_factory):
    """A directory holding the stand-in ``supervisorctl``, to put first on PATH."""
    bindir = tmp_path_factory.mktemp("fakepm")
    script = bindir / "supervisorctl"
    script.write_text(standins.SUPERVISORCTL)
    script.chmod(0o755)
    return bindir
