"""
An app's maintenance mode. A flag file is the switch: while it exists, Nginx
answers every request of the app with 503, ``Retry-After`` and the page, except
the static and media files and the health path (the app's site checks for the
flag on each request, so turning it on or off needs no reload, and a release or
a ``state.apply`` leaves it as it is). The page stays in place once written, so
that a request that saw the flag an instant before it went finds the page.

Not a Salt utility: ``djangoapp_release`` loads it with the engine's other modules.
"""

import html
import os
import re
import time
from datetime import UTC, datetime

from djangoapp_common import fsync_dir

DEFAULT_MESSAGE = "This site is down for maintenance and will be back shortly."
PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Down for maintenance</title></head>
<body>
<h1>Down for maintenance</h1>
<p id="djangoapp-maintenance">{message}</p>
</body>
</html>
"""
MESSAGE_RE = re.compile(r'<p id="djangoapp-maintenance">(.*?)</p>', re.DOTALL)


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def maintenance_state(cfg):
    """``{"on": bool, "since": ISO time or None, "message": text or None}``."""
    try:
        since = os.stat(cfg["maintenance_flag"]).st_mtime
    except FileNotFoundError:
        return {"on": False, "since": None, "message": None}
    try:
        with open(cfg["maintenance_page"], encoding="utf-8") as handle:
            found = MESSAGE_RE.search(handle.read())
    except FileNotFoundError:
        found = None
    return {
        "on": True,
        "since": datetime.fromtimestamp(since, UTC).replace(microsecond=0).isoformat(),
        "message": html.unescape(found.group(1)) if found else None,
    }


def requests_in_flight(socket_path):
    """The connections made to the app's socket and not closed yet: those its
    workers have accepted (each a request being answered, or an idle keep-alive
    connection of Nginx's) and those waiting to be (``/proc/net/unix``: the
    sockets of that path connected, state 03, or connecting, 02)."""
    count = 0
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
        next(table, None)
        for line in table:
            fields = line.rstrip("\n").split(None, 7)
            if len(fields) == 8 and fields[5] in ("02", "03"):
                count += fields[7] == socket_path
    return count


def wait_for_requests(cfg, timeout, poll=0.05):
    """Once maintenance is on Nginx sends the app no request: wait, up to
    ``timeout`` s, until the ones it sent before have been answered. Returns
    ``{"waited": s, "left": connections still open}``."""
    started = time.monotonic()
    left = requests_in_flight(cfg["socket"])
    while left and time.monotonic() - started < timeout:
        time.sleep(poll)
        left = requests_in_flight(cfg["socket"])
    return {"waited": round(time.monotonic() - started, 3), "left": left}


def _write_atomic(path, text):
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def switch_maintenance(cfg, on, message=None):
    """
    On: the page with the message (HTML-escaped, or the default), then the
    flag. Off: the flag removed. Returns the state after, with ``changed``.
    """
    before = maintenance_state(cfg)
    message = message or DEFAULT_MESSAGE
    if on:
        if before["on"] and before["message"] == message:
            return {**before, "changed": False}
        _write_atomic(
            cfg["maintenance_page"], PAGE.format(message=html.escape(message))
        )
        if not before["on"]:
            _write_atomic(cfg["maintenance_flag"], "")
    elif before["on"]:
        os.unlink(cfg["maintenance_flag"])
    else:
        return {**before, "changed": False}
    fsync_dir(os.path.dirname(cfg["maintenance_flag"]))
    return {**maintenance_state(cfg), "changed": True}
