"""djangoapp.derive_settings: what map.jinja hands to the states, derived from the
merged configuration (the formula's defaults and the pillar)."""

import copy

import pytest
import salt.utils.dictupdate
import yaml
from salt.exceptions import SaltInvocationError

GRAINS = {"id": "web1", "fqdn": "web1.example.com", "num_cpus": 2}


def merged(repo_root, apps, **host):
    """defaults.yaml and the Debian layer with ``apps`` and ``host`` over them, as
    map.jinja merges them."""
    parameters = repo_root / "salt" / "djangoapp" / "parameters"
    config = yaml.safe_load((parameters / "defaults.yaml").read_text())["djangoapp"]
    for layer in ("os_family/Debian.yaml", "osfinger/Debian-12.yaml"):
        salt.utils.dictupdate.update(
            config, yaml.safe_load((parameters / layer).read_text())["djangoapp"]
        )
    salt.utils.dictupdate.update(config, {"apps": apps, **host})
    return config


def app(name, **settings):
    return {
        "repo": f"https://git.example.com/{name}.git",
        "version": "v1.0.0",
        "settings_module": f"{name}.settings",
        "wsgi": f"{name}.wsgi:application",
        "database": {"engine": "postgresql", "password": "pw"},
        **settings,
    }


@pytest.fixture
def derive(utils):
    return lambda config: utils["djangoapp_settings.derive"](config, GRAINS)


def test_redis_databases_keep_the_pillars_and_fill_the_lowest_free(derive, repo_root):
    redis = {"engine": "redis"}
    config = merged(
        repo_root,
        {
            "shop": app("shop", cache=redis),
            "blog": app("blog", cache={"engine": "redis", "db": 0}),
            "wiki": app("wiki", cache={"engine": "redis", "db": 20}),
            "docs": app("docs", cache=redis),
            "news": app("news", cache={"engine": "memcached"}),
        },
    )
    derived = derive(config)
    apps = derived["apps"]
    # in the order of the names: docs takes 1, shop 2 (0 is blog's)
    assert {name: apps[name]["cache"].get("db") for name in apps} == {
        "shop": 2,
        "blog": 0,
        "wiki": 20,
        "docs": 1,
        "news": None,
    }
    assert apps["shop"]["environment"]["REDIS_URL"] == "redis://127.0.0.1:6379/2"
    assert apps["news"]["environment"]["MEMCACHED_URL"] == "127.0.0.1:11211"
    assert derived["redis"]["databases"] == 21


def test_the_database_url_escapes_user_and_password(derive, repo_root):
    database = {
        "engine": "mysql",
        "password": "p@ss/w:rd #1",
        "user": "ops user",
        "host": "db.example.com",
    }
    derived = derive(merged(repo_root, {"shop": app("shop", database=database)}))
    shop = derived["apps"]["shop"]
    assert shop["database"]["url"] == (
        "mysql://ops%20user:p%40ss%2Fw%3Ard%20%231@db.example.com:3306/shop"
    )
    assert shop["environment"]["DATABASE_URL"] == shop["database"]["url"]
    assert shop["database"]["local"] is False
    assert derived["local_database_engines"] == []


def test_an_app_without_a_database_gets_no_url(derive, repo_root):
    derived = derive(
        merged(repo_root, {"docs": app("docs", database={"engine": "none"})})
    )
    docs = derived["apps"]["docs"]
    assert "DATABASE_URL" not in docs["environment"] and "url" not in docs["database"]


def test_tls_off_from_yaml_false_and_the_pem_never_passed_on(derive, repo_root):
    derived = derive(
        merged(
            repo_root,
            {
                "shop": app("shop", tls={"mode": False}),
                "blog": app("blog", tls={"mode": "provided", "cert": "C", "key": "K"}),
            },
        )
    )
    shop, blog = derived["apps"]["shop"], derived["apps"]["blog"]
    assert shop["tls"]["mode"] == "off" and shop["health_url"].startswith("http://")
    assert blog["tls"]["enabled"] and blog["health_url"].startswith("https://")
    assert "cert" not in blog["tls"] and "key" not in blog["tls"]
    assert blog["tls"]["cert_file"] == "/etc/djangoapp/blog/tls/cert.pem"
    assert derived["tls_apps"] == ["blog"]


