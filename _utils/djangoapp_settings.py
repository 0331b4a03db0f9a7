"""
The settings the state tree reads, derived from the formula's merged
configuration (``parameters/*.yaml`` under the pillar, merged by
``map.jinja``): every app's names, paths, database URL, environment, TLS
files and engine configuration (app.json), the Redis database of each app,
the proxy environment, the monitoring checks and the agents' ports.

Derived here once rather than in Jinja: ``map.jinja`` is imported by every SLS
file and Salt compiles it again for each one, so each line of logic there is
paid some twenty times per ``state.apply``.
"""

import copy
import urllib.parse

import salt.utils.dictupdate
from djangoapp_fleet import the_one, view
from salt.exceptions import CommandExecutionError

__virtualname__ = "djangoapp_settings"

REDIS_DEFAULT_DATABASES = 16
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
LOOPBACK = "127.0.0.1"


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
    database["local"] = database.get("host") in LOCAL_HOSTS
    database["url"] = "{}://{}:{}@{}:{}/{}".format(
        engine_defaults["url_scheme"],
        _quote(database["user"]),
        _quote(database.get("password")),
        database.get("host"),
        database["port"],
        database["name"],
    )
    return database


def tls_settings(name, tls, config_dir):
    """
    The app's ``tls`` with its mode (``off`` when YAML read an unquoted
    ``off`` as false) and the paths of its files. The certificate and key are
    written from the pillar by tls.sls (contents_pillar), never from here:
    they are taken out.
    """
    mode = "off" if tls.get("mode") in (False, None, "") else tls["mode"]
    tls_dir = f"{config_dir}/tls"
    tls.pop("cert", None)
    tls.pop("key", None)
    tls.update(
        {
            "mode": mode,
            "enabled": mode != "off",
            "dir": tls_dir,
            "cert_file": f"{tls_dir}/cert.pem",
            "key_file": f"{tls_dir}/key.pem",
            "acme_live_dir": f"/etc/letsencrypt/live/{name}",
        }
    )
    return tls


def app_environment(app, config, redis_dbs):
    """
    The environment the app sees (``env.json``): Django's settings module,
    allowed hosts, media and static roots, the database and cache URLs, Sentry's DSN
    (the pillar's, unless the app's own env names another; the release
    engine sets SENTRY_RELEASE per release), then the app's own ``env``,
    which wins. Sets the Redis database number in the app's ``cache``.
    """
    environment = {
        "DJANGO_SETTINGS_MODULE": app["settings_module"],
        "DJANGO_ALLOWED_HOSTS": ",".join(app["server_names"]),
        "DJANGO_MEDIA_ROOT": app["media_dir"],
        # the live release's collected files, each release its own
        "DJANGO_STATIC_ROOT": f"{app['base_dir']}/current/static",
    }
    if app["database"].get("url"):
        environment["DATABASE_URL"] = app["database"]["url"]
    cache = app["cache"]
    cache_host = config["cache_address"]
    if cache.get("engine") == "redis":
        cache["db"] = redis_dbs[app["name"]]
        password = config["redis"].get("password")
        credentials = f":{_quote(password)}@" if password else ""
        environment["REDIS_URL"] = (
            f"redis://{credentials}{cache_host}:{config['redis']['port']}/{cache['db']}"
        )
    elif cache.get("engine") == "memcached":
        environment["MEMCACHED_URL"] = f"{cache_host}:{config['memcached']['port']}"
    monitoring = config.get("monitoring") or {}
    if monitoring.get("sentry_dsn"):
        environment["SENTRY_DSN"] = monitoring["sentry_dsn"]
        if monitoring.get("sentry_environment"):
            environment["SENTRY_ENVIRONMENT"] = monitoring["sentry_environment"]
    environment.update(app.get("env") or {})
    return environment


