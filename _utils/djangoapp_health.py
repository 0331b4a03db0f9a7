"""
The health check of a release: GETs of the app's health URL through Nginx,
with the site's name as Host header and SNI, never following a redirect.
"""

import http.client
import socket
import ssl
import time
import urllib.parse

from salt.exceptions import CommandExecutionError


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


class _SNIHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, sni=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._sni = sni

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(
            sock, server_hostname=self._sni or self.host
        )


def health_get(health):
    """One GET of the health URL; returns (status, detail)."""
    url = urllib.parse.urlsplit(health["url"])
    host_header = health.get("host") or url.hostname
    timeout = float(health.get("timeout") or 30)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    if url.scheme == "https":
        context = ssl.create_default_context()
        if not health.get("verify_tls", True):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        conn = _SNIHTTPSConnection(
            url.hostname,
            url.port or 443,
            timeout=timeout,
            context=context,
            sni=host_header,
        )
    else:
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    try:
        conn.request(
            "GET", path, headers={"Host": host_header, "User-Agent": "djangoapp"}
        )
        resp = conn.getresponse()
        resp.read(65536)
        detail = f"HTTP {resp.status}"
        if 300 <= resp.status < 400 and resp.getheader("Location"):
            detail += " -> " + resp.getheader("Location")
        return resp.status, detail
    finally:
        conn.close()


# What a release answers on its health path to be healthy, unless the pillar says
# otherwise (``health_statuses``): any success or redirect, which is not followed.
DEFAULT_ACCEPT = ("2xx", "3xx")


def accepts(accept, status):
    """True when ``status`` is one of ``accept``: numbers (``302``) or classes
    (``"2xx"``)."""
    for rule in accept or DEFAULT_ACCEPT:
        if str(rule) == str(status) or str(rule).lower() == f"{status // 100}xx":
            return True
    return False


def health_check(health, tries=5, delay=1.0):
    """
    GET the health URL until it answers a status of ``health["accept"]`` (at most
    ``tries`` times). Returns what it answered; raises CommandExecutionError
    naming the path, the Host, the last answer and what would have been accepted.
    """
    accept = health.get("accept") or DEFAULT_ACCEPT
    last = "not tried"
    for attempt in range(tries):
        try:
            status, last = health_get(health)
            if accepts(accept, status):
                return last
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if attempt + 1 < tries:
            time.sleep(delay)
    url = urllib.parse.urlsplit(health["url"])
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    raise CommandExecutionError(
        f"GET {path} (Host {health.get('host')}, {url.scheme} through Nginx) "
        f"answered {last}; healthy is {', '.join(str(a) for a in accept)}"
    )


def check_health(cfg, tries=5):
    """The app's health URL asked and judged as a release does; raises
    CommandExecutionError naming the pillar keys that say where and what."""
    try:
        return {"result": True, "response": health_check(cfg["health"], tries=tries)}
    except CommandExecutionError as exc:
        pillar = f"djangoapp:apps:{cfg['name']}"
        raise CommandExecutionError(
            f"{exc} (the pillar's {pillar}:health_path and "
            f"{pillar}:health_statuses say where and what)"
        ) from exc
