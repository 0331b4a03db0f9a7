"""Every SLS renders for each supported OS, with the right names for its family, and a
bad pillar stops the render with a message that names the key."""

import configparser
import copy
import shlex

import pytest

from rendering import PLATFORMS, RenderError, state_args

SECRET = "canary-password-4f1e"

APP = {
    "repo": "https://git.example.com/shop.git",
    "version": "v2.3.1",
    "settings_module": "shop.settings.production",
    "wsgi": "shop.wsgi:application",
    "requirements": "requirements/production.txt",
    "server_names": ["shop.example.com", "www.shop.example.com"],
    "env": {"DJANGO_SECRET_KEY": SECRET},
    "database": {"engine": "postgresql", "password": SECRET},
}


def pillar(**app_overrides):
    app = copy.deepcopy(APP)
    app.update(app_overrides)
    return {"djangoapp": {"apps": {"shop": app}}}


FAMILY_EXPECTATIONS = {
    "Debian": {
        "base_package": "python3-venv",
        "supervisor_service": "supervisor",
        "supervisor_program": "/etc/supervisor/conf.d/djangoapp-shop.conf",
        "nginx_site": "/etc/nginx/sites-available/djangoapp-shop.conf",
        "nginx_group": "www-data",
        "shell": "/usr/sbin/nologin",
        "postgresql_server": "postgresql",
    },
    "RedHat": {
        "base_package": "python3-devel",
        "supervisor_service": "supervisord",
        "supervisor_program": "/etc/supervisord.d/djangoapp-shop.ini",
        "nginx_site": "/etc/nginx/conf.d/djangoapp-shop.conf",
        "nginx_group": "nginx",
        "shell": "/sbin/nologin",
        "postgresql_server": "postgresql-server",
    },
}
# PostgreSQL's settings file: Debian's versioned cluster directory (found on real
# hosts: 15 on Debian 12, 17 on Debian 13), RedHat's data directory.
POSTGRESQL_SETTINGS = {
    "debian-12": "/etc/postgresql/15/main/conf.d/djangoapp.conf",
    "debian-13": "/etc/postgresql/17/main/conf.d/djangoapp.conf",
}
REDHAT_POSTGRESQL_SETTINGS = "/var/lib/pgsql/data/conf.d/djangoapp.conf"


@pytest.fixture(scope="module", params=sorted(PLATFORMS))
def platform_states(request, renderer):
    return request.param, renderer.show_sls(request.param, pillar())


def test_family_names(platform_states):
    platform, states = platform_states
    family = PLATFORMS[platform]["os_family"]
    expected = FAMILY_EXPECTATIONS[family]

    _, base = state_args(states, "djangoapp-base-packages-installed")
    assert expected["base_package"] in base["pkgs"]

    _, server = state_args(states, "djangoapp-postgresql-server-packages-installed")
    assert server["pkgs"] == [expected["postgresql_server"]]
    _, pg_settings = state_args(states, "djangoapp-postgresql-settings-file-managed")
    assert pg_settings["name"] == POSTGRESQL_SETTINGS.get(
        platform, REDHAT_POSTGRESQL_SETTINGS
    )
    assert "listen_addresses = 'localhost'" in pg_settings["contents"]

    _, supervisor = state_args(states, "djangoapp-supervisor-service-running")
    assert supervisor["name"] == expected["supervisor_service"]
    _, program = state_args(states, "djangoapp-shop-supervisor-program-file-managed")
    assert program["name"] == expected["supervisor_program"]

    _, site = state_args(states, "djangoapp-shop-nginx-site-file-managed")
    assert site["name"] == expected["nginx_site"]
    assert ("djangoapp-shop-nginx-site-enabled" in states) == (family == "Debian")

    _, user = state_args(states, "djangoapp-shop-user-present")
    assert user["shell"] == expected["shell"]
    assert user["home"] == "/srv/djangoapp/shop"

    _, run_dir = state_args(states, "djangoapp-shop-directory-/run/djangoapp/shop")
    assert (run_dir["user"], run_dir["group"]) == ("shop", expected["nginx_group"])


