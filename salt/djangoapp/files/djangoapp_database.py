"""The database an app connects to, for the scripts installed beside this module
(backup-databases, monitoring-check): app.json's `database`, with the user, password,
host, port and name of env.json's DATABASE_URL over it."""

import json
import urllib.parse


class DatabaseUnknown(ValueError):
    """The database name or user is missing, or looks like a command-line option."""


def from_url(url):
    """The connection settings a DATABASE_URL names (those it leaves out are absent)."""
    parts = urllib.parse.urlsplit(url)
    settings = {
        "user": urllib.parse.unquote(parts.username or ""),
        "password": urllib.parse.unquote(parts.password or ""),
        "host": parts.hostname,
        "port": parts.port,
        "name": urllib.parse.unquote(parts.path.lstrip("/")),
    }
    return {key: value for key, value in settings.items() if value}


def database_settings(app, environment):
    """``app``: app.json; ``environment``: env.json. Raises DatabaseUnknown."""
    database = dict(app.get("database") or {})
    url = environment.get("DATABASE_URL")
    if url:
        database.update(from_url(url))
    for key in ("name", "user"):
        value = str(database.get(key) or "")
        if not value or value.startswith("-"):
            raise DatabaseUnknown(f"database {key} unknown")
    database.setdefault("host", "localhost")
    return database


def read_environment(path):
    """env.json as a mapping; raises OSError or ValueError."""
    with open(path, encoding="utf-8") as handle:
        environment = json.load(handle)
    if not isinstance(environment, dict):
        raise ValueError(f"{path} is not a JSON object")
    return environment
