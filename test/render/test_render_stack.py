"""The stack choices of each app (cache, database engine, process manager, ASGI, TLS
mode) and several apps on one host, rendered for every supported OS: package,
service and path names per family, the environment each app sees, the certificate
states, SELinux on RedHat, and the Nginx configuration that the templates make."""

import copy
import json

import pytest
import yaml

from rendering import PLATFORMS, REPO, RenderError, state_args
from rendering import app_pillar as app

KEY_CANARY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCanaryKey"
CERTIFICATE = (
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUcert\n-----END CERTIFICATE-----\n"
)
PRIVATE_KEY = f"-----BEGIN PRIVATE KEY-----\n{KEY_CANARY}\n-----END PRIVATE KEY-----\n"
DB_PASSWORD = "db-pass'with\\quotes"


# Four apps on one host, between them every choice:
#   shop: PostgreSQL, Redis, Supervisor, WSGI, self-signed certificate
#   blog: local MariaDB, memcached, systemd, ASGI, certificate from the pillar
#   wiki: MariaDB on another host, Redis with a chosen database, ACME
#   docs: no database, no cache, plain HTTP (tls.mode off, as YAML reads it)
STACK = {
    "djangoapp": {
        "apps": {
            "shop": app("shop", cache={"engine": "redis"}, tls={"mode": "selfsigned"}),
            "blog": {
                **app("blog", asgi="blog.asgi:application"),
                "process_manager": "systemd",
                "database": {"engine": "mysql", "password": DB_PASSWORD},
                "cache": {"engine": "memcached"},
                "tls": {"mode": "provided", "cert": CERTIFICATE, "key": PRIVATE_KEY},
            },
            "wiki": app(
                "wiki",
                server_names=["wiki.example.com", "www.wiki.example.com"],
                database={
                    "engine": "mysql",
                    "host": "db.internal",
                    "password": "remote",
                },
                cache={"engine": "redis", "db": 3},
                tls={"mode": "acme", "email": "ops@example.com"},
            ),
            "docs": app("docs", database={"engine": "none"}, tls={"mode": False}),
        }
    }
}
del STACK["djangoapp"]["apps"]["blog"]["wsgi"]

FAMILY = {
    "Debian": {
        "redis_package": "redis-server",
        "redis_service": "redis-server",
        "memcached_config": "/etc/memcached.conf",
        "mariadb_config": "/etc/mysql/mariadb.conf.d/90-djangoapp.cnf",
        "mariadb_client": {
            "mariadb-client",
            "default-libmysqlclient-dev",
            "pkg-config",
        },
        "site_dir": "/etc/nginx/sites-available",
        "certbot_timer": "certbot.timer",
    },
    "RedHat": {
        "redis_package": "redis",
        "redis_service": "redis",
        "memcached_config": "/etc/sysconfig/memcached",
        "mariadb_config": "/etc/my.cnf.d/90-djangoapp.cnf",
        "mariadb_client": {"mariadb", "mariadb-connector-c-devel"},
        "site_dir": "/etc/nginx/conf.d",
        "certbot_timer": "certbot-renew.timer",
    },
}


def family(platform):
    return PLATFORMS[platform]["os_family"]


# RHEL 10 has no Redis: Valkey, its successor, with its own names and paths.
VALKEY = {
    "redis_package": "valkey",
    "redis_service": "valkey",
    "redis_dir": "/etc/valkey",
}
REDIS = {"rocky-10": VALKEY, "almalinux-10": VALKEY, "centos-stream-10": VALKEY}


@pytest.fixture(scope="module", params=sorted(PLATFORMS))
def stack(request, renderer):
    return request.param, renderer.show_sls(request.param, STACK)


def environment(states, name):
    return state_args(states, f"djangoapp-{name}-environment-file-serialized")[1][
        "dataset"
    ]


def engine_config(states, name):
    return state_args(states, f"djangoapp-{name}-engine-config-file-serialized")[1][
        "dataset"
    ]