def test_redhat_initializes_postgresql_and_enables_epel(platform_states):
    platform, states = platform_states
    if PLATFORMS[platform]["os_family"] != "RedHat":
        assert "djangoapp-postgresql-cluster-initialized" not in states
        assert "djangoapp-package-repositories-installed" not in states
        return
    function, initdb = state_args(states, "djangoapp-postgresql-cluster-initialized")
    assert function == "cmd.run"
    assert initdb["name"] == "postgresql-setup --initdb"
    assert initdb["creates"] == "/var/lib/pgsql/data/PG_VERSION"
    _, repos = state_args(states, "djangoapp-package-repositories-installed")
    assert "epel-release" in repos["pkgs"]
    assert ("epel-next-release" in repos["pkgs"]) == (platform == "centos-stream-9")


def test_engine_config_holds_no_secret(platform_states):
    _, states = platform_states
    function, config = state_args(
        states, "djangoapp-shop-engine-config-file-serialized"
    )
    assert function == "file.serialize"
    dataset = config["dataset"]
    assert SECRET not in repr(dataset)
    assert dataset["base_dir"] == "/srv/djangoapp/shop"
    assert dataset["wsgi"] == "shop.wsgi:application"
    assert dataset["requirements"] == "requirements/production.txt"
    assert dataset["pip_extra"] == ["gunicorn"]
    assert dataset["health"]["host"] == "shop.example.com"
    assert dataset["database"]["name"] == "shop"


def test_environment_file_is_private_and_quiet(platform_states):
    _, states = platform_states
    _, env = state_args(states, "djangoapp-shop-environment-file-serialized")
    assert (env["user"], env["group"], env["mode"]) == ("root", "shop", "0640")
    assert env["show_changes"] is False
    assert env["dataset"]["DATABASE_URL"] == (
        f"postgres://shop:{SECRET}@localhost:5432/shop"
    )
    assert env["dataset"]["DJANGO_SETTINGS_MODULE"] == "shop.settings.production"
    assert (
        env["dataset"]["DJANGO_ALLOWED_HOSTS"]
        == "shop.example.com,www.shop.example.com"
    )
    assert env["dataset"]["DJANGO_SECRET_KEY"] == SECRET


def test_release_goes_through_the_engine(platform_states):
    _, states = platform_states
    function, release = state_args(states, "djangoapp-shop-release-deployed")
    assert function == "djangoapp.released"
    assert (release["name"], release["version"]) == ("shop", "v2.3.1")


def test_database_password_is_url_encoded(renderer):
    states = renderer.show_sls(
        "debian-12", pillar(database={"engine": "postgresql", "password": "p@ss/w:rd"})
    )
    _, env = state_args(states, "djangoapp-shop-environment-file-serialized")
    assert env["dataset"]["DATABASE_URL"] == (
        "postgres://shop:p%40ss%2Fw%3Ard@localhost:5432/shop"
    )


def test_remote_database_gets_client_only(renderer):
    states = renderer.show_sls(
        "rocky-9",
        pillar(
            database={"engine": "postgresql", "host": "db.internal", "password": "x"}
        ),
    )
    assert "djangoapp-postgresql-client-packages-installed" in states
    assert "djangoapp-postgresql-server-packages-installed" not in states
    assert "djangoapp-shop-postgresql-role-present" not in states


