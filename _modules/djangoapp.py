"""
Release Django projects from git to production, and back, with no failed
request.

Each app is described by ``/etc/djangoapp/<app>/app.json`` (written by the
djangoapp formula's states); its secrets live in ``env.json`` next to it.
A release fetches the ref into a bare mirror, builds
``<base>/releases/<id>/`` (code and its own virtualenv), checks it as the app
user with the production environment, backs up the database and migrates
when migrations are pending, switches ``current`` atomically, reloads
gunicorn gracefully and verifies that every worker runs the new code and that
the site answers. Anything failing before the switch leaves the site
untouched; anything failing after it puts the previous release back.

The directory holding the ``app.json`` files can be changed with the minion
option ``djangoapp.config_dir`` (default ``/etc/djangoapp``).

:depends: git, tar; uv (``/opt/djangoapp/tools/bin/uv``) or python3-venv;
    pg_dump/pg_restore or mysqldump when the app has a database.
"""

import copy
import functools
import inspect
import json
import logging
import time

import salt.utils.args
import salt.utils.platform
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "djangoapp"

CONFIG_DIR = "/etc/djangoapp"


def _refusals_answered(function):
    """
    A call refused before anything changes (a bad or unknown argument) returns
    ``{"result": False, "error": ...}`` with a non-zero exit code: one line
    that names the argument, and ``--out=json`` stays JSON (Salt prints the
    whole docstring after a SaltInvocationError, or a TypeError of too many
    positional arguments). Keyword arguments the
    function does not take are refused by name (Salt hands them on to a
    function that takes ``**kwargs``: a misspelt ``version`` would otherwise
    release the pillar's).
    """
    signature = inspect.signature(function)
    taken = [
        name
        for name, parameter in signature.parameters.items()
        if parameter.kind is not parameter.VAR_KEYWORD
    ]

    @functools.wraps(function)
    def answered(*args, **kwargs):
        try:
            unknown = sorted(
                key for key in kwargs if not key.startswith("__") and key not in taken
            )
            if unknown:
                raise SaltInvocationError(
                    "unknown argument {}: djangoapp.{} takes {}".format(
                        ", ".join(map(repr, unknown)),
                        function.__name__,
                        ", ".join(taken),
                    )
                )
            if len(args) > len(taken):
                raise SaltInvocationError(
                    "too many arguments ({}): djangoapp.{} takes {}".format(
                        ", ".join(map(repr, args[len(taken) :])),
                        function.__name__,
                        ", ".join(taken),
                    )
                )
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise SaltInvocationError(
                    f"{exc}: djangoapp.{function.__name__} takes {', '.join(taken)}"
                ) from exc
            return function(*args, **kwargs)
        except SaltInvocationError as exc:
            __context__["retcode"] = 1
            return {"result": False, "error": str(exc)}

    return answered


def __virtual__():
    if salt.utils.platform.is_windows():
        return (False, "djangoapp: Windows is not supported")
    if "djangoapp_release.release" not in __utils__:
        return (
            False,
            "djangoapp: the djangoapp_release utility is not on this minion: run "
            "saltutil.sync_all (saltutil.sync_modules alone leaves it out)",
        )
    return __virtualname__


def _config_dir():
    return __opts__.get("djangoapp.config_dir", CONFIG_DIR)


def _make_host():
    send = __utils__["djangoapp_release.event_sender"](
        __opts__, __salt__.get("event.send")
    )
    return __utils__["djangoapp_release.make_host"](__salt__["cmd.run_all"], send)


def _caller(kwargs):
    user = kwargs.get("__pub_user") or __utils__["djangoapp_release.os_user"]()
    return user, kwargs.get("__pub_jid")


def _app(app, argument="app"):
    """Validate or guess the app name; return its configuration."""
    config_dir = _config_dir()
    if app is None or app == "":
        apps = __utils__["djangoapp_release.list_apps"](config_dir)
        if len(apps) == 1:
            app = apps[0]
        elif not apps:
            raise SaltInvocationError(
                f"app is required: no app is configured in {config_dir}"
            )
        else:
            raise SaltInvocationError(
                "app is required: this host has {} apps: {}".format(
                    len(apps), ", ".join(apps)
                )
            )
    __utils__["djangoapp_validate.app_name"](app, argument)
    return __utils__["djangoapp_release.load_app"](app, config_dir)


def _fail(ret):
    if not ret.get("result") and ret.get("result") is not None:
        __context__["retcode"] = 1
    return ret


