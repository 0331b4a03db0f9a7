#!/usr/bin/python3
"""Checks of one djangoapp app, for Nagios (NRPE) and Zabbix alike.

    monitoring-check [--config-root /etc/djangoapp] [--timeout 8]
                     [--max-age-hours H --status-file FILE] CHECK APP

CHECK is one of:
  http      a GET of the app's health URL through Nginx, as the release engine
            makes it (app.json's `health`: the URL, the Host header, which is also
            the TLS server name): 2xx is OK, anything else (a redirect too) CRITICAL
  gunicorn  the app's Gunicorn master runs as the app's user: CRITICAL without it,
            WARNING when it has no worker
  database  `SELECT 1` over a connection to the app's database with the app's own
            credentials (env.json's DATABASE_URL; the password goes to psql or mysql
            in their environment, never on their command line)
  backup    the last nightly backup, as the backup script recorded it in
            --status-file (the app's `backup_status`, also where the app does not
            run: a db minion of a fleet): CRITICAL when that run failed (why, and
            the newest good dump) or when the newest good dump is older than
            --max-age-hours, WARNING when no run is recorded yet, else OK with the
            newest dump's name and age

The Nagios plugin convention: one line on stdout, exit status 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN. Run it as the app's user (the monitoring agents do so through
sudo): it reads the app's files in /etc/djangoapp/<app>/. The backup check reads
its status file only.
"""

import argparse
import calendar
import http.client
import json
import os
import pwd
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse

import djangoapp_database  # installed beside this script

OK, WARNING, CRITICAL, UNKNOWN = range(4)
STATUS_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


class CheckError(Exception):
    """The check cannot tell: its own setup is broken (UNKNOWN)."""


def read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckError(f"cannot read {path}: {error}") from error


def check_http(app, timeout):
    health = app.get("health") or {}
    url = urllib.parse.urlsplit(health.get("url") or "")
    host_header = health.get("host") or ""
    if url.scheme not in ("http", "https") or not url.hostname or not host_header:
        raise CheckError("app.json has no health URL and host")
    port = url.port or (443 if url.scheme == "https" else 80)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    started = time.monotonic()
    try:
        sock = socket.create_connection((url.hostname, port), timeout=timeout)
        if url.scheme == "https":
            context = ssl.create_default_context()
            if not health.get("verify_tls", True):
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=host_header.split(":")[0])
        connection = http.client.HTTPConnection(url.hostname, port, timeout=timeout)
        connection.sock = sock
        connection.request("GET", path, headers={"Host": host_header})
        response = connection.getresponse()
        response.read()
        connection.close()
    except (OSError, http.client.HTTPException) as error:
        return CRITICAL, f"{url.geturl()} (Host {host_header}): {error}"
    seconds = time.monotonic() - started
    text = (
        f"{response.status} {response.reason} in {seconds:.3f} s from "
        f"{url.geturl()} (Host {host_header}) | time={seconds:.6f}s;;;0"
    )
    accept = [str(rule).lower() for rule in health.get("accept") or ["2xx", "3xx"]]
    healthy = {str(response.status), f"{response.status // 100}xx"} & set(accept)
    return (OK if healthy else CRITICAL), text


def process_table(uid):
    """{pid: (ppid, argv)} of the processes that run as ``uid``."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().decode("utf-8", "replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        table[int(entry)] = (ppid, [arg for arg in argv if arg])
    return table


def is_gunicorn(argv, app):
    """Gunicorn started with the app's config (`python -m gunicorn --config ...`),
    or renamed by setproctitle after its proc_name (`gunicorn: master [<service>]`)."""
    if argv and argv[0].startswith("gunicorn: "):
        return argv[0].endswith(f"[{app['service']}]")
    return "gunicorn" in argv and app["gunicorn_config"] in argv


def check_gunicorn(app):
    try:
        uid = pwd.getpwnam(app["user"]).pw_uid
    except KeyError as error:
        raise CheckError(f"no user {app['user']!r}") from error
    table = process_table(uid)
    gunicorn = {pid for pid, (_, argv) in table.items() if is_gunicorn(argv, app)}
    masters = sorted(pid for pid in gunicorn if table[pid][0] not in gunicorn)
    if not masters:
        return CRITICAL, f"no Gunicorn master of {app['name']} runs | workers=0;;;0"
    workers = sum(1 for pid in gunicorn if table[pid][0] in masters)
    text = (
        f"master pid {', '.join(map(str, masters))} with {workers} workers"
        f" | workers={workers};;;0"
    )
    return (OK if workers else WARNING), text


def database_settings(app, env_file):
    """The database of app.json with the settings of env.json's DATABASE_URL over
    them."""
    try:
        return djangoapp_database.database_settings(app, read_json(env_file))
    except djangoapp_database.DatabaseUnknown as error:
        raise CheckError(str(error)) from error


def database_command(engine, database, timeout):
    """The client's argv and environment for `SELECT 1`."""
    host, name, user = database["host"], database["name"], database["user"]
    if engine == "postgresql":
        argv = ["psql", "--no-psqlrc", "--no-password", "--quiet", "--tuples-only"]
        argv += [f"--host={host}", f"--port={database.get('port') or 5432}"]
        argv += [f"--username={user}", f"--dbname={name}", "--command=SELECT 1"]
        env = {
            "PGPASSWORD": database.get("password") or "",
            "PGCONNECT_TIMEOUT": str(timeout),
        }
    else:
        argv = ["mysql", "--no-defaults", "--batch", "--skip-column-names"]
        argv += [f"--host={host}", f"--port={database.get('port') or 3306}"]
        argv += [f"--user={user}", f"--connect-timeout={timeout}"]
        argv += [f"--database={name}", "--execute=SELECT 1"]
        env = {"MYSQL_PWD": database.get("password") or ""}
    return argv, env


