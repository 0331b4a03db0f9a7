"""The formula on a site's own Salt master, set up as the README's "With a master"
section says, on a fresh minion: the master's ``file_roots`` list the site's own
state tree (with its own top file, naming a state of its own) before this formula's
``salt/``, with the README's master configuration, top file lines and pillar top
file; the README's commands run in its order, as written; the site's top file
decides what a highstate applies; release events are sent only when something is
released, and carry the jid of the job that released (a ``state.apply``'s own).

A host of its own (the shared host's slot plus 30, or ``$DJANGOAPP_MASTER_PATH_SLOT``)
named ``web1`` like the README's minion, and a master of its own on this machine.
"""

from __future__ import annotations

import re
import shlex
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from secondhost import GIT_MOUNT, bootable_testhost, slot_from

import demorepo
from stack import DEMO_PILLAR, failed_states, merged

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MINION = "web1"
TIMEOUT = 1800
# The README's paths on a site's master -> the directories of this test.
SITE_TREE, FORMULA_TREE, PILLAR_TREE = (
    "/srv/salt",
    "/srv/formulas/djangoapp/salt",
    "/srv/pillar",
)
# The README releases the pillar example's next version; the demo's is v1.1.0
# (one migration more than the pillar's v1.0.0).
VERSIONS = {"v1.5.0": "v1.1.0"}
SITE_MARKER = "/etc/site-marker"
SITE_TOP = {"base": {"*": ["site"]}}
SITE_SLS = {
    "site-marker-file-managed": {
        "file.managed": [{"name": SITE_MARKER}, {"contents": "the site's own state"}]
    }
}


def master_section() -> str:
    text = README.read_text()
    start = text.index("With a master:")
    return text[start : text.index("Masterless,", start)]


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of each fenced block of ``text``, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def readme_blocks() -> dict:
    """The master config, the top file lines, the pillar top file and the commands
    of the README's master section."""
    blocks = fenced_blocks(master_section())
    assert [language for language, _ in blocks] == ["yaml", "yaml", "yaml", "sh"]
    config, top, pillar_top = (yaml.safe_load(body) for _, body in blocks[:3])
    commands = [
        shlex.split(line.split(" #", 1)[0])
        for line in blocks[3][1].splitlines()
        if line.strip()
    ]
    return {
        "config": config,
        "top": top,
        "pillar_top": pillar_top,
        "commands": commands,
    }


def sent(event) -> dict:
    """What the minion's ``event.send`` sent (the master wraps it)."""
    assert event.data["id"] == MINION, event.data
    return event.data["data"]


def job_data(result):
    """The minion's return: the CLI unwraps it for one minion, not for a glob."""
    data = result.data
    if isinstance(data, dict) and set(data) == {MINION}:
        return data[MINION]
    return data


class Site:
    """The booted host, the master, the site's state tree and the event bus."""

    def __init__(self, host, master, tree: Path, event_listener):
        self.host = host
        self.master = master
        self.tree = tree
        self.events = event_listener

    def run(self, function: str, *args, target: str = MINION, timeout=TIMEOUT):
        cli = self.master.salt_cli(timeout=timeout)
        return cli.run(function, *args, minion_tgt=target)

    def top(self, top: dict) -> None:
        (self.tree / "top.sls").write_text(yaml.safe_dump(top))

    def events_between(self, pattern: str, after: float, before: float) -> list:
        """The events of the master's bus whose tag matches ``pattern``, sent
        between the two times, in order."""
        until = datetime.fromtimestamp(before, tz=UTC)
        found = self.events.get_events([(self.master.id, pattern)], after_time=after)
        return sorted((e for e in found if e.stamp < until), key=lambda e: e.stamp)

    def job_return(self, function: str, after: float, before: float):
        """The return event of the minion's job that ran ``function``."""
        found = [
            event
            for event in self.events_between(f"salt/job/*/ret/{MINION}", after, before)
            if event.data.get("fun") == function
        ]
        assert len(found) == 1, f"return events of {function}: {found}"
        return found[0]


@pytest.fixture(scope="module")
def readme() -> dict:
    return readme_blocks()