def _pillar_note(ret, cfg):
    """A release or rollback by hand that leaves another version live than the
    pillar's says so: state.apply's rule decides what happens next."""
    live = ret.get("version")
    if ret.get("result") and live and live != cfg["version"]:
        if cfg["version_policy"] == "pillar":
            then = f"the next state.apply releases {cfg['version']} again"
        else:
            then = f"state.apply leaves {live} live until the pillar's version changes"
        ret.setdefault("warnings", []).append(
            f"the pillar names {cfg['version']}: {then}"
        )
    return ret


@_refusals_answered
def release(
    version=None,
    app=None,
    test=None,
    from_pillar=False,
    version_policy=None,
    defer_after_switch=False,
    **kwargs,
):
    """
    Release ``version`` (a tag, branch or commit) of ``app``.

    version
        The git ref to release. Defaults to the ``version`` in app.json (the
        pillar's ``djangoapp:apps:<app>:version``).

    app
        The app name; may be left out when the host has a single app.

    test
        Report what would be released (resolving the ref against the origin
        with ``git ls-remote``) and change nothing: ``changed`` says whether
        a release would happen, ``id`` which one.

    from_pillar
        The ``djangoapp.released`` state's call: the version is the pillar's,
        released only when nothing is live, when the pillar's version changed
        since state.apply last left it live, or with ``version_policy:
        pillar``; otherwise the release made by hand stays (``kept``).

    version_policy
        With ``from_pillar``: the pillar's ``version_policy`` (``changes`` or
        ``pillar``), when app.json may not have it yet (test mode).

    defer_after_switch
        Leave the migrations that must follow the switch for ``djangoapp.migrate``
        (``migrations_deferred``): in a fleet, old code serves elsewhere until
        the last web minion switches. The rolling release passes it.

    Returns a dict with ``app``, ``version``, ``sha``, ``id`` (the release
    id), ``previous``, ``steps`` (name, seconds, ok and, when failed, output),
    ``seconds``, ``migrations_ran``, ``backup``, ``check_warnings``,
    ``result`` and, on failure, ``failed_step``, ``error`` and ``restored``.
    The exit code of ``salt-call`` is non-zero on failure.

    CLI Example:

    .. code-block:: bash

        salt '*' djangoapp.release v1.2.0
        salt '*' djangoapp.release version=main app=shop
        salt '*' djangoapp.release v1.3.0 test=True
        salt web1 djangoapp.release v1.4.0 app=shop defer_after_switch=True
    """
    _flag("defer_after_switch", defer_after_switch)
    version = _checked_ref(version)
    cfg = _app(app)
    version = version or _checked_ref(cfg.get("version"))
    if not version:
        raise SaltInvocationError("version is required (app.json has none)")
    test = _test_mode(test, kwargs)
    kept = _kept_by_hand(cfg, version, version_policy) if from_pillar else None
    if kept:
        return kept
    host = _make_host()
    if test:
        return _fail(__utils__["djangoapp_release.plan_release"](cfg, version, host))
    user, jid = _caller(kwargs)
    ret = __utils__["djangoapp_release.release"](
        cfg, version, host, user=user, jid=jid, defer_after_switch=defer_after_switch
    )
    if from_pillar and ret.get("result"):
        __utils__["djangoapp_release.record_pillar_version"](cfg, version, jid)
    return _fail(ret if from_pillar else _pillar_note(ret, cfg))


@_refusals_answered
def release_apps(apps=None, version=None, test=None, **kwargs):
    """
    Release several apps of this host at once with one start of Salt, each
    in a process of its own as ``djangoapp.release`` runs it (its own lock,
    steps, health gate and put-back; one failing leaves the others be). A
    stopping signal goes on to each release still running, which puts back.

    apps
        A list, names separated by commas, or a mapping of app to version.
    version
        The git ref of every app listed; by default each app's in app.json
        (the pillar's). Not with a mapping.
    test
        What each release would do (``djangoapp.release``'s test mode).

    Returns ``apps`` (each app's ``djangoapp.release`` return), ``failed``
    (the apps whose release failed), ``changed``, ``seconds`` and ``result``;
    non-zero exit code when one failed. Bad input is refused before any start.

    CLI Example:

    .. code-block:: bash

        salt web1 djangoapp.release_apps shop,blog v2.3.0
        salt web1 djangoapp.release_apps '{shop: v2.3.0, blog: v1.9.1}'
    """
    wanted = _apps_and_versions(apps, version)
    started = time.monotonic()
    if _test_mode(test, kwargs):
        host = _make_host()
        plan = __utils__["djangoapp_release.plan_release"]
        answers = {cfg["name"]: plan(cfg, ref, host) for cfg, ref in wanted}
    else:
        user, jid = _caller(kwargs)
        release_one = __utils__["djangoapp_release.release"]

        def one(cfg, ref, host):  # in a child, outside this module's loader
            return _pillar_note(release_one(cfg, ref, host, user=user, jid=jid), cfg)

        answers = __utils__["djangoapp_release.run_together"](
            {
                cfg["name"]: functools.partial(one, cfg, ref, _make_host())
                for cfg, ref in wanted
            }
        )
    failed = [name for name, ret in answers.items() if not ret.get("result")]
    return _fail(
        {
            "result": not failed,
            "changed": any(ret.get("changed") for ret in answers.values()),
            "failed": failed,
            "seconds": round(time.monotonic() - started, 3),
            "apps": answers,
        }
    )