def test_redis_per_family_on_loopback(stack):
    platform, states = stack
    expected = {
        "redis_dir": "/etc/redis",
        **FAMILY[family(platform)],
        **REDIS.get(platform, {}),
    }
    _, package = state_args(states, "djangoapp-redis-package-installed")
    assert package["pkgs"] == [expected["redis_package"]]
    _, settings = state_args(states, "djangoapp-redis-settings-file-managed")
    conf_dir = expected["redis_dir"]
    conf_name = "valkey.conf" if platform in REDIS else "redis.conf"
    assert settings["name"] == f"{conf_dir}/djangoapp.conf"
    lines = settings["contents"].splitlines()
    assert "bind 127.0.0.1 -::1" in lines
    assert "protected-mode yes" in lines
    assert "port 6379" in lines
    function, included = state_args(states, "djangoapp-redis-settings-file-included")
    assert function == "file.append"
    assert included["name"] == f"{conf_dir}/{conf_name}"
    assert included["text"] == f"include {conf_dir}/djangoapp.conf"
    _, service = state_args(states, "djangoapp-redis-service-running")
    assert service["name"] == expected["redis_service"]


def test_memcached_per_family_on_loopback_without_udp(stack):
    platform, states = stack
    _, settings = state_args(states, "djangoapp-memcached-settings-file-managed")
    assert settings["name"] == FAMILY[family(platform)]["memcached_config"]
    if family(platform) == "Debian":
        lines = settings["contents"].splitlines()
        assert {"-l 127.0.0.1", "-U 0", "-p 11211", "-u memcache"} <= set(lines)
    else:
        assert 'OPTIONS="-l 127.0.0.1 -U 0"' in settings["contents"]
        assert 'USER="memcached"' in settings["contents"]
    _, service = state_args(states, "djangoapp-memcached-service-running")
    assert service["name"] == "memcached"


def test_mariadb_server_for_the_local_app_only(stack):
    platform, states = stack
    expected = FAMILY[family(platform)]
    _, client = state_args(states, "djangoapp-mariadb-client-packages-installed")
    assert expected["mariadb_client"] <= set(client["pkgs"])
    _, server = state_args(states, "djangoapp-mariadb-server-package-installed")
    assert server["pkgs"] == ["mariadb-server"]
    _, settings = state_args(states, "djangoapp-mariadb-settings-file-managed")
    assert settings["name"] == expected["mariadb_config"]
    assert settings["contents"].splitlines()[1:] == [
        "[mysqld]",
        "bind-address = 127.0.0.1",
        "skip-name-resolve = 1",
        "local-infile = 0",
    ]
    _, service = state_args(states, "djangoapp-mariadb-service-running")
    assert service["name"] == "mariadb"
    for state_id in (
        "djangoapp-mariadb-anonymous-users-absent",
        "djangoapp-mariadb-test-database-absent",
        "djangoapp-blog-mariadb-database-present",
        "djangoapp-blog-mariadb-user-present",
        "djangoapp-blog-mariadb-stale-accounts-absent",
        "djangoapp-blog-mariadb-grants-present",
    ):
        function, args = state_args(states, state_id)
        assert function == "cmd.run"
        # As root over the unix socket; SQL (and passwords) on stdin only.
        assert args["name"] == "mysql --batch --skip-column-names"
        assert args.get("onlyif") or args.get("unless"), state_id
    assert not any(state_id.startswith("djangoapp-wiki-mariadb") for state_id in states)


def test_mariadb_password_travels_on_stdin_escaped(stack):
    _, states = stack
    _, user = state_args(states, "djangoapp-blog-mariadb-user-present")
    escaped = "'db-pass\\'with\\\\quotes'"
    assert (
        f"CREATE USER IF NOT EXISTS 'blog'@'localhost' IDENTIFIED BY {escaped};"
        in (user["stdin"])
    )
    assert "'blog'@'127.0.0.1'" in user["stdin"]
    # the accounts of the app's user from anywhere else are dropped
    _, stale = state_args(states, "djangoapp-blog-mariadb-stale-accounts-absent")
    assert stale["onlyif"][0]["stdin"] == (
        "SELECT 1 FROM mysql.user WHERE User = 'blog'"
        " AND Host NOT IN ('localhost', '127.0.0.1') LIMIT 1;"
    )
    assert user["hide_output"] is True
    assert user["output_loglevel"] == "quiet"
    check = user["unless"][0]
    assert check["fun"] == "cmd.run"
    assert f"PASSWORD({escaped})" in check["stdin"]
    assert DB_PASSWORD not in user["name"] + check["cmd"]


