"""Migrations that cannot break the release still serving, on a host of its own with
the demo on PostgreSQL, each release under load (24 clients on the page that reads
every note's author):

- drop-author removes the author column that v1.2.0 reads: refused at preflight
  (and by test mode), site and schema untouched;
- add-nullable only adds a column: released as before;
- expand-author then contract-author remove it in two releases, the second marked
  after_deploy with django-safemigrate: it runs after the switch; 0 failed in both;
- a rollback over the contract is refused, naming it and the dump taken before it;
  with force it goes.

The tests run in file order, each from where the one before left the host. The slot
is $DJANGOAPP_MIGRATIONS_SLOT, by default the shared host's slot plus 50.
"""

from __future__ import annotations

import pytest
from secondhost import SecondHost, bootable_testhost, converged_second_host, slot_from
from test_combinations import postgresql_app_pillar

import demorepo
from loadgen import Load

pytestmark = pytest.mark.integration

HOSTNAME = "djangoapp-test-migrations"
DROP_AUTHOR = "notes.0004_remove_note_author"
AUTHOR_LEAVES_THE_MODEL = "notes.0004_note_author_leaves_the_model"
DROP_AUTHOR_COLUMN = "notes.0005_drop_note_author_column"
# Release ids of the versions released, for the tests that follow.
RELEASED: dict[str, str] = {}


@pytest.fixture(scope="module")
def migrations_host(tmp_path_factory):
    module = bootable_testhost(slot_from("DJANGOAPP_MIGRATIONS_SLOT", 50))
    work = tmp_path_factory.mktemp("migrations")
    demorepo.build_repo(work / "git" / "demo.git")
    pillar = postgresql_app_pillar(
        module, "demo", "demo-db-81f3", app={"version": "v1.2.0"}
    )
    with converged_second_host(module, work, HOSTNAME, pillar) as host:
        yield host.converged()


def release_under_load(host: SecondHost, *args: str):
    load = Load(host.ip, 80, "/", "demo.test", clients=24)
    with load:
        rc, ret, output = host.salt("djangoapp.release", "app=demo", *args)
    print(args, load.result)
    return rc, ret, load.result


def live_id(host: SecondHost) -> str:
    return host.salt("djangoapp.status", "demo")[1]["current"]


def has_author_column(host: SecondHost) -> bool:
    found = host.host.exec(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "-tA",
            "-d",
            "demo",
            "-c",
            "SELECT 1 FROM information_schema.columns WHERE table_name = "
            "'notes_note' AND column_name = 'author'",
        ]  # fmt: skip
    )
    return found.stdout.strip() == "1"


def test_a_column_the_live_code_reads_is_not_dropped_under_it(migrations_host):
    live = live_id(migrations_host)
    _, planned, _ = migrations_host.salt(
        "djangoapp.release", "app=demo", "version=drop-author", "test=True"
    )
    rc, ret, load = release_under_load(migrations_host, "version=drop-author")
    refusal = (
        f"migration {DROP_AUTHOR} breaks the release still serving "
        "(DROP_COLUMN (notes_note.author)): the release is stopped before anything "
        "changed. Two ways forward: "
    )
    assert planned["failed_step"] == "preflight"
    assert planned["error"].startswith(refusal)
    assert rc == 1
    assert ret["failed_step"] == "preflight"
    assert ret["error"].startswith(refusal)
    assert ret["migrations_ran"] is False
    assert load.failed == 0, load.failures
    assert live_id(migrations_host) == live
    assert has_author_column(migrations_host)


def test_an_added_nullable_column_is_released_as_before(migrations_host):
    rc, ret, load = release_under_load(migrations_host, "version=add-nullable")
    assert rc == 0 and ret["result"] is True, ret
    assert ret["migrations"] == {
        "policy": "safe",
        "before_switch": ["notes.0004_note_mood"],
        "after_switch": [],
        "incompatible": {},
        "markers": {},
    }
    assert load.failed == 0, load.failures


def test_expand_then_contract_fail_no_request(migrations_host):
    rc, expand, load = release_under_load(migrations_host, "version=expand-author")
    assert rc == 0 and expand["result"] is True, expand
    assert expand["migrations"]["before_switch"] == [AUTHOR_LEAVES_THE_MODEL]
    assert expand["migrations"]["after_switch"] == []
    assert load.failed == 0, load.failures
    assert has_author_column(migrations_host)
    RELEASED["expand-author"] = expand["id"]

    rc, contract, load = release_under_load(migrations_host, "version=contract-author")
    assert rc == 0 and contract["result"] is True, contract
    plan = contract["migrations"]
    assert plan["before_switch"] == []
    assert plan["after_switch"] == [DROP_AUTHOR_COLUMN]
    assert plan["markers"] == {DROP_AUTHOR_COLUMN: "after_deploy"}
    assert list(plan["incompatible"]) == [DROP_AUTHOR_COLUMN]
    steps = [step["name"] for step in contract["steps"]]
    assert steps.index("verify") < steps.index("migrate_after_switch")
    assert steps.index("migrate_after_switch") < steps.index("health")
    assert load.failed == 0, load.failures
    assert not has_author_column(migrations_host)


def test_a_rollback_over_the_contract_is_refused_unless_forced(migrations_host):
    contract = live_id(migrations_host)
    rc, refused, _ = migrations_host.salt("djangoapp.rollback", "demo")
    assert rc == 1
    assert refused["failed_step"] == "select"
    expand = RELEASED["expand-author"]
    assert refused["error"] == (
        f"rolling back to {expand} crosses migrations its code cannot run with: "
        f"{contract} ran {DROP_AUTHOR_COLUMN} (the dump taken before: "
        f"/var/backups/djangoapp/demo/{contract}.dump). Roll forward instead, "
        "restore the dump (djangoapp.restore) and roll back, or roll back with "
        "force=True"
    )
    assert live_id(migrations_host) == contract
    rc, forced, _ = migrations_host.salt("djangoapp.rollback", "demo", "force=True")
    assert rc == 0 and forced["result"] is True, forced
    assert forced["id"] == expand
    assert migrations_host.get("http://127.0.0.1/", "demo.test")["status"] == 200