def _apps_and_versions(apps, version):
    """``[(cfg, ref)]`` for ``release_apps``; every name and ref checked first."""
    wanted = []
    for name, ref in __utils__["djangoapp_validate.apps_versions"](apps, version):
        cfg = _app(name, "apps")
        ref = ref or _checked_ref(cfg.get("version"))
        if not ref:
            raise SaltInvocationError(f"apps: {name}: no version (app.json has none)")
        wanted.append((cfg, ref))
    return wanted


def _test_mode(test, kwargs):
    """``test`` given, else test mode of the call or of the minion."""
    if test is None:
        return salt.utils.args.test_mode(**kwargs) or bool(__opts__.get("test"))
    return salt.utils.args.test_mode(test=test)


def _checked_ref(version):
    """``version`` as a git ref that passed the check, or None when not given."""
    if version is None or version == "":
        return None
    version = str(version)
    __utils__["djangoapp_validate.ref"](version, "version")
    return version


def _flag(name, value):
    if not isinstance(value, bool):
        raise SaltInvocationError(f"{name} {value!r} must be True or False")


def _kept_by_hand(cfg, version, version_policy):
    """The state's answer when the release made by hand stays (``from_pillar``:
    the pillar's version unchanged); None when the pillar's is to be released."""
    policy = version_policy or cfg["version_policy"]
    if policy not in ("changes", "pillar"):
        raise SaltInvocationError(
            f"version_policy {policy!r} must be changes or pillar"
        )
    decision = __utils__["djangoapp_release.pillar_decision"](cfg, version, policy)
    if decision["release"]:
        return None
    return {
        "app": cfg["name"],
        "id": decision["id"],
        "version": decision["version"],
        "result": True,
        "kept": True,
        "comment": decision["comment"],
    }


@_refusals_answered
def rollback(app=None, to=None, force=False, **kwargs):
    """
    Make the previous good release of ``app`` live again (or ``to``: a
    release id, or a version, for its newest good release on disk): switch
    ``current``, reload gracefully, verify, record it. Again, it goes one
    further back, as far as the good releases on disk go. Nothing
    is rebuilt; the database is left as it is: a rollback does not undo
    migrations. ``migrations_ahead`` lists those applied in the database that
    the release now live does not have (``app.migration``), and ``warnings``
    says so, naming the dump taken before they ran when there is one.

    A rollback over a release whose migrations broke the schema for older code
    (run after its switch, or let through by ``migrations: allow``) is refused
    before anything changes, naming them and the dump taken before them;
    ``force=True`` rolls back anyway.

    CLI Example:

    .. code-block:: bash

        salt '*' djangoapp.rollback
        salt '*' djangoapp.rollback shop to=v1.1.0-3f2a9c1e
        salt '*' djangoapp.rollback shop to=v1.1.0
        salt '*' djangoapp.rollback shop force=True
    """
    _flag("force", force)
    cfg = _app(app)
    if to is not None:
        __utils__["djangoapp_validate.release_id"](str(to), "to")
        to = str(to)
    user, jid = _caller(kwargs)
    ret = __utils__["djangoapp_release.rollback"](
        cfg, _make_host(), to=to, user=user, jid=jid, force=force
    )
    return _fail(_pillar_note(ret, cfg))