@pytest.fixture(scope="module")
def site(
    tmp_path_factory, readme, event_listener, stats_processes, _salt_factories_config
):
    module = bootable_testhost(slot_from("DJANGOAPP_MASTER_PATH_SLOT", 30))
    work = tmp_path_factory.mktemp("master-path")
    demorepo.build_repo(work / "git" / "demo.git")
    tree, pillar = work / "site", work / "pillar"
    tree.mkdir()
    pillar.mkdir()
    (tree / "site.sls").write_text(yaml.safe_dump(SITE_SLS))
    (tree / "top.sls").write_text(yaml.safe_dump(SITE_TOP))
    (pillar / "top.sls").write_text(yaml.safe_dump(readme["pillar_top"]))
    proxy = {"http": module.PROXY_URL, "https": module.PROXY_URL}
    (pillar / "djangoapp.sls").write_text(
        yaml.safe_dump(
            merged(
                yaml.safe_load(DEMO_PILLAR.read_text()), {"djangoapp": {"proxy": proxy}}
            )
        )
    )
    paths = {
        SITE_TREE: str(tree),
        FORMULA_TREE: str(REPO / "salt"),
        PILLAR_TREE: str(pillar),
    }
    config = readme["config"]
    assert sorted(config) == ["file_roots", "pillar_roots"], config
    roots = {
        key: {env: [paths[path] for path in dirs] for env, dirs in value.items()}
        for key, value in config.items()
    }
    host = module.TestHost(hostname=MINION, binds_ro={work / "git": GIT_MOUNT})
    with host:
        from saltfactories.manager import FactoriesManager

        factories = FactoriesManager(
            **{**_salt_factories_config, "root_dir": host.work_dir / "salt"},
            stats_processes=stats_processes,
            event_listener=event_listener,
        )
        master = factories.salt_master_daemon(
            "djangoapp-site-master",
            overrides={"interface": host.master_ip, "auto_accept": True, **roots},
        )
        with master.started():
            host.adopt(master.pid)
            host.start_minion(
                master_port=master.config["ret_port"],
                publish_port=master.config["publish_port"],
                minion_id=MINION,
            )
            site = Site(host, master, tree, event_listener)
            deadline = time.monotonic() + 180
            while site.run("test.ping", timeout=5).data is not True:
                assert time.monotonic() < deadline, "the minion did not answer"
                time.sleep(1)
            yield site


def test_a_fresh_minion_is_told_to_sync(site):
    """Before saltutil.sync_all: Salt's own answer for the module, and the
    formula's for its states."""
    status = site.run("djangoapp.status")
    assert "'djangoapp.status' is not available." in status.stdout + status.stderr
    applied = site.run("state.apply", "djangoapp")
    errors = "\n".join(str(line) for line in job_data(applied))
    assert "the djangoapp modules are not on this minion: run saltutil.sync_all" in (
        errors
    )


