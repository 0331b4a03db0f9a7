"""Nginx -> Gunicorn (Supervisor) -> Django -> PostgreSQL and the cache, checked on
the host (HTTPS when the demo pillar turns TLS on: test_tls.py checks that side)."""

import re

import pytest

pytestmark = pytest.mark.integration


def test_page_answers_through_nginx_with_a_row_from_postgresql(
    demo_app, demo_url, http_get
):
    page = http_get(demo_url("/"), demo_app["server_names"][0])
    assert page["status"] == 200
    assert "hello from the database" in page["body"]
    assert demo_app["version"] in page["body"]
    # The page wrote a value to its cache and read it back.
    engine = (demo_app.get("cache") or {}).get("engine", "none")
    expected = "cache: none" if engine == "none" else f"cache: ok ({engine})"
    assert expected in page["body"]


def test_unknown_host_gets_no_answer(host):
    probe = host.run(
        "python3 -c %s",
        "import http.client as h; c = h.HTTPConnection('127.0.0.1', 80, timeout=5); "
        "c.request('GET', '/', headers={'Host': 'unknown.invalid'}); c.getresponse()",
    )
    assert probe.rc != 0
    assert "RemoteDisconnected" in probe.stderr


def test_stylesheet_is_served_by_nginx_from_the_live_release(
    demo_app, demo_url, host, http_get
):
    server_name = demo_app["server_names"][0]
    page = http_get(demo_url("/"), server_name)
    stylesheet = re.search(r'href="(/static/[^"]+\.css)"', page["body"]).group(1)
    css = http_get(demo_url(stylesheet), server_name)
    assert css["status"] == 200
    # Only the Nginx static location sets an expiry; Django with DEBUG off serves no
    # static files at all.
    assert css["headers"].get("Cache-Control") == "max-age=604800"
    assert "Expires" in css["headers"]
    base = f"/srv/djangoapp/{demo_app['name']}"
    # collected into DJANGO_STATIC_ROOT, the live release's own static/
    on_disk = host.run(
        "find -L %s/current/static -path '*%s'", base, stylesheet.split("/static/")[1]
    )
    assert on_disk.stdout.strip(), "the stylesheet is not in the live release"
    assert host.file(on_disk.stdout.split()[0]).content_string == css["body"]


def test_postgresql_listens_on_loopback_only(host):
    listening = host.run("ss -Hltn 'sport = :5432'").stdout.split("\n")
    addresses = [
        line.split()[3].rsplit(":", 1)[0] for line in listening if line.strip()
    ]
    assert addresses
    assert set(addresses) <= {"127.0.0.1", "[::1]"}


def test_database_role_is_not_a_superuser(demo_app, host):
    user = demo_app["database"].get("user", demo_app["name"])
    flags = host.run(
        "runuser -u postgres -- psql -tA -c %s",
        "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles"
        f" WHERE rolname = '{user}'",
    )
    assert flags.rc == 0, flags.stderr
    assert flags.stdout.strip() == "f|f|f"


def test_gunicorn_runs_as_the_app_user_from_the_live_release(demo_app, host):
    name = demo_app["name"]
    processes = host.run(
        "ps -eo user=,pid=,args= | grep -F %s | grep -v grep",
        f"gunicorn --config /etc/djangoapp/{name}/gunicorn.conf.py",
    ).stdout.splitlines()
    assert len(processes) >= 2, "a master and at least one worker"
    assert {line.split()[0] for line in processes} == {name}
    live = host.file(f"/srv/djangoapp/{name}/current").linked_to
    for line in processes:
        cwd = host.run("readlink /proc/%s/cwd", line.split()[1]).stdout.strip()
        assert cwd.startswith(live + "/"), (cwd, live)


def test_gunicorn_listens_on_a_socket_only_nginx_can_reach(demo_app, host):
    socket = host.file(f"/run/djangoapp/{demo_app['name']}/gunicorn.sock")
    assert socket.is_socket
    # Bound by the process manager (supervisord or systemd), not by Gunicorn.
    assert (socket.user, socket.mode) == (demo_app["name"], 0o660)
    directory = host.file(f"/run/djangoapp/{demo_app['name']}")
    assert directory.user == demo_app["name"]
    assert directory.mode & 0o007 == 0


def test_environment_file_is_private(demo_app, host):
    env = host.file(f"/etc/djangoapp/{demo_app['name']}/env.json")
    assert (env.user, env.group, env.mode) == ("root", demo_app["name"], 0o640)


def test_app_user_cannot_write_its_code(demo_app, host):
    name = demo_app["name"]
    for path in (
        "current/src/manage.py",
        "current/src",
        "current/venv/bin",
        "releases",
    ):
        check = host.run(
            "runuser -u %s -- test -w %s", name, f"/srv/djangoapp/{name}/{path}"
        )
        assert check.rc != 0, f"{name} can write {path}"


def test_app_user_has_no_login_shell(demo_app, host):
    assert host.user(demo_app["name"]).shell.endswith("nologin")


def test_manage_command_runs_as_the_app(demo_app, host):
    result = host.run("%s-manage showmigrations --plan", demo_app["name"])
    assert result.rc == 0, result.stderr
    assert "[X]" in result.stdout and "[ ]" not in result.stdout


def test_deploy_check_finds_nothing_with_the_production_pillar(demo_app, host):
    """Django's deployment checklist, run in the live release with the environment the
    pillar gives (test/pillar/stack.sls): not even a warning."""
    result = host.run("%s-manage check --deploy --fail-level WARNING", demo_app["name"])
    assert result.rc == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