@_refusals_answered
def status(app=None, **kwargs):
    """
    Show the live release of ``app``: id, version, commit, when and by whom it
    was deployed, the service state, and the release each gunicorn worker
    runs from.

    CLI Example:

    .. code-block:: bash

        salt '*' djangoapp.status
        salt '*' djangoapp.status shop
    """
    cfg = _app(app)
    return __utils__["djangoapp_release.status"](cfg, _make_host())


@_refusals_answered
def releases(app=None, **kwargs):
    """
    List the release history of ``app`` (the ledger), the releases on disk,
    the current one and the one a rollback would go back to.

    CLI Example:

    .. code-block:: bash

        salt '*' djangoapp.releases shop
    """
    cfg = _app(app)
    return __utils__["djangoapp_release.releases"](cfg)


@_refusals_answered
def restore(app=None, backup=None, **kwargs):
    """
    Restore the database of ``app`` from ``backup``: a dump taken before a
    migration or a nightly one, named by its file name (as ``releases`` and the
    backup directory show them) or path; the newest by default. Under the
    release lock, with the site in maintenance while it runs, after a fresh
    dump of the database as it is (``backup_before``), which is loaded back
    when the chosen one fails to load. The code that runs is left as it is: a
    dump from before a migration wants the release from before it too.

    CLI Example:

    .. code-block:: bash

        salt '*' djangoapp.restore shop
        salt '*' djangoapp.restore shop backup=v1.2.0-3f2a9c1e.dump
    """
    cfg = _app(app)
    if backup is not None:
        backup = str(backup)
    user, jid = _caller(kwargs)
    ret = __utils__["djangoapp_release.restore"](
        cfg, _make_host(), backup=backup, user=user, jid=jid
    )
    return _fail(ret)


@_refusals_answered
def migrate(app=None, **kwargs):
    """
    Apply the migrations that the live release of ``app`` left for later
    (released with ``defer_after_switch=True``): under the release lock, after
    a dump of the database as it is, recorded in the history so that a
    rollback over them is refused as over any that ran after a switch.
    Returns ``result``, ``id`` (the live release), ``migrations`` (those it
    applied; empty when none was left, and nothing is run), ``backup`` and
    ``steps``; on failure ``failed_step`` and ``error``. The rolling release
    calls it on every web minion once the last one serves the new code: the
    first applies them, the others find the database up to date.

    CLI Example:

    .. code-block:: bash

        salt web1 djangoapp.migrate shop
    """
    cfg = _app(app)
    user, jid = _caller(kwargs)
    ret = __utils__["djangoapp_release.migrate_deferred"](
        cfg, _make_host(), user=user, jid=jid
    )
    return _fail(ret)


@_refusals_answered
def backup(app=None, label="manual", **kwargs):
    """
    Dump the database of ``app`` as it is now, under the release lock, into
    its backup directory as ``<label>-<UTC time>.dump`` (PostgreSQL) or
    ``.sql`` (MariaDB), beside the dumps taken before migrations; ``restore``
    takes it by that name. An app without a database answers ``result`` True
    and ``backup`` None. A state.apply that takes an app away (``absent:
    true``) takes one labelled ``removed`` first.

    CLI Example:

    .. code-block:: bash

        salt '*' djangoapp.backup shop
        salt '*' djangoapp.backup shop label=before-import
    """
    cfg = _app(app)
    user, jid = _caller(kwargs)
    ret = __utils__["djangoapp_release.dump_now"](
        cfg, _make_host(), label=label, user=user, jid=jid
    )
    return _fail(ret)


MAINTENANCE_MODES = {"on": True, "off": False}


@_refusals_answered
def maintenance(app=None, mode=None, message=None, **kwargs):
    """
    Put ``app`` in maintenance (``on``), take it out (``off``), or show whether
    it is in it (no mode). While it is on, Nginx answers every request but the
    static and media files and the health path with 503, ``Retry-After`` and a
    plain page saying ``message`` (a default otherwise). It needs no reload, and
    a release or a ``state.apply`` leaves it as it is.

    CLI Example:

    .. code-block:: bash

        salt '*' djangoapp.maintenance shop on message="Back at 14:00 UTC"
        salt '*' djangoapp.maintenance shop off
        salt '*' djangoapp.maintenance shop
    """
    # The command line's YAML reads a bare on/off as a boolean.
    switched = mode if isinstance(mode, bool) or mode is None else None
    if switched is None and mode is not None:
        if str(mode).lower() not in MAINTENANCE_MODES:
            raise SaltInvocationError(f"mode {mode!r} must be on or off")
        switched = MAINTENANCE_MODES[str(mode).lower()]
    if message is not None and switched is not True:
        raise SaltInvocationError("message is given with mode on only")
    cfg = _app(app)
    state = __utils__["djangoapp_release.maintenance"](cfg, switched, message)
    return {"app": cfg["name"], **state}


