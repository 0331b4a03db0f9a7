"""Debian 13 "trixie" for real: a host of its own (test/testhost.py --debian 13) in a
slot beside the shared Debian 12 host, converged masterless with ``salt-call
--local`` from the repository shown read-only in the host (as test_combinations.py
does), with every part of the stack that has Debian packages:

- shop: PostgreSQL 17 + Redis + Supervisor + WSGI, self-signed HTTPS;
- blog: MariaDB 11.8 + memcached + systemd + ASGI (Uvicorn workers), plain HTTP;
- the host features: firewall, hardened sshd, fail2ban, automatic updates, backups,
  and the NRPE, Zabbix and SNMP agents.

Then: both apps answer from their database and cache, Nginx takes its configuration
(Debian 13's nginx.conf says ``server_tokens off;`` itself), a second state.apply
changes nothing, and a release of shop under the engine switches it to the new
version. Each app builds with Debian 13's Python, 3.13.

The slot is $DJANGOAPP_DEBIAN13_SLOT, by default the shared host's slot plus 22.
"""

from __future__ import annotations

import json

import pytest
from secondhost import (
    SecondHost,
    bootable_testhost,
    converged_second_host,
    slot_from,
)
from test_combinations import app_pillar

import demorepo
from stack import changed_states, failed_states

pytestmark = pytest.mark.integration

HOSTNAME = "djangoapp-test-debian13"


def debian13_slot() -> int:
    return slot_from("DJANGOAPP_DEBIAN13_SLOT", 22)


@pytest.fixture(scope="module")
def trixie(tmp_path_factory) -> SecondHost:
    module = bootable_testhost(debian13_slot())
    work = tmp_path_factory.mktemp("debian13")
    demorepo.build_repo(work / "git" / "demo.git")
    master = module.MASTER_IP
    pillar = {
        "djangoapp": {
            "apps": {
                "shop": app_pillar(
                    "shop",
                    wsgi="demosite.wsgi:application",
                    process_manager="supervisor",
                    database={"engine": "postgresql", "password": "shop-db-5e1f"},
                    cache={"engine": "redis"},
                    tls={"mode": "selfsigned"},
                ),
                "blog": app_pillar(
                    "blog",
                    asgi="demosite.asgi:application",
                    process_manager="systemd",
                    database={"engine": "mysql", "password": "blog-db-a7c2"},
                    cache={"engine": "memcached"},
                    tls={"mode": "off"},
                ),
            },
            "proxy": {"http": module.PROXY_URL, "https": module.PROXY_URL},
            "firewall": {"enabled": True, "allow": [22, 80, 443]},
            "ssh": {"harden": True},
            "fail2ban": {"enabled": True},
            "auto_updates": {"enabled": True},
            "backups": {"enabled": True, "keep": 3, "hour": 3},
            "monitoring": {
                "nrpe": {"enabled": True, "allowed_hosts": [master]},
                "zabbix": {"enabled": True, "server": master},
                "snmp": {
                    "enabled": True,
                    "community": "snmp-community-debian13",
                    "allowed": [master],
                },
            },
        }
    }
    with converged_second_host(module, work, HOSTNAME, pillar, debian="13") as host:
        yield host


@pytest.fixture(scope="module")
def converged(trixie) -> SecondHost:
    return trixie.converged()


def test_the_host_is_debian_13(trixie):
    os_release = trixie.host.get_file("/etc/os-release")
    assert "VERSION_CODENAME=trixie" in os_release


def test_first_apply_has_no_failure(trixie):
    failures = failed_states(trixie.first_apply)
    assert not failures, "\n".join(failures)


def test_shop_answers_over_https_with_postgresql_and_redis(converged):
    page = converged.get("https://127.0.0.1/", "shop.test")
    assert page["status"] == 200, page
    assert "hello from the database" in page["body"]
    assert "cache: ok (redis)" in page["body"]


def test_blog_answers_with_mariadb_and_memcached(converged):
    page = converged.get("http://127.0.0.1/", "blog.test")
    assert page["status"] == 200, page
    assert "hello from the database" in page["body"]
    assert "cache: ok (memcached)" in page["body"]


def test_postgresql_17_cluster_has_our_settings(converged):
    settings = converged.infra.file("/etc/postgresql/17/main/conf.d/djangoapp.conf")
    assert settings.exists
    assert "listen_addresses = 'localhost'" in settings.content_string


def test_nginx_takes_its_configuration_with_server_tokens_off(converged):
    config = converged.infra.run("nginx -T")
    assert config.rc == 0, config.stderr
    tokens = [
        line.split("#")[0].strip()
        for line in config.stdout.splitlines()
        if line.split("#")[0].strip().startswith("server_tokens")
    ]
    assert tokens == ["server_tokens off;"]


def test_apps_run_on_debian_13s_python(converged):
    for name in ("shop", "blog"):
        version = converged.infra.run(
            f"/srv/djangoapp/{name}/current/venv/bin/python -c "
            "'import sys; print(sys.version_info[:2])'"
        )
        assert version.stdout.strip() == "(3, 13)", version.stderr


def test_host_services_run(converged):
    for service in (
        "nginx",
        "postgresql",
        "mariadb",
        "redis-server",
        "memcached",
        "supervisor",
        "djangoapp-blog",
        "ssh",
        "fail2ban",
        "nagios-nrpe-server",
        "zabbix-agent",
        "snmpd",
    ):
        assert converged.infra.service(service).is_running, service


def test_second_apply_changes_nothing(converged):
    rc, second, _ = converged.apply()
    assert not failed_states(second), failed_states(second)
    assert changed_states(second) == []
    assert rc == 0


def test_release_switches_shop_to_the_new_version(converged):
    rc, result, _ = converged.salt(
        "djangoapp.release", "version=v1.1.0", "app=shop", timeout=900
    )
    assert rc == 0, result
    live = converged.infra.file("/srv/djangoapp/shop/current/release.json")
    assert json.loads(live.content_string)["version"] == "v1.1.0"
    page = converged.get("https://127.0.0.1/", "shop.test")
    assert page["status"] == 200, page
