"""Issue 3's other stack combinations, on a second host beside the shared one (its own
test host slot), converged masterless with ``salt-call --local`` from the repository
shown read-only in the host, the way test/try does it. Two apps on one host:

- shop: MariaDB + memcached + systemd + ASGI (Uvicorn workers), HTTPS with a
  certificate and key from the pillar (tls.mode provided);
- blog: MariaDB (a database and user of its own) + Redis + Supervisor + WSGI,
  plain HTTP.

Each page answers with a row from its database and a value written to and read back
from its cache; a second state.apply changes nothing; nothing of one app clashes
with the other's; a release with a migration backs MariaDB up with mysqldump and
reloads Gunicorn through systemd; blog's nightly dump restores its rows under load;
``djangoapp.release_apps`` releases both apps at once.

The slot is $DJANGOAPP_COMBINATION_SLOT, by default the shared host's slot plus 10.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from secondhost import (
    GIT_MOUNT,
    SecondHost,
    bootable_testhost,
    converged_second_host,
    slot_from,
)
from test_maintenance import page_kind

import demorepo
from loadgen import Load
from stack import changed_states, failed_states

pytestmark = pytest.mark.integration

HOSTNAME = "djangoapp-test-combinations"
BLOG_STATIC_ROOT = "/var/www/blog/static"
SECRETS = {
    "shop_db": "shop-db-canary-'quoted'-7d1c",
    "blog_db": "blog-db-canary-b93e",
}


def combination_slot() -> int:
    return slot_from("DJANGOAPP_COMBINATION_SLOT", 10)


def self_signed_pair(directory: Path, name: str) -> tuple[str, str]:
    """A certificate and key made on this machine, handed over in the pillar."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-nodes", "-newkey", "rsa:2048", "-days", "30"]
        + ["-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert.read_text(), key.read_text()


def serve_git_over_ssh(host, proxy_url: str, work: Path) -> dict:
    """sshd in the host, serving the demo repository to a `git` user (git-shell) that
    knows one key: the pillar keys of an app that fetches over SSH with that key."""
    key = work / "deploy_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "blog deploy key"]
        + ["-f", str(key)],
        check=True,
    )
    apt = ["apt-get", "-q", "-o", f"Acquire::http::Proxy={proxy_url}"]
    host.exec([*apt, "update"])
    host.exec(
        [*apt, "install", "-y", "--no-install-recommends", "openssh-server", "git"]
    )
    host.exec(["useradd", "--create-home", "--shell", "/usr/bin/git-shell", "git"])
    # The repository is this machine's, owned by root: git serves it to `git` only
    # when told it is safe.
    host.exec(
        ["runuser", "-u", "git", "--", "git", "config", "--global", "--add"]
        + ["safe.directory", f"{GIT_MOUNT}/demo.git"]
    )
    host.exec(
        ["install", "-d", "-o", "git", "-g", "git", "-m", "0700", "/home/git/.ssh"]
    )
    host.exec(
        ["install", "-o", "git", "-g", "git", "-m", "0600", "/dev/stdin"]
        + ["/home/git/.ssh/authorized_keys"],
        input="restrict " + (work / "deploy_key.pub").read_text(),
    )
    host.exec(["systemctl", "enable", "--now", "ssh"])
    key_type, host_key = host.exec(
        ["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]
    ).stdout.split()[:2]
    return {
        "repo": f"ssh://git@127.0.0.1{GIT_MOUNT}/demo.git",
        "deploy_key": key.read_text(),
        "known_hosts": f"127.0.0.1 {key_type} {host_key}\n",
    }


def app_pillar(name: str, env: dict | None = None, **settings) -> dict:
    return {
        "repo": f"file://{GIT_MOUNT}/demo.git",
        "version": "v1.0.0",
        "settings_module": "demosite.settings",
        "server_names": [f"{name}.test"],
        "health_path": "/healthz/",
        "env": {
            "DJANGO_SECRET_KEY": f"{name}-secret-key-" + "0123456789abcdef" * 3,
            **(env or {}),
        },
        **settings,
    }


def postgresql_app_pillar(module, name: str, password: str, **host) -> dict:
    """The whole pillar of a host with one demo app on PostgreSQL (WSGI, under
    Supervisor) fetching through ``module``'s proxy; ``host``: more host keys."""
    return {
        "djangoapp": {
            "apps": {
                name: app_pillar(
                    name,
                    wsgi="demosite.wsgi:application",
                    database={"engine": "postgresql", "password": password},
                    **host.pop("app", {}),
                )
            },
            "proxy": {"http": module.PROXY_URL, "https": module.PROXY_URL},
            **host,
        }
    }


@pytest.fixture(scope="module")
def combination(tmp_path_factory) -> SecondHost:
    module = bootable_testhost(combination_slot())
    work = tmp_path_factory.mktemp("combinations")
    demorepo.build_repo(work / "git" / "demo.git")
    certificate, key = self_signed_pair(work, "shop.test")
    pillar = {
        "djangoapp": {
            "apps": {
                "shop": app_pillar(
                    "shop",
                    asgi="demosite.asgi:application",
                    process_manager="systemd",
                    database={"engine": "mysql", "password": SECRETS["shop_db"]},
                    cache={"engine": "memcached"},
                    tls={"mode": "provided", "cert": certificate, "key": key},
                ),
                # The layout of many projects: STATIC_ROOT outside the release
                # (an absolute path), MEDIA_ROOT inside it (BASE_DIR / "media").
                "blog": app_pillar(
                    "blog",
                    env={
                        "DJANGO_STATIC_ROOT": BLOG_STATIC_ROOT,
                        "DJANGO_MEDIA_ROOT": "",
                    },
                    wsgi="demosite.wsgi:application",
                    process_manager="supervisor",
                    database={
                        "engine": "mysql",
                        "name": "blog_db",
                        "user": "blog_user",
                        "password": SECRETS["blog_db"],
                    },
                    cache={"engine": "redis"},
                    tls={"mode": "off"},
                ),
            },
            "proxy": {"http": module.PROXY_URL, "https": module.PROXY_URL},
            "backups": {"enabled": True, "keep": 3, "hour": 3},
        }
    }

    def serve_blog_over_ssh(host):
        # blog fetches over SSH with a deploy key, from the host's own sshd.
        pillar["djangoapp"]["apps"]["blog"].update(
            serve_git_over_ssh(host, module.PROXY_URL, work)
        )

    with converged_second_host(
        module, work, HOSTNAME, pillar, before_apply=serve_blog_over_ssh
    ) as combo:
        combo.certificate = certificate
        yield combo


@pytest.fixture(scope="module")
def converged(combination) -> SecondHost:
    return combination.converged()


def test_first_apply_has_no_failure(combination):
    failures = failed_states(combination.first_apply)
    assert not failures, "\n".join(failures)


def test_secrets_stay_out_of_the_state_return(combination):
    _, key = (
        combination.pillar["djangoapp"]["apps"]["shop"]["tls"][part]
        for part in ("cert", "key")
    )
    key_body = key.splitlines()[1]
    deploy_key_body = combination.pillar["djangoapp"]["apps"]["blog"][
        "deploy_key"
    ].splitlines()[1]
    for secret in [*SECRETS.values(), key_body, deploy_key_body]:
        assert secret not in combination.first_apply_output
        assert quote(secret) not in combination.first_apply_output


def test_shop_answers_over_https_with_mariadb_and_memcached(converged):
    page = converged.get("https://127.0.0.1/", "shop.test")
    assert page["status"] == 200, page
    assert "hello from the database" in page["body"]
    assert "cache: ok (memcached)" in page["body"]
    redirect = converged.get("http://127.0.0.1/", "shop.test")
    assert redirect["status"] == 301
    assert redirect["headers"]["Location"] == "https://shop.test/"


def test_blog_answers_over_http_with_mariadb_and_redis(converged):
    page = converged.get("http://127.0.0.1/", "blog.test")
    assert page["status"] == 200, page
    assert "hello from the database" in page["body"]
    assert "cache: ok (redis)" in page["body"]
    assert "strict-transport-security" not in page["header_lists"]


def test_blog_fetches_over_ssh_with_its_deploy_key(converged):
    """The repository of blog is an SSH URL: its releases came through sshd with the
    pillar's deploy key (readable by the app only), checking the host key against the
    pillar's known_hosts."""
    infra, blog = converged.infra, converged.pillar["djangoapp"]["apps"]["blog"]
    key = infra.file("/etc/djangoapp/blog/deploy_key")
    assert (key.user, key.mode) == ("blog", 0o600)
    assert key.content_string == blog["deploy_key"]
    assert (
        infra.file("/etc/djangoapp/blog/known_hosts").content_string
        == (blog["known_hosts"])
    )
    remote = infra.run("git --git-dir /srv/djangoapp/blog/repo.git remote -v")
    assert blog["repo"] in remote.stdout, remote.stdout + remote.stderr
    accepted = infra.run("journalctl -u ssh --no-pager -o cat").stdout
    assert "Accepted publickey for git from 127.0.0.1" in accepted
    live = infra.file("/srv/djangoapp/blog/current/release.json").content_string
    assert json.loads(live)["version"] == blog["version"]


def test_second_apply_changes_nothing(converged):
    rc, second, _ = converged.apply()
    assert not failed_states(second), failed_states(second)
    assert changed_states(second) == []
    assert rc == 0


def test_nginx_serves_the_certificate_from_the_pillar(converged):
    infra = converged.infra
    served = infra.run(
        "openssl s_client -connect 127.0.0.1:443 -servername shop.test "
        "</dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
    )
    expected = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256"],
        input=converged.certificate,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert served.stdout.strip() == expected.strip()
    key = infra.file("/etc/djangoapp/shop/tls/key.pem")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)