def test_the_readmes_commands_in_order(site, readme):
    """The README's top file lines added to the site's; then its commands, as
    written, in its order (the version released is the demo's)."""
    site.top({"base": {**SITE_TOP["base"], **readme["top"]["base"]}})
    commands = readme["commands"]
    assert [c[:3] for c in commands] == [
        ["salt", "web*", "saltutil.sync_all"],
        ["salt", "web*", "state.apply"],
        ["salt", MINION, "djangoapp.release"],
        ["salt", MINION, "djangoapp.rollback"],
        ["salt", MINION, "djangoapp.status"],
        ["salt", MINION, "djangoapp.releases"],
    ]
    returns, times = {}, []
    for command in commands:
        _, target, function, *args = command
        for written, demo in VERSIONS.items():
            args = [arg.replace(written, demo) for arg in args]
        times.append(time.time())
        result = site.run(function, *args, target=target)
        returns[function] = (times[-1], result, job_data(result))
        assert result.returncode == 0, f"{command}: {result}"
    times.append(time.time())

    synced = returns["saltutil.sync_all"][2]
    assert "modules.djangoapp" in synced["modules"], synced
    assert "states.djangoapp" in synced["states"], synced

    converge = returns["state.apply"][2]
    assert failed_states(converge) == []
    assert any(key.startswith("file_|-site-marker-file-managed") for key in converge)
    released = next(v for k, v in converge.items() if "-release-deployed" in k)
    assert released["changes"]["release"]["new"].startswith("v1.0.0-")
    # the release made by the state run carries that run's jid, on the bus
    state_job = site.job_return("state.apply", times[1], times[2])
    events = site.events_between("djangoapp/release/*", times[1], times[2])
    assert [e.tag for e in events] == [
        "djangoapp/release/start",
        "djangoapp/release/success",
    ]
    for event in events:
        assert sent(event)["jid"] == state_job.data["jid"]
        assert sent(event)["version"] == "v1.0.0"
        assert sent(event)["id"] == released["changes"]["release"]["new"]
    # and so does the command line's release, with its own job's jid
    job = site.job_return("djangoapp.release", times[2], times[3])
    events = site.events_between("djangoapp/release/*", times[2], times[3])
    assert [e.tag for e in events] == [
        "djangoapp/release/start",
        "djangoapp/release/success",
    ]
    assert {sent(e)["jid"] for e in events} == {job.data["jid"]}

    release = returns["djangoapp.release"][2]
    assert release["result"] is True and release["version"] == "v1.1.0"
    assert release["migrations_ran"] is True

    rollback = returns["djangoapp.rollback"][2]
    assert rollback["result"] is True and rollback["version"] == "v1.0.0"
    assert rollback["migrations_ahead"] == ["notes.0002_note_author"]
    # v1.0.0's release.json and psql told it, not a Django set up for it
    [checked] = [step for step in rollback["steps"] if step["name"] == "migrations"]
    assert checked["by"] == "record"
    assert rollback["warnings"] == [
        f"the database keeps 1 migration(s) that {rollback['id']} does not have "
        "(notes.0002_note_author): a rollback does not undo migrations; the dump "
        f"taken before they ran: {release['backup']}"
    ]
    assert returns["djangoapp.status"][2]["version"] == "v1.0.0"
    history = returns["djangoapp.releases"][2]["history"]
    assert history[0]["jid"] == state_job.data["jid"]
    assert history[-1]["event"] == "rollback"
    assert history[-1]["migrations_ahead"] == ["notes.0002_note_author"]


def test_release_apps_in_a_minion_job_sends_the_job_s_events(site):
    """``djangoapp.release_apps`` through the master: each release runs in a process
    forked from the minion's job, and its events reach the bus with the job's jid.
    The rollback after it leaves the demo's version live, as the README's left it."""
    started = time.time()
    result = site.run("djangoapp.release_apps", "apps=demo", "version=v1.1.0")
    assert result.returncode == 0, result
    ret = job_data(result)
    assert ret["result"] is True and ret["failed"] == [], ret
    assert ret["apps"]["demo"]["version"] == "v1.1.0"
    # the return event reaches this test's listener after the CLI had the return
    deadline = time.time() + 30
    while not site.events_between(f"salt/job/*/ret/{MINION}", started, time.time()):
        assert time.time() < deadline, "no return event of djangoapp.release_apps"
        time.sleep(0.5)
    finished = time.time()
    job = site.job_return("djangoapp.release_apps", started, finished)
    events = site.events_between("djangoapp/release/*", started, finished)
    assert [e.tag for e in events] == [
        "djangoapp/release/start",
        "djangoapp/release/success",
    ]
    assert {sent(e)["jid"] for e in events} == {job.data["jid"]}
    assert {sent(e)["id"] for e in events} == {ret["apps"]["demo"]["id"]}
    back = job_data(site.run("djangoapp.rollback"))
    assert back["result"] is True and back["version"] == "v1.0.0", back


def test_the_sites_top_file_decides(site):
    """With a top file that names only the site's state, a highstate applies that
    and nothing of the formula."""
    site.host.exec(["rm", "-f", SITE_MARKER])
    site.top(SITE_TOP)
    result = site.run("state.apply")
    applied = job_data(result)
    assert result.returncode == 0, result
    assert sorted(applied) == [
        "file_|-site-marker-file-managed_|-/etc/site-marker_|-managed"
    ]
    assert site.host.get_file(SITE_MARKER) == "the site's own state\n"


def test_an_idempotent_apply_sends_no_release_event(site, readme):
    site.top({"base": {"*": ["site"], **readme["top"]["base"]}})
    started = time.time()
    result = site.run("state.apply")
    applied = job_data(result)
    assert result.returncode == 0 and failed_states(applied) == [], result
    assert [key for key, state in applied.items() if state["changes"]] == []
    time.sleep(5)  # events of the job's process would have arrived by now
    ended = time.time()
    site.job_return("state.apply", started, ended)
    assert site.events_between("djangoapp/release/*", started, ended) == []