def test_names_environment_and_workers_of_an_app(derive, repo_root):
    config = merged(
        repo_root,
        {"shop": app("shop", env={"DJANGO_DEBUG": "0", "DJANGO_ALLOWED_HOSTS": "x"})},
        monitoring={"sentry_dsn": "https://k@sentry.example.com/1"},
        proxy={"http": "http://proxy:3128", "no_proxy": ["localhost", "10.0.0.1"]},
    )
    derived = derive(config)
    shop = derived["apps"]["shop"]
    # no server_names: the minion's fqdn; the app's own env has the last word
    assert shop["server_names"] == ["web1.example.com"]
    assert shop["environment"]["DJANGO_ALLOWED_HOSTS"] == "x"
    assert shop["environment"]["SENTRY_DSN"] == "https://k@sentry.example.com/1"
    assert shop["workers"] == 5
    assert shop["socket"] == "/run/djangoapp/shop/gunicorn.sock"
    assert shop["install_packages"] == list(dict.fromkeys(shop["install_packages"]))
    assert derived["proxy_env"] == {
        "http_proxy": "http://proxy:3128",
        "HTTP_PROXY": "http://proxy:3128",
        "no_proxy": "localhost,10.0.0.1",
        "NO_PROXY": "localhost,10.0.0.1",
    }
    assert derived["local_database_engines"] == ["postgresql"]


def test_the_merged_configuration_is_left_as_it_was(derive, repo_root):
    config = merged(
        repo_root, {"shop": app("shop", tls={"mode": "provided", "cert": "C"})}
    )
    before = copy.deepcopy(config)
    derive(config)
    assert config == before


def test_the_module_wants_a_mapping(mods):
    with pytest.raises(SaltInvocationError, match="djangoapp must be a mapping"):
        mods["djangoapp.derive_settings"]("not a mapping")


def test_app_json_holds_every_key_of_the_engine_config(derive, repo_root):
    config = merged(
        repo_root,
        {
            "shop": app(
                "shop",
                deploy_key="KEY",
                known_hosts="git.example.com ssh-ed25519 AAAA",
                server_names=["shop.example.com", "www.shop.example.com"],
                pip_extra=["gunicorn", "whitenoise"],
                tls={"mode": "selfsigned"},
                health_path="/health/",
                health_statuses=[200, 302],
                requirements=["requirements/base.txt", "requirements/prod.txt"],
                hooks={"after_build": [["python", "manage.py", "compilemessages"]]},
            )
        },
        proxy={"http": "http://proxy:3128", "no_proxy": ["localhost"]},
    )
    assert derive(config)["apps"]["shop"]["app_json"] == {
        "name": "shop",
        "user": "shop",
        "group": "shop",
        "repo": "https://git.example.com/shop.git",
        "version": "v1.0.0",
        "version_policy": "changes",
        "migrations": "safe",
        "migration_linter": "/opt/djangoapp/tools/migration-linter",
        "base_dir": "/srv/djangoapp/shop",
        "env_file": "/etc/djangoapp/shop/env.json",
        "deploy_key": "/etc/djangoapp/shop/deploy_key",
        "known_hosts": "/etc/djangoapp/shop/known_hosts",
        "python": "python3",
        "requirements": ["requirements/base.txt", "requirements/prod.txt"],
        "dependencies": "auto",
        "dependency_groups": [],
        "extras": [],
        "pip_extra": ["gunicorn", "whitenoise"],
        "project_dir": ".",
        "settings_module": "shop.settings",
        "wsgi": "shop.wsgi:application",
        "asgi": None,
        "gunicorn_config": "/etc/djangoapp/shop/gunicorn.conf.py",
        "process_manager": "supervisor",
        "service": "djangoapp-shop",
        "socket": "/run/djangoapp/shop/gunicorn.sock",
        "run_dir": "/run/djangoapp/shop",
        "control_socket": "/run/djangoapp/shop/gunicorn.ctl",
        # TLS on: the health check goes over HTTPS (plain HTTP only redirects).
        "health": {
            "url": "https://127.0.0.1/health/",
            "host": "shop.example.com",
            "timeout": 30,
            "verify_tls": False,
            "accept": [200, 302],
        },
        "hooks": {"after_build": [["python", "manage.py", "compilemessages"]]},
        "keep_releases": 5,
        "check_deploy_fail_level": "ERROR",
        "release_niceness": -5,
        "preload_app": False,
        "graceful_timeout": 30,
        # No password: that is in env.json only.
        "database": {
            "engine": "postgresql",
            "host": "localhost",
            "port": 5432,
            "name": "shop",
            "user": "shop",
        },
        "backup_dir": "/var/backups/djangoapp/shop",
        "backup_status": "/var/lib/djangoapp/backup-status/shop.json",
        "log_dir": "/var/log/djangoapp/shop",
        "maintenance_page": "/srv/djangoapp/shop/maintenance.html",
        "maintenance_flag": "/srv/djangoapp/shop/maintenance.on",
        "python_install_mirror": None,
        "python_install_dir": "/opt/djangoapp/python",
        "uv": "/opt/djangoapp/tools/bin/uv",
        "uv_cache": "/var/cache/djangoapp/uv",
        "proxy": {
            "http": "http://proxy:3128",
            "https": None,
            "no_proxy": ["localhost"],
        },
    }


