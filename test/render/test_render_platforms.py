"""What differs between releases of one family, found on real hosts: Debian 13's
PostgreSQL 17 and its nginx.conf that already says `server_tokens off;` (Nginx
refuses the directive twice in one context, so `nginx -t` fails if we repeat it)."""

import pytest

from rendering import PLATFORMS, app_pillar, state_args

PILLAR = {"djangoapp": {"apps": {"shop": app_pillar("shop")}}}

# Where the distribution's own nginx.conf sets it (seen on a Debian 13 host; Debian
# 12's has it commented out, RHEL's lacks it).
SERVER_TOKENS_IN_DISTRIBUTION_CONF = {"debian-13"}

POSTGRESQL = {
    "debian-12": ("postgresql", "/etc/postgresql/15/main/conf.d"),
    "debian-13": ("postgresql", "/etc/postgresql/17/main/conf.d"),
}


@pytest.fixture(scope="module", params=sorted(PLATFORMS))
def platform_states(request, renderer):
    return request.param, renderer.show_sls(request.param, PILLAR)


def test_server_tokens_off_said_once_per_nginx_configuration(platform_states, renderer):
    platform, states = platform_states
    _, http = state_args(states, "djangoapp-nginx-http-settings-file-managed")
    config = renderer.render_file(platform, http["source"], http["context"])
    directives = [
        line.strip() for line in config.splitlines() if not line.strip().startswith("#")
    ]
    if platform in SERVER_TOKENS_IN_DISTRIBUTION_CONF:
        assert "server_tokens off;" not in directives, platform
    else:
        assert "server_tokens off;" in directives, platform


@pytest.mark.parametrize("platform", sorted(POSTGRESQL))
def test_debian_postgresql_cluster_of_the_release(renderer, platform):
    states = renderer.show_sls(platform, PILLAR)
    package, conf_dir = POSTGRESQL[platform]
    _, server = state_args(states, "djangoapp-postgresql-server-packages-installed")
    assert server["pkgs"] == [package]
    _, settings = state_args(states, "djangoapp-postgresql-settings-file-managed")
    assert settings["name"] == f"{conf_dir}/djangoapp.conf"


# The interpreter an app gets unless its pillar names one, and the packages that
# provide it and its headers: a Python that current Django (5.2, 6.0) supports, so
# 3.12+ where the release has it, Debian 12's 3.11 (Django 5.2) otherwise.
INTERPRETER = {
    "debian-12": ("python3", {"python3", "python3-dev", "python3-venv"}),
    "debian-13": ("python3", {"python3", "python3-dev", "python3-venv"}),
    "rocky-9": ("python3.12", {"python3.12", "python3.12-devel"}),
    "almalinux-9": ("python3.12", {"python3.12", "python3.12-devel"}),
    "centos-stream-9": ("python3.12", {"python3.12", "python3.12-devel"}),
    "rocky-10": ("python3", {"python3", "python3-devel"}),
    "almalinux-10": ("python3", {"python3", "python3-devel"}),
    "centos-stream-10": ("python3", {"python3", "python3-devel"}),
}


def test_every_platform_has_its_interpreter_expectation():
    assert set(INTERPRETER) == set(PLATFORMS)


def test_app_interpreter_is_one_current_django_supports(platform_states):
    platform, states = platform_states
    python, packages = INTERPRETER[platform]
    _, config = state_args(states, "djangoapp-shop-engine-config-file-serialized")
    assert config["dataset"]["python"] == python
    _, base = state_args(states, "djangoapp-base-packages-installed")
    assert packages <= set(base["pkgs"])


def test_an_app_may_name_another_interpreter(renderer):
    own = {"djangoapp": {"apps": {"shop": app_pillar("shop", python="python3.11")}}}
    states = renderer.show_sls("rocky-9", own)
    _, config = state_args(states, "djangoapp-shop-engine-config-file-serialized")
    assert config["dataset"]["python"] == "python3.11"
