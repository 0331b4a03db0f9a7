"""The fleet runner's own logic, on this machine: the batches a rolling release goes
in, and the fleet-wide lock that keeps two runs of an app apart (a lock whose
process is gone is taken over). The runner's release itself runs on real minions
in test/integration/test_fleet.py."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

RUNNER = "djangoapp_fleet_runner"


@pytest.fixture
def runner(repo_root, tmp_path):
    spec = importlib.util.spec_from_file_location(
        RUNNER, repo_root / "_runners" / "djangoapp_fleet.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__opts__ = {"cachedir": str(tmp_path)}
    return module


@pytest.mark.parametrize(
    ("minions", "size", "batches"),
    [
        (["web1", "web2", "web3", "web4"], 1, [["web1"], ["web2"], ["web3"], ["web4"]]),
        (["web1", "web2", "web3", "web4"], 2, [["web1"], ["web2", "web3"], ["web4"]]),
        (["web1"], 3, [["web1"]]),
        ([], 1, []),
    ],
)
def test_the_first_web_minion_goes_alone_then_batches(runner, minions, size, batches):
    assert runner._batches(minions, size) == batches


def test_a_second_run_of_the_app_is_refused_while_the_first_holds_the_lock(runner):
    holder = {"pid": os.getpid(), "action": "release", "version": "v2", "started": "t"}
    with runner._fleet_lock("shop", holder):
        with (
            pytest.raises(runner.FleetStepFailed) as refused,
            runner._fleet_lock("shop", {**holder, "version": "v3"}),
        ):
            pass
        assert refused.value.step == "lock"
        assert str(refused.value) == (
            f"another fleet run holds shop: release of v2 since t (pid {os.getpid()})"
        )
        # another app is not held
        with runner._fleet_lock("blog", holder):
            pass
    # released at the end of the block
    with runner._fleet_lock("shop", holder):
        pass


def test_a_lock_left_by_a_dead_run_is_taken_over(runner, tmp_path):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    lock = tmp_path / "djangoapp" / "fleet-shop.lock"
    lock.parent.mkdir()
    lock.write_text(json.dumps({"pid": int(gone.stdout), "action": "release"}))
    with runner._fleet_lock("shop", {"pid": os.getpid()}):
        assert json.loads(lock.read_text()) == {"pid": os.getpid()}
    assert not lock.exists()


def test_a_bad_app_name_or_batch_is_refused_before_anything(runner):
    with pytest.raises(runner.SaltInvocationError) as refused:
        runner.release("Shop;rm", "v1")
    assert str(refused.value) == "app: 'Shop;rm' is not an app name"
    with pytest.raises(runner.SaltInvocationError) as refused:
        runner.release("shop", "")
    assert str(refused.value) == "version is required: a tag, branch or commit"
    with pytest.raises(runner.SaltInvocationError) as refused:
        runner.release("shop", "v1", batch="two")
    assert str(refused.value) == "batch: 'two' is not a number of 1 or more"
