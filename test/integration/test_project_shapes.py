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
- pyonly: pyproject.toml alone.

Each is released and rolled back under load with 0 failed requests; a second apply
changes nothing. The failing shapes (``requires-python >=3.12`` on Debian 12's 3.11,
STATIC_ROOT unset) stop at the step that names the cause and leave the host as it
was; a site that Nginx refuses (a STATIC_URL with a space) holds no other app back.

The slot is $DJANGOAPP_SHAPES_SLOT, by default the shared host's slot plus 20.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import venv
from pathlib import Path

import projects
import pytest
import yaml
from test_combinations import CombinationHost, load_testhost_for_slot

from loadgen import Load
from stack import changed_states, failed_states

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FORMULA_MOUNT = "/srv/formula"
PILLAR_MOUNT = "/srv/pillar"
GIT_MOUNT = "/srv/git"
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
    import testhost

    value = os.environ.get("DJANGOAPP_SHAPES_SLOT", "").strip()
    return int(value) if value else testhost.SLOT.number + 20


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
                "portal": app_pillar(
                    "portal",
                    "portal",
                    settings_module="portal.settings",
                    wsgi="portal.wsgi:application",
                    requirements="requirements/production.txt",
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
            },
            "proxy": {"http": proxy_url, "https": proxy_url},
        }
    }


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    module = load_testhost_for_slot(shapes_slot())
    reason = module.missing_prerequisites()
    if reason:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"integration tests cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("shapes")
    uv = uv_binary(work)
    for name in projects.PROJECTS:
        projects.build(name, work / "git" / f"{name}.git", uv=uv)
    pillar = shapes_pillar(module.PROXY_URL)
    pillar_dir = work / "pillar"
    pillar_dir.mkdir()
    pillar_file = pillar_dir / "shapes.sls"
    pillar_file.write_text(yaml.safe_dump(pillar))
    (pillar_dir / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["shapes"]}}))
    host = module.TestHost(
        hostname=HOSTNAME,
        binds_ro={
            work / "git": GIT_MOUNT,
            pillar_dir: PILLAR_MOUNT,
            REPO: FORMULA_MOUNT,
        },
    )
    with host:
        shaped = CombinationHost(host, pillar, pillar_file, certificate="")
        shaped.host_ip = module.HOST_IP
        _, shaped.first_apply, shaped.first_apply_output = shaped.salt(
            "state.apply", "--retcode-passthrough"
        )
        yield shaped


@pytest.fixture(scope="module")
def converged(shapes):
    failures = failed_states(shapes.first_apply)
    if failures:
        pytest.fail("state.apply failed:\n" + "\n".join(failures), pytrace=False)
    return shapes


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
    freeze = converged.infra.run(
        "/srv/djangoapp/portal/current/venv/bin/python -m pip --version; "
        "ls /srv/djangoapp/portal/current/venv/lib/python3.11/site-packages"
    ).stdout
    assert "psycopg" in freeze and "django" in freeze.lower()


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
    rc, second, _ = converged.salt("state.apply", "--retcode-passthrough")
    assert not failed_states(second), failed_states(second)
    assert changed_states(second) == []
    assert rc == 0


def test_requires_python_newer_than_the_host_stops_at_build(converged):
    kept, current = releases(converged, "pyonly"), live(converged, "pyonly")
    rc, release, _ = converged.salt("djangoapp.release", "version=py312", "app=pyonly")
    assert rc != 0 and release["result"] is False, release
    assert release["failed_step"] == "build"
    assert ">=3.12" in release["error"] and "3.11" in release["error"], release
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
    converged.pillar_file.write_text(yaml.safe_dump(pillar))
    try:
        rc, states, output = converged.salt("state.apply", "--retcode-passthrough")
    finally:
        converged.pillar_file.write_text(yaml.safe_dump(converged.pillar))
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
