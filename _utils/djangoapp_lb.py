"""
HAProxy's runtime API, over its admin socket: a web minion drained (no new
request sent to it, those in flight finish) and put back in rotation once
HAProxy's own health check sees it up.

Salt's haproxyconn modules would do the first half, but they talk through the
``haproxyctl`` package, whose last release (0.3.1) is Python 2 code: it writes
``str`` to the socket, which Python 3 refuses.

lb.sls writes ``lb.json`` in the config directory: the socket and the backend
of each app.
"""

import csv
import io
import json
import os
import socket
import time

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "djangoapp_lb"

LB_FILE = "lb.json"
STATES = ("ready", "drain", "maint")
POLL = 0.2


def __virtual__():
    return __virtualname__


def settings(config_dir):
    """``lb.json``: the socket, the backends by app and the drain timeout."""
    path = os.path.join(config_dir, LB_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise CommandExecutionError(
            f"{path} is missing: this minion has no lb role (djangoapp:roles)"
        ) from None


def command(socket_path, line, timeout=5.0):
    """One runtime API command; HAProxy's answer, as text."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(socket_path)
        except OSError as exc:
            raise CommandExecutionError(
                f"HAProxy's runtime API at {socket_path}: {exc}"
            ) from exc
        conn.sendall(line.encode() + b"\n")
        chunks = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def stats(socket_path):
    """``show stat`` as ``{(backend, server): row}`` (HAProxy's CSV columns:
    status, scur, check_status...), servers only."""
    text = command(socket_path, "show stat").lstrip("# ")
    rows = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("svname") not in ("FRONTEND", "BACKEND", None):
            rows[(row["pxname"], row["svname"])] = row
    return rows


def status(lb):
    """Each app's web minions as HAProxy sees them now: ``{app: {server:
    {"status", "sessions", "check"}}}``."""
    rows = stats(lb["socket"])
    found = {}
    for app, backend in sorted(lb["backends"].items()):
        found[app] = {
            server: {
                "status": row.get("status"),
                "sessions": int(row.get("scur") or 0),
                "check": row.get("check_status"),
            }
            for (name, server), row in sorted(rows.items())
            if name == backend
        }
    return found


def backends_of(lb, app):
    if app is None:
        return sorted(lb["backends"].values())
    if app not in lb["backends"]:
        raise SaltInvocationError(
            f"app {app!r} has no backend on this load balancer "
            f"(it has {', '.join(sorted(lb['backends'])) or 'none'})"
        )
    return [lb["backends"][app]]


def server_rows(socket_path, backends, server):
    rows = stats(socket_path)
    missing = [backend for backend in backends if (backend, server) not in rows]
    if missing:
        raise SaltInvocationError(
            f"server {server!r} is not in backend {', '.join(missing)} of this "
            "load balancer (its web minions come from the Salt mine)"
        )
    return {backend: rows[(backend, server)] for backend in backends}


def set_server(lb, server, state, app=None, wait=True, timeout=None):
    """
    Put ``server`` (a web minion's id) of every app's backend (or ``app``'s)
    in ``state``: ``drain`` (waits until no session to it is left),
    ``ready`` (waits until HAProxy's health check says UP) or ``maint``.
    Returns ``{"result", "server", "state", "backends": {name: status},
    "seconds"}``; ``result`` is False with ``comment`` when the wait ran out.
    """
    if state not in STATES:
        raise SaltInvocationError(f"state must be one of {', '.join(STATES)}")
    socket_path = lb["socket"]
    backends = backends_of(lb, app)
    server_rows(socket_path, backends, server)
    started = time.monotonic()
    for backend in backends:
        answer = command(socket_path, f"set server {backend}/{server} state {state}")
        if answer.strip():
            raise CommandExecutionError(
                f"HAProxy refused {state} of {backend}/{server}: {answer.strip()}"
            )
    timeout = float(timeout if timeout is not None else lb["drain_timeout"])
    deadline = started + timeout
    done = {
        "drain": lambda row: int(row.get("scur") or 0) == 0,
        "ready": lambda row: row.get("status", "").startswith("UP"),
        "maint": lambda row: True,
    }[state]
    while True:
        rows = server_rows(socket_path, backends, server)
        if not wait or all(done(row) for row in rows.values()):
            result, comment = True, None
            break
        if time.monotonic() >= deadline:
            waiting = {
                backend: f"{row.get('status')}, {row.get('scur')} sessions, "
                f"check {row.get('check_status')}"
                for backend, row in rows.items()
                if not done(row)
            }
            result = False
            comment = f"{server} not {state} after {timeout:g} s: {waiting}"
            break
        time.sleep(POLL)
    ret = {
        "result": result,
        "server": server,
        "state": state,
        "backends": {backend: row.get("status") for backend, row in rows.items()},
        "seconds": round(time.monotonic() - started, 3),
    }
    if comment:
        ret["comment"] = comment
    return ret
