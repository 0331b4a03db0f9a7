"""`salt <minion> state.apply` on a fresh Debian host: it converges, a second run
changes nothing, and a bad pillar stops before anything changes."""

import json

import pytest

from stack import SENTRY_KEY, changed_states, failed_states

pytestmark = pytest.mark.integration


def test_first_converge_has_no_failure(first_converge):
    failures = failed_states(first_converge)
    assert not failures, "\n".join(failures)
    assert "djangoapp-demo-release-deployed" in " ".join(first_converge)


def test_second_apply_changes_nothing(converged_host, salt_cli):
    second = salt_cli("state.apply", timeout=900)
    failures = failed_states(second)
    assert not failures, "\n".join(failures)
    assert changed_states(second) == []


BAD_PILLARS = {
    "missing repo": ({"repo": ""}, "djangoapp:apps:demo:repo"),
    "shell in version": (
        {"version": "v1.0.0;touch /tmp/pwned"},
        "djangoapp:apps:demo:version",
    ),
    "option as version": (
        {"version": "--upload-pack=touch /tmp/pwned"},
        "djangoapp:apps:demo:version",
    ),
    "unknown engine": (
        {"database": {"engine": "oracle"}},
        "djangoapp:apps:demo:database:engine",
    ),
    "no database password": (
        {"database": {"password": ""}},
        "djangoapp:apps:demo:database:password",
    ),
}


def live_release(host):
    return host.file("/srv/djangoapp/demo/current").linked_to


@pytest.mark.parametrize("case", sorted(BAD_PILLARS))
def test_bad_pillar_stops_before_anything_changes(
    case, converged_host, salt_cli, demo_url, http_get
):
    override, key = BAD_PILLARS[case]
    before = live_release(converged_host)
    result = salt_cli.run(
        "state.apply", pillar={"djangoapp": {"apps": {"demo": override}}}, timeout=300
    )
    assert result.returncode != 0
    assert key in str(result.data)
    assert not converged_host.file("/tmp/pwned").exists
    assert live_release(converged_host) == before
    assert http_get(demo_url("/healthz/"), "demo.test")["status"] == 200


def test_bad_app_name_stops_before_anything_changes(
    converged_host, salt_cli, demo_pillar
):
    bad_app = {"Bad-Name": demo_pillar["djangoapp"]["apps"]["demo"]}
    result = salt_cli.run(
        "state.apply", pillar={"djangoapp": {"apps": bad_app}}, timeout=300
    )
    assert result.returncode != 0
    assert "Bad-Name" in str(result.data)
    assert not converged_host.user("Bad-Name").exists


def test_apply_in_test_mode_reports_the_release_and_changes_nothing(
    converged_host, salt_cli
):
    before = live_release(converged_host)
    result = salt_cli(
        "state.apply",
        "test=True",
        pillar={"djangoapp": {"apps": {"demo": {"version": "v1.0.1"}}}},
        timeout=300,
    )
    release = next(
        state for state_id, state in result.items() if "-release-deployed_" in state_id
    )
    assert release["result"] is None
    assert "v1.0.1" in release["comment"]
    assert live_release(converged_host) == before


def test_secrets_never_show(first_converge, converged_host, demo_pillar):
    """The database password, the app's secret key and the Sentry DSN appear neither in
    the return of state.apply, nor in the minion's log, nor on any process's command
    line."""
    app = next(iter(demo_pillar["djangoapp"]["apps"].values()))
    secrets = [app["database"]["password"], app["env"]["DJANGO_SECRET_KEY"], SENTRY_KEY]
    minion_log = converged_host.run("cat /var/log/salt/minion").stdout
    command_lines = converged_host.run(
        "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done"
    ).stdout
    assert "gunicorn" in command_lines
    assert "Executing state" in minion_log
    for secret in secrets:
        assert secret not in json.dumps(first_converge)
        assert secret not in minion_log
        assert secret not in command_lines


def served_certificate_names(host, server_name):
    """The subjectAltName of the certificate Nginx presents for ``server_name``."""
    served = host.run(
        "openssl s_client -connect 127.0.0.1:443 -servername %s </dev/null 2>/dev/null"
        " | openssl x509 -noout -ext subjectAltName",
        server_name,
    )
    assert served.rc == 0, served.stderr
    return served.stdout


def test_selfsigned_certificate_follows_the_server_names(
    converged_host, salt_cli, demo_app, demo_url, http_get
):
    """A new server name gets a certificate that names it, served by Nginx; the old
    names come back the same way."""
    name, names = demo_app["name"], demo_app["server_names"]
    added = "www." + names[0]
    override = {"djangoapp": {"apps": {name: {"server_names": [*names, added]}}}}
    try:
        changed = salt_cli("state.apply", pillar=override, timeout=900)
        assert not failed_states(changed), "\n".join(failed_states(changed))
        assert f"DNS:{added}" in served_certificate_names(converged_host, added)
        assert http_get(demo_url("/healthz/"), added)["status"] == 200
    finally:
        restored = salt_cli("state.apply", timeout=900)
    assert not failed_states(restored), "\n".join(failed_states(restored))
    served = served_certificate_names(converged_host, names[0])
    assert f"DNS:{names[0]}" in served and added not in served
    assert http_get(demo_url("/healthz/"), names[0])["status"] == 200