def app_json(app, config):
    """
    The content of the app's engine configuration ``app.json`` (app.sls
    writes it; the release engine reads it as written and names a key that is
    missing): every key, null where unset, and no secret (the database
    password is in ``env.json`` only).
    """
    database = app["database"]
    proxy = config["proxy"]
    return {
        "name": app["name"],
        "user": app["user"],
        "group": app["group"],
        "repo": app["repo"],
        "version": app["version"],
        "version_policy": app["version_policy"],
        "migrations": app["migrations"],
        "migration_linter": f"{config['paths']['tools_dir']}/migration-linter",
        "base_dir": app["base_dir"],
        "env_file": app["env_file"],
        "deploy_key": app["deploy_key_file"],
        "known_hosts": app["known_hosts_file"],
        "python": app["python"],
        "requirements": app["requirements"],
        "dependencies": app["dependencies"],
        "dependency_groups": list(app["dependency_groups"]),
        "extras": list(app["extras"]),
        "pip_extra": list(app["install_packages"]),
        "project_dir": app["project_dir"],
        "settings_module": app["settings_module"],
        "wsgi": app.get("wsgi") or None,
        "asgi": app.get("asgi") or None,
        "gunicorn_config": app["gunicorn_config"],
        "process_manager": app["process_manager"],
        "service": app["service"],
        "socket": app["socket"],
        "run_dir": app["run_dir"],
        "control_socket": app["control_socket"],
        # https when Nginx redirects HTTP to HTTPS: the engine never follows a
        # redirect, and sends the host name as SNI.
        "health": {
            "url": app["health_url"],
            "host": app["server_names"][0],
            "timeout": app["timeout"],
            "verify_tls": False,
            "accept": list(app["health_statuses"]),
        },
        "hooks": {point: list(commands) for point, commands in app["hooks"].items()},
        "keep_releases": app["keep_releases"],
        "check_deploy_fail_level": app["check_deploy_fail_level"],
        "release_niceness": app["release_niceness"],
        "preload_app": app["preload_app"],
        "graceful_timeout": app["graceful_timeout"],
        "database": {
            "engine": database["engine"],
            "host": database.get("host"),
            "port": database.get("port"),
            "name": database.get("name"),
            "user": database.get("user"),
        },
        "backup_dir": app["backup_dir"],
        "backup_status": app["backup_status"],
        "log_dir": app["log_dir"],
        "maintenance_page": app["maintenance_page"],
        "maintenance_flag": app["maintenance_flag"],
        "python_install_mirror": app["python_install_mirror"] or None,
        "python_install_dir": config["paths"]["python_dir"],
        "uv": f"{config['paths']['tools_dir']}/bin/uv",
        "uv_cache": config["paths"]["uv_cache"],
        "proxy": {
            "http": proxy.get("http") or None,
            "https": proxy.get("https") or None,
            "no_proxy": copy.copy(proxy["no_proxy"]),
        },
    }


def app_names(name, paths):
    """Where the formula puts an app's files and what it names its parts:
    the same for an app deployed and for one being taken down."""
    base_dir = f"{paths['base_root']}/{name}"
    config_dir = f"{paths['config_root']}/{name}"
    run_dir = f"{paths['run_root']}/{name}"
    return {
        "name": name,
        "user": name,
        "group": name,
        "base_dir": base_dir,
        "config_dir": config_dir,
        "run_dir": run_dir,
        "log_dir": f"{paths['log_root']}/{name}",
        "backup_dir": f"{paths['backup_root']}/{name}",
        "backup_status": f"{paths['backup_status_root']}/{name}.json",
        "media_dir": f"{base_dir}/shared/media",
        "env_file": f"{config_dir}/env.json",
        "engine_config": f"{config_dir}/app.json",
        "gunicorn_config": f"{config_dir}/gunicorn.conf.py",
        "socket": f"{run_dir}/gunicorn.sock",
        "control_socket": f"{run_dir}/gunicorn.ctl",
        "service": f"djangoapp-{name}",
        "manage_command": f"{paths['bin_dir']}/{name}-manage",
        "tmpfiles_file": f"/etc/tmpfiles.d/djangoapp-{name}.conf",
        "maintenance_page": f"{base_dir}/maintenance.html",
        "maintenance_flag": f"{base_dir}/maintenance.on",
    }


