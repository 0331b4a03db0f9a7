"""Small Django projects in the shapes real projects have, each built as a git
repository with tags, for tests on a real host (test_project_shapes.py).

Each project is a dict tag -> {path: text}; ``build(name, dest, uv=...)`` writes each
tag's tree as one commit on ``main`` and tags it. Django is pinned to 5.2.x, which
runs on Debian 12's Python 3.11. A project with a uv.lock gets it from ``uv lock``
run at build time (``uv`` names the binary).

Shapes:
- ``plain``: the settings ``startproject`` writes, plus only what production takes
  from the environment (no MEDIA_*); ``/`` is not routed (404). Tags ``v1``,
  ``v2``, ``no-static-root`` (STATIC_ROOT unset) and ``odd-static-url`` (a
  STATIC_URL with a space: Django takes it, Nginx cannot).
  Tag ``cdn``: STATIC_URL on another host, so Nginx serves no static files.
- ``portal``: ``/`` redirects to a login page; requirements split in
  ``requirements/`` with ``-r base.txt``; French, from a message catalogue that
  ``compilemessages`` (GNU gettext's msgfmt, an OS package) compiles at release.
- ``locked``: pyproject.toml + uv.lock; manage.py in ``src/`` with a settings
  package (``config/settings/production.py``); reads ``DB_*`` variables instead of
  DATABASE_URL; an offline-assets management command run after collectstatic.
- ``pyonly``: pyproject.toml alone; serves its static files itself too
  (WhiteNoise). Tag ``py312``: ``requires-python = ">=3.12"``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

DJANGO = "Django>=5.2,<5.3"
PSYCOPG = "psycopg[binary]>=3.2,<3.3"
WHITENOISE = "whitenoise>=6.9,<7"
EPOCH = 1735732800  # 2025-01-01 12:00 UTC

MIDDLEWARE = """[
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]"""

TEMPLATES = """[
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]"""

DATABASE_FROM_URL = """
def _database(url):
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


DATABASES = {"default": _database(os.environ["DATABASE_URL"])}
"""

DATABASE_FROM_DB_VARIABLES = """
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["DB_NAME"],
        "USER": os.environ["DB_USER"],
        "PASSWORD": os.environ["DB_PASSWORD"],
        "HOST": os.environ.get("DB_HOST", "localhost"),
        "PORT": os.environ.get("DB_PORT", "5432"),
    }
}
"""


def settings(
    package: str,
    apps: list[str],
    base_dir_up: int = 1,
    database: str = DATABASE_FROM_URL,
    static_url: str = "static/",
    static_root: str | None = 'os.environ["DJANGO_STATIC_ROOT"]',
    extra: str = "",
) -> str:
    installed = ",\n    ".join(
        [
            '"django.contrib.admin"',
            '"django.contrib.auth"',
            '"django.contrib.contenttypes"',
            '"django.contrib.sessions"',
            '"django.contrib.messages"',
            '"django.contrib.staticfiles"',
            *(f'"{app}"' for app in apps),
        ]
    )
    parents = ".parent" * base_dir_up
    root = f"STATIC_ROOT = {static_root}\n" if static_root else ""
    return f'''"""Settings of {package}: what startproject writes, production values
from the environment."""

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve(){parents}

SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = os.environ["DJANGO_ALLOWED_HOSTS"].split(",")

INSTALLED_APPS = [
    {installed},
]

MIDDLEWARE = {MIDDLEWARE}

ROOT_URLCONF = "{package}.urls"

TEMPLATES = {TEMPLATES}

WSGI_APPLICATION = "{package}.wsgi.application"
{database}
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "{static_url}"
{root}DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
{extra}'''


def manage_py(settings_module: str) -> str:
    return f'''#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "{settings_module}")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
'''


def wsgi_py(settings_module: str) -> str:
    return f"""import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "{settings_module}")
application = get_wsgi_application()
"""


def version_view(version: str) -> str:
    return f"""from django.http import HttpResponse

