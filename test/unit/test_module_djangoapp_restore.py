"""djangoapp.restore through Salt's loader: which dump it takes, and the refusals
that come before anything changes (the loading itself is tested on real
databases by test/integration/test_restore.py)."""

import os
import pathlib

import djangoapp_disk
import djangoapp_restore
import pytest
from salt.exceptions import CommandExecutionError


@pytest.fixture
def shop(make_app, tmp_path):
    return make_app(
        "shop",
        database={"engine": "postgresql", "name": "shop", "user": "shop"},
        backup_dir=str(tmp_path / "backups" / "shop"),
    )


def dump(shop, name, age):
    path = pathlib.Path(shop["backup_dir"], name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PGDMP")
    when = 1_700_000_000 - age
    os.utime(path, (when, when))
    return str(path)


def test_the_newest_dump_of_either_kind_is_taken(shop):
    dump(shop, "v1.0.0-aaaa.dump", age=300)
    nightly = dump(shop, "nightly/shop-20261201T030000Z.dump", age=100)
    dump(shop, "v1.1.0-bbbb.sql", age=10)  # not PostgreSQL's kind
    dump(shop, "bad name.dump", age=5)  # not a name the engine gives
    assert djangoapp_restore.chosen_dump(shop) == nightly
    assert djangoapp_restore.dumps_of(shop) == [
        nightly,
        str(pathlib.Path(shop["backup_dir"], "v1.0.0-aaaa.dump")),
    ]


def test_a_dump_is_named_by_file_name_relative_path_or_path(shop):
    older = dump(shop, "v1.0.0-aaaa.dump", age=300)
    dump(shop, "nightly/shop-20261201T030000Z.dump", age=100)
    for name in ("v1.0.0-aaaa.dump", older):
        assert djangoapp_restore.chosen_dump(shop, name) == older
    assert djangoapp_restore.chosen_dump(
        shop, "nightly/shop-20261201T030000Z.dump"
    ).endswith("nightly/shop-20261201T030000Z.dump")


def test_a_backup_that_is_no_dump_of_the_app_is_refused_before_anything(
    mods, shop, tmp_path
):
    dump(shop, "v1.0.0-aaaa.dump", age=300)
    elsewhere = tmp_path / "elsewhere.dump"
    elsewhere.write_bytes(b"PGDMP")
    for backup in (str(elsewhere), "../shop/v1.0.0-aaaa.dump", "missing.dump"):
        ret = mods["djangoapp.restore"]("shop", backup=backup)
        assert ret == {
            "result": False,
            "error": f"backup {backup!r} is not a dump of shop in "
            f"{shop['backup_dir']} (the newest: v1.0.0-aaaa.dump)",
        }
    assert not os.path.exists(shop["maintenance_flag"])
    assert not os.path.exists(os.path.join(shop["base_dir"], ".release.lock"))


def test_no_dump_and_no_database_are_refused(mods, shop, make_app):
    with pytest.raises(CommandExecutionError) as raised:
        mods["djangoapp.restore"]("shop")
    assert str(raised.value) == f"no dump of shop in {shop['backup_dir']} to restore"
    make_app("docs")
    with pytest.raises(CommandExecutionError) as raised:
        mods["djangoapp.restore"]("docs")
    assert str(raised.value) == "app 'docs' has no database to restore (engine 'none')"


def test_a_dump_by_hand_is_refused_with_a_bad_label_or_while_locked(mods, shop):
    ret = mods["djangoapp.backup"]("shop", label="Before Import")
    assert ret == {
        "result": False,
        "error": "label 'Before Import' must be lowercase letters, digits and -, "
        "starting with a letter (at most 31)",
    }
    os.makedirs(shop["base_dir"], exist_ok=True)
    lock_path = os.path.join(shop["base_dir"], ".release.lock")
    held = djangoapp_disk.ReleaseLock(lock_path, {"action": "release"}).acquire()
    try:
        ret = mods["djangoapp.backup"]("shop", label="removed")
    finally:
        held.release()
    assert ret["result"] is False
    assert ret["failed_step"] == "lock"
    assert ret["backup"] is None
    assert not os.path.exists(shop["backup_dir"])


def test_an_app_without_a_database_has_nothing_to_dump(mods, make_app):
    make_app("docs")
    ret = mods["djangoapp.backup"]("docs")
    assert ret["result"] is True
    assert ret["backup"] is None
    assert ret["comment"] == "app docs has no database"
