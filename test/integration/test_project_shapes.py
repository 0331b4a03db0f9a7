"""Issue 12's proof: projects in the shapes real users have (test/projects.py), each
deployed through the pillar only, several on one host (a second host of its own
slot, converged masterless with ``salt-call --local`` from the repository shown
read-only, as test_combinations.py does):

- plain: startproject's settings, no MEDIA_*, ``/`` not routed (404): the pillar's
  ``health_path`` names a real page, what a user of such a project does;
- portal: ``/`` redirects to a login page (the default health rule takes the 302);
  requirements split in a folder with ``-r base.txt``;
- locked: pyproject.toml + uv.lock (written by ``uv lock`` when the test builds
  it), manage.py in ``src/`` with ``config/settings/production.py``, settings that
  read ``DB_*`` variables (given in the pillar's ``env``), offline assets written
  into STATIC_ROOT by a management command run as an ``after_build`` hook;
- pyonly: pyproject.toml alone; WhiteNoise serves its static files from Gunicorn
  too;
- cdn: a STATIC_URL on another host, so its Nginx site has no static location.

portal also names an OS package (gettext) that its ``after_build`` hook
(``compilemessages``) needs.

Each is released and rolled back under load with 0 failed requests; a second apply
changes nothing. ``requires-python >=3.12`` deploys where the host's Python is
3.12 or later (Debian 13). The failing shapes (that project on Debian 12's 3.11,
STATIC_ROOT unset) stop at the step that names the cause and leave the host as it
was; a site that Nginx refuses (a STATIC_URL with a space) holds no other app back.

The slot is $DJANGOAPP_SHAPES_SLOT, by default the shared host's slot plus 20.
"""

from __future__ import annotations

import copy
import json
import subprocess
import venv
from pathlib import Path

import projects
import pytest
import yaml
from secondhost import (
    GIT_MOUNT,
    REPO,
    bootable_testhost,
    converged_second_host,
    slot_from,
)

from loadgen import Load
from stack import changed_states, failed_states

pytestmark = pytest.mark.integration

HOSTNAME = "djangoapp-test-shapes"
CLIENTS = 6
# app -> the page the load asks (a 2xx: the load counts anything else as failed)
LOAD_PATHS = {
    "plain": "/about/",
    "portal": "/accounts/login/",
    "locked": "/",
    "pyonly": "/",
}


def shapes_slot() -> int:
    return slot_from("DJANGOAPP_SHAPES_SLOT", 20)


def uv_binary(work: Path) -> str:
    """uv on this machine, for ``uv lock``: the formula's version, in a venv."""
    defaults = yaml.safe_load(
        (REPO / "salt/djangoapp/parameters/defaults.yaml").read_text()
    )
    version = defaults["djangoapp"]["tools"]["uv_version"]
    where = work / "uv-venv"
    venv.create(where, with_pip=True)
    subprocess.run(
        [where / "bin/python", "-m", "pip", "install", "-q", f"uv=={version}"],
        check=True,
        capture_output=True,
    )
    return str(where / "bin/uv")


def app_pillar(name: str, repo: str, **settings) -> dict:
    password = f"{name}-db-password-5e1"
    return {
        "repo": f"file://{GIT_MOUNT}/{repo}.git",
        "version": "v1",
        "server_names": [f"{name}.test"],
        "database": {"engine": "postgresql", "password": password},
        "tls": {"mode": "off"},
        "workers": 2,
        **settings,
        "env": {
            "DJANGO_SECRET_KEY": f"{name}-secret-key-" + "0123456789abcdef" * 3,
            **settings.get("env", {}),
        },
    }


