"""What state.apply does after a release by hand (``pillar_decision``), and what a
release or rollback by hand says of the pillar's version."""

import json
import os
import pathlib

import djangoapp_status
import pytest


@pytest.fixture
def shop(make_app):
    return make_app("shop")


def live(cfg, version, event="release", user="alice"):
    """``version`` live in ``cfg``'s base, made so by ``event`` of ``user``."""
    base = pathlib.Path(cfg["base_dir"])
    rid = f"{version}-0123abcd"
    release = base / "releases" / rid
    release.mkdir(parents=True, exist_ok=True)
    (release / "release.json").write_text(json.dumps({"version": version}))
    if (base / "current").is_symlink():
        (base / "current").unlink()
    (base / "current").symlink_to(f"releases/{rid}")
    entry = {
        "id": rid,
        "version": version,
        "event": event,
        "status": "success",
        "user": user,
        "finished": "2026-12-04T10:00:00+00:00",
    }
    with open(base / "ledger.jsonl", "a", encoding="utf-8") as ledger:
        ledger.write(json.dumps(entry) + "\n")
    return rid


def recorded(cfg, version):
    path = os.path.join(cfg["base_dir"], "pillar_version.json")
    pathlib.Path(path).write_text(json.dumps({"version": version}))


def test_a_hand_release_stays_while_the_pillar_is_unchanged(shop):
    live(shop, "v1.0.0")
    recorded(shop, "v1.0.0")
    rid = live(shop, "v1.2.0", user="alice")
    assert djangoapp_status.pillar_decision(shop, "v1.0.0", "changes") == {
        "release": False,
        "id": rid,
        "version": "v1.2.0",
        "comment": (
            "v1.2.0 is live, release by alice at 2026-12-04T10:00:00+00:00; the "
            "pillar's version v1.0.0 has not changed since state.apply released "
            "it, so the release stays (version_policy: pillar would put v1.0.0 back)"
        ),
    }


def test_a_hand_rollback_stays_too_and_says_so(shop):
    live(shop, "v1.1.0")
    recorded(shop, "v1.1.0")
    live(shop, "v1.0.0", event="rollback", user="bob")
    decision = djangoapp_status.pillar_decision(shop, "v1.1.0", "changes")
    assert decision["release"] is False
    assert decision["comment"].startswith("v1.0.0 is live, rollback by bob at ")


@pytest.mark.parametrize(
    ("case", "pillar_version", "record", "policy"),
    [
        ("the pillar's version changed", "v1.3.0", "v1.0.0", "changes"),
        ("the pillar always wins", "v1.0.0", "v1.0.0", "pillar"),
        ("nothing recorded yet", "v1.0.0", None, "changes"),
        ("the pillar's version is live", "v1.2.0", "v1.0.0", "changes"),
    ],
)
def test_the_pillars_version_is_released(
    make_app, case, pillar_version, record, policy
):
    cfg = make_app("shop")
    live(cfg, "v1.2.0")
    if record:
        recorded(cfg, record)
    decision = djangoapp_status.pillar_decision(cfg, pillar_version, policy)
    assert decision == {"release": True}


def test_nothing_live_is_released(shop):
    recorded(shop, "v1.0.0")
    assert djangoapp_status.pillar_decision(shop, "v1.0.0", "changes") == {
        "release": True
    }


def test_the_state_leaves_a_kept_release_alone(mods, shop):
    live(shop, "v1.0.0")
    recorded(shop, "v1.0.0")
    rid = live(shop, "v1.2.0")
    ret = mods["djangoapp.release"](version="v1.0.0", app="shop", from_pillar=True)
    assert (ret["result"], ret["kept"], ret["id"]) == (True, True, rid)
    current = os.readlink(os.path.join(shop["base_dir"], "current"))
    assert current == f"releases/{rid}"


def test_the_states_policy_wins_over_app_json(mods, shop):
    """In test mode app.json still has the old policy: the state's is used."""
    live(shop, "v1.0.0")
    recorded(shop, "v1.0.0")
    live(shop, "v1.2.0")
    ret = mods["djangoapp.release"](
        version="v1.0.0",
        app="shop",
        test=True,
        from_pillar=True,
        version_policy="pillar",
    )
    assert "kept" not in ret