@_refusals_answered
def static_location(app=None, **kwargs):
    """
    Where nginx finds the static and media files of the live release:
    ``{"static": {"url": STATIC_URL, "path": ...}, "media": {...}}``. A
    STATIC_ROOT inside the release directory is given through
    ``<base>/current`` so that it follows each release. Both are None before
    the first release.

    CLI Example:

    .. code-block:: bash

        salt '*' djangoapp.static_location shop
    """
    cfg = _app(app)
    return __utils__["djangoapp_release.static_location"](cfg)


@_refusals_answered
def reload(app=None, **kwargs):
    """
    Have the app's gunicorn take up a changed environment file (env.json) or
    gunicorn config, without a failed request. state.apply calls it when
    either changed. It waits for a release or rollback of the app to finish,
    then hands the workers over to new ones of the live release (they read
    env.json when forked); a changed gunicorn config takes a HUP instead. An
    app with ``preload_app`` gets a new master of the live release instead,
    and a gunicorn-keeper older than its installed program executes the new
    one first (state.apply calls this when the formula updated it).

    Returns ``{"result": True, "method": "preloaded"|"rolling"|"hup",
    "master": pid, "workers": [pids]}`` (``reason`` says why a HUP;
    ``keeper_renewed`` whether the keeper executed a newer program), or
    ``result: False`` with a ``comment`` when gunicorn is not running.

    CLI Example:

    .. code-block:: bash

        salt '*' djangoapp.reload shop
    """
    cfg = _app(app)
    user, jid = _caller(kwargs)
    ret = __utils__["djangoapp_release.reload_service"](
        cfg, _make_host(), user=user, jid=jid
    )
    return _fail(ret)


@_refusals_answered
def health(app=None, **kwargs):
    """
    Ask the app's health URL through Nginx as a release does (``health_path``,
    the first server name as Host, redirects not followed), and apply the same
    rule: healthy when it answers a status of ``health_statuses`` (by default any
    success or redirect). state.apply checks it once a release it made is
    served, the first one included. Returns ``{"result": True, "response":
    ...}``; raises CommandExecutionError naming the path, the answer and the
    pillar keys otherwise.

    CLI Example:

    .. code-block:: bash

        salt '*' djangoapp.health shop
    """
    cfg = _app(app)
    return __utils__["djangoapp_release.health"](cfg)


def fleet_member(**kwargs):
    """
    This minion in a fleet, as the Salt mine keeps it for the others:
    ``{"roles": [...], "address": ...}``, its roles (the pillar's
    ``djangoapp:roles``, by default web, db and cache) and its address in the
    pillar's ``djangoapp:fleet:network`` (None without one). The pillar's
    ``mine_functions`` name it (see the README's "A fleet").

    CLI Example:

    .. code-block:: bash

        salt '*' djangoapp.fleet_member
    """
    # Outside a render (the mine's own call) Salt masks what pillar.get returns.
    network = __salt__["pillar.get"]("djangoapp:fleet:network", "", unmask=True)
    family = "ip_addrs6" if ":" in network else "ip_addrs"
    return __utils__["djangoapp_fleet.member"](
        __salt__["pillar.get"]("djangoapp:roles", None, unmask=True),
        network,
        __salt__[f"network.{family}"]() if network else [],
    )


def lb_status(**kwargs):
    """
    On a minion with the lb role: each app's web minions as HAProxy sees them
    now (``{app: {minion: {"status": "UP"|"DOWN"|"DRAIN"|"MAINT"..., "sessions",
    "check"}}}``), read from its runtime API.

    CLI Example:

    .. code-block:: bash

        salt lb1 djangoapp.lb_status
    """
    return __utils__["djangoapp_lb.status"](
        __utils__["djangoapp_lb.settings"](_config_dir())
    )