def test_app_json_of_an_asgi_app_without_database_or_files(derive, repo_root):
    blog = app("blog", asgi="blog.asgi:application", database={"engine": "none"})
    del blog["wsgi"]
    app_json = derive(merged(repo_root, {"blog": blog}))["apps"]["blog"]["app_json"]
    assert (app_json["wsgi"], app_json["asgi"]) == (None, "blog.asgi:application")
    assert app_json["pip_extra"] == ["gunicorn", "uvicorn-worker"]
    assert (app_json["deploy_key"], app_json["known_hosts"]) == (None, None)
    assert app_json["health"]["url"] == "http://127.0.0.1/"
    assert app_json["health"]["host"] == "web1.example.com"
    assert app_json["health"]["accept"] == ["2xx", "3xx"]
    assert (app_json["dependencies"], app_json["hooks"]) == ("auto", {})
    assert app_json["database"] == {
        "engine": "none",
        "host": "localhost",
        "port": None,
        "name": None,
        "user": None,
    }
    assert app_json["proxy"] == {"http": None, "https": None, "no_proxy": []}


def test_monitoring_checks_and_their_command_lines(derive, repo_root):
    config = merged(
        repo_root,
        {
            "shop": app("shop"),
            "docs": app("docs", database={"engine": "none"}),
        },
        monitoring={"nrpe": {"enabled": True, "allowed_hosts": ["192.0.2.10"]}},
    )
    script = "/usr/local/lib/djangoapp/monitoring-check --config-root /etc/djangoapp"
    sudo = "/usr/bin/sudo -n -u"
    plugins = "/usr/lib/nagios/plugins"
    # disk and load as the agent's user, then each app's in name order (docs has
    # no database: no database check).
    assert derive(config)["monitoring_checks"] == [
        {
            "name": "disk",
            "user": None,
            "command": f"{plugins}/check_disk -w 20% -c 10% -p /",
            "line": f"{plugins}/check_disk -w 20% -c 10% -p /",
        },
        {
            "name": "load",
            "user": None,
            "command": f"{plugins}/check_load -r -w 2,1.5,1 -c 4,3,2",
            "line": f"{plugins}/check_load -r -w 2,1.5,1 -c 4,3,2",
        },
        {
            "name": "docs_http",
            "user": "docs",
            "command": f"{script} http docs",
            "line": f"{sudo} docs {script} http docs",
        },
        {
            "name": "docs_gunicorn",
            "user": "docs",
            "command": f"{script} gunicorn docs",
            "line": f"{sudo} docs {script} gunicorn docs",
        },
        {
            "name": "shop_http",
            "user": "shop",
            "command": f"{script} http shop",
            "line": f"{sudo} shop {script} http shop",
        },
        {
            "name": "shop_gunicorn",
            "user": "shop",
            "command": f"{script} gunicorn shop",
            "line": f"{sudo} shop {script} gunicorn shop",
        },
        {
            "name": "shop_database",
            "user": "shop",
            "command": f"{script} database shop",
            "line": f"{sudo} shop {script} database shop",
        },
    ]