def test_each_app_sees_its_own_services(stack):
    _, states = stack
    shop, blog = environment(states, "shop"), environment(states, "blog")
    wiki, docs = environment(states, "wiki"), environment(states, "docs")
    # wiki keeps the database number it asked for; shop gets the lowest free one.
    assert shop["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert wiki["REDIS_URL"] == "redis://127.0.0.1:6379/3"
    assert blog["MEMCACHED_URL"] == "127.0.0.1:11211"
    assert "REDIS_URL" not in blog and "MEMCACHED_URL" not in shop
    assert not {"REDIS_URL", "MEMCACHED_URL", "DATABASE_URL"} & set(docs)
    assert blog["DATABASE_URL"] == (
        "mysql://blog:db-pass%27with%5Cquotes@localhost:3306/blog"
    )
    assert wiki["DATABASE_URL"] == "mysql://wiki:remote@db.internal:3306/wiki"
    for name, env in (("shop", shop), ("blog", blog), ("docs", docs)):
        assert env["DJANGO_MEDIA_ROOT"] == f"/srv/djangoapp/{name}/shared/media"
        assert env["DJANGO_STATIC_ROOT"] == f"/srv/djangoapp/{name}/current/static"


def test_apps_report_errors_to_the_pillars_sentry_dsn(renderer):
    """monitoring:sentry_dsn reaches every app's environment file, unless an app's own
    env names another DSN; without it nothing of Sentry is set."""
    dsn = "https://public-key@sentry.example.com/7"
    own = "https://other-key@sentry.example.com/8"
    pillar = {
        "djangoapp": {
            "apps": {
                "shop": app("shop"),
                "docs": app("docs", env={"DJANGO_SECRET_KEY": "y", "SENTRY_DSN": own}),
            },
            "monitoring": {"sentry_dsn": dsn, "sentry_environment": "production"},
        }
    }
    states = renderer.show_sls("debian-12", pillar)
    shop, docs = environment(states, "shop"), environment(states, "docs")
    assert (shop["SENTRY_DSN"], shop["SENTRY_ENVIRONMENT"]) == (dsn, "production")
    assert (docs["SENTRY_DSN"], docs["SENTRY_ENVIRONMENT"]) == (own, "production")
    # The release is named per release by the engine, not by the state tree.
    assert "SENTRY_RELEASE" not in shop
    _, env_file = state_args(states, "djangoapp-shop-environment-file-serialized")
    assert env_file["show_changes"] is False

    plain = renderer.show_sls(
        "debian-12", {"djangoapp": {"apps": {"shop": app("shop")}}}
    )
    assert not [key for key in environment(plain, "shop") if key.startswith("SENTRY")]


def test_health_check_uses_https_when_tls_is_on(stack):
    _, states = stack
    for name, url in (
        ("shop", "https://127.0.0.1/"),
        ("blog", "https://127.0.0.1/"),
        ("wiki", "https://127.0.0.1/"),
        ("docs", "http://127.0.0.1/"),
    ):
        health = engine_config(states, name)["health"]
        assert health["url"] == url
        assert health["host"] == f"{name}.example.com"
        assert health["verify_tls"] is False


def test_asgi_and_systemd_for_blog(stack):
    _, states = stack
    config = engine_config(states, "blog")
    assert config["asgi"] == "blog.asgi:application"
    assert config["wsgi"] is None
    assert config["pip_extra"] == ["gunicorn", "uvicorn-worker"]
    assert config["process_manager"] == "systemd"
    function, service = state_args(states, "djangoapp-blog-gunicorn-running")
    assert (function, service["name"]) == ("service.running", "djangoapp-blog")
    _, shop = state_args(states, "djangoapp-shop-gunicorn-running")
    assert shop["name"] == "supervisorctl start djangoapp-shop"


def test_selfsigned_certificate_is_generated_once_per_set_of_names(stack):
    _, states = stack
    function, generated = state_args(states, "djangoapp-shop-tls-certificate-generated")
    assert function == "cmd.run"
    assert generated["name"].startswith("openssl req -x509 -nodes -newkey ec")
    assert "-subj /CN=shop.example.com" in generated["name"]
    assert "subjectAltName=DNS:shop.example.com" in generated["name"]
    assert "-keyout /etc/djangoapp/shop/tls/key.pem" in generated["name"]
    assert generated["creates"] == "/etc/djangoapp/shop/tls/cert.pem"
    assert generated["umask"] == "077"
    # A change of server_names removes the certificate, which is then made anew.
    _, names = state_args(states, "djangoapp-shop-tls-certificate-names-file-managed")
    assert names["contents"] == "CN=shop.example.com DNS:shop.example.com"
    function, outdated = state_args(
        states, "djangoapp-shop-tls-certificate-for-other-names-absent"
    )
    assert (function, outdated["name"]) == ("file.absent", generated["creates"])
    assert outdated["onchanges"] == [
        {"file": "djangoapp-shop-tls-certificate-names-file-managed"}
    ]
    assert {
        "file": "djangoapp-shop-tls-certificate-for-other-names-absent"
    } in generated["require"]
    _, directory = state_args(states, "djangoapp-shop-tls-directory")
    assert (directory["user"], directory["mode"]) == ("root", "0700")


def test_provided_certificate_comes_from_the_pillar_unseen(stack):
    _, states = stack
    _, cert = state_args(states, "djangoapp-blog-tls-certificate-file-managed")
    assert cert["contents_pillar"] == "djangoapp:apps:blog:tls:cert"
    _, key = state_args(states, "djangoapp-blog-tls-key-file-managed")
    assert key["name"] == "/etc/djangoapp/blog/tls/key.pem"
    assert key["contents_pillar"] == "djangoapp:apps:blog:tls:key"
    assert (key["user"], key["mode"], key["show_changes"]) == ("root", "0600", False)
    # Not in any state's arguments (the templates' contexts included).
    assert KEY_CANARY not in json.dumps(states)


def test_acme_certificate_through_certbot_webroot(stack):
    platform, states = stack
    _, standin = state_args(states, "djangoapp-wiki-tls-certificate-generated")
    assert standin["creates"] == "/etc/djangoapp/wiki/tls/cert.pem"
    _, certbot = state_args(states, "djangoapp-wiki-acme-certificate-obtained")
    command = certbot["name"]
    assert command.startswith(
        "certbot certonly --non-interactive --agree-tos --webroot"
    )
    assert "--webroot-path /var/lib/djangoapp/acme" in command
    assert "--cert-name wiki" in command
    assert "--email ops@example.com" in command
    assert "--domain wiki.example.com --domain www.wiki.example.com" in command
    assert "--deploy-hook 'systemctl reload nginx'" in command
    assert certbot["creates"] == "/etc/letsencrypt/live/wiki/fullchain.pem"
    assert {"service": "djangoapp-nginx-service-running"} in certbot["require"]
    _, linked = state_args(states, "djangoapp-wiki-acme-fullchain-linked")
    assert linked["name"] == "/etc/djangoapp/wiki/tls/cert.pem"
    assert linked["target"] == "/etc/letsencrypt/live/wiki/fullchain.pem"
    _, timer = state_args(states, "djangoapp-acme-renewal-timer-running")
    assert timer["name"] == FAMILY[family(platform)]["certbot_timer"]
    _, webroot = state_args(states, "djangoapp-tls-acme-webroot-directory")
    assert webroot["name"] == "/var/lib/djangoapp/acme"


def test_no_certificate_states_for_plain_http(stack):
    _, states = stack
    assert not [
        state_id for state_id in states if state_id.startswith("djangoapp-docs-tls")
    ]


def test_nginx_sites_and_tls_settings(stack):
    platform, states = stack
    _, site = state_args(states, "djangoapp-shop-nginx-site-file-managed")
    assert site["name"] == f"{FAMILY[family(platform)]['site_dir']}/djangoapp-shop.conf"
    assert {"sls": "djangoapp.tls"} in site["require"]
    # written after the app's release, whatever became of it: a failed release of
    # one app must not hold back the other sites, nor Nginx's start
    release = {"djangoapp": "djangoapp-shop-release-deployed"}
    assert release not in site["require"]
    assert release in site["require_any"]
    assert {"pkg": "djangoapp-nginx-package-installed"} in site["require_any"]
    _, tls = state_args(states, "djangoapp-nginx-tls-settings-file-managed")
    assert tls["name"] == "/etc/nginx/djangoapp-tls.conf"
    lines = tls["contents"].splitlines()
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in lines
    assert "ssl_prefer_server_ciphers off;" in lines
    assert "ssl_session_tickets off;" in lines
    ciphers = next(line for line in lines if line.startswith("ssl_ciphers "))
    assert ciphers.startswith("ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:")
    assert "CBC" not in ciphers and "SHA:" not in ciphers + ":"
    # A new certificate or key reloads Nginx.
    _, service = state_args(states, "djangoapp-nginx-service-running")
    assert {"cmd": "djangoapp-shop-tls-certificate-generated"} in service["watch"]
    assert {"file": "djangoapp-blog-tls-key-file-managed"} in service["watch"]


def test_release_waits_for_its_database_and_cache(stack):
    _, states = stack
    _, blog = state_args(states, "djangoapp-blog-release-deployed")
    assert {"cmd": "djangoapp-blog-mariadb-grants-present"} in blog["require"]
    assert {"service": "djangoapp-memcached-service-running"} in blog["require"]
    _, wiki = state_args(states, "djangoapp-wiki-release-deployed")
    assert {"pkg": "djangoapp-mariadb-client-packages-installed"} in wiki["require"]
    assert {"service": "djangoapp-redis-service-running"} in wiki["require"]


def test_selinux_on_redhat_only(stack):
    platform, states = stack
    selinux = [state_id for state_id in states if "selinux" in state_id]
    if family(platform) == "Debian":
        assert selinux == []
        return
    function, boolean = state_args(
        states, "djangoapp-selinux-httpd-can-network-connect-boolean"
    )
    assert function == "selinux.boolean"
    assert (boolean["name"], boolean["value"], boolean["persist"]) == (
        "httpd_can_network_connect",
        True,
        True,
    )
    contexts = {
        state_args(states, state_id)[1]["name"]: state_args(states, state_id)[1][
            "sel_type"
        ]
        for state_id in selinux
        if state_id.endswith("-fcontext-present")
    }
    assert contexts == {
        "/run/djangoapp(/.*)?": "httpd_var_run_t",
        "/srv/djangoapp(/.*)?": "httpd_sys_content_t",
        "/etc/djangoapp/[^/]+/tls(/.*)?": "cert_t",
        "/var/lib/djangoapp/acme(/.*)?": "httpd_sys_content_t",
    }
    function, applied = state_args(states, "djangoapp-selinux-run-dir-fcontext-applied")
    assert (function, applied["name"], applied["recursive"]) == (
        "selinux.fcontext_policy_applied",
        "/run/djangoapp",
        True,
    )
    _, packages = state_args(states, "djangoapp-selinux-packages-installed")
    assert packages["pkgs"] == ["policycoreutils-python-utils"]
    _, nginx = state_args(states, "djangoapp-nginx-service-running")
    assert {"sls": "djangoapp.selinux"} in nginx["require"]


def test_redis_gets_enough_databases(renderer):
    many = copy.deepcopy(STACK)
    many["djangoapp"]["apps"]["wiki"]["cache"]["db"] = 20
    states = renderer.show_sls("debian-12", many)
    _, settings = state_args(states, "djangoapp-redis-settings-file-managed")
    assert "databases 21" in settings["contents"].splitlines()


# --- the Nginx configuration the templates make ----------------------------------


@pytest.fixture(scope="module")
def nginx_files(renderer, tmp_path_factory):
    """The site files of shop (HTTPS), wiki (ACME) and docs (HTTP) and the http-level
    settings, rendered from the contexts that nginx.sls gives the templates, with a
    live release whose static and media files the engine reports."""
    states = renderer.show_sls("debian-12", STACK)
    root = tmp_path_factory.mktemp("hosts")
    config_dir = root / "etc"
    for name in ("shop", "wiki", "docs"):
        base = root / "srv" / name
        release = base / "releases" / "v1.0.0-0123abcd"
        release.mkdir(parents=True)
        (base / "current").symlink_to(release)
        (release / "release.json").write_text(
            json.dumps(
                {
                    "static_url": "/static/",
                    "static_root": f"{release}/src/staticfiles",
                    "media_url": "/media/",
                    "media_root": f"{base}/shared/media",
                }
            )
        )
        (config_dir / name).mkdir(parents=True)
        (config_dir / name / "app.json").write_text(json.dumps({"base_dir": str(base)}))
    options = {"djangoapp.config_dir": str(config_dir)}
    files = {}
    for name in ("shop", "wiki", "docs"):
        _, site = state_args(states, f"djangoapp-{name}-nginx-site-file-managed")
        files[name] = renderer.render_file(
            "debian-12", site["source"], site["context"], options
        )
    _, http = state_args(states, "djangoapp-nginx-http-settings-file-managed")
    files["http"] = renderer.render_file(
        "debian-12", http["source"], http["context"], options
    )
    files["root"] = str(root)
    return files


def server_blocks(config):
    """The text of each top-level ``server { ... }`` block."""
    blocks, depth, current = [], 0, None
    for line in config.splitlines():
        if depth == 0 and line.startswith("server {"):
            current = []
        if current is not None:
            current.append(line)
        depth += line.count("{") - line.count("}")
        if current is not None and depth == 0:
            blocks.append("\n".join(current))
            current = None
    return blocks


def test_https_site_redirects_plain_http(nginx_files):
    plain, secure = server_blocks(nginx_files["shop"])
    assert "listen 80;" in plain and "listen 443" not in plain
    assert "return 301 https://$host$request_uri;" in plain
    assert "proxy_pass" not in plain
    assert "listen 443 ssl http2;" in secure
    assert "listen [::]:443 ssl http2;" in secure
    assert "ssl_certificate /etc/djangoapp/shop/tls/cert.pem;" in secure
    assert "ssl_certificate_key /etc/djangoapp/shop/tls/key.pem;" in secure
    assert "include /etc/nginx/djangoapp-tls.conf;" in secure
    assert "proxy_set_header X-Forwarded-Proto $djangoapp_forwarded_proto;" in secure
    assert "client_max_body_size 10m;" in secure


def test_the_app_sees_the_address_nginx_knows_never_a_client_header(nginx_files):
    _, secure = server_blocks(nginx_files["shop"])
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in secure
    assert "proxy_set_header X-Real-IP $remote_addr;" in secure
    assert "$proxy_add_x_forwarded_for" not in secure
    # no load balancer in the pillar: no address is taken from a header
    assert "set_real_ip_from" not in nginx_files["http"]
    assert "real_ip_header" not in nginx_files["http"]


def test_uploads_are_sandboxed_passive_types_and_no_symlinks(nginx_files):
    root = nginx_files["root"]
    _, secure = server_blocks(nginx_files["shop"])
    media = secure.split("    location /media/ {\n")[1].split("\n    }\n")[0]
    lines = [line.strip() for line in media.splitlines()]
    assert f"alias {root}/srv/shop/shared/media/;" in lines
    assert f"disable_symlinks on from={root}/srv/shop/shared/media;" in lines
    assert (
        "set $djangoapp_upload_policy \"sandbox; default-src 'none'; "
        "img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'\";"
    ) in lines
    assert "image/png png;" in lines and "image/svg+xml svg svgz;" in lines
    assert not [line for line in lines if "html" in line or "javascript" in line]
    assert "default_type application/octet-stream;" in lines


def test_security_headers_are_added_once_per_response(nginx_files):
    _, secure = server_blocks(nginx_files["shop"])
    assert (
        "map $upstream_http_strict_transport_security $djangoapp_shop_hsts {\n"
        '    "" "max-age=63072000";\n    default "";\n}'
    ) in nginx_files["shop"]
    for header in ("Referrer-Policy", "X-Content-Type-Options", "X-Frame-Options"):
        variable = "$djangoapp_header_" + header.lower().replace("-", "_")
        assert f"add_header {header} {variable} always;" in secure
        assert (
            f"map $upstream_http_{variable[18:]} {variable} {{" in (nginx_files["http"])
        )
    assert "add_header Strict-Transport-Security $djangoapp_shop_hsts always;" in secure
    # set while in maintenance only, and on uploads only: an empty value adds no
    # header
    assert "add_header Retry-After $djangoapp_retry_after always;" in secure
    assert (
        "add_header Content-Security-Policy $djangoapp_upload_policy always;" in secure
    )
    # Only the server block adds headers: one in a location would drop these.
    directives = [
        line.strip()
        for line in nginx_files["shop"].splitlines()
        if line.strip().startswith("add_header ")
    ]
    assert len(directives) == 6


def test_maintenance_page_answers_everything_but_files_and_local_health(
    nginx_files,
):
    _, secure = server_blocks(nginx_files["shop"])
    assert (
        "    if (-f /srv/djangoapp/shop/maintenance.on) {\n"
        '        set $djangoapp_maintenance "on";\n'
        '        set $djangoapp_retry_after "300";\n'
        "    }\n"
    ) in secure
    # the health path ("/" for shop) is let through for the host's own checks only
    for local in ("127.0.0.1", "::1"):
        assert (
            f'    if ($remote_addr = "{local}") {{\n'
            "        set $djangoapp_local_uri $uri;\n    }\n"
        ) in secure
    assert (
        '    if ($djangoapp_local_uri = "/") {\n        set $djangoapp_maintenance "";'
    ) in secure
    assert "    error_page 503 @djangoapp_maintenance;\n" in secure
    assert (
        "    location @djangoapp_maintenance {\n"
        "        root /srv/djangoapp/shop;\n"
        "        try_files /maintenance.html =503;\n"
        "    }\n"
    ) in secure
    proxy = secure.split("    location / {\n")[1]
    assert proxy.startswith(
        "        if ($djangoapp_maintenance) {\n            return 503;\n        }\n"
    )
    # the static and media locations come first, without the check
    static = secure.split("location /static/")[1].split("}")[0]
    assert "djangoapp_maintenance" not in static


def test_static_and_media_locations_follow_the_live_release(nginx_files):
    root = nginx_files["root"]
    _, secure = server_blocks(nginx_files["shop"])
    assert f"alias {root}/srv/shop/current/src/staticfiles/;" in secure
    assert f"alias {root}/srv/shop/shared/media/;" in secure


def test_acme_challenges_stay_on_plain_http(nginx_files):
    plain, secure = server_blocks(nginx_files["wiki"])
    assert "server_name wiki.example.com www.wiki.example.com;" in plain
    challenge = plain.split("location ^~ /.well-known/acme-challenge/ {")[1]
    assert challenge.split("}")[0].split() == [
        "root",
        "/var/lib/djangoapp/acme;",
        "default_type",
        "text/plain;",
    ]
    assert "return 301 https://$host$request_uri;" in plain
    assert "ssl_certificate /etc/djangoapp/wiki/tls/cert.pem;" in secure


def test_plain_http_site(nginx_files):
    (only,) = server_blocks(nginx_files["docs"])
    assert "listen 80;" in only
    assert "ssl" not in only and "Strict-Transport-Security" not in only
    assert "add_header X-Frame-Options $djangoapp_header_x_frame_options always;" in (
        only
    )
    assert "proxy_pass http://djangoapp_docs;" in only


def test_unknown_names_are_refused_on_both_ports(nginx_files):
    blocks = server_blocks(nginx_files["http"])
    plain = next(block for block in blocks if "listen 80 default_server;" in block)
    assert "return 444;" in plain
    secure = next(block for block in blocks if "listen 443" in block)
    assert "listen 443 ssl http2 default_server;" in secure
    assert "ssl_reject_handshake on;" in secure
    assert "include /etc/nginx/djangoapp-tls.conf;" in secure
    assert "server_tokens off;" in nginx_files["http"]


def test_no_https_default_server_without_tls_apps(renderer):
    only_http = {"djangoapp": {"apps": {"docs": STACK["djangoapp"]["apps"]["docs"]}}}
    states = renderer.show_sls("rocky-9", only_http)
    _, http = state_args(states, "djangoapp-nginx-http-settings-file-managed")
    assert http["context"]["tls_apps"] == []
    config = renderer.render_file("rocky-9", http["source"], http["context"])
    assert "443" not in config
    assert "djangoapp-tls-packages-installed" not in states
    assert "djangoapp-acme-packages-installed" not in states


# --- pillar mistakes -------------------------------------------------------------


def with_change(change):
    bad = copy.deepcopy(STACK)
    change(bad["djangoapp"]["apps"])
    return bad


BAD_PILLARS = {
    "unknown tls mode": (
        lambda apps: apps["shop"]["tls"].update(mode="letsencrypt"),
        "djangoapp:apps:shop:tls:mode must be one of off, selfsigned, provided, acme",
    ),
    "provided without key": (
        lambda apps: apps["blog"]["tls"].pop("key"),
        "djangoapp:apps:blog:tls:key is required",
    ),
    "certificate that is not PEM": (
        lambda apps: apps["blog"]["tls"].update(cert="not a certificate"),
        "djangoapp:apps:blog:tls:cert must be PEM text",
    ),
    "misspelt tls key": (
        lambda apps: apps["shop"]["tls"].update(hsts=1),
        "djangoapp:apps:shop:tls:hsts is not a known key",
    ),
    "bad acme email": (
        lambda apps: apps["wiki"]["tls"].update(email="--staging"),
        "djangoapp:apps:wiki:tls:email",
    ),
    "negative cache db": (
        lambda apps: apps["wiki"]["cache"].update(db=-1),
        "djangoapp:apps:wiki:cache:db must be an integer",
    ),
    "same redis db twice": (
        lambda apps: apps["shop"]["cache"].update(db=3),
        "djangoapp:apps:wiki:cache:db 3 is also the Redis database of app 'shop'",
    ),
    "same server name twice": (
        lambda apps: apps["docs"].update(server_names=["shop.example.com"]),
        "djangoapp:apps:shop:server_names:0 'shop.example.com' is also the server "
        "name of app 'docs'",
    ),
    "same database twice": (
        lambda apps: (
            apps["shop"]["database"].update(name="docs_db")
            or apps["docs"].update(
                database={"engine": "postgresql", "name": "docs_db", "password": "x"}
            )
        ),
        "djangoapp:apps:shop:database:name 'docs_db' is also the database of app "
        "'docs'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PILLARS))
def test_bad_stack_pillar_names_the_key(renderer, case):
    change, message = BAD_PILLARS[case]
    with pytest.raises(RenderError) as error:
        renderer.show_sls("debian-12", with_change(change))
    assert message in str(error.value)


@pytest.mark.parametrize("platform", ["debian-12", "rocky-9"])
def test_pillar_example_renders(renderer, platform):
    """pillar.example documents every key: as it stands, it renders."""
    example = yaml.safe_load((REPO / "pillar.example").read_text())
    states = renderer.show_sls(platform, example)
    assert "djangoapp-shop-release-deployed" in states
    assert environment(states, "shop")["DJANGO_MEDIA_ROOT"] == (
        "/srv/djangoapp/shop/shared/media"
    )


def test_trusted_proxies_alone_give_the_client_address(renderer):
    pillar = copy.deepcopy(STACK)
    pillar["djangoapp"]["nginx"] = {"trusted_proxies": ["10.0.0.0/24", "192.0.2.7"]}
    states = renderer.show_sls("debian-12", pillar)
    _, http = state_args(states, "djangoapp-nginx-http-settings-file-managed")
    config = renderer.render_file("debian-12", http["source"], http["context"])
    lines = [line.strip() for line in config.splitlines()]
    assert [line for line in lines if "real_ip" in line] == [
        "set_real_ip_from 10.0.0.0/24;",
        "set_real_ip_from 192.0.2.7;",
        "real_ip_header X-Forwarded-For;",
        "real_ip_recursive on;",
    ]
    # the scheme the apps are told: theirs to say, nobody else's
    start = lines.index("geo $realip_remote_addr $djangoapp_from_trusted_proxy {")
    assert lines[start + 1 : start + 10] == [
        "default 0;",
        "10.0.0.0/24 1;",
        "192.0.2.7 1;",
        "}",
        'map "$djangoapp_from_trusted_proxy:$http_x_forwarded_proto" '
        "$djangoapp_forwarded_proto {",
        "default $scheme;",
        '"1:https" https;',
        '"1:http" http;',
        "}",
    ]


def test_a_trusted_proxy_that_is_no_address_is_named(renderer):
    pillar = copy.deepcopy(STACK)
    pillar["djangoapp"]["nginx"] = {"trusted_proxies": ["lb.example.com"]}
    with pytest.raises(RenderError, match="djangoapp:nginx:trusted_proxies"):
        renderer.show_sls("debian-12", pillar)
