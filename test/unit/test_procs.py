"""The release's priority (djangoapp_procs.raised_priority): the engine's thread and
what it starts run nicer or less nice than the minion, work left in the
background goes back to the minion's niceness, and the thread is put back."""

import os
import subprocess
import threading

import djangoapp_host
import djangoapp_procs


def niceness_of(pid):
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[16])


def niceness_of_a_child():
    ret = subprocess.run(
        ["sh", "-c", "cut -d' ' -f19 /proc/self/stat"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(ret.stdout)


def test_children_started_under_it_run_at_the_raised_priority():
    before = os.nice(0)
    with djangoapp_procs.raised_priority(-4):
        assert os.nice(0) == before - 4
        assert niceness_of_a_child() == before - 4
    assert os.nice(0) == before
    assert niceness_of_a_child() == before


def test_a_change_of_zero_leaves_the_niceness():
    before = os.nice(0)
    with djangoapp_procs.raised_priority(0):
        assert niceness_of_a_child() == before
    assert os.nice(0) == before


def test_other_threads_keep_their_niceness():
    before = os.nice(0)
    seen = {}
    entered, measured = threading.Event(), threading.Event()

    def other():
        entered.wait(10)
        seen["other"] = os.nice(0)
        measured.set()

    thread = threading.Thread(target=other)
    thread.start()
    with djangoapp_procs.raised_priority(-2):
        entered.set()
        measured.wait(10)
    thread.join(10)
    assert seen == {"other": before}


def test_background_work_goes_back_to_the_minions_niceness():
    before = os.nice(0)
    host = djangoapp_host.Host(run_all=None)
    with djangoapp_procs.raised_priority(-3):
        process = host.run_background(["sleep", "5"])
        try:
            assert niceness_of(process.pid) == before
        finally:
            process.kill()
            process.wait()