@_refusals_answered
def lb_server(server, state, app=None, wait=True, timeout=None, **kwargs):
    """
    On a minion with the lb role: put the web minion ``server`` in ``state`` in
    HAProxy, through its runtime API, for every app (or ``app``).

    server
        The web minion's id (HAProxy's server name).

    state
        ``drain``: HAProxy sends it no new request; returns once no session to
        it is left (or ``timeout`` ran out). ``ready``: back in rotation;
        returns once HAProxy's health check, through the minion's Nginx, says
        it is up. ``maint``: out of rotation at once.

    wait
        False: return without waiting.

    timeout
        Seconds to wait; default: the pillar's ``djangoapp:fleet:drain_timeout``.

    CLI Example:

    .. code-block:: bash

        salt lb1 djangoapp.lb_server web2 drain
        salt lb1 djangoapp.lb_server web2 ready app=shop
    """
    lb = __utils__["djangoapp_lb.settings"](_config_dir())
    ret = __utils__["djangoapp_lb.set_server"](
        lb, server, state, app=app, wait=wait, timeout=timeout
    )
    return _fail(ret)


@_refusals_answered
def database_ready(app=None, timeout=300, **kwargs):
    """
    Wait until ``app``'s database accepts the app's own credentials (``SELECT
    1`` with DATABASE_URL's user and password), up to ``timeout`` seconds. On a
    web minion of a fleet, whose first ``state.apply`` may run before the db
    minion's has made the app's role, the release waits for it.

    CLI Example:

    .. code-block:: bash

        salt web1 djangoapp.database_ready shop timeout=60
    """
    cfg = _app(app)
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"timeout: {timeout!r} is not a number") from None
    return _fail(
        __utils__["djangoapp_release.database_ready"](cfg, _make_host(), timeout)
    )


def validate_pillar(djangoapp=None, **kwargs):
    """
    Validate the ``djangoapp`` pillar (the apps and the host sections).
    Raises an error naming every offending key, e.g.
    ``djangoapp:apps:demo:database:password is required``; returns True
    otherwise. The formula calls it from map.jinja, before anything changes.

    djangoapp
        The mapping to validate; defaults to the minion's ``djangoapp``
        pillar.

    CLI Example:

    .. code-block:: bash

        salt '*' djangoapp.validate_pillar
    """
    if djangoapp is None:
        djangoapp = __salt__["pillar.get"]("djangoapp", {})
    return __utils__["djangoapp_validate.pillar"](djangoapp)


# What map.jinja made of the parameters and the pillar, kept for the rest of the
# state run: Salt renders map.jinja again for each SLS file that imports it.
MAP_CONTEXT_KEY = "djangoapp.map"
MAP_GRAINS = ("os_family", "os", "osfinger")


def _map_inputs():
    """
    The state run and what map.jinja reads; None outside a state run. A state
    run gives the loader a context of its own (a copy of the minion's), where
    it puts its file client: what is kept there ends with the run.
    """
    run = __context__.get("fileclient")
    if run is None:
        return None
    pillar = json.dumps(__pillar__.get("djangoapp"), sort_keys=True, default=str)
    return (id(run), pillar, tuple(__grains__.get(grain) for grain in MAP_GRAINS))


def cached_map():
    """
    The configuration that ``derive_settings`` returned earlier in this state
    run for the same pillar and grains, or None (the first SLS file of a run,
    or outside a state run). ``map.jinja`` asks it first.

    CLI Example:

    .. code-block:: bash

        salt-call djangoapp.cached_map
    """
    inputs = _map_inputs()
    kept = __context__.get(MAP_CONTEXT_KEY)
    if inputs is None or not kept or kept[0] != inputs:
        return None
    return copy.deepcopy(kept[1])


def derive_settings(djangoapp):
    """
    The ``djangoapp`` configuration as merged by the formula's ``map.jinja``
    (parameters, then the pillar), with what the states read derived from
    it: each app's names, paths, database URL, environment, TLS files, Redis
    database and ``app_json`` (the content of its app.json), the proxy
    environment, the local database engines, the apps with TLS, the monitoring
    checks and the agents' ports. ``map.jinja`` calls it after
    ``validate_pillar``.

    djangoapp
        The merged mapping (it is not changed).

    CLI Example:

    .. code-block:: bash

        salt-call djangoapp.derive_settings "$(cat merged-djangoapp.json)"
    """
    if not isinstance(djangoapp, dict):
        raise SaltInvocationError("djangoapp must be a mapping")
    mine = None
    wanted = __utils__["djangoapp_fleet.mine_wanted"](djangoapp)
    if wanted:
        mine = __salt__["mine.get"]("*", wanted)
    derived = __utils__["djangoapp_settings.derive"](djangoapp, __grains__, mine)
    inputs = _map_inputs()
    if inputs is not None:
        __context__[MAP_CONTEXT_KEY] = (inputs, copy.deepcopy(derived))
    return derived