def check_database(app, env_file, timeout):
    engine = (app.get("database") or {}).get("engine", "none")
    if engine not in ("postgresql", "mysql"):
        return OK, f"{app['name']} has no database (engine {engine})"
    database = database_settings(app, env_file)
    argv, env = database_command(engine, database, timeout)
    where = f"{engine} {database['user']}@{database['host']}/{database['name']}"
    started = time.monotonic()
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={"PATH": SAFE_PATH, "LC_ALL": "C", **env},
            cwd="/",
            timeout=timeout + 2,
            check=False,
        )
    except FileNotFoundError as error:
        raise CheckError(f"{argv[0]} is not installed") from error
    except subprocess.TimeoutExpired:
        return CRITICAL, f"{where}: no answer in {timeout + 2} s"
    seconds = time.monotonic() - started
    if result.returncode != 0 or result.stdout.strip() != "1":
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no answer"]
        message = lines[-1].replace(database.get("password") or "\0", "***")
        return CRITICAL, f"{where}: {message}"
    return OK, f"{where} answers in {seconds:.3f} s | time={seconds:.6f}s;;;0"


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # the backup script's


def age_of(stamp, now):
    """Seconds from ``stamp`` (TIME_FORMAT, UTC) to ``now``, never below 0."""
    try:
        then = calendar.timegm(time.strptime(stamp, TIME_FORMAT))
    except (TypeError, ValueError) as error:
        raise CheckError(f"the backup status has a bad time {stamp!r}") from error
    return max(0, int(now - then))


def for_people(seconds):
    return f"{seconds // 60} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def check_backup(name, path, max_age_hours):
    if not max_age_hours:
        raise CheckError("the backup check needs --max-age-hours")
    if not path:
        raise CheckError("the backup check needs --status-file")
    try:
        os.stat(path)
    except FileNotFoundError:
        return WARNING, (
            f"no nightly backup of {name} has run yet (djangoapp-backup.timer;"
            " one now: systemctl start djangoapp-backup.service)"
        )
    except OSError as error:
        raise CheckError(f"cannot read {path}: {error}") from error
    status = read_json(path)
    if not isinstance(status, dict):
        raise CheckError(f"{path} holds no JSON object")
    newest, limit = status.get("newest"), max_age_hours * 3600
    if newest:
        age = age_of(status.get("newest_time"), time.time())
        perfdata = f" | age={age}s;;{limit};0"
        newest_text = f"newest good dump {newest}, {for_people(age)} old"
    else:
        age, perfdata, newest_text = None, "", "no good dump"
    if status.get("result") != "ok":
        # The tools' own words may hold line breaks: Nagios shows the first line.
        error = " ".join(str(status.get("error") or "no reason recorded").split())
        return CRITICAL, (
            f"the nightly backup of {name} failed at {status.get('time')}: "
            f"{error}; {newest_text}{perfdata}"
        )
    if age is None:
        return CRITICAL, f"the nightly backup of {name} left {newest_text}"
    if age > limit:
        return CRITICAL, (
            f"{newest_text}: more than {max_age_hours} h (last run "
            f"{status.get('time')}){perfdata}"
        )
    return OK, f"{newest_text}{perfdata}"


CHECKS = ("http", "gunicorn", "database", "backup")


def run_check(args):
    """(status, text) of the check that ``args`` name."""
    if args.check == "backup":
        return check_backup(args.app, args.status_file, args.max_age_hours)
    config_dir = os.path.join(args.config_root, os.path.basename(args.app))
    app = read_json(os.path.join(config_dir, "app.json"))
    if args.check == "http":
        return check_http(app, args.timeout)
    if args.check == "gunicorn":
        return check_gunicorn(app)
    return check_database(app, os.path.join(config_dir, "env.json"), args.timeout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-root", default="/etc/djangoapp")
    parser.add_argument("--timeout", type=int, default=8, help="seconds")
    parser.add_argument(
        "--max-age-hours", type=int, help="backup: the newest good dump's at most"
    )
    parser.add_argument("--status-file", help="backup: the last nightly run's status")
    parser.add_argument("check", choices=CHECKS)
    parser.add_argument("app")
    args = parser.parse_args(argv)
    try:
        status, text = run_check(args)
    except CheckError as error:
        status, text = UNKNOWN, str(error)
    print(f"{args.check.upper()} {STATUS_NAMES[status]} - {text}")
    return status


if __name__ == "__main__":
    sys.exit(main())