def shapes_pillar(proxy_url: str) -> dict:
    return {
        "djangoapp": {
            "apps": {
                # / is a 404: health asks a real view instead.
                "plain": app_pillar(
                    "plain",
                    "plain",
                    settings_module="plain.settings",
                    wsgi="plain.wsgi:application",
                    health_path="/about/",
                ),
                # / answers 302 to the login page: the default rule passes it.
                # compilemessages needs GNU gettext's msgfmt, an OS package.
                "portal": app_pillar(
                    "portal",
                    "portal",
                    settings_module="portal.settings",
                    wsgi="portal.wsgi:application",
                    requirements="requirements/production.txt",
                    packages=["gettext"],
                    hooks={"after_build": [["python", "manage.py", "compilemessages"]]},
                ),
                "locked": app_pillar(
                    "locked",
                    "locked",
                    settings_module="config.settings.production",
                    wsgi="config.wsgi:application",
                    project_dir="src",
                    env={
                        "DB_NAME": "locked",
                        "DB_USER": "locked",
                        "DB_PASSWORD": "locked-db-password-5e1",
                        "DB_HOST": "localhost",
                    },
                    hooks={"after_build": [["python", "manage.py", "build_assets"]]},
                ),
                "pyonly": app_pillar(
                    "pyonly",
                    "pyonly",
                    settings_module="pyonly.settings",
                    wsgi="pyonly.wsgi:application",
                ),
                # STATIC_URL on a CDN's host: Nginx has no static files to serve.
                "cdn": app_pillar(
                    "cdn",
                    "plain",
                    version="cdn",
                    settings_module="plain.settings",
                    wsgi="plain.wsgi:application",
                    health_path="/about/",
                ),
            },
            "proxy": {"http": proxy_url, "https": proxy_url},
        }
    }


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    module = bootable_testhost(shapes_slot())
    work = tmp_path_factory.mktemp("shapes")
    uv = uv_binary(work)
    for name in projects.PROJECTS:
        projects.build(name, work / "git" / f"{name}.git", uv=uv)
    pillar = shapes_pillar(module.PROXY_URL)
    with converged_second_host(module, work, HOSTNAME, pillar) as shaped:
        shaped.host_ip = module.HOST_IP
        yield shaped


@pytest.fixture(scope="module")
def converged(shapes):
    return shapes.converged()


def page(host, app: str, path: str = "/") -> dict:
    return host.get(f"http://127.0.0.1{path}", f"{app}.test")


def live(host, app: str) -> str:
    return host.infra.file(f"/srv/djangoapp/{app}/current").linked_to


def releases(host, app: str) -> list[str]:
    return sorted(
        host.infra.run("ls -A /srv/djangoapp/%s/releases", app).stdout.split()
    )


def test_first_apply_deploys_every_shape(shapes):
    failures = failed_states(shapes.first_apply)
    assert not failures, "\n".join(failures)


def test_startproject_shape_serves_without_media_and_root_view(converged):
    assert page(converged, "plain", "/")["status"] == 404
    about = page(converged, "plain", "/about/")
    assert (about["status"], about["body"]) == (200, '<span class="version">v1</span>')
    admin_css = page(converged, "plain", "/static/admin/css/base.css")
    assert admin_css["status"] == 200
    site = converged.infra.file(
        "/etc/nginx/sites-available/djangoapp-plain.conf"
    ).content_string
    assert "location /static/" in site and "/media" not in site


def test_redirecting_root_passes_health_and_split_requirements_install(converged):
    root = page(converged, "portal", "/")
    assert root["status"] == 302, root
    assert root["headers"]["Location"] == "/accounts/login/?next=/"
    login = page(converged, "portal", "/accounts/login/")
    assert login["status"] == 200 and 'class="version">v1<' in login["body"]
    installed = converged.infra.run(
        "ls /srv/djangoapp/portal/current/venv/lib/python3.*/site-packages"
    ).stdout
    assert "psycopg" in installed and "django" in installed.lower()


def test_os_packages_of_the_app_serve_its_release_hook(converged):
    """portal's ``packages`` (gettext) are installed before its release, whose
    ``after_build`` hook compiles the French catalogue with them."""
    gettext = converged.infra.package("gettext")
    assert gettext.is_installed
    catalogue = "/srv/djangoapp/portal/current/src/locale/fr/LC_MESSAGES/django.mo"
    assert converged.infra.file(catalogue).is_file
    login = page(converged, "portal", "/accounts/login/")
    assert "<h1>Bienvenue sur le portail</h1>" in login["body"], login["body"]


