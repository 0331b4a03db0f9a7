"""
The settings the state tree reads, derived from the formula's merged
configuration (``parameters/*.yaml`` under the pillar, merged by
``map.jinja``): every app's names, paths, database URL, environment and TLS
files, the Redis database of each app, the proxy environment.

Derived here once rather than in Jinja: ``map.jinja`` is imported by every SLS
file and Salt compiles it again for each one, so each line of logic there is
paid some twenty times per ``state.apply``.
"""

import copy
import urllib.parse

import salt.utils.dictupdate

__virtualname__ = "djangoapp_settings"

REDIS_DEFAULT_DATABASES = 16


def __virtual__():
    return __virtualname__


def _quote(value):
    """A URL's user or password: every reserved character escaped."""
    return urllib.parse.quote(str(value), safe="")


def _unique(items):
    seen = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def proxy_environment(proxy):
    """``http_proxy``/``HTTP_PROXY`` and the like for the configured proxy."""
    environment = {}
    for scheme in ("http", "https"):
        if proxy.get(scheme):
            environment[f"{scheme}_proxy"] = proxy[scheme]
            environment[f"{scheme.upper()}_PROXY"] = proxy[scheme]
    if proxy.get("no_proxy"):
        no_proxy = ",".join(proxy["no_proxy"])
        environment["no_proxy"] = no_proxy
        environment["NO_PROXY"] = no_proxy
    return environment


def redis_databases(apps):
    """
    The Redis database of each app with a Redis cache: its pillar's
    ``cache:db``, else the lowest number no other app has, in the order of
    the app names.
    """
    chosen = {}
    names = []
    for name in sorted(apps):
        cache = apps[name].get("cache") or {}
        if cache.get("engine") == "redis":
            names.append(name)
            if cache.get("db") is not None:
                chosen[name] = int(cache["db"])
    for name in names:
        if name not in chosen:
            taken = set(chosen.values())
            chosen[name] = next(db for db in range(len(chosen) + 1) if db not in taken)
    return chosen


def database_settings(name, database, database_defaults):
    """The app's database with its name, user, port, locality and URL filled in."""
    engine_defaults = database_defaults.get(database.get("engine"))
    if engine_defaults is None:
        database["local"] = False
        return database
    database["name"] = database.get("name") or name
    database["user"] = database.get("user") or name
    database["port"] = database.get("port") or engine_defaults["port"]
    database["local"] = database.get("host") in ("localhost", "127.0.0.1", "::1")
    database["url"] = "{}://{}:{}@{}:{}/{}".format(
        engine_defaults["url_scheme"],
        _quote(database["user"]),
        _quote(database.get("password")),
        database.get("host"),
        database["port"],
        database["name"],
    )
    return database


