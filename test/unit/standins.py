"""
Stand-ins that the reload and verification tests share: a ``supervisorctl`` that
reports the master's pid (from ``$FAKE_MASTER_PIDFILE``) and forwards signals to
it, and a health URL whose answer the tests choose.
"""

import http.server

SUPERVISORCTL = """#!/bin/sh
case "$1" in
  pid) cat "$FAKE_MASTER_PIDFILE" 2>/dev/null || echo 0 ;;
  signal) kill -s "$2" "$(cat "$FAKE_MASTER_PIDFILE")" ;;
  *) echo "ERROR: unsupported" ; exit 1 ;;
esac
"""


class Health(http.server.BaseHTTPRequestHandler):
    status = {"code": 200}

    def do_GET(self):
        code = self.status["code"] if self.headers.get("Host") == "example.com" else 400
        self.send_response(code)
        if 300 <= code < 400:
            self.send_header("Location", "/accounts/login/?next=/")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass
