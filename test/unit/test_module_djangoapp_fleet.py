"""Roles across a fleet, as djangoapp.derive_settings derives them from the pillar and
the Salt mine's ``djangoapp.fleet_member`` of every minion: where each app's database
and cache are, what servers each minion runs, what its firewall opens to whom, and the
load balancer's backends; and the errors of a fleet that cannot work."""

import pytest
from salt.exceptions import CommandExecutionError
from test_module_djangoapp_settings import app, merged

NETWORK = "10.214.0.0/24"
MINE = {
    "lb": {"roles": ["lb"], "address": "10.214.0.11"},
    "web1": {"roles": ["web"], "address": "10.214.0.12"},
    "web2": {"roles": ["web"], "address": "10.214.0.13"},
    "db": {"roles": ["db", "cache"], "address": "10.214.0.14"},
    # a minion whose modules are not synced yet answers an error text
    "new": "'djangoapp.fleet_member' is not available.",
}
FLEET = {"fleet": {"network": NETWORK}, "redis": {"password": "s3cret"}}


def shop(**settings):
    return app(
        "shop",
        server_names=["shop.example.com"],
        cache={"engine": "redis"},
        **settings,
    )


@pytest.fixture
def derive_as(utils, repo_root):
    """derive_settings of minion ``minion`` with ``roles``, the fleet's pillar and
    MINE as the mine's answer."""

    def derive(minion, roles, mine=MINE, apps=None, **host):
        config = merged(
            repo_root,
            apps if apps is not None else {"shop": shop()},
            roles=roles,
            **{**FLEET, **host},
        )
        grains = {"id": minion, "fqdn": f"{minion}.example.com", "num_cpus": 2}
        return utils["djangoapp_settings.derive"](config, grains, mine)

    return derive


def test_a_web_minion_finds_its_database_and_cache_on_the_db_minion(derive_as):
    derived = derive_as("web1", ["web"])
    environment = derived["apps"]["shop"]["environment"]
    assert environment["DATABASE_URL"] == "postgres://shop:pw@10.214.0.14:5432/shop"
    assert environment["REDIS_URL"] == "redis://:s3cret@10.214.0.14:6379/0"
    assert derived["apps"]["shop"]["database"]["local"] is False
    assert derived["database_apps"] == []
    assert derived["cache_engines"] == []
    # its Nginx believes the load balancer, whose checks alone reach port 80
    assert derived["nginx"]["trusted_proxies"] == ["10.214.0.11"]
    assert derived["fleet_ports"] == [
        {"name": "web_http", "protocol": "tcp", "port": 80, "sources": ["10.214.0.11"]}
    ]
    assert derived["lb_backends"] == []
    assert derived["fleet"]["address"] == "10.214.0.12"


def test_the_db_minion_serves_every_apps_database_and_cache_to_the_web_minions(
    derive_as,
):
    derived = derive_as("db", ["db", "cache"])
    assert derived["apps"] == {}
    assert [a["name"] for a in derived["database_apps"]] == ["shop"]
    assert derived["database_apps"][0]["database"]["user"] == "shop"
    assert derived["cache_engines"] == ["redis"]
    assert derived["database_listen"] == ["localhost", "10.214.0.14"]
    assert derived["redis"]["bind"] == "127.0.0.1 -::1 10.214.0.14"
    webs = ["10.214.0.12", "10.214.0.13"]
    assert derived["fleet_ports"] == [
        {
            "name": "database_postgresql",
            "protocol": "tcp",
            "port": 5432,
            "sources": webs,
        },
        {"name": "cache_redis", "protocol": "tcp", "port": 6379, "sources": webs},
    ]
    assert [member["id"] for member in derived["fleet"]["peers"]["web"]] == [
        "web1",
        "web2",
    ]


BACKUPS = {"backups": {"enabled": True}}


def test_the_nightly_dumps_are_taken_on_the_db_minion_only(derive_as):
    """Every web minion would dump the same database: the db minion dumps it,
    over its local socket, and checks it; the app's status readable by all
    there (the app has no group on a minion where it does not run), its check
    run as the monitoring agent's own user."""
    derived = derive_as("db", ["db", "cache"], **BACKUPS)
    assert derived["backup_apps"] == [
        {
            "name": "shop",
            "database": {
                "engine": "postgresql",
                "host": "localhost",
                "port": 5432,
                "name": "shop",
                "user": "shop",
            },
            "env_file": None,
            "backup_dir": "/var/backups/djangoapp/shop",
            "backup_status": "/var/lib/djangoapp/backup-status/shop.json",
            "group": None,
        }
    ]
    assert [c for c in derived["monitoring_checks"] if c["name"] == "shop_backup"] == [
        {
            "name": "shop_backup",
            "user": None,
            "command": "/usr/local/lib/djangoapp/monitoring-check --config-root "
            "/etc/djangoapp --max-age-hours 26 --status-file "
            "/var/lib/djangoapp/backup-status/shop.json backup shop",
            "line": "/usr/local/lib/djangoapp/monitoring-check --config-root "
            "/etc/djangoapp --max-age-hours 26 --status-file "
            "/var/lib/djangoapp/backup-status/shop.json backup shop",
        }
    ]
    # the app does not run there: no other check of it
    assert [c["name"] for c in derived["monitoring_checks"]] == [
        "disk",
        "load",
        "shop_backup",
    ]
    web = derive_as("web1", ["web"], **BACKUPS)
    assert web["backup_apps"] == []
    # nor does a web minion check a nightly dump it does not take
    assert [c["name"] for c in web["monitoring_checks"]] == [
        "disk",
        "load",
        "shop_http",
        "shop_gunicorn",
        "shop_database",
    ]
    assert derive_as("lb", ["lb"], **BACKUPS)["backup_apps"] == []
    # a web minion that is the db minion too dumps as one host does
    both = derive_as("db", ["web", "db", "cache"], **BACKUPS)
    (entry,) = both["backup_apps"]
    assert (entry["env_file"], entry["group"]) == (
        "/etc/djangoapp/shop/env.json",
        "shop",
    )
    assert "shop_backup" in [c["name"] for c in both["monitoring_checks"]]


def test_one_host_dumps_every_app_with_a_database(utils, repo_root):
    config = merged(
        repo_root,
        {"shop": shop(), "static": app("static", database={"engine": "none"})},
        **BACKUPS,
    )
    derived = utils["djangoapp_settings.derive"](config, {"id": "host"}, None)
    assert [entry["name"] for entry in derived["backup_apps"]] == ["shop"]
    assert derived["backup_apps"][0]["group"] == "shop"
    off = merged(repo_root, {"shop": shop()}, backups={"enabled": False})
    assert (
        utils["djangoapp_settings.derive"](off, {"id": "host"}, None)["backup_apps"]
        == []
    )


def test_the_load_balancer_sends_each_app_to_the_web_minions(derive_as):
    derived = derive_as("lb", ["lb"], apps={"shop": shop(health_path="/up/")})
    assert derived["apps"] == {} and derived["database_apps"] == []
    (backend,) = derived["lb_backends"]
    assert backend == {
        "app": "shop",
        "name": "djangoapp_shop",
        "server_names": ["shop.example.com"],
        "health_path": "/up/",
        "health_host": "shop.example.com",
        "health_statuses": "^(2[0-9][0-9]|3[0-9][0-9])$",
        "timeout": 30,
        "tls": False,
        "tls_mode": "off",
        "hsts_max_age": 63072000,
        "servers": [
            {"id": "web1", "address": "10.214.0.12"},
            {"id": "web2", "address": "10.214.0.13"},
        ],
    }


def test_one_host_is_the_default_and_needs_no_mine(derive_as, utils, repo_root):
    config = merged(repo_root, {"shop": shop()})
    derived = utils["djangoapp_settings.derive"](
        config, {"id": "host", "num_cpus": 1}, None
    )
    assert derived["fleet"]["roles"] == ["web", "db", "cache"]
    assert derived["fleet"]["fleet"] is False
    shop_env = derived["apps"]["shop"]["environment"]
    assert shop_env["DATABASE_URL"] == "postgres://shop:pw@localhost:5432/shop"
    assert shop_env["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert [a["name"] for a in derived["database_apps"]] == ["shop"]
    assert derived["database_listen"] == ["localhost"]
    assert derived["redis"]["bind"] == "127.0.0.1 -::1"
    assert derived["fleet_ports"] == [] and derived["lb_backends"] == []


@pytest.mark.parametrize(
    ("minion", "roles", "mine", "host", "error"),
    [
        (
            "web1",
            ["web"],
            {
                "web1": MINE["web1"],
                "cache": {"roles": ["cache"], "address": "10.2.0.9"},
            },
            {},
            "djangoapp:roles: no minion of the fleet has the role db in the Salt "
            "mine, and djangoapp:apps:shop:database needs it (each minion of the "
            "fleet sends djangoapp.fleet_member to the mine: saltutil.sync_all, "
            "then mine.update)",
        ),
        (
            "web1",
            ["web"],
            {**MINE, "db2": {"roles": ["db"], "address": "10.214.0.15"}},
            {},
            "djangoapp:roles: several minions have the role db (db, db2): one "
            "serves all, and djangoapp:apps:shop:database needs it (each minion of "
            "the fleet sends djangoapp.fleet_member to the mine: saltutil.sync_all, "
            "then mine.update)",
        ),
        (
            "web3",
            ["web"],
            MINE,
            {},
            "djangoapp:fleet: this minion (web3) has no djangoapp.fleet_member entry "
            "in the Salt mine: set the pillar's mine_functions as the README says, "
            "then run saltutil.sync_all and mine.update",
        ),
        (
            "web1",
            ["web"],
            MINE,
            {"redis": {"password": ""}},
            "djangoapp:redis:password is required when Redis serves the web minions "
            "of a fleet (apps shop)",
        ),
        (
            "web1",
            ["web"],
            MINE,
            {"fleet": {"network": ""}},
            "djangoapp:fleet:network is required when djangoapp:roles is not web, "
            "db, cache (one host): the minions of a fleet find each other's "
            "addresses in it",
        ),
    ],
)
def test_a_fleet_that_cannot_work_is_refused_naming_the_key(
    derive_as, minion, roles, mine, host, error
):
    with pytest.raises(CommandExecutionError) as refused:
        derive_as(minion, roles, mine=mine, **host)
    assert str(refused.value) == error


def test_the_cache_minion_is_named_by_the_app_that_needs_it(derive_as):
    with pytest.raises(CommandExecutionError) as refused:
        derive_as("web1", ["web"], mine={"web1": MINE["web1"]})
    assert str(refused.value).startswith(
        "djangoapp:roles: no minion of the fleet has the role cache in the Salt "
        "mine, and djangoapp:apps:shop:cache needs it"
    )


def test_an_app_without_server_names_is_refused_in_a_fleet(derive_as):
    bare = app("shop")
    with pytest.raises(CommandExecutionError) as refused:
        derive_as("web1", ["web"], apps={"shop": bare})
    assert str(refused.value) == (
        "djangoapp:apps:shop:server_names is required in a fleet: the load "
        "balancer and every web minion serve the app by these names"
    )


def test_tls_ends_at_the_load_balancer_and_the_web_minions_serve_plain_http(
    derive_as,
):
    tls_shop = {"shop": shop(tls={"mode": "selfsigned"})}
    (backend,) = derive_as("lb", ["lb"], apps=tls_shop)["lb_backends"]
    assert (backend["tls"], backend["tls_mode"]) == (True, "selfsigned")
    web = derive_as("web1", ["web"], apps=tls_shop)
    tls = web["apps"]["shop"]["tls"]
    assert (tls["enabled"], tls["at_lb"]) == (False, True)
    assert web["tls_apps"] == []
    assert web["apps"]["shop"]["health_url"] == "http://127.0.0.1/"


def test_acme_is_refused_in_a_fleet(derive_as):
    with pytest.raises(CommandExecutionError) as refused:
        derive_as("lb", ["lb"], apps={"shop": shop(tls={"mode": "acme"})})
    assert str(refused.value) == (
        "djangoapp:apps:shop:tls:mode: acme is not served by a fleet's load "
        "balancer yet: selfsigned, provided or off"
    )


def test_mariadb_across_a_fleet_is_served_by_the_db_minion(derive_as):
    mysql = {"shop": shop(database={"engine": "mysql", "password": "pw"})}
    web = derive_as("web1", ["web"], apps=mysql)
    assert web["apps"]["shop"]["environment"]["DATABASE_URL"] == (
        "mysql://shop:pw@10.214.0.14:3306/shop"
    )
    assert web["database_apps"] == []
    db = derive_as("db", ["db", "cache"], apps=mysql)
    assert [a["name"] for a in db["database_apps"]] == ["shop"]
    assert db["mariadb"]["bind"] == ["127.0.0.1", "10.214.0.14"]
    database_ports = [p for p in db["fleet_ports"] if p["name"].startswith("database")]
    assert database_ports == [
        {
            "name": "database_mysql",
            "protocol": "tcp",
            "port": 3306,
            "sources": ["10.214.0.12", "10.214.0.13"],
        }
    ]


def test_mariadb_of_one_address_listens_on_the_private_one_in_a_fleet(derive_as):
    """EL9's MariaDB 10.5 takes one bind address: the db minion's apps, if any,
    reach it over the socket."""
    mysql = {"shop": shop(database={"engine": "mysql", "password": "pw"})}
    single = {"mariadb": {"multiple_bind_addresses": False}}
    db = derive_as("db", ["db", "cache"], apps=mysql, **single)
    assert db["mariadb"]["bind"] == ["10.214.0.14"]
    one_host = derive_as(
        "solo", ["web", "db", "cache"], apps=mysql, fleet={"network": ""}, **single
    )
    assert one_host["mariadb"]["bind"] == ["127.0.0.1"]


def test_the_member_sent_to_the_mine(utils):
    member = utils["djangoapp_fleet.member"]
    addresses = ["10.213.47.2", "10.214.0.12", "fe80::1"]
    assert member(["web"], NETWORK, addresses) == {
        "roles": ["web"],
        "address": "10.214.0.12",
    }
    assert member(None, "", addresses) == {
        "roles": ["web", "db", "cache"],
        "address": None,
    }
    with pytest.raises(CommandExecutionError) as refused:
        member(["web"], "10.99.0.0/16", addresses)
    assert str(refused.value) == (
        "djangoapp:fleet:network: no address of this minion is in 10.99.0.0/16 "
        "(it has 10.213.47.2, 10.214.0.12, fe80::1)"
    )


@pytest.mark.parametrize(
    ("roles", "error"),
    [
        (
            [],
            "djangoapp:roles must name at least one role (leave it out for one "
            "host: web, db, cache)",
        ),
        (["web", "proxy"], "djangoapp:roles:1 must be one of web, db, cache, lb"),
        (["web", "web"], "djangoapp:roles names a role twice"),
        ("web", "djangoapp:roles must be a list of roles: web, db, cache, lb"),
    ],
)
def test_bad_roles_are_named(mods, roles, error):
    with pytest.raises(Exception) as refused:
        mods["djangoapp.validate_pillar"](djangoapp={"roles": roles})
    assert error in str(refused.value).splitlines()
