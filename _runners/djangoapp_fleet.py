"""
Release an app across a fleet, from the master: the web minions one batch at a
time behind the load balancers, with no failed request.

Each web minion in turn is drained on every lb minion (no new request, those in
flight finish), released with ``djangoapp.release`` (its own health check
through its own Nginx included), and put back in rotation once HAProxy's health
check sees it up. The first web minion goes alone: its release backs up the
database and runs the pending migrations once, before any minion switches; the
others find none pending. The migrations that must follow the switch (the old
code cannot run with them) are left for later by each release
(``defer_after_switch``) and applied by ``djangoapp.migrate`` once the last web
minion serves the new code. On the first failure the run stops, the failed
minion (which switched itself back) and every minion already released (rolled
back) return to rotation on the version they served before, and the return
names the minion, the step and the error.

The web and lb minions are found in the Salt mine (``djangoapp.fleet_member``).
A fleet-wide lock per app (in the master's cache directory) keeps two runs
apart. Each step sends an event ``djangoapp/fleet/<app>/<step>`` to the
master's bus.

.. code-block:: bash

    salt-run saltutil.sync_runners
    salt-run djangoapp_fleet.release shop v1.1.0
    salt-run djangoapp_fleet.rollback shop
    salt-run state.orchestrate djangoapp.orchestrate.release \\
        pillar='{"app": "shop", "version": "v1.1.0"}'
"""

import contextlib
import json
import logging
import os
import re
import time

import salt.client
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "djangoapp_fleet"

MINE_FUNCTION = "djangoapp.fleet_member"
APP_NAME = re.compile(r"^[a-z][a-z0-9_]{0,29}$")
# A release may build a virtualenv from nothing: minutes, not seconds.
RELEASE_TIMEOUT = 1800
# The migrations a release left for later: Django's migrate, as long as one may take.
MIGRATE_TIMEOUT = 3600
LB_TIMEOUT = 120


def __virtual__():
    return __virtualname__


class FleetStepFailed(Exception):
    def __init__(self, minion, step, error, detail=None):
        super().__init__(error)
        self.minion, self.step, self.error, self.detail = minion, step, error, detail


def _members():
    """``{role: [minion ids]}`` from the mine, each list in id order."""
    found = __salt__["mine.get"]("*", MINE_FUNCTION)
    by_role = {"web": [], "lb": [], "db": [], "cache": []}
    for minion in sorted(found or {}):
        member = found[minion]
        if not isinstance(member, dict):
            continue
        for role in member.get("roles") or ():
            by_role.setdefault(role, []).append(minion)
    return by_role


def _batches(minions, size):
    """The first minion alone (it runs the migrations), then ``size`` at a time."""
    if not minions:
        return []
    rest = minions[1:]
    return [minions[:1]] + [rest[i : i + size] for i in range(0, len(rest), size)]