def absent_app_settings(name, app, config):
    """
    An app the pillar marks ``absent``: its names and paths (``app_names``),
    its database as the pillar and the defaults name it, and ``purge``.
    """
    database_settings(name, app["database"], config["database_defaults"])
    return {
        **app_names(name, config["paths"]),
        "database": app["database"],
        "purge": bool(app.get("purge")),
    }


def app_settings(name, app, config, redis_dbs, grains, tls_at_lb=False):
    """
    One app's pillar over ``app_defaults``, with everything derived from it:
    names, paths, TLS files, ``environment`` (env.json) and ``app_json``.
    ``tls_at_lb``: the fleet's load balancers terminate the app's TLS; this
    minion's Nginx serves it plain HTTP (``tls:at_lb``).
    """
    names = app_names(name, config["paths"])
    server = "asgi" if app.get("asgi") else "wsgi"
    database_settings(name, app["database"], config["database_defaults"])
    tls = tls_settings(name, app["tls"], names["config_dir"])
    tls["at_lb"] = bool(tls_at_lb and tls["enabled"])
    if tls["at_lb"]:
        tls["enabled"] = False
    scheme = "https" if tls["enabled"] else "http"
    app.update(names)
    app.update(
        {
            "deploy_key_file": (
                f"{names['config_dir']}/deploy_key" if app.get("deploy_key") else None
            ),
            "known_hosts_file": (
                f"{names['config_dir']}/known_hosts" if app.get("known_hosts") else None
            ),
            "server": server,
            "app_path": app.get("asgi") or app.get("wsgi"),
            "install_packages": _unique(
                list(config["server_packages"][server]) + list(app["pip_extra"])
            ),
            "server_names": (
                app.get("server_names") or [grains.get("fqdn") or grains["id"]]
            ),
            "workers": app.get("workers") or (grains.get("num_cpus", 1) * 2 + 1),
            "health_url": f"{scheme}://127.0.0.1{app['health_path']}",
        }
    )
    app["environment"] = app_environment(app, config, redis_dbs)
    app["app_json"] = app_json(app, config)
    return app


def monitoring_checks(config):
    """
    The checks that NRPE and the Zabbix agent both run, each defined here
    only: disk and load with the monitoring plugins and, for each app in name
    order, its health URL through Nginx (``http``), its Gunicorn master and,
    unless it has none, its database and, where its nightly dumps are taken
    (``backup_apps``), its last nightly backup (``backup``) with the
    monitoring-check script, run as the app's user through sudo (the app's
    files are not the agents' to read; on a db minion where the app does not
    run, its backup check runs as the agent's own user). Each check: ``name``
    (NRPE command ``check_djangoapp_<name>``, Zabbix keys
    ``djangoapp.status.<name>`` and ``djangoapp.output.<name>``), ``user`` it
    runs as (None: the agent's own), ``command`` and ``line``, the command
    line the agents run. Arguments are fixed here: neither agent passes any
    from the network.
    """
    monitoring = config["monitoring"]
    plugins = monitoring["plugins_dir"]
    disk, load = monitoring["disk"], monitoring["load"]
    checks = [
        {
            "name": "disk",
            "user": None,
            "command": f"{plugins}/check_disk -w {disk['warning']} "
            f"-c {disk['critical']} -p {disk['path']}",
        },
        {
            "name": "load",
            "user": None,
            "command": f"{plugins}/check_load -r -w {load['warning']} "
            f"-c {load['critical']}",
        },
    ]
    script = f"{config['paths']['lib_dir']}/monitoring-check"
    script += f" --config-root {config['paths']['config_root']}"
    max_age = f"--max-age-hours {config['backups']['max_age_hours']}"
    backed_up = {entry["name"]: entry for entry in config["backup_apps"]}
    for name in sorted({*config["apps"], *backed_up}):
        app = config["apps"].get(name)
        kinds = {"http": "", "gunicorn": ""} if app else {}
        if app and app["database"]["engine"] != "none":
            kinds["database"] = ""
        if name in backed_up:
            status = backed_up[name]["backup_status"]
            kinds["backup"] = f"{max_age} --status-file {status} "
        for kind, options in kinds.items():
            checks.append(
                {
                    "name": f"{name}_{kind}",
                    "user": app["user"] if app else None,
                    "command": f"{script} {options}{kind} {name}",
                }
            )
    for check in checks:
        check["line"] = (
            f"{monitoring['sudo']} -n -u {check['user']} {check['command']}"
            if check["user"]
            else check["command"]
        )
    return checks


