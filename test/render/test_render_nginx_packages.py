"""The Nginx site of each app is tested with the whole configuration before it is
installed, and a failed site holds no other app back; an app's OS packages are
installed before its release."""

import pytest

from rendering import PLATFORMS, RenderError, app_pillar, state_args

CHECK_SCRIPT = "/usr/local/lib/djangoapp/nginx-check-site"


def two_apps(**shop):
    return {
        "djangoapp": {
            "apps": {
                "shop": app_pillar("shop", **shop),
                "blog": app_pillar(
                    "blog",
                    database={
                        "engine": "postgresql",
                        "name": "blog",
                        "password": "x",
                    },
                ),
            }
        }
    }


@pytest.fixture(scope="module", params=sorted(PLATFORMS))
def platform_states(request, renderer):
    return request.param, renderer.show_sls(request.param, two_apps())


def requisites(args: dict, kind: str) -> list[dict]:
    return args.get(kind, [])


def test_each_site_is_tested_in_place_before_it_is_written(platform_states):
    platform, states = platform_states
    _, script = state_args(states, "djangoapp-nginx-check-site-file-managed")
    assert (script["name"], script["mode"]) == (CHECK_SCRIPT, "0755")
    for name in ("shop", "blog"):
        _, site = state_args(states, f"djangoapp-{name}-nginx-site-file-managed")
        command = site["check_cmd"].split()
        assert command[:3] == [CHECK_SCRIPT, "--site", site["name"]]
        enabled = f"djangoapp-{name}-nginx-site-enabled"
        if enabled in states:
            link = state_args(states, enabled)[1]["name"]
            assert command[3:] == ["--enabled", link]
        else:
            assert command[3:] == [], platform
        assert {"file": "djangoapp-nginx-check-site-file-managed"} in site["require"]
        assert {"file": "djangoapp-nginx-http-settings-file-managed"} in site["require"]


def test_a_failed_site_holds_neither_the_test_nor_the_reload_back(platform_states):
    """The sites reach the config test and the reload by onchanges only (a failed
    target counts as unchanged), never by require or watch."""
    _, states = platform_states
    site_ids = {
        state_id
        for state_id in states
        if state_id.endswith(("-nginx-site-file-managed", "-nginx-site-enabled"))
    }
    assert site_ids
    for state_id in site_ids:
        _, args = state_args(states, state_id)
        assert "require_in" not in args and "watch_in" not in args, state_id
    _, tested = state_args(states, "djangoapp-nginx-config-tested")
    onchanges = {next(iter(item.values())) for item in tested["onchanges"]}
    assert site_ids <= onchanges
    assert not any(
        next(iter(item.values())) in site_ids
        for item in requisites(tested, "require") + requisites(tested, "watch")
    )
    _, service = state_args(states, "djangoapp-nginx-service-running")
    hard = [next(iter(item.values())) for item in service["require"] + service["watch"]]
    assert "djangoapp-nginx-config-tested" in hard
    assert not site_ids & set(hard)


def test_app_packages_are_installed_before_its_release(renderer):
    for platform, package in (
        ("debian-12", "libxml2-dev"),
        ("rocky-9", "libxml2-devel"),
    ):
        states = renderer.show_sls(
            platform, two_apps(packages=[package, "libxslt1-dev"])
        )
        function, installed = state_args(states, "djangoapp-shop-packages-installed")
        assert function == "pkg.installed"
        assert installed["pkgs"] == [package, "libxslt1-dev"]
        assert installed["require_in"] == [
            {"djangoapp": "djangoapp-shop-release-deployed"}
        ]
        assert "djangoapp-blog-packages-installed" not in states


def test_a_bad_package_name_is_named(renderer):
    with pytest.raises(RenderError) as error:
        renderer.show_sls("debian-12", two_apps(packages=["libpq-dev; rm -rf /"]))
    assert "djangoapp:apps:shop:packages" in str(error.value)


def test_a_release_made_by_state_apply_is_checked_once_served(platform_states):
    """The first release too: once Gunicorn and Nginx serve it, its health path is
    judged by the rule every later release is judged by."""
    _, states = platform_states
    for name in ("shop", "blog"):
        function, args = state_args(states, f"djangoapp-{name}-release-health-checked")
        assert function == "module.run"
        assert args["djangoapp.health"] == [{"app": name}]
        assert args["onchanges"] == [
            {"djangoapp": f"djangoapp-{name}-release-deployed"}
        ]
        assert {"service": "djangoapp-nginx-service-running"} in args["require"]
        assert {"cmd": f"djangoapp-{name}-gunicorn-running"} in args["require"]
