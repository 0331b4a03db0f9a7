"""Apps come and go, on a host of their own with two apps on PostgreSQL (shop under
Supervisor, blog under systemd): blog marked ``absent`` is taken down while shop
serves under load, with a last dump of its database and its data kept; ``purge``
then removes its database, users and files, the dumps kept; ``djangoapp.clean``
leaves the host without the formula's services, its backups kept.

The tests run in file order, each from where the one before left the host. The slot
is $DJANGOAPP_REMOVAL_SLOT, by default the shared host's slot plus 40.
"""

from __future__ import annotations

import copy

import pytest
from secondhost import SecondHost, bootable_testhost, converged_second_host, slot_from
from test_combinations import app_pillar

import demorepo
from loadgen import Load
from stack import changed_states, failed_states

pytestmark = pytest.mark.integration

HOSTNAME = "djangoapp-test-removal"


def pillar_of(module, **blog) -> dict:
    return {
        "djangoapp": {
            "apps": {
                "shop": app_pillar(
                    "shop",
                    wsgi="demosite.wsgi:application",
                    database={"engine": "postgresql", "password": "shop-db-5e2a"},
                ),
                "blog": blog
                or app_pillar(
                    "blog",
                    wsgi="demosite.wsgi:application",
                    process_manager="systemd",
                    database={"engine": "postgresql", "password": "blog-db-77c0"},
                ),
            },
            "proxy": {"http": module.PROXY_URL, "https": module.PROXY_URL},
        }
    }


@pytest.fixture(scope="module")
def removal(tmp_path_factory):
    module = bootable_testhost(slot_from("DJANGOAPP_REMOVAL_SLOT", 40))
    work = tmp_path_factory.mktemp("removal")
    demorepo.build_repo(work / "git" / "demo.git")
    with converged_second_host(module, work, HOSTNAME, pillar_of(module)) as host:
        host.module = module
        yield host.converged()


def ids(state_return: dict, state_ids: list[str]) -> list[str]:
    return sorted(state_return[key]["__id__"] for key in state_ids)


def run(host: SecondHost, *argv: str):
    return host.host.exec(list(argv), check=False)


def postgres_has(host: SecondHost, table: str, column: str, name: str) -> bool:
    found = run(
        host,
        "runuser", "-u", "postgres", "--", "psql", "-tA", "-c",
        f"SELECT 1 FROM {table} WHERE {column} = '{name}'",
    )  # fmt: skip
    assert found.rc == 0, found.stderr
    return found.stdout.strip() == "1"


def exists(host: SecondHost, path: str) -> bool:
    return run(host, "test", "-e", path).rc == 0


def removed_dumps(host: SecondHost) -> list[str]:
    listed = run(host, "find", "/var/backups/djangoapp/blog", "-name", "removed-*")
    return listed.stdout.split()