VERSION = "{version}"


def version(request):
    return HttpResponse(f'<span class="version">{{VERSION}}</span>')
"""


def pyproject(name: str, requires_python: str = ">=3.11", extra: tuple = ()) -> str:
    dependencies = "".join(
        f'    "{package}",\n' for package in (DJANGO, PSYCOPG, *extra)
    )
    return f"""[project]
name = "{name}"
version = "1.0.0"
requires-python = "{requires_python}"
dependencies = [
{dependencies}]
"""


def plain(version: str, **settings_args) -> dict[str, str]:
    """startproject's shape: only /admin/ and one view of the app; / is a 404."""
    return {
        "manage.py": manage_py("plain.settings"),
        "requirements.txt": f"{DJANGO}\n{PSYCOPG}\n",
        "plain/__init__.py": "",
        "plain/settings.py": settings("plain", ["pages"], 2, **settings_args),
        "plain/urls.py": """from django.contrib import admin
from django.urls import path

from pages.views import version

urlpatterns = [
    path("admin/", admin.site.urls),
    path("about/", version),
]
""",
        "plain/wsgi.py": wsgi_py("plain.settings"),
        "pages/__init__.py": "",
        "pages/views.py": version_view(version),
    }


PORTAL_CATALOGUE = r"""msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"
"Language: fr\n"

msgid "Welcome to the portal"
msgstr "Bienvenue sur le portail"
"""


def portal(version: str) -> dict[str, str]:
    """/ redirects to the login page; requirements split with -r base.txt."""
    return {
        "manage.py": manage_py("portal.settings"),
        "requirements/base.txt": f"{DJANGO}\n",
        "requirements/production.txt": f"-r base.txt\n{PSYCOPG}\n",
        "portal/__init__.py": "",
        "portal/settings.py": settings(
            "portal",
            ["accounts"],
            2,
            extra='LOGIN_URL = "/accounts/login/"\n'
            'LANGUAGE_CODE = "fr"\n'
            'LOCALE_PATHS = [BASE_DIR / "locale"]\n',
        ),
        "locale/fr/LC_MESSAGES/django.po": PORTAL_CATALOGUE,
        "portal/urls.py": """from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.urls import path

from accounts.views import version

urlpatterns = [
    path("", login_required(version)),
    path("accounts/login/", auth_views.LoginView.as_view()),
]
""",
        "portal/wsgi.py": wsgi_py("portal.settings"),
        "accounts/__init__.py": "",
        "accounts/views.py": version_view(version),
        "accounts/templates/registration/login.html": (
            '{% load i18n %}<h1>{% translate "Welcome to the portal" %}</h1>'
            f'<form method="post">{{% csrf_token %}}{{{{ form }}}}</form>'
            f'<span class="version">{version}</span>\n'
        ),
    }


ASSETS_COMMAND = '''"""Offline assets, built after collectstatic (django-compressor's
way): a file written into STATIC_ROOT."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from shop.views import VERSION


class Command(BaseCommand):
    def handle(self, *args, **options):
        target = Path(settings.STATIC_ROOT) / "bundle" / "app.js"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"window.version = '{VERSION}';\\n")
        self.stdout.write(f"wrote {target}")
'''


def locked(version: str) -> dict[str, str]:
    """pyproject.toml + uv.lock, manage.py in src/, config/settings/production.py,
    DB_* variables, an offline-assets command."""
    base = settings("config", ["shop"], 3, database=DATABASE_FROM_DB_VARIABLES)
    return {
        "pyproject.toml": pyproject("locked"),
        "src/manage.py": manage_py("config.settings.production"),
        "src/config/__init__.py": "",
        "src/config/settings/__init__.py": "",
        "src/config/settings/base.py": base,
        "src/config/settings/production.py": "from .base import *  # noqa: F403\n",
        "src/config/urls.py": """from django.urls import path

from shop.views import version

urlpatterns = [path("", version)]
""",
        "src/config/wsgi.py": wsgi_py("config.settings.production"),
        "src/shop/__init__.py": "",
        "src/shop/views.py": version_view(version),
        "src/shop/management/__init__.py": "",
        "src/shop/management/commands/__init__.py": "",
        "src/shop/management/commands/build_assets.py": ASSETS_COMMAND,
    }