def test_shop_runs_asgi_workers_under_systemd(converged):
    infra = converged.infra
    service = infra.service("djangoapp-shop")
    assert service.is_enabled
    assert service.is_running
    master = infra.run(
        "systemctl show --property=MainPID --value djangoapp-shop"
    ).stdout.strip()
    args = infra.run("tr '\\0' ' ' < /proc/%s/cmdline", master).stdout
    assert "gunicorn" in args and "demosite.asgi:application" in args
    log = infra.file("/var/log/djangoapp/shop/gunicorn.log").content_string
    assert "Using worker: uvicorn_worker.UvicornWorker" in log
    assert converged.get("https://127.0.0.1/healthz/", "shop.test")["status"] == 200


def test_the_two_apps_share_nothing_of_their_own(converged):
    infra = converged.infra
    for name in ("shop", "blog"):
        assert infra.user(name).exists
        assert infra.file(f"/run/djangoapp/{name}/gunicorn.sock").is_socket
        assert infra.file(f"/etc/nginx/sites-enabled/djangoapp-{name}.conf").exists
    shop = json.loads(infra.file("/etc/djangoapp/shop/env.json").content_string)
    blog = json.loads(infra.file("/etc/djangoapp/blog/env.json").content_string)
    assert shop["DATABASE_URL"].endswith("@localhost:3306/shop")
    assert blog["DATABASE_URL"].startswith("mysql://blog_user:")
    assert blog["DATABASE_URL"].endswith("@localhost:3306/blog_db")
    assert shop["MEMCACHED_URL"] == "127.0.0.1:11211"
    assert blog["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert "REDIS_URL" not in shop and "MEMCACHED_URL" not in blog
    databases = infra.run("mysql -NBe 'SHOW DATABASES'").stdout.split()
    assert {"shop", "blog_db"} <= set(databases)
    # Each account reaches its own database only.
    grants = infra.run(
        "mysql --raw -NBe %s",
        "SELECT User, Db FROM mysql.db WHERE User IN ('shop', 'blog_user')",
    ).stdout.split("\n")
    assert {tuple(line.split("\t")) for line in grants if line} == {
        ("shop", "shop"),
        ("blog_user", "blog\\_db"),
    }


def test_shared_services_listen_on_loopback_only(converged):
    infra = converged.infra
    exposed = set()
    for line in infra.run("ss -Hltnu").stdout.splitlines():
        protocol, local = line.split()[0], line.split()[4]
        address, _, port = local.rpartition(":")
        if address.strip("[]").split("%")[0] not in ("127.0.0.1", "::1"):
            exposed.add(f"{port}/{protocol}")
    assert exposed <= {"80/tcp", "443/tcp", "22/tcp"}, exposed
    assert "11211" not in infra.run("ss -Hlun").stdout, "memcached listens on UDP"
    settings = infra.run(
        "mysql -NBe %s",
        "SELECT @@bind_address, @@local_infile,"
        " (SELECT COUNT(*) FROM mysql.user WHERE User = ''),"
        " (SELECT COUNT(*) FROM information_schema.schemata"
        " WHERE schema_name = 'test')",
    ).stdout.split()
    assert settings == ["127.0.0.1", "0", "0", "0"]
    assert infra.run("redis-cli CONFIG GET protected-mode").stdout.split() == [
        "protected-mode",
        "yes",
    ]


def test_release_backs_mariadb_up_and_reloads_through_systemd(converged):
    rc, release, _ = converged.salt("djangoapp.release", "version=v1.1.0", "app=shop")
    assert rc == 0, release
    assert release["result"] is True, release
    assert release["migrations_ran"] is True
    steps = {step["name"]: step for step in release["steps"]}
    assert steps["reload"]["ok"] and steps["verify"]["ok"] and steps["health"]["ok"]
    backup = converged.infra.file(release["backup"])
    assert release["backup"].endswith(".sql")
    assert (backup.user, backup.mode) == ("root", 0o600)
    assert "-- Dump completed" in backup.content_string
    page = converged.get("https://127.0.0.1/", "shop.test")
    assert '<span class="version">v1.1.0</span>' in page["body"]
    assert "cache: ok (memcached)" in page["body"]
    # The other app is left alone.
    blog = converged.get("http://127.0.0.1/", "blog.test")
    assert '<span class="version">v1.0.0</span>' in blog["body"]


def test_a_rollback_asks_mariadb_which_migrations_it_leaves(converged):
    """shop back to v1.0.0 after the release above: the mysql client lists the
    applied migrations, and v1.0.0's release.json says which its code knows.
    Then v1.1.0 again, as the tests below expect."""
    rc, rollback, _ = converged.salt("djangoapp.rollback", "app=shop")
    assert rc == 0 and rollback["result"] is True, rollback
    assert rollback["version"] == "v1.0.0"
    assert rollback["migrations_ahead"] == ["notes.0002_note_author"]
    [checked] = [step for step in rollback["steps"] if step["name"] == "migrations"]
    assert checked["by"] == "record"
    rc, release, _ = converged.salt("djangoapp.release", "version=v1.1.0", "app=shop")
    assert rc == 0 and release["result"] is True, release
    assert release["migrations_ran"] is False


def test_blog_static_root_outside_the_release_follows_releases(converged):
    """blog's STATIC_ROOT is an absolute path outside its releases: a link to the
    live release's collected files, so a release and a rollback switch it too."""
    infra = converged.infra
    static_root = infra.file(BLOG_STATIC_ROOT)
    assert static_root.is_symlink
    assert static_root.linked_to.startswith("/srv/djangoapp/blog/releases/")
    assert infra.file(f"{BLOG_STATIC_ROOT}/staticfiles.json").is_file
    page = converged.get("http://127.0.0.1/", "blog.test")
    stylesheet = re.search(r'href="(/static/[^"]+\.css)"', page["body"]).group(1)
    css = converged.get(f"http://127.0.0.1{stylesheet}", "blog.test")
    assert css["status"] == 200
    assert css["headers"].get("Cache-Control") == "max-age=604800"


def test_blog_uploads_outlive_its_releases(converged):
    """blog's MEDIA_ROOT lies inside the release: it is a link to shared/media, so an
    upload stays through the next release and Nginx serves it."""
    infra = converged.infra
    save = (
        "from django.core.files.base import ContentFile; "
        "from django.core.files.storage import default_storage as s; "
        "print(s.save('notes/kept.txt', ContentFile(b'kept through releases')))"
    )
    saved = infra.run("blog-manage shell -c %s", save)
    assert saved.rc == 0, saved.stderr
    # The last line: Django's shell may first say what it imported.
    path = saved.stdout.strip().splitlines()[-1]
    on_disk = infra.file(f"/srv/djangoapp/blog/shared/media/{path}")
    assert on_disk.content_string == "kept through releases"
    rc, release, _ = converged.salt("djangoapp.release", "version=v1.0.1", "app=blog")
    assert rc == 0 and release["result"] is True, release
    media = converged.get(f"http://127.0.0.1/media/{path}", "blog.test")
    assert (media["status"], media["body"]) == (200, "kept through releases")
    live = infra.file("/srv/djangoapp/blog/current").linked_to
    assert infra.file(BLOG_STATIC_ROOT).linked_to.startswith(live)


def blog_notes(infra) -> list[str]:
    rows = infra.run("mysql -NBe %s", "SELECT text FROM blog_db.notes_note ORDER BY id")
    assert rows.rc == 0, rows.stderr
    return rows.stdout.splitlines()


def test_restore_puts_mariadb_rows_back_under_load(converged):
    """The nightly dump of blog (the backup unit's own run), its rows deleted, the
    dump restored while a load runs: the rows are back, and the site answered
    with its maintenance page or its pages, nothing else."""
    infra = converged.infra
    added = infra.run("blog-manage add_note %s", "kept by the nightly dump")
    assert added.rc == 0, added.stderr
    kept = blog_notes(infra)
    infra.run_expect([0], "systemctl start djangoapp-backup.service")
    nightly = infra.run("ls -1t /var/backups/djangoapp/blog/nightly").stdout.split()[0]
    infra.run_expect([0], "mysql -e %s", "DELETE FROM blog_db.notes_note")
    assert blog_notes(infra) == []
    with Load(
        converged.ip,
        80,
        "/",
        "blog.test",
        clients=6,
        planned=(503,),
        classify=page_kind,
    ) as load:
        rc, restored, _ = converged.salt("djangoapp.restore", "blog")
    print(load.result)
    assert rc == 0 and restored["result"] is True, restored
    assert restored["restored_from"] == f"/var/backups/djangoapp/blog/nightly/{nightly}"
    assert restored["backup_before"].endswith(".sql")
    assert blog_notes(infra) == kept
    assert load.result.failed == 0, load.result.failures
    assert set(load.result.labels) <= {"app", "maintenance"}, load.result.labels
    page = converged.get("http://127.0.0.1/", "blog.test")
    assert page["status"] == 200 and "kept by the nightly dump" in page["body"]


def ledger_entry(infra, app: str, release_id: str) -> dict:
    ledger = infra.file(f"/srv/djangoapp/{app}/ledger.jsonl").content_string
    entries = [json.loads(line) for line in ledger.splitlines()]
    return [entry for entry in entries if entry.get("id") == release_id][-1]


def test_release_apps_releases_both_apps_at_once(converged):
    """``djangoapp.release_apps`` by one salt-call: shop (systemd, ASGI) and blog
    (Supervisor, WSGI), each with a migration and a MariaDB dump of its own, released
    at the same time, each in a process of its own. Both are rolled back afterwards,
    as the test below expects. (Requests under load are counted by bench/release.py;
    here a load once saw an HTTP 500 from shop while MariaDB migrated it: open.)"""
    infra = converged.infra
    wanted = {"shop": "v1.2.0", "blog": "v1.1.0"}
    rc, ret, _ = converged.salt("djangoapp.release_apps", json.dumps(wanted))
    assert rc == 0 and ret["result"] is True, ret
    assert ret["failed"] == [] and sorted(ret["apps"]) == ["blog", "shop"]
    runs = {}
    for app, version in wanted.items():
        release = ret["apps"][app]
        assert (release["app"], release["version"]) == (app, version)
        assert release["migrations_ran"] is True and release["backup"].endswith(".sql")
        steps = {step["name"]: step for step in release["steps"]}
        assert steps["reload"]["ok"] and steps["health"]["ok"]
        runs[app] = ledger_entry(infra, app, release["id"])
        assert runs[app]["status"] == "success"
    # the two ran at the same time
    assert runs["shop"]["started"] < runs["blog"]["finished"]
    assert runs["blog"]["started"] < runs["shop"]["finished"]
    shop = converged.get("https://127.0.0.1/", "shop.test")
    assert '<span class="version">v1.2.0</span>' in shop["body"]
    blog = converged.get("http://127.0.0.1/", "blog.test")
    assert '<span class="version">v1.1.0</span>' in blog["body"]
    for app, before in (("shop", "v1.1.0"), ("blog", "v1.0.1")):
        rc, rollback, _ = converged.salt("djangoapp.rollback", f"app={app}")
        assert rc == 0 and rollback["version"] == before, rollback


def test_a_failed_first_release_holds_no_other_site_back(converged):
    """A new app whose first release fails (its code does not import), in the same
    apply as a new server name for blog: Nginx takes blog's new name up and goes on
    serving both apps; the new app's site is there, without a release behind it."""
    pillar = copy.deepcopy(converged.pillar)
    apps = pillar["djangoapp"]["apps"]
    # the versions the tests above released: this apply releases neither app
    apps["shop"]["version"], apps["blog"]["version"] = "v1.1.0", "v1.0.1"
    apps["blog"]["server_names"] = ["blog.test", "www.blog.test"]
    apps["wiki"] = app_pillar(
        "wiki",
        version="broken-import",
        wsgi="demosite.wsgi:application",
        database={"engine": "none"},
        tls={"mode": "off"},
    )
    with converged.pillar_for_a_while(pillar):
        rc, states, output = converged.apply()
    failures = failed_states(states)
    assert rc != 0, output
    assert any("djangoapp-wiki-release-deployed" in line for line in failures)
    # only the new app's own states failed
    assert all("wiki" in line for line in failures), "\n".join(failures)
    new_name = converged.get("http://127.0.0.1/", "www.blog.test")
    assert '<span class="version">v1.0.1</span>' in new_name["body"]
    shop = converged.get("https://127.0.0.1/", "shop.test")
    assert shop["status"] == 200
    assert converged.get("http://127.0.0.1/", "wiki.test")["status"] == 502
