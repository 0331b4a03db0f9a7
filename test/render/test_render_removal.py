"""Apps taken away (`absent`, `purge`) and clean.sls, as rendered: what is taken
down, in which order, what is kept, and what the other apps keep."""

import pytest

from rendering import PLATFORMS, RenderError, app_pillar, state_args


def pillar(**blog):
    return {
        "djangoapp": {
            "apps": {
                "shop": app_pillar("shop", cache={"engine": "redis"}),
                "blog": app_pillar("blog", cache={"engine": "redis"}, **blog),
            }
        }
    }


def app_states(states, name):
    return {
        state_id for state_id in states if state_id.startswith(f"djangoapp-{name}-")
    }


def env_of(states, name):
    return state_args(states, f"djangoapp-{name}-environment-file-serialized")[1][
        "dataset"
    ]


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_an_absent_app_is_taken_down_and_its_data_kept(renderer, platform):
    states = renderer.show_sls(platform, pillar(absent=True))
    blog = app_states(states, "blog")
    assert "djangoapp-blog-release-deployed" not in blog
    assert "djangoapp-blog-gunicorn-running" not in blog
    assert not [state_id for state_id in blog if "-present" in state_id]
    function, dump = state_args(states, "djangoapp-blog-last-dump-taken")
    assert function == "module.run"
    assert dump["djangoapp.backup"] == [{"app": "blog"}, {"label": "removed"}]
    assert dump["onlyif"] == [
        {"fun": "file.file_exists", "path": "/etc/djangoapp/blog/app.json"}
    ]
    site_dir = (
        "/etc/nginx/conf.d"
        if platform.startswith(("centos", "rocky", "alma"))
        else None
    )
    sites = sorted(
        state_args(states, state_id)[1]["name"]
        for state_id in blog
        if state_id.startswith("djangoapp-blog-nginx-site-absent-")
    )
    if site_dir:
        assert sites == [f"{site_dir}/djangoapp-blog.conf"]
    else:
        assert sites == [
            "/etc/nginx/sites-available/djangoapp-blog.conf",
            "/etc/nginx/sites-enabled/djangoapp-blog.conf",
        ]
    for state_id in blog:
        if state_id.startswith("djangoapp-blog-nginx-site-absent-"):
            assert states[state_id]["__sls__"] == "djangoapp.absent"
            assert {"service": "djangoapp-nginx-service-running"} in state_args(
                states, state_id
            )[1]["watch_in"]
    removed = sorted(
        state_args(states, state_id)[1]["name"]
        for state_id in blog
        if state_id.startswith("djangoapp-blog-configuration-absent-")
    )
    assert removed == [
        "/etc/djangoapp/blog",
        "/etc/tmpfiles.d/djangoapp-blog.conf",
        "/run/djangoapp/blog",
        "/usr/local/bin/blog-manage",
    ]
    # Kept without purge: database, role, system user, files, dumps.
    assert not [
        state_id
        for state_id in blog
        if state_id.endswith(("-database-absent", "-role-absent", "-user-absent"))
        or "-files-absent-" in state_id
    ]
    assert not [
        state_id
        for state_id in blog
        if "/var/backups" in str(state_args(states, state_id)[1].get("name"))
    ]


def test_the_other_apps_keep_their_settings_and_redis_database(renderer):
    both = renderer.show_sls("debian-12", pillar())
    one = renderer.show_sls("debian-12", pillar(absent=True))
    # blog (db 0 by name order) keeps its number reserved: shop stays on 1.
    assert env_of(both, "shop")["REDIS_URL"] == "redis://127.0.0.1:6379/1"
    assert env_of(one, "shop") == env_of(both, "shop")
    site = "djangoapp-shop-nginx-site-file-managed"
    unordered = [
        {
            key: value
            for key, value in state_args(states, site)[1].items()
            if key != "order"
        }
        for states in (one, both)
    ]
    assert unordered[0] == unordered[1]


def test_purge_removes_the_database_users_and_files_after_the_workers(renderer):
    states = renderer.show_sls("debian-12", pillar(absent=True, purge=True))
    stopped = [
        {"cmd": "djangoapp-blog-supervisor-program-removed"},
        {"service": "djangoapp-blog-systemd-service-dead"},
    ]
    function, database = state_args(states, "djangoapp-blog-postgresql-database-absent")
    assert (function, database["name"]) == ("postgres_database.absent", "blog")
    assert database["require"] == stopped
    function, role = state_args(states, "djangoapp-blog-postgresql-role-absent")
    assert (function, role["name"]) == ("postgres_user.absent", "blog")
    for path in ("/srv/djangoapp/blog", "/var/log/djangoapp/blog"):
        function, files = state_args(states, f"djangoapp-blog-files-absent-{path}")
        assert (function, files["name"], files["require"]) == (
            "file.absent",
            path,
            stopped,
        )
    assert state_args(states, "djangoapp-blog-user-absent")[1]["name"] == "blog"
    assert state_args(states, "djangoapp-blog-group-absent")[1]["name"] == "blog"
    taken_down = state_args(states, "djangoapp-blog-taken-down")[1]["require"]
    assert {"group": "djangoapp-blog-group-absent"} in taken_down
    assert {"postgres_user": "djangoapp-blog-postgresql-role-absent"} in taken_down


def test_purge_on_mariadb_drops_its_database_and_both_accounts(renderer):
    states = renderer.show_sls(
        "debian-12",
        pillar(
            absent=True,
            purge=True,
            database={"engine": "mysql", "name": "blog_db", "user": "blogger"},
        ),
    )
    _, drop = state_args(states, "djangoapp-blog-mariadb-database-and-user-absent")
    assert drop["stdin"] == (
        "DROP DATABASE IF EXISTS `blog_db`; DROP USER IF EXISTS "
        "'blogger'@'localhost', 'blogger'@'127.0.0.1';"
    )


def test_an_absent_app_needs_no_other_key(renderer):
    states = renderer.show_sls(
        "debian-12", {"djangoapp": {"apps": {"old": {"absent": True, "purge": True}}}}
    )
    assert (
        state_args(states, "djangoapp-old-postgresql-database-absent")[1]["name"]
        == "old"
    )
    assert "djangoapp-old-taken-down" in states


def test_purge_without_absent_is_refused_by_name(renderer):
    with pytest.raises(RenderError) as error:
        renderer.show_sls("debian-12", pillar(purge=True))
    assert "djangoapp:apps:blog:purge is taken with absent: true only" in str(
        error.value
    )