@contextlib.contextmanager
def _fleet_lock(app, holder):
    """One run per app across the fleet: a file created exclusively in the
    master's cache; a lock whose process is gone is taken over."""
    directory = os.path.join(__opts__["cachedir"], "djangoapp")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"fleet-{app}.lock")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as handle:
                    other = json.load(handle)
            except (OSError, ValueError):
                other = {}
            if other.get("pid") and _alive(other["pid"]):
                raise FleetStepFailed(
                    None,
                    "lock",
                    f"another fleet run holds {app}: {other.get('action')} of "
                    f"{other.get('version')} since {other.get('started')} "
                    f"(pid {other['pid']})",
                ) from None
            os.unlink(path)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(holder, handle)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Run:
    """One fleet run: the client, the events and what was done so far."""

    def __init__(self, app, action, version=None):
        self.app, self.action, self.version = app, action, version
        self.client = salt.client.get_local_client(__opts__["conf_file"])
        self.steps = []
        self.started = time.monotonic()

    def event(self, step, **data):
        tag = f"djangoapp/fleet/{self.app}/{step}"
        payload = {"app": self.app, "action": self.action, "version": self.version}
        payload.update(data)
        __salt__["event.send"](tag, payload)

    def call(self, minions, function, kwarg, timeout):
        """``function`` on each of ``minions``; their returns, a minion that did
        not answer in time mapped to None."""
        answered = self.client.cmd(
            minions, function, kwarg=kwarg, tgt_type="list", timeout=timeout
        )
        return {minion: answered.get(minion) for minion in minions}

    def lb(self, lbs, server, state):
        """``state`` (drain, ready) for ``server`` on every load balancer."""
        if not lbs:
            return
        answers = self.call(
            lbs,
            "djangoapp.lb_server",
            {"server": server, "state": state, "app": self.app},
            LB_TIMEOUT,
        )
        for lb, answer in answers.items():
            if not (isinstance(answer, dict) and answer.get("result")):
                raise FleetStepFailed(server, state, f"{lb}: {_error_of(answer)}")
        self.record(server, state, True, lbs=sorted(answers))

    def record(self, minion, step, result, **data):
        entry = {"minion": minion, "step": step, "result": result, **data}
        self.steps.append(entry)
        self.event(step, minion=minion, result=result, **data)


def _error_of(answer):
    if answer is None:
        return "no answer in time"
    if isinstance(answer, dict):
        if answer.get("failed_step"):
            return f"{answer['failed_step']}: {answer.get('error')}"
        return answer.get("error") or answer.get("comment") or json.dumps(answer)
    return str(answer)


def _checked_app(app):
    if not isinstance(app, str) or not APP_NAME.match(app):
        raise SaltInvocationError(f"app: {app!r} is not an app name")
    return app


def _roll(run, batches, lbs, function, kwarg):
    """Each batch: drained, ``function`` on it, back in rotation. Returns the
    minions done; raises FleetStepFailed at the first failure (the minions of
    the failed batch that succeeded are in ``done``)."""
    done = []
    for batch in batches:
        for minion in batch:
            run.lb(lbs, minion, "drain")
        answers = run.call(batch, function, kwarg, RELEASE_TIMEOUT)
        failure = None
        for minion in batch:
            answer = answers[minion]
            if isinstance(answer, dict) and answer.get("result"):
                done.append(minion)
                run.record(
                    minion,
                    function.split(".")[-1],
                    True,
                    id=answer.get("id"),
                    version=answer.get("version"),
                    migrations_ran=answer.get("migrations_ran"),
                    migrations_deferred=answer.get("migrations_deferred"),
                )
            elif failure is None:
                failure = FleetStepFailed(
                    minion,
                    (answer or {}).get("failed_step") or function.split(".")[-1],
                    _error_of(answer),
                    detail=answer,
                )
                run.record(
                    minion,
                    function.split(".")[-1],
                    False,
                    failed_step=failure.step,
                    error=failure.error,
                )
        if failure:
            failure.done = done
            raise failure
        for minion in batch:
            run.lb(lbs, minion, "ready")
    return done


def _migrate_deferred(run, minions):
    """Once every web minion serves the release: the migrations its releases
    left for later, by ``djangoapp.migrate`` on each minion in turn (the
    first applies them, the others find the database up to date and record
    it). Returns the migrations applied; raises FleetStepFailed."""
    deferred = [
        step
        for step in run.steps
        if step["step"] == "release" and step.get("migrations_deferred")
    ]
    if not deferred:
        return []
    for minion in minions:
        answer = run.call(
            [minion], "djangoapp.migrate", {"app": run.app}, MIGRATE_TIMEOUT
        )
        answer = answer[minion]
        if not (isinstance(answer, dict) and answer.get("result")):
            run.record(minion, "migrate", False, error=_error_of(answer))
            raise FleetStepFailed(minion, "migrate", _error_of(answer), answer)
        run.record(minion, "migrate", True, migrations=answer.get("migrations"))
    return deferred[0]["migrations_deferred"]