def monitoring_ports(monitoring):
    """
    The port of each monitoring agent that is on, and the sources it answers:
    the agent's own access list and what the firewall opens the port to.
    Each: ``name`` (nrpe, zabbix, snmp), ``protocol``, ``port``, ``sources``.
    """
    zabbix_servers = [
        server.strip()
        for server in str(monitoring["zabbix"]["server"] or "").split(",")
        if server.strip()
    ]
    ports = []
    for part, protocol, sources in (
        ("nrpe", "tcp", monitoring["nrpe"]["allowed_hosts"]),
        ("zabbix", "tcp", zabbix_servers),
        ("snmp", "udp", monitoring["snmp"]["allowed"]),
    ):
        if monitoring[part]["enabled"]:
            ports.append(
                {
                    "name": part,
                    "protocol": protocol,
                    "port": int(monitoring[part]["port"]),
                    "sources": list(sources or []),
                }
            )
    return ports


def in_fleet(config, place, apps):
    """
    What this minion's roles (``djangoapp_fleet.view``) make of the apps: on
    a web minion of a fleet, each app's database and cache are found on the
    db and cache minions; ``database_apps`` and ``cache_engines`` are the
    servers this minion runs for them; the db and cache servers listen on the
    private address too, the web minions' Nginx believes the load balancers'
    X-Forwarded-For, and ``fleet_ports`` opens each port to the minions that
    use it only. ``lb_backends``: the apps the load balancer sends to the web
    minions.
    """
    roles, peers = place["roles"], place["peers"]
    web_addresses = [member["address"] for member in peers["web"]]
    lb_addresses = [member["address"] for member in peers["lb"]]
    ports = []
    config["database_apps"] = (
        [app for app in apps.values() if app["database"]["local"]]
        if "db" in roles
        else []
    )
    config["cache_engines"] = (
        _unique(
            app["cache"]["engine"]
            for app in apps.values()
            if app["cache"]["engine"] != "none"
        )
        if "cache" in roles
        else []
    )
    config["database_listen"] = ["localhost"]
    config["mariadb"]["bind"] = [LOOPBACK]
    config["memcached"]["listen"] = [LOOPBACK]
    if place["fleet"] and "db" in roles:
        config["database_listen"].append(place["address"])
        config["mariadb"]["bind"] = _mariadb_bind(config["mariadb"], place["address"])
        for engine in _unique(
            app["database"]["engine"] for app in config["database_apps"]
        ):
            port = config["database_defaults"][engine]["port"]
            ports.append(_fleet_port(f"database_{engine}", port, web_addresses))
    if place["fleet"] and "cache" in roles:
        config["redis"]["bind"] = f"{config['redis']['bind']} {place['address']}"
        config["memcached"]["listen"].append(place["address"])
        for engine in config["cache_engines"]:
            port = config[engine]["port"]
            ports.append(_fleet_port(f"cache_{engine}", port, web_addresses))
    if place["fleet"] and "web" in roles and lb_addresses:
        proxies = config["nginx"].get("trusted_proxies") or []
        config["nginx"]["trusted_proxies"] = _unique([*proxies, *lb_addresses])
        ports.append(_fleet_port("web_http", 80, lb_addresses))
    config["fleet_ports"] = [port for port in ports if port["sources"]]
    config["lb_backends"] = (
        [lb_backend(app, place["members"]["web"]) for app in apps.values()]
        if "lb" in roles
        else []
    )
    config["backup_apps"] = backup_apps(config, place, apps)