def pyonly(version: str, requires_python: str = ">=3.11") -> dict[str, str]:
    """pyproject.toml alone (its [project] dependencies); WhiteNoise."""
    whitenoise = 'MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")\n'
    return {
        "pyproject.toml": pyproject("pyonly", requires_python, extra=(WHITENOISE,)),
        "manage.py": manage_py("pyonly.settings"),
        "pyonly/__init__.py": "",
        "pyonly/settings.py": settings("pyonly", ["home"], 2, extra=whitenoise),
        "pyonly/urls.py": """from django.urls import path

from home.views import version

urlpatterns = [path("", version)]
""",
        "pyonly/wsgi.py": wsgi_py("pyonly.settings"),
        "home/__init__.py": "",
        "home/views.py": version_view(version),
    }


PROJECTS = {
    "plain": {
        "v1": plain("v1"),
        "v2": plain("v2"),
        "no-static-root": plain("v3", static_root=None),
        "odd-static-url": plain("v4", static_url="/static files/"),
        "cdn": plain("v5", static_url="https://cdn.example.test/static/"),
    },
    "portal": {"v1": portal("v1"), "v2": portal("v2")},
    "locked": {"v1": locked("v1"), "v2": locked("v2")},
    "pyonly": {
        "v1": pyonly("v1"),
        "v2": pyonly("v2"),
        "py312": pyonly("v3", requires_python=">=3.12"),
    },
}


def _git(args: list[str], cwd: Path, when: int = EPOCH) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    date = f"{when} +0000"
    env.update(
        GIT_AUTHOR_NAME="Shape Tester",
        GIT_AUTHOR_EMAIL="shapes@test.invalid",
        GIT_AUTHOR_DATE=date,
        GIT_COMMITTER_NAME="Shape Tester",
        GIT_COMMITTER_EMAIL="shapes@test.invalid",
        GIT_COMMITTER_DATE=date,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def build(name: str, dest: Path, uv: str | None = None) -> dict[str, str]:
    """The bare repository ``dest`` with one commit and tag per version of project
    ``name`` (each tree whole; the main line is v1 -> v2, the others on top of v1);
    returns {tag: sha}."""
    shas = {}
    with tempfile.TemporaryDirectory(prefix=f"project-{name}-") as tmp:
        work = Path(tmp)
        _git(["init", "-q", "--initial-branch=main"], work)
        for index, (tag, files) in enumerate(PROJECTS[name].items()):
            if tag != "v1":
                parent = "v1" if tag != "v2" else "v1"
                _git(["checkout", "-q", "--detach", parent], work)
            for path in _git(["ls-files"], work).splitlines():
                (work / path).unlink()
            for path, text in files.items():
                target = work / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                if target.name == "manage.py":
                    target.chmod(0o755)
            if (work / "pyproject.toml").is_file() and name == "locked":
                if uv is None:
                    raise RuntimeError(f"{name} needs uv to write its uv.lock")
                subprocess.run(
                    [uv, "lock", "--quiet", "--python", "3.11"],
                    cwd=work,
                    check=True,
                    capture_output=True,
                    env={**os.environ, "UV_NO_CACHE": "1"},
                )
            _git(["add", "--all"], work)
            _git(["commit", "-q", "-m", f"{name} {tag}"], work, EPOCH + 3600 * index)
            _git(["tag", tag], work)
            shas[tag] = _git(["rev-parse", "HEAD"], work)
        _git(["branch", "-f", "main", "v2"], work)
        _git(["init", "-q", "--bare", "--initial-branch=main", str(dest)], work)
        _git(["push", "-q", "--mirror", str(dest)], work)
    return shas
