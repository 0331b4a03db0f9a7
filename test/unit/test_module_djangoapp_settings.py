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