UNIX_GET = r"""
import http.client, json, socket, sys
class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sys.argv[1])
connection = UnixConnection("localhost", timeout=15)
connection.request("GET", sys.argv[2], headers={"Host": sys.argv[3]})
response = connection.getresponse()
print(json.dumps({"status": response.status, "body": response.read().decode()}))
"""


def test_whitenoise_serves_static_files_from_gunicorn_too(converged):
    """pyonly serves its static files itself (WhiteNoise): Gunicorn answers them
    without Nginx, and Nginx serves the same files from the release."""
    app = json.loads(
        converged.infra.file("/etc/djangoapp/pyonly/app.json").content_string
    )
    css = "/static/admin/css/base.css"
    direct = converged.host.exec(
        ["python3", "-c", UNIX_GET, app["socket"], css, "pyonly.test"]
    )
    from_gunicorn = json.loads(direct.stdout)
    assert from_gunicorn["status"] == 200, from_gunicorn
    from_nginx = page(converged, "pyonly", css)
    assert from_nginx["status"] == 200
    assert from_nginx["body"] == from_gunicorn["body"]


def test_static_url_on_a_cdn_gets_no_static_location(converged):
    about = page(converged, "cdn", "/about/")
    assert (about["status"], about["body"]) == (200, '<span class="version">v5</span>')
    site = converged.infra.file(
        "/etc/nginx/sites-available/djangoapp-cdn.conf"
    ).content_string
    assert "location /static/" not in site and "cdn.example.test" not in site
    # /static/ goes to Django, which serves no static files with DEBUG off
    assert page(converged, "cdn", "/static/admin/css/base.css")["status"] == 404


def test_uv_lock_subfolder_settings_package_db_variables_and_hook(converged):
    home = page(converged, "locked", "/")
    assert (home["status"], home["body"]) == (200, '<span class="version">v1</span>')
    current = live(converged, "locked")
    info = json.loads(converged.infra.file(f"{current}/release.json").content_string)
    # the locked versions: what uv.lock in the repository pins
    lock = converged.infra.file(f"{current}/src/uv.lock").content_string
    assert f'name = "django"\nversion = "{info["django"]}"' in lock
    bundle = page(converged, "locked", "/static/bundle/app.js")
    assert (bundle["status"], bundle["body"]) == (200, "window.version = 'v1';\n")
    env = json.loads(
        converged.infra.file("/etc/djangoapp/locked/env.json").content_string
    )
    assert env["DB_NAME"] == "locked" and env["DB_PASSWORD"]
    migrated = converged.infra.run("locked-manage showmigrations auth")
    assert migrated.rc == 0 and "[X] 0001_initial" in migrated.stdout, migrated.stderr


def test_pyproject_alone_installs_the_project_dependencies(converged):
    home = page(converged, "pyonly", "/")
    assert (home["status"], home["body"]) == (200, '<span class="version">v1</span>')


@pytest.mark.parametrize("app", sorted(LOAD_PATHS))
def test_release_and_rollback_under_load(converged, app):
    before = live(converged, app)
    with Load(
        converged.host_ip,
        80,
        LOAD_PATHS[app],
        host_header=f"{app}.test",
        clients=CLIENTS,
    ) as load:
        rc, release, _ = converged.salt("djangoapp.release", "version=v2", f"app={app}")
        assert rc == 0 and release["result"] is True, release
        assert 'class="version">v2<' in page(converged, app, LOAD_PATHS[app])["body"]
        rc, back, _ = converged.salt("djangoapp.rollback", f"app={app}")
        assert rc == 0 and back["result"] is True, back
    result = load.result
    print(f"{app}: {result}")
    assert result.failed == 0, result.as_dict()
    assert result.succeeded > 0
    assert live(converged, app) == before
    assert 'class="version">v1<' in page(converged, app, LOAD_PATHS[app])["body"]