def _switch_back(run, minions, lbs):
    """The minions released by this run back to their previous release."""
    back = []
    for minion in minions:
        with contextlib.suppress(FleetStepFailed):
            run.lb(lbs, minion, "drain")
        answer = run.call([minion], "djangoapp.rollback", {"app": run.app}, 600)
        ok = isinstance(answer[minion], dict) and answer[minion].get("result")
        run.record(minion, "switch_back", bool(ok), error=None if ok else answer)
        with contextlib.suppress(FleetStepFailed):
            run.lb(lbs, minion, "ready")
        if ok:
            back.append(minion)
    return back


def _fleet(app, action, version, batch, function, kwarg):
    app = _checked_app(app)
    try:
        size = int(batch or 1)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise SaltInvocationError(f"batch: {batch!r} is not a number of 1 or more")
    members = _members()
    webs, lbs = members["web"], members["lb"]
    if not webs:
        raise SaltInvocationError(
            f"no web minion in the mine ({MINE_FUNCTION}): run mine.update"
        )
    run = _Run(app, action, version)
    ret = {
        "result": False,
        "app": app,
        "action": action,
        "version": version,
        "web": webs,
        "lb": lbs,
        "batches": _batches(webs, size),
        "steps": run.steps,
    }
    holder = {
        "pid": os.getpid(),
        "action": action,
        "version": version,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        with _fleet_lock(app, holder):
            run.event("start", web=webs, lb=lbs)
            done = ret["done"] = _roll(run, ret["batches"], lbs, function, kwarg)
            if action == "release":
                try:
                    ret["migrated_after_switch"] = _migrate_deferred(run, done)
                except FleetStepFailed as failure:
                    failure.done = done
                    raise
            ret["result"] = True
    except FleetStepFailed as failure:
        ret["failed"] = {
            "minion": failure.minion,
            "step": failure.step,
            "error": failure.error,
        }
        done = getattr(failure, "done", [])
        if failure.minion and failure.step not in ("lock",):
            # The failed minion switched itself back (or never switched).
            with contextlib.suppress(FleetStepFailed):
                run.lb(lbs, failure.minion, "ready")
        ret["switched_back"] = (
            _switch_back(run, list(reversed(done)), lbs) if action == "release" else []
        )
    ret["seconds"] = round(time.monotonic() - run.started, 3)
    run.event(
        "success" if ret["result"] else "failure",
        failed=ret.get("failed"),
        seconds=ret["seconds"],
    )
    if not ret["result"]:
        __context__["retcode"] = 1
    return ret


def release(app, version, batch=None):
    """
    Release ``version`` of ``app`` on every web minion, batch by batch behind
    the load balancers, then the migrations its releases left for later
    (``migrate`` steps). Returns ``result``, the ``batches``, every ``steps``
    entry (minion, step, result), ``migrated_after_switch`` (those
    migrations), and on failure ``failed`` (``minion``, ``step``, ``error``)
    and ``switched_back`` (the minions put back on their previous release).

    batch
        Web minions released at once after the first (default 1).

    CLI Example:

    .. code-block:: bash

        salt-run djangoapp_fleet.release shop v1.1.0 batch=2
    """
    if not isinstance(version, str) or not version:
        raise SaltInvocationError("version is required: a tag, branch or commit")
    kwarg = {"app": app, "version": version, "defer_after_switch": True}
    return _fleet(app, "release", version, batch, "djangoapp.release", kwarg)


def rollback(app, batch=None):
    """
    Roll ``app`` back on every web minion (each to its previous good
    release), batch by batch behind the load balancers.

    CLI Example:

    .. code-block:: bash

        salt-run djangoapp_fleet.rollback shop
    """
    return _fleet(app, "rollback", None, batch, "djangoapp.rollback", {"app": app})