def _mariadb_bind(mariadb, address):
    """The addresses the db minion's MariaDB listens on: loopback and the private
    address, or the private address alone where the server takes one address
    (MariaDB before 10.11); the apps on the db minion itself then reach it over
    the unix socket (host ``localhost``, the default)."""
    if mariadb["multiple_bind_addresses"]:
        return [LOOPBACK, address]
    return [address]


def backup_apps(config, place, apps):
    """
    What the nightly dumps of this minion cover (the backup script's
    ``backups.json``), each app as ``name``, ``database`` (``app.json``'s),
    ``env_file``, ``backup_dir``, ``backup_status`` and the ``group`` that
    may read that status (both None where the app does not run: its status
    is then readable by all, for the monitoring agents' own users): on one
    host, every app with a database; in a fleet, the apps whose database the
    db minion serves, dumped there over the local socket, and none on the
    other minions (each web minion would dump the same database).
    """
    if not config["backups"]["enabled"]:
        return []
    if place["fleet"]:
        covered = config["database_apps"]
    else:
        covered = [app for app in apps.values() if app["database"]["engine"] != "none"]
    runs_here = "web" in place["roles"]
    return [
        {
            "name": app["name"],
            "database": app["app_json"]["database"],
            "env_file": app["env_file"] if runs_here else None,
            "backup_dir": app["backup_dir"],
            "backup_status": app["backup_status"],
            "group": app["group"] if runs_here else None,
        }
        for app in covered
    ]


def _fleet_port(name, port, sources):
    return {"name": name, "protocol": "tcp", "port": int(port), "sources": sources}


def health_status_pattern(statuses):
    """The health statuses of an app (``2xx``, ``301``) as one regular
    expression, for the load balancer's check."""
    parts = [status.replace("x", "[0-9]") for status in map(str, statuses)]
    return "^({})$".format("|".join(parts))


def lb_backend(app, web_members):
    """One app's backend on the load balancer: its server names, its health
    path and statuses, and the web minions that serve it."""
    return {
        "app": app["name"],
        "name": f"djangoapp_{app['name']}",
        "server_names": app["server_names"],
        "health_path": app["health_path"],
        "health_host": app["server_names"][0],
        "health_statuses": health_status_pattern(app["health_statuses"]),
        "timeout": int(app["timeout"]),
        "tls": app["tls"]["enabled"] or app["tls"]["at_lb"],
        "tls_mode": app["tls"]["mode"],
        "hsts_max_age": int(app["tls"]["hsts_max_age"]),
        "servers": web_members,
    }


def fleet_apps_checked(config, place):
    """In a fleet every minion must agree on an app's host names (the load
    balancer routes by them, each web minion's Django allows them): they
    cannot default to each minion's own name."""
    if not place["fleet"]:
        return
    for name, app in sorted(config["apps"].items()):
        if app.get("absent"):
            continue
        if not app.get("server_names"):
            raise CommandExecutionError(
                f"djangoapp:apps:{name}:server_names is required in a fleet: the "
                "load balancer and every web minion serve the app by these names"
            )
        if (app.get("tls") or {}).get("mode") == "acme":
            raise CommandExecutionError(
                f"djangoapp:apps:{name}:tls:mode: acme is not served by a fleet's "
                "load balancer yet: selfsigned, provided or off"
            )


def remote_services(config, place, name, app):
    """On a web minion of a fleet without the db role, the app's database is
    on the db minion (unless the pillar names another host)."""
    database = app["database"]
    if (
        place["fleet"]
        and "db" not in place["roles"]
        and database.get("engine") in config["database_defaults"]
        and database.get("host") in LOCAL_HOSTS
    ):
        database["host"] = the_one(place, "db", f"djangoapp:apps:{name}:database")