def test_the_backup_check_comes_with_the_nightly_backups(derive, repo_root):
    apps = {"shop": app("shop"), "docs": app("docs", database={"engine": "none"})}
    nrpe = {"nrpe": {"enabled": True, "allowed_hosts": ["192.0.2.10"]}}
    script = "/usr/local/lib/djangoapp/monitoring-check --config-root /etc/djangoapp"

    def backup_checks(**backups):
        config = merged(repo_root, apps, monitoring=nrpe, backups=backups)
        return [
            (check["name"], check["user"], check["command"])
            for check in derive(config)["monitoring_checks"]
            if check["name"].endswith("_backup")
        ]

    assert backup_checks(enabled=False, max_age_hours=30) == []
    # The apps with a database, the threshold from defaults.yaml (a day and two
    # hours) or the pillar.
    status = "--status-file /var/lib/djangoapp/backup-status/shop.json"
    assert backup_checks(enabled=True) == [
        ("shop_backup", "shop", f"{script} --max-age-hours 26 {status} backup shop")
    ]
    assert backup_checks(enabled=True, max_age_hours=30) == [
        ("shop_backup", "shop", f"{script} --max-age-hours 30 {status} backup shop")
    ]


def test_monitoring_ports_of_the_agents_that_are_on(derive, repo_root):
    monitoring = {
        "nrpe": {"enabled": True, "allowed_hosts": ["192.0.2.10", "2001:db8::/64"]},
        "zabbix": {"enabled": True, "server": " 192.0.2.20, ,192.0.2.21 "},
        "snmp": {"enabled": False, "allowed": ["198.51.100.0/24"]},
    }
    derived = derive(merged(repo_root, {}, monitoring=monitoring))
    assert derived["monitoring_ports"] == [
        {
            "name": "nrpe",
            "protocol": "tcp",
            "port": 5666,
            "sources": ["192.0.2.10", "2001:db8::/64"],
        },
        {
            "name": "zabbix",
            "protocol": "tcp",
            "port": 10050,
            "sources": ["192.0.2.20", "192.0.2.21"],
        },
    ]
    assert derive(merged(repo_root, {}))["monitoring_ports"] == []


@pytest.fixture
def run_loader(minion_opts):
    """The execution modules with a context and a pillar of their own, as a state
    run has them (the run puts its file client in its context)."""
    import salt.loader

    def make(pillar, context):
        opts = dict(minion_opts, pillar=pillar)
        utils = salt.loader.utils(opts, context=context)
        return salt.loader.minion_mods(opts, context=context, utils=utils)

    return make


def test_the_merge_is_kept_for_the_rest_of_its_state_run(run_loader, repo_root):
    config = merged(repo_root, {"shop": app("shop")})
    pillar = {"djangoapp": {"apps": {"shop": app("shop")}}}
    context = {"fileclient": object()}
    mods = run_loader(pillar, context)
    assert mods["djangoapp.cached_map"]() is None  # the first SLS file of the run
    derived = mods["djangoapp.derive_settings"](config)
    kept = mods["djangoapp.cached_map"]()
    assert kept == derived and kept is not derived
    kept["apps"].clear()  # an SLS file that changes its copy changes no other's
    assert mods["djangoapp.cached_map"]() == derived
    # the next run: a context copied from the minion's, with its own file client
    context["fileclient"] = object()
    assert mods["djangoapp.cached_map"]() is None


def test_nothing_is_kept_outside_a_state_run_or_for_another_pillar(
    run_loader, repo_root
):
    config = merged(repo_root, {"shop": app("shop")})
    outside = {}
    mods = run_loader({"djangoapp": {"apps": {"shop": app("shop")}}}, outside)
    mods["djangoapp.derive_settings"](config)
    assert mods["djangoapp.cached_map"]() is None
    assert "djangoapp.map" not in outside

    run = {"fileclient": object()}
    run_loader({"djangoapp": {"apps": {"shop": app("shop")}}}, run)[
        "djangoapp.derive_settings"
    ](config)
    other_pillar = {"djangoapp": {"apps": {"shop": app("shop", version="v2.0.0")}}}
    assert run_loader(other_pillar, run)["djangoapp.cached_map"]() is None
