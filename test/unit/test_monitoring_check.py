"""The monitoring check script (salt/djangoapp/files/monitoring-check.py) that NRPE and
the Zabbix agent run: its status and line for each outcome of the HTTP, Gunicorn and
database checks, and the database password kept off every command line. A local HTTP
server and fake database clients stand in; the integration tests run the real ones."""

import calendar
import http.server
import json
import os
import threading
from pathlib import Path

import pytest

PASSWORD = "p@ss/w:rd canary"


@pytest.fixture
def check(load_script):
    return load_script("monitoring-check.py")


def configure(root, app, env=None):
    """An app's config dir as app.sls writes it: app.json and env.json."""
    config_dir = root / app["name"]
    config_dir.mkdir(parents=True)
    (config_dir / "app.json").write_text(json.dumps(app))
    (config_dir / "env.json").write_text(json.dumps(env or {}))
    return config_dir


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = {"/healthz/": 200, "/broken/": 500, "/moved/": 301}[self.path]
        if self.headers["Host"] != "shop.example.com":
            status = 444
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def http_app(url, host="shop.example.com", accept=("2xx", "3xx")):
    health = {"url": url, "host": host, "verify_tls": False, "accept": list(accept)}
    return {"name": "shop", "health": health}


@pytest.mark.parametrize(
    ("path", "host", "accept", "status", "start"),
    [
        ("/healthz/", "shop.example.com", ["2xx", "3xx"], 0, "HTTP OK - 200 OK in "),
        ("/broken/", "shop.example.com", ["2xx", "3xx"], 2, "HTTP CRITICAL - 500 "),
        # A redirect is healthy as the release engine sees it, and never followed.
        ("/moved/", "shop.example.com", ["2xx", "3xx"], 0, "HTTP OK - 301 "),
        ("/moved/", "shop.example.com", ["2xx"], 2, "HTTP CRITICAL - 301 "),
        ("/moved/", "shop.example.com", [200, 301], 0, "HTTP OK - 301 "),
        # The Host header is the app's server name.
        ("/healthz/", "other.example.com", ["2xx", "3xx"], 2, "HTTP CRITICAL - 444 "),
    ],
)
def test_http(check, tmp_path, web, capsys, path, host, accept, status, start):
    configure(tmp_path, http_app(web + path, host, accept))
    assert check.main(["--config-root", str(tmp_path), "http", "shop"]) == status
    line = capsys.readouterr().out
    assert line.startswith(start), line
    assert f"(Host {host})" in line and "| time=" in line


def test_http_without_an_answer_is_critical(check, tmp_path, capsys):
    configure(tmp_path, http_app("http://127.0.0.1:9/healthz/"))
    assert check.main(["--config-root", str(tmp_path), "http", "shop"]) == 2
    assert capsys.readouterr().out.startswith("HTTP CRITICAL - http://127.0.0.1:9/")


def test_unconfigured_app_is_unknown(check, tmp_path, capsys):
    assert check.main(["--config-root", str(tmp_path), "gunicorn", "shop"]) == 3
    assert capsys.readouterr().out.startswith("GUNICORN UNKNOWN - cannot read ")


GUNICORN_APP = {
    "name": "shop",
    "user": "root",
    "service": "djangoapp-shop",
    "gunicorn_config": "/etc/djangoapp/shop/gunicorn.conf.py",
}
MASTER = [
    "/srv/djangoapp/shop/current/venv/bin/python",
    "-m",
    "gunicorn",
    "--config",
    "/etc/djangoapp/shop/gunicorn.conf.py",
    "shop.wsgi:application",
]


@pytest.mark.parametrize(
    ("table", "status", "text"),
    [
        (
            {10: (1, MASTER), 11: (10, MASTER), 12: (10, MASTER), 20: (1, ["bash"])},
            0,
            "GUNICORN OK - master pid 10 with 2 workers",
        ),
        # Renamed by setproctitle after proc_name.
        (
            {
                10: (1, ["gunicorn: master [djangoapp-shop]"]),
                11: (10, ["gunicorn: worker [djangoapp-shop]"]),
            },
            0,
            "GUNICORN OK - master pid 10 with 1 workers",
        ),
        ({10: (1, MASTER)}, 1, "GUNICORN WARNING - master pid 10 with 0 workers"),
        # Another app's Gunicorn is not this one's.
        (
            {10: (1, ["gunicorn: master [djangoapp-blog]"]), 11: (1, MASTER[:4])},
            2,
            "GUNICORN CRITICAL - no Gunicorn master of shop runs",
        ),
    ],
)
def test_gunicorn(check, tmp_path, monkeypatch, capsys, table, status, text):
    configure(tmp_path, GUNICORN_APP)
    seen = []
    monkeypatch.setattr(check, "process_table", lambda uid: seen.append(uid) or table)
    assert check.main(["--config-root", str(tmp_path), "gunicorn", "shop"]) == status
    assert capsys.readouterr().out.startswith(text)
    assert seen == [0]  # the processes of the app's user only


def test_gunicorn_process_table_reads_proc(check):
    table = check.process_table(os.getuid())
    assert os.getpid() in table
    assert table[os.getpid()][0] == os.getppid()