def test_second_apply_changes_nothing(converged):
    rc, second, _ = converged.apply()
    assert not failed_states(second), failed_states(second)
    assert changed_states(second) == []
    assert rc == 0


def test_requires_python_3_12_deploys_where_the_host_has_it_else_stops_at_build(
    converged,
):
    """Debian 13 (Python 3.13) deploys ``requires-python = ">=3.12"``; Debian 12
    (3.11) stops it at the build, naming both, and keeps the host as it was."""
    found = converged.infra.run("python3 -c 'import sys; print(*sys.version_info[:3])'")
    python = tuple(int(part) for part in found.stdout.split())
    kept, current = releases(converged, "pyonly"), live(converged, "pyonly")
    rc, release, _ = converged.salt("djangoapp.release", "version=py312", "app=pyonly")
    if python >= (3, 12):
        assert rc == 0 and release["result"] is True, release
        assert 'class="version">v3<' in page(converged, "pyonly")["body"]
        rc, back, _ = converged.salt("djangoapp.rollback", "app=pyonly")
        assert rc == 0 and back["result"] is True, back
    else:
        assert rc != 0 and release["result"] is False, release
        assert release["failed_step"] == "build"
        version = ".".join(map(str, python))
        assert release["error"].startswith(
            f"the project requires Python >=3.12 (pyproject.toml) and python3 is "
            f"Python {version}: "
        ), release
        assert releases(converged, "pyonly") == kept
    assert live(converged, "pyonly") == current
    assert 'class="version">v1<' in page(converged, "pyonly")["body"]


def test_static_root_unset_stops_at_preflight_naming_the_fix(converged):
    kept, current = releases(converged, "plain"), live(converged, "plain")
    rc, release, _ = converged.salt(
        "djangoapp.release", "version=no-static-root", "app=plain"
    )
    assert rc != 0 and release["result"] is False, release
    assert release["failed_step"] == "preflight"
    assert "STATIC_ROOT" in release["error"], release
    assert "DJANGO_STATIC_ROOT" in release["error"], release
    assert releases(converged, "plain") == kept
    assert live(converged, "plain") == current
    assert page(converged, "plain", "/about/")["status"] == 200
    assert page(converged, "portal", "/accounts/login/")["status"] == 200


def test_a_site_nginx_refuses_holds_no_other_app_back(converged):
    """A new app whose project's STATIC_URL has a space (Django takes it, Nginx does
    not), in the same apply as a new server name for portal: the bad site is tested
    before it is written and refused; portal's new name is served, and so are the
    other apps."""
    pillar = copy.deepcopy(converged.pillar)
    apps = pillar["djangoapp"]["apps"]
    apps["portal"]["server_names"] = ["portal.test", "www.portal.test"]
    apps["oddity"] = app_pillar(
        "oddity",
        "plain",
        version="odd-static-url",
        settings_module="plain.settings",
        wsgi="plain.wsgi:application",
        health_path="/about/",
    )
    with converged.pillar_for_a_while(pillar):
        rc, states, output = converged.apply()
    failures = failed_states(states)
    assert rc != 0, output
    assert any("djangoapp-oddity-nginx-site-file-managed" in f for f in failures)
    assert all("oddity" in line for line in failures), "\n".join(failures)
    site = next(
        value
        for key, value in states.items()
        if "djangoapp-oddity-nginx-site-file-managed" in key
    )
    assert "check_cmd execution failed" in site["comment"]
    assert "location" in site["comment"], site["comment"]
    infra = converged.infra
    assert not infra.file("/etc/nginx/sites-available/djangoapp-oddity.conf").exists
    assert infra.run("nginx -t").rc == 0
    new_name = converged.get("http://127.0.0.1/accounts/login/", "www.portal.test")
    assert new_name["status"] == 200, new_name
    for app, path in LOAD_PATHS.items():
        assert page(converged, app, path)["status"] == 200, app