def test_an_absent_app_is_taken_down_while_the_other_serves(removal):
    assert removal.get("http://127.0.0.1/", "blog.test")["status"] == 200
    absent = copy.deepcopy(removal.pillar)
    absent["djangoapp"]["apps"]["blog"]["absent"] = True
    # Taking blog's site away reloads Nginx (see Load's keep_alive).
    load = Load(removal.ip, 80, "/", "shop.test", clients=8, keep_alive=False)
    with removal.pillar_for_a_while(absent), load:
        rc, ret, output = removal.apply()
    print(load.result)
    assert rc == 0 and not failed_states(ret), output
    assert load.result.failed == 0, load.result.failures
    assert load.result.succeeded > 0
    changed = ids(ret, changed_states(ret))
    assert [state_id for state_id in changed if "-blog-" in state_id] == [
        "djangoapp-blog-configuration-absent-/etc/djangoapp/blog",
        "djangoapp-blog-configuration-absent-/etc/tmpfiles.d/djangoapp-blog.conf",
        "djangoapp-blog-configuration-absent-/run/djangoapp/blog",
        "djangoapp-blog-configuration-absent-/usr/local/bin/blog-manage",
        "djangoapp-blog-last-dump-taken",
        "djangoapp-blog-nginx-site-absent-/etc/nginx/sites-available/djangoapp-blog.conf",
        "djangoapp-blog-nginx-site-absent-/etc/nginx/sites-enabled/djangoapp-blog.conf",
        "djangoapp-blog-systemd-reloaded-after-unit-removal",
        "djangoapp-blog-systemd-service-dead",
        "djangoapp-blog-systemd-socket-dead",
        "djangoapp-blog-systemd-socket-unit-absent",
        "djangoapp-blog-systemd-unit-absent",
    ]
    assert not [state_id for state_id in changed if "-shop-" in state_id]
    # Workers, unit and site gone; Nginx no longer knows the name.
    assert run(removal, "systemctl", "is-active", "djangoapp-blog").stdout.strip() in (
        "inactive",
        "unknown",
    )
    assert not exists(removal, "/etc/systemd/system/djangoapp-blog.service")
    assert not exists(removal, "/etc/systemd/system/djangoapp-blog.socket")
    assert run(removal, "pgrep", "-f", "/etc/djangoapp/blog/gunicorn.conf.py").rc == 1
    nginx = run(removal, "nginx", "-T").stdout
    assert "blog.test" not in nginx and "shop.test" in nginx
    # Kept: its database and role, its user, its releases, and the last dump.
    assert postgres_has(removal, "pg_database", "datname", "blog")
    assert postgres_has(removal, "pg_roles", "rolname", "blog")
    assert run(removal, "id", "blog").rc == 0
    assert exists(removal, "/srv/djangoapp/blog/current")
    (dump,) = removed_dumps(removal)
    assert dump.endswith(".dump")
    assert run(removal, "pg_restore", "--list", dump).rc == 0
    assert removal.get("http://127.0.0.1/", "shop.test")["status"] == 200

    with removal.pillar_for_a_while(absent):
        rc, again, output = removal.apply()
    assert rc == 0 and changed_states(again) == [], output


def test_purge_removes_the_database_users_and_files_and_keeps_the_dumps(removal):
    dumps = removed_dumps(removal)
    purged = pillar_of(removal.module, absent=True, purge=True)
    with removal.pillar_for_a_while(purged):
        rc, ret, output = removal.apply()
    assert rc == 0 and not failed_states(ret), output
    assert not postgres_has(removal, "pg_database", "datname", "blog")
    assert not postgres_has(removal, "pg_roles", "rolname", "blog")
    assert run(removal, "id", "blog").rc == 1
    assert run(removal, "getent", "group", "blog").rc == 2
    assert not exists(removal, "/srv/djangoapp/blog")
    assert not exists(removal, "/var/log/djangoapp/blog")
    # Nothing left to dump: the dump taken when it went away is the one kept.
    assert removed_dumps(removal) == dumps
    assert postgres_has(removal, "pg_database", "datname", "shop")
    assert removal.get("http://127.0.0.1/", "shop.test")["status"] == 200


def test_clean_leaves_no_service_of_the_formula_and_keeps_the_backups(removal):
    rc, ret, output = removal.salt(
        "state.apply", "djangoapp.clean", "--retcode-passthrough"
    )
    assert rc == 0 and not failed_states(ret), output
    for service in ("nginx", "supervisor", "postgresql", "djangoapp-shop"):
        active = run(removal, "systemctl", "is-active", service).stdout.strip()
        assert active in ("inactive", "unknown"), service
        enabled = run(removal, "systemctl", "is-enabled", service).stdout.strip()
        assert enabled in ("disabled", ""), service
    assert run(removal, "pgrep", "-f", "gunicorn").rc == 1
    for path in ("/etc/djangoapp", "/usr/local/lib/djangoapp", "/opt/djangoapp/tools"):
        assert not exists(removal, path), path
    shop_dumps = run(
        removal, "find", "/var/backups/djangoapp/shop", "-name", "removed-*"
    )
    assert len(shop_dumps.stdout.split()) == 1
    assert len(removed_dumps(removal)) == 1
    # Data kept: shop's releases and PostgreSQL's cluster.
    assert exists(removal, "/srv/djangoapp/shop/current")
    assert run(removal, "sh", "-c", "ls -d /var/lib/postgresql/*/main").rc == 0