FAKE_CLIENT = """#!/bin/sh
# Records its command line and the password variables, then answers like the client.
printf '%s\\n' "$@" > "{record}.argv"
printf '%s\\n' "PGPASSWORD=$PGPASSWORD" "MYSQL_PWD=$MYSQL_PWD" > "{record}.env"
{answer}
"""


def fake_client(bin_dir, name, answer):
    record = bin_dir / name
    client = bin_dir / name
    client.write_text(FAKE_CLIENT.format(record=record, answer=answer))
    client.chmod(0o755)
    return record


@pytest.mark.parametrize(
    ("engine", "client", "url", "expected_argv"),
    [
        (
            "postgresql",
            "psql",
            "postgres://shop:p%40ss%2Fw%3Ard%20canary@localhost:5432/shop",
            [
                "--no-psqlrc",
                "--no-password",
                "--quiet",
                "--tuples-only",
                "--host=localhost",
                "--port=5432",
                "--username=shop",
                "--dbname=shop",
                "--command=SELECT 1",
            ],
        ),
        (
            "mysql",
            "mysql",
            "mysql://shop:p%40ss%2Fw%3Ard%20canary@db.internal:3307/shop_db",
            [
                "--no-defaults",
                "--batch",
                "--skip-column-names",
                "--host=db.internal",
                "--port=3307",
                "--user=shop",
                "--connect-timeout=8",
                "--database=shop_db",
                "--execute=SELECT 1",
            ],
        ),
    ],
)
def test_database_password_goes_by_environment(
    check, tmp_path, monkeypatch, capsys, engine, client, url, expected_argv
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = fake_client(bin_dir, client, "echo 1")
    monkeypatch.setattr(check, "SAFE_PATH", str(bin_dir))
    app = {"name": "shop", "database": {"engine": engine, "name": "shop"}}
    configure(tmp_path / "etc", app, {"DATABASE_URL": url})
    assert check.main(["--config-root", str(tmp_path / "etc"), "database", "shop"]) == 0
    assert capsys.readouterr().out.startswith(f"DATABASE OK - {engine} shop@")
    argv = Path(f"{record}.argv").read_text().splitlines()
    assert argv == expected_argv
    assert not [arg for arg in argv if PASSWORD in arg or "canary" in arg]
    variable = "PGPASSWORD" if engine == "postgresql" else "MYSQL_PWD"
    assert f"{variable}={PASSWORD}" in Path(f"{record}.env").read_text()


def test_database_failure_is_critical_and_hides_the_password(
    check, tmp_path, monkeypatch, capsys
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_client(
        bin_dir,
        "psql",
        f'echo "psql: error: connection refused for {PASSWORD}" >&2; exit 2',
    )
    monkeypatch.setattr(check, "SAFE_PATH", str(bin_dir))
    url = "postgres://shop:p%40ss%2Fw%3Ard%20canary@localhost:5432/shop"
    app = {"name": "shop", "database": {"engine": "postgresql"}}
    configure(tmp_path / "etc", app, {"DATABASE_URL": url})
    assert check.main(["--config-root", str(tmp_path / "etc"), "database", "shop"]) == 2
    line = capsys.readouterr().out
    assert line.startswith("DATABASE CRITICAL - postgresql shop@localhost/shop: psql")
    assert PASSWORD not in line and "***" in line


def test_database_check_of_an_app_without_a_database(check, tmp_path, capsys):
    configure(tmp_path, {"name": "docs", "database": {"engine": "none"}})
    assert check.main(["--config-root", str(tmp_path), "database", "docs"]) == 0
    assert (
        capsys.readouterr().out == "DATABASE OK - docs has no database (engine none)\n"
    )


def test_unreadable_environment_is_unknown(check, tmp_path, capsys):
    config_dir = configure(
        tmp_path, {"name": "shop", "database": {"engine": "postgresql"}}
    )
    (config_dir / "env.json").unlink()
    assert check.main(["--config-root", str(tmp_path), "database", "shop"]) == 3
    assert capsys.readouterr().out.startswith("DATABASE UNKNOWN - cannot read ")


# The backup check reads the status the nightly script leaves (test_backups_script.py
# writes it); these stand for it at 2026-12-05 05:00:41 UTC.
NOW = calendar.timegm((2026, 12, 5, 5, 0, 41, 0, 0, 0))
GOOD_RUN = {
    "app": "shop",
    "time": "2026-12-05T03:00:41Z",
    "result": "ok",
    "error": None,
    "newest": "shop-20261205T030012Z.dump",
    "newest_time": "2026-12-05T03:00:12Z",
}
DISK_FULL = (
    "no space left on /var/backups/djangoapp/shop (runuser exited with 1: pg_dump: "
    "error: could not write to output file: No space left on device)"
)


def backup_check(check, tmp_path, monkeypatch, status, *options):
    """The backup check's exit status, with ``status`` as the last run's (None: no
    run yet), at NOW."""
    status_file = tmp_path / "backup-status" / "shop.json"
    status_file.parent.mkdir()
    if status is not None:
        text = status if isinstance(status, str) else json.dumps(status)
        status_file.write_text(text)
    monkeypatch.setattr(check.time, "time", lambda: NOW)
    given = ["--status-file", str(status_file)]
    return check.main([*given, *options, "backup", "shop"])


@pytest.mark.parametrize(
    ("status", "code", "line"),
    [
        (
            GOOD_RUN,
            0,
            "BACKUP OK - newest good dump shop-20261205T030012Z.dump, 2.0 h old"
            " | age=7229s;;93600;0",
        ),
        (
            {
                **GOOD_RUN,
                "newest": "shop-20261205T045512Z.dump",
                "newest_time": "2026-12-05T04:55:12Z",
            },
            0,
            "BACKUP OK - newest good dump shop-20261205T045512Z.dump, 5 min old"
            " | age=329s;;93600;0",
        ),
        # The last run failed: why, in one line, and the newest good dump.
        (
            {
                **GOOD_RUN,
                "time": "2026-12-05T04:30:02Z",
                "result": "failed",
                "error": DISK_FULL.replace("pg_dump: error", "pg_dump:\n  error"),
            },
            2,
            "BACKUP CRITICAL - the nightly backup of shop failed at "
            f"2026-12-05T04:30:02Z: {DISK_FULL}; newest good dump "
            "shop-20261205T030012Z.dump, 2.0 h old | age=7229s;;93600;0",
        ),
        (
            {
                **GOOD_RUN,
                "result": "failed",
                "error": "database name unknown",
                "newest": None,
                "newest_time": None,
            },
            2,
            "BACKUP CRITICAL - the nightly backup of shop failed at "
            "2026-12-05T03:00:41Z: database name unknown; no good dump",
        ),
        # Good runs that stopped: the newest good dump grows old.
        (
            {
                **GOOD_RUN,
                "time": "2026-12-04T03:00:40Z",
                "newest": "shop-20261204T030011Z.dump",
                "newest_time": "2026-12-04T03:00:11Z",
            },
            2,
            "BACKUP CRITICAL - newest good dump shop-20261204T030011Z.dump, 26.0 h"
            " old: more than 26 h (last run 2026-12-04T03:00:40Z)"
            " | age=93630s;;93600;0",
        ),
        # No run yet: the timer's first is to come.
        (
            None,
            1,
            "BACKUP WARNING - no nightly backup of shop has run yet"
            " (djangoapp-backup.timer; one now: systemctl start"
            " djangoapp-backup.service)",
        ),
        ("{not json", 3, None),
        ('["a list"]', 3, None),
        ({**GOOD_RUN, "newest_time": "yesterday"}, 3, None),
    ],
    ids=[
        "ok",
        "ok, minutes",
        "failed",
        "failed, no dump",
        "too old",
        "no run yet",
        "not json",
        "not an object",
        "bad time",
    ],
)
def test_backup(check, tmp_path, monkeypatch, capsys, status, code, line):
    options = ("--max-age-hours", "26")
    assert backup_check(check, tmp_path, monkeypatch, status, *options) == code
    out = capsys.readouterr().out
    if line is None:
        assert out.startswith("BACKUP UNKNOWN - "), out
    else:
        assert out == f"{line}\n"


def test_backup_threshold_is_the_one_given(check, tmp_path, monkeypatch, capsys):
    # 48 h old: CRITICAL over 26 h, OK up to 48 h.
    old_run = {**GOOD_RUN, "newest_time": "2026-12-03T05:00:41Z"}
    options = ("--max-age-hours", "48")
    assert backup_check(check, tmp_path, monkeypatch, old_run, *options) == 0
    assert capsys.readouterr().out == (
        "BACKUP OK - newest good dump shop-20261205T030012Z.dump, 48.0 h old"
        " | age=172800s;;172800;0\n"
    )


def test_backup_without_a_threshold_is_unknown(check, tmp_path, monkeypatch, capsys):
    assert backup_check(check, tmp_path, monkeypatch, GOOD_RUN) == 3
    assert capsys.readouterr().out == (
        "BACKUP UNKNOWN - the backup check needs --max-age-hours\n"
    )


def test_backup_without_a_status_file_is_unknown(check, capsys):
    assert check.main(["--max-age-hours", "26", "backup", "shop"]) == 3
    assert capsys.readouterr().out == (
        "BACKUP UNKNOWN - the backup check needs --status-file\n"
    )


def test_backup_status_out_of_reach_is_unknown(check, tmp_path, monkeypatch, capsys):
    """Not "no run yet": the status is there, the app's user cannot reach it."""
    denied = PermissionError(13, "Permission denied")
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path).endswith("backup-status/shop.json"):
            raise denied
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(check.os, "stat", stat)
    options = ("--max-age-hours", "26")
    assert backup_check(check, tmp_path, monkeypatch, GOOD_RUN, *options) == 3
    status_file = tmp_path / "backup-status" / "shop.json"
    assert capsys.readouterr().out == (
        f"BACKUP UNKNOWN - cannot read {status_file}: [Errno 13] Permission denied\n"
    )