def app_settings(name, app, config, redis_dbs, grains):
    """One app's pillar over ``app_defaults``, with everything derived from it."""
    paths = config["paths"]
    base_dir = f"{paths['base_root']}/{name}"
    config_dir = f"{paths['config_root']}/{name}"
    run_dir = f"{paths['run_root']}/{name}"
    server = "asgi" if app.get("asgi") else "wsgi"
    server_names = app.get("server_names") or [grains.get("fqdn") or grains["id"]]
    database = database_settings(name, app["database"], config["database_defaults"])

    environment = {
        "DJANGO_SETTINGS_MODULE": app["settings_module"],
        "DJANGO_ALLOWED_HOSTS": ",".join(server_names),
        "DJANGO_MEDIA_ROOT": f"{base_dir}/shared/media",
    }
    if database.get("url"):
        environment["DATABASE_URL"] = database["url"]
    cache = app["cache"]
    if cache.get("engine") == "redis":
        cache["db"] = redis_dbs[name]
        environment["REDIS_URL"] = (
            f"redis://127.0.0.1:{config['redis']['port']}/{redis_dbs[name]}"
        )
    elif cache.get("engine") == "memcached":
        environment["MEMCACHED_URL"] = f"127.0.0.1:{config['memcached']['port']}"

    # YAML reads an unquoted `off` as false. The certificate and key are
    # written from the pillar by tls.sls (contents_pillar), never from here.
    tls = app["tls"]
    tls_mode = "off" if tls.get("mode") in (False, None, "") else tls["mode"]
    tls_dir = f"{config_dir}/tls"
    tls.pop("cert", None)
    tls.pop("key", None)
    tls.update(
        {
            "mode": tls_mode,
            "enabled": tls_mode != "off",
            "dir": tls_dir,
            "cert_file": f"{tls_dir}/cert.pem",
            "key_file": f"{tls_dir}/key.pem",
            "acme_live_dir": f"/etc/letsencrypt/live/{name}",
        }
    )

    # Every app reports to the pillar's Sentry DSN unless its own env names
    # another one; the release engine sets SENTRY_RELEASE per release.
    monitoring = config.get("monitoring") or {}
    if monitoring.get("sentry_dsn"):
        environment["SENTRY_DSN"] = monitoring["sentry_dsn"]
        if monitoring.get("sentry_environment"):
            environment["SENTRY_ENVIRONMENT"] = monitoring["sentry_environment"]
    environment.update(app.get("env") or {})

    scheme = "https" if tls_mode != "off" else "http"
    app.update(
        {
            "name": name,
            "user": name,
            "group": name,
            "base_dir": base_dir,
            "config_dir": config_dir,
            "run_dir": run_dir,
            "log_dir": f"{paths['log_root']}/{name}",
            "backup_dir": f"{paths['backup_root']}/{name}",
            "media_dir": f"{base_dir}/shared/media",
            "env_file": f"{config_dir}/env.json",
            "engine_config": f"{config_dir}/app.json",
            "gunicorn_config": f"{config_dir}/gunicorn.conf.py",
            "deploy_key_file": (
                f"{config_dir}/deploy_key" if app.get("deploy_key") else None
            ),
            "known_hosts_file": (
                f"{config_dir}/known_hosts" if app.get("known_hosts") else None
            ),
            "socket": f"{run_dir}/gunicorn.sock",
            "control_socket": f"{run_dir}/gunicorn.ctl",
            "service": f"djangoapp-{name}",
            "manage_command": f"{paths['bin_dir']}/{name}-manage",
            "server": server,
            "app_path": app.get("asgi") or app.get("wsgi"),
            "install_packages": _unique(
                list(config["server_packages"][server]) + list(app["pip_extra"])
            ),
            "server_names": server_names,
            "workers": app.get("workers") or (grains.get("num_cpus", 1) * 2 + 1),
            "health_url": f"{scheme}://127.0.0.1{app['health_path']}",
            "environment": environment,
        }
    )
    return app


def derive(config, grains):
    """
    ``config`` (the merged ``djangoapp`` mapping, not changed) with the
    derived settings added: ``proxy_env``, ``redis:databases``, each app's
    settings under ``apps``, ``local_database_engines``, ``tls_apps`` and
    ``selinux_active``.
    """
    config = copy.deepcopy(config)
    config["proxy_env"] = proxy_environment(config["proxy"])
    redis_dbs = redis_databases(config["apps"])
    config["redis"]["databases"] = max(
        [REDIS_DEFAULT_DATABASES, *(db + 1 for db in redis_dbs.values())]
    )
    apps = {}
    for name, app_pillar in config["apps"].items():
        app = copy.deepcopy(config["app_defaults"])
        salt.utils.dictupdate.update(app, app_pillar, merge_lists=False)
        apps[name] = app_settings(name, app, config, redis_dbs, grains)
    config["apps"] = apps
    config["local_database_engines"] = _unique(
        app["database"]["engine"] for app in apps.values() if app["database"]["local"]
    )
    config["tls_apps"] = [name for name, app in apps.items() if app["tls"]["enabled"]]
    # SELinux states run where the policy is on (grain selinux:enabled,
    # assumed on when absent) on the families that have it.
    config["selinux_active"] = config.get("selinux") and (
        grains.get("selinux") or {}
    ).get("enabled", True)
    return config
