"""
Keep a Django app released at a given git ref.

The work is done by the ``djangoapp`` execution module
(``djangoapp.release``), so a state run and the command line share one code
path.

.. code-block:: yaml

    djangoapp-demo-release-deployed:
      djangoapp.released:
        - name: demo
        - version: v1.2.0
        - require:
          - file: djangoapp-demo-engine-config-file-serialized
          - file: djangoapp-demo-environment-file-serialized
"""

import os

import salt.payload
import salt.utils.files

__virtualname__ = "djangoapp"


def __virtual__():
    if "djangoapp.release" in __salt__:
        return __virtualname__
    return (
        False,
        "djangoapp: the djangoapp execution module is not on this minion: run "
        "saltutil.sync_all (a highstate syncs it; state.apply <sls> does not)",
    )


def _job():
    """
    The jid and the user of the job running this state, so that the release
    it makes carries them (in its events and the ledger) as a release from the
    command line does. Salt hands them to the state run (``__pub_jid``) but
    not to the states; the job's proc file (``<cachedir>/proc/<jid>``, written
    by the minion or ``salt-call`` for the process that runs the job) names
    them. ``{}`` when none does.
    """
    proc_dir = os.path.join(__opts__.get("cachedir") or "", "proc")
    try:
        names = sorted(os.listdir(proc_dir))
    except OSError:
        return {}
    for name in names:
        try:
            with salt.utils.files.fopen(os.path.join(proc_dir, name), "rb") as handle:
                job = salt.payload.loads(handle.read())
        except (OSError, ValueError, TypeError):
            continue  # a job that ended meanwhile, or not a job's file
        if (
            isinstance(job, dict)
            and job.get("pid") in (os.getpid(), os.getppid())
            and str(job.get("fun") or "").startswith("state.")
            and job.get("jid")
        ):
            found = {"__pub_jid": str(job["jid"])}
            if job.get("user"):
                found["__pub_user"] = str(job["user"])
            return found
    return {}


def _summary(res):
    lines = []
    for step in res.get("steps") or []:
        mark = "ok" if step.get("ok") else "FAILED"
        lines.append("{name}: {seconds:.2f}s {mark}".format(mark=mark, **step))
    return lines


def _release_changes(res, previous):
    changes = {
        "release": {"old": previous, "new": res.get("id")},
        "sha": res.get("sha"),
        "migrations_ran": res.get("migrations_ran"),
        "migrations": res.get("migrations"),
        "backup": res.get("backup"),
        "seconds": res.get("seconds"),
    }
    if res.get("check_warnings"):
        changes["check_warnings"] = res["check_warnings"]
    return changes


def _planned(ret, res, previous):
    """The state's return in test mode, from the plan of the release."""
    if res.get("result") is False:
        ret["comment"] = res.get("error") or "cannot resolve the version"
        return ret
    if res.get("changed"):
        ret["result"] = None
        ret["changes"] = {"release": {"old": previous, "new": res.get("id")}}
        if res.get("migrations"):
            ret["changes"]["migrations"] = res["migrations"]
    else:
        ret["result"] = True
    ret["comment"] = res.get("comment") or ""
    return ret


def released(name, version=None, version_policy=None, **kwargs):
    """
    Ensure that the live release of app ``name`` is ``version`` (a tag,
    branch or commit). For a branch, the origin is fetched and the commit
    compared, so new commits on the branch are released.

    name
        The app name (a directory of ``/etc/djangoapp`` with an app.json).

    version
        The git ref; defaults to the ``version`` in app.json.

    version_policy
        ``changes`` or ``pillar`` (see below); defaults to the app.json's.

    Nothing changes when the current release already is that ref at that
    commit, and no event is sent. After a release or rollback by hand, the
    version it made live stays until the pillar's version changes (the comment
    says so), unless the app's ``version_policy`` is ``pillar``. With
    ``test=True`` the state reports what it would release. A release it makes
    records the jid of the state run (in its events and the ledger).
    """
    ret = {"name": name, "changes": {}, "result": False, "comment": ""}
    try:
        res = __salt__["djangoapp.release"](
            version=version,
            app=name,
            test=bool(__opts__.get("test")),
            from_pillar=True,
            version_policy=version_policy,
            **_job(),
        )
    except Exception as exc:  # pylint: disable=broad-except
        ret["comment"] = str(exc)
        return ret

    if res.get("result") is False and not res.get("failed_step"):
        # refused before anything started (a bad version or app name)
        ret["comment"] = res.get("error") or "refused"
        return ret
    if res.get("kept"):
        # a release or rollback by hand since the pillar's version last changed
        ret.update(result=True, comment=res["comment"])
        return ret
    previous = (res.get("previous") or {}).get("id")
    if __opts__.get("test"):
        return _planned(ret, res, previous)

    if res.get("result"):
        ret["result"] = True
        if res.get("changed"):
            ret["changes"] = _release_changes(res, previous)
            comment = ["Released {} in {}s".format(res.get("id"), res.get("seconds"))]
        else:
            comment = [res.get("comment") or "{} is already live".format(res.get("id"))]
        comment.extend(res.get("notes") or [])
        comment.extend(_summary(res))
        ret["comment"] = "\n".join(comment)
        return ret

    comment = [
        "Release of {} failed at {}: {}".format(
            res.get("version") or version, res.get("failed_step"), res.get("error")
        )
    ]
    restored = res.get("restored") or []
    if restored:
        comment.append("Restored: " + "; ".join(restored))
    comment.extend(res.get("notes") or [])
    comment.extend(_summary(res))
    ret["comment"] = "\n".join(comment)
    return ret


def database_ready(name, timeout=300, **kwargs):
    """
    Wait until the database of app ``name`` accepts the app's credentials
    (``djangoapp.database_ready``); changes nothing.

    .. code-block:: yaml

        djangoapp-shop-database-answering:
          djangoapp.database_ready:
            - name: shop
            - timeout: 300
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    if __opts__["test"]:
        ret["comment"] = f"would wait for the database of {name}"
        return ret
    res = __salt__["djangoapp.database_ready"](name, timeout=timeout)
    ret["result"] = bool(res.get("result"))
    ret["comment"] = (
        f"the database of {name} answered after {res.get('seconds')} s"
        if ret["result"]
        else res.get("comment") or res.get("error") or str(res)
    )
    return ret
