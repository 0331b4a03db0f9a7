"""``djangoapp.restore`` on the shared host's PostgreSQL, under load through Nginx:
the nightly dump (the backup unit's own run), rows deleted, the dump restored, the
rows back; while it runs the site answers with its maintenance page and nothing
else fails. A name that is no dump of the app is refused with nothing changed.
(MariaDB's restore: test_combinations.py.)"""

import pytest
from test_maintenance import load_on, page_kind

from stack import uses_tls

pytestmark = [pytest.mark.integration, pytest.mark.release]

TIMEOUT = 900


def notes(host) -> list[str]:
    rows = host.run(
        "runuser -u postgres -- psql -tA -d demo -c %s",
        "SELECT text FROM notes_note ORDER BY id",
    )
    assert rows.rc == 0, rows.stderr
    return rows.stdout.splitlines()


def psql(host, sql: str) -> None:
    done = host.run("runuser -u postgres -- psql -v ON_ERROR_STOP=1 -d demo -c %s", sql)
    assert done.rc == 0, done.stderr


def test_restore_puts_the_rows_back_under_load(
    converged_host, salt_cli, http_get, demo_app
):
    name = demo_app["name"]
    added = converged_host.run(
        "%s-manage add_note %s", name, "kept by the nightly dump"
    )
    assert added.rc == 0, added.stderr
    kept = notes(converged_host)
    converged_host.run_expect([0], "systemctl start djangoapp-backup.service")
    nightly = converged_host.run(
        "ls -1t /var/backups/djangoapp/%s/nightly", name
    ).stdout.split()[0]
    psql(converged_host, "DELETE FROM notes_note")
    assert notes(converged_host) == []

    pages = load_on(demo_app, "/", planned=(503,), classify=page_kind)
    with pages:
        result = salt_cli.run("djangoapp.restore", name, timeout=TIMEOUT)
    print(pages.result)
    assert result.returncode == 0, result.data
    data = result.data
    assert data["result"] is True, data
    assert data["restored_from"] == f"/var/backups/djangoapp/{name}/nightly/{nightly}"
    assert [step["name"] for step in data["steps"]] == [
        "lock",
        "maintenance",
        "requests",
        "backup",
        "restore",
        "maintenance",
    ]
    # the requests the app took before the page went up were answered first
    assert data["requests_before"]["left"] == 0, data["requests_before"]
    assert converged_host.file(data["backup_before"]).exists
    assert notes(converged_host) == kept
    assert pages.result.failed == 0, pages.result.failures
    assert set(pages.result.labels) <= {"app", "maintenance"}, pages.result.labels
    assert salt_cli("djangoapp.maintenance", name)["on"] is False
    scheme = "https" if uses_tls(demo_app) else "http"
    page = http_get(f"{scheme}://127.0.0.1/", demo_app["server_names"][0])
    assert page["status"] == 200 and "kept by the nightly dump" in page["body"]


def test_a_backup_that_is_no_dump_of_the_app_is_refused(
    converged_host, salt_cli, demo_app
):
    name = demo_app["name"]
    before = notes(converged_host)
    result = salt_cli.run(
        "djangoapp.restore", name, "backup=../../../etc/passwd", timeout=TIMEOUT
    )
    assert result.returncode != 0
    assert set(result.data) == {"result", "error"}, result.data
    assert result.data["error"].startswith(
        "backup '../../../etc/passwd' is not a dump of demo in "
        "/var/backups/djangoapp/demo (the newest: "
    ), result.data
    assert notes(converged_host) == before
    assert salt_cli("djangoapp.maintenance", name)["on"] is False