def test_systemd_process_manager(renderer):
    states = renderer.show_sls("debian-12", pillar(process_manager="systemd"))
    _, unit = state_args(states, "djangoapp-shop-systemd-unit-file-managed")
    assert unit["name"] == "/etc/systemd/system/djangoapp-shop.service"
    function, running = state_args(states, "djangoapp-shop-gunicorn-running")
    assert (function, running["name"]) == ("service.running", "djangoapp-shop")
    assert {"service": "djangoapp-shop-gunicorn-socket-listening"} in running["require"]
    _, socket_unit = state_args(states, "djangoapp-shop-systemd-socket-file-managed")
    assert socket_unit["name"] == "/etc/systemd/system/djangoapp-shop.socket"
    assert socket_unit["context"]["web_group"] == "www-data"
    function, listening = state_args(states, "djangoapp-shop-gunicorn-socket-listening")
    assert (function, listening["name"]) == ("service.running", "djangoapp-shop.socket")
    assert "djangoapp-supervisor-service-running" not in states


@pytest.mark.parametrize(
    ("platform", "web_group"), [("debian-12", "www-data"), ("rocky-9", "nginx")]
)
def test_supervisor_holds_the_socket_and_hands_it_to_gunicorn(
    renderer, platform, web_group
):
    states = renderer.show_sls(platform, pillar())
    _, program = state_args(states, "djangoapp-shop-supervisor-program-file-managed")
    rendered = renderer.render_file(platform, program["source"], program["context"])
    parser = configparser.RawConfigParser()
    parser.read_string(rendered)
    assert parser.sections() == ["fcgi-program:djangoapp-shop"]
    section = parser["fcgi-program:djangoapp-shop"]
    assert section["socket"] == "unix:///run/djangoapp/shop/gunicorn.sock"
    assert section["socket_owner"] == f"shop:{web_group}"
    assert section["socket_mode"] == "0660"
    # What makes gunicorn.conf.py bind fd://0, the socket supervisord hands over.
    assert 'DJANGOAPP_LISTEN_FD="0"' in section["environment"].split(",")


KEEPER_COMMAND = [
    "/srv/djangoapp/shop/current/venv/bin/python",
    "/usr/local/lib/djangoapp/gunicorn-keeper",
    "/srv/djangoapp/shop/current",
    "/run/djangoapp/shop",
    "45",
    "--",
    "--config",
    "/etc/djangoapp/shop/gunicorn.conf.py",
    "shop.wsgi:application",
]


@pytest.mark.parametrize("preload_app", [True, False])
def test_preload_app_has_both_process_managers_run_the_keeper(renderer, preload_app):
    states = renderer.show_sls("debian-12", pillar(preload_app=preload_app))
    _, program = state_args(states, "djangoapp-shop-supervisor-program-file-managed")
    parser = configparser.RawConfigParser()
    parser.read_string(
        renderer.render_file("debian-12", program["source"], program["context"])
    )
    command = shlex.split(parser["fcgi-program:djangoapp-shop"]["command"])
    _, keeper = state_args(states, "djangoapp-gunicorn-keeper-file-managed")
    assert keeper["name"] == KEEPER_COMMAND[1]
    assert {"file": "djangoapp-gunicorn-keeper-file-managed"} in program["require"]

    states = renderer.show_sls(
        "debian-12", pillar(preload_app=preload_app, process_manager="systemd")
    )
    _, unit_state = state_args(states, "djangoapp-shop-systemd-unit-file-managed")
    unit = configparser.RawConfigParser(strict=False)
    unit.read_string(
        renderer.render_file("debian-12", unit_state["source"], unit_state["context"])
    )
    exec_start = shlex.split(unit["Service"]["ExecStart"])
    if preload_app:
        assert command == exec_start == KEEPER_COMMAND
    else:
        gunicorn = [KEEPER_COMMAND[0], "-m", "gunicorn", *KEEPER_COMMAND[6:]]
        assert command == exec_start == gunicorn
    # a reload is a HUP to the main process: the keeper's hand-over, preloaded
    assert unit["Service"]["ExecReload"] == "/bin/kill -s HUP $MAINPID"
    # a newer keeper program: djangoapp.reload has the running keeper renew itself
    _, reloaded = state_args(states, "djangoapp-shop-gunicorn-reloaded")
    renews = {"file": "djangoapp-gunicorn-keeper-file-managed"} in reloaded["onchanges"]
    assert renews is preload_app