def cache_address(config, place):
    """Where the web minion's apps find their cache server: loopback, or the
    cache minion of the fleet (whose Redis then wants the pillar's password)."""
    cache_apps = sorted(
        name
        for name, app in config["apps"].items()
        if not app.get("absent")
        and (app.get("cache") or {}).get("engine", "none") != "none"
    )
    roles = place["roles"]
    if not (place["fleet"] and cache_apps and "web" in roles and "cache" not in roles):
        return LOOPBACK
    return the_one(place, "cache", f"djangoapp:apps:{cache_apps[0]}:cache")


def redis_password_checked(config, place):
    """Redis across the network answers only with a password."""
    redis_apps = [
        name
        for name, app in config["apps"].items()
        if (app.get("cache") or {}).get("engine") == "redis"
    ]
    reachable_from_others = "cache" in place["roles"] and place["peers"]["web"]
    remote = "web" in place["roles"] and "cache" not in place["roles"]
    if (
        place["fleet"]
        and redis_apps
        and (reachable_from_others or remote)
        and not config["redis"].get("password")
    ):
        raise CommandExecutionError(
            "djangoapp:redis:password is required when Redis serves the web "
            f"minions of a fleet (apps {', '.join(sorted(redis_apps))})"
        )


def derive(config, grains, mine=None):
    """
    ``config`` (the merged ``djangoapp`` mapping, not changed) with the
    derived settings added: ``proxy_env``, ``redis:databases``, each app's
    settings under ``apps`` (its ``app_json`` among them), the apps marked
    ``absent`` apart under ``absent_apps`` (their Redis databases stay
    reserved while the pillar names them),
    ``local_database_engines``, ``tls_apps``, ``monitoring_checks``,
    ``monitoring_ports`` and ``selinux_active``; and what the minion's roles
    make of them (``in_fleet``), with ``fleet`` holding the roles and the
    fleet's members as ``mine`` (the Salt mine's ``djangoapp.fleet_member``
    of every minion) gives them. Without the web role, ``apps`` is empty.
    """
    config = copy.deepcopy(config)
    place = view(config, mine, grains["id"])
    config["fleet"] = {**config["fleet"], **place}
    fleet_apps_checked(config, place)
    redis_password_checked(config, place)
    config["proxy_env"] = proxy_environment(config["proxy"])
    config["cache_address"] = cache_address(config, place)
    redis_dbs = redis_databases(config["apps"])
    config["redis"]["databases"] = max(
        [REDIS_DEFAULT_DATABASES, *(db + 1 for db in redis_dbs.values())]
    )
    apps, absent_apps = {}, {}
    for name, app_pillar in config["apps"].items():
        app = copy.deepcopy(config["app_defaults"])
        salt.utils.dictupdate.update(app, app_pillar, merge_lists=False)
        if app.get("absent"):
            absent_apps[name] = absent_app_settings(name, app, config)
        else:
            remote_services(config, place, name, app)
            tls_at_lb = bool(place["members"]["lb"])
            apps[name] = app_settings(
                name, app, config, redis_dbs, grains, tls_at_lb=tls_at_lb
            )
    in_fleet(config, place, apps)
    if "web" not in place["roles"]:
        apps, absent_apps = {}, {}
    config["apps"] = apps
    config["absent_apps"] = absent_apps
    config["local_database_engines"] = _unique(
        app["database"]["engine"] for app in config["database_apps"]
    )
    config["tls_apps"] = [name for name, app in apps.items() if app["tls"]["enabled"]]
    config["monitoring_checks"] = monitoring_checks(config)
    config["monitoring_ports"] = monitoring_ports(config["monitoring"])
    # SELinux states run where the policy is on (grain selinux:enabled,
    # assumed on when absent) on the families that have it.
    config["selinux_active"] = config.get("selinux") and (
        grains.get("selinux") or {}
    ).get("enabled", True)
    return config