def test_proxy_is_configured_for_the_package_manager(renderer):
    proxied = {
        **pillar(),
    }
    proxied["djangoapp"]["proxy"] = {
        "http": "http://proxy:3128",
        "https": "http://proxy:3128",
    }
    debian = renderer.show_sls("debian-12", proxied)
    function, apt = state_args(debian, "djangoapp-package-proxy-file-managed")
    assert function == "file.managed"
    assert 'Acquire::https::Proxy "http://proxy:3128";' in apt["contents"]
    rocky = renderer.show_sls("rocky-9", proxied)
    function, dnf = state_args(rocky, "djangoapp-package-proxy-file-managed")
    assert function == "ini.options_present"
    assert dnf["sections"]["main"]["proxy"] == "http://proxy:3128"


def test_reserved_host_keys_are_accepted(renderer):
    accepted = pillar()
    accepted["djangoapp"].update(
        firewall={"enabled": False},
        ssh={"harden": False},
        fail2ban={"enabled": False},
        auto_updates={"enabled": False},
        backups={"enabled": False},
        monitoring={},
    )
    assert "djangoapp-shop-release-deployed" in renderer.show_sls("debian-12", accepted)


def test_two_apps_do_not_clash(renderer):
    two = pillar()
    two["djangoapp"]["apps"]["blog"] = {
        **APP,
        "repo": "https://git.example.com/blog.git",
        "settings_module": "blog.settings",
        "wsgi": "blog.wsgi:application",
        "server_names": ["blog.example.com"],
    }
    states = renderer.show_sls("debian-12", two)
    sockets = {
        state_args(states, f"djangoapp-{name}-engine-config-file-serialized")[1][
            "dataset"
        ]["socket"]
        for name in ("shop", "blog")
    }
    assert sockets == {
        "/run/djangoapp/shop/gunicorn.sock",
        "/run/djangoapp/blog/gunicorn.sock",
    }
    assert "djangoapp-blog-postgresql-database-present" in states


BAD_PILLARS = {
    "missing repo": (lambda app: app.pop("repo"), "djangoapp:apps:shop:repo"),
    "bad version": (
        lambda app: app.update(version="v1;rm -rf /"),
        "djangoapp:apps:shop:version",
    ),
    "option-like version": (
        lambda app: app.update(version="--upload-pack=x"),
        "djangoapp:apps:shop:version",
    ),
    "unknown engine": (
        lambda app: app.update(database={"engine": "oracle", "password": "x"}),
        "djangoapp:apps:shop:database:engine",
    ),
    "no database password": (
        lambda app: app.update(database={"engine": "postgresql"}),
        "djangoapp:apps:shop:database:password",
    ),
    "misspelt key": (lambda app: app.update(setings_module="x"), "setings_module"),
}


@pytest.mark.parametrize("case", sorted(BAD_PILLARS))
def test_bad_pillar_names_the_key(renderer, case):
    change, key = BAD_PILLARS[case]
    bad = pillar()
    change(bad["djangoapp"]["apps"]["shop"])
    with pytest.raises(RenderError, match=key):
        renderer.show_sls("debian-12", bad)


def test_bad_app_name_is_named(renderer):
    bad = {"djangoapp": {"apps": {"Shop-1": copy.deepcopy(APP)}}}
    with pytest.raises(RenderError, match="Shop-1"):
        renderer.show_sls("debian-12", bad)


def test_a_bad_pillar_is_reported_once_with_the_key_it_resembles(renderer):
    bad = pillar()
    bad["djangoapp"]["apps"]["shop"]["setings_module"] = "x"
    with pytest.raises(RenderError) as error:
        renderer.show_sls("debian-12", bad)
    message = str(error.value)
    assert message.count("Rendering SLS") == 1, message
    assert (
        message.count(
            "djangoapp:apps:shop:setings_module is not a known key "
            "(did you mean settings_module?)"
        )
        == 1
    ), message
