"""
An app's engine configuration: ``<config_dir>/<app>/app.json``, written by the
formula (``djangoapp.derive_settings`` derives its keys and values, ``app.sls``
writes it), and its environment ``env.json``.
"""

import os

from djangoapp_common import CONFIG_DIR, read_json
from salt.exceptions import CommandExecutionError


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


class AppConfig(dict):
    """
    The keys of an app.json. The formula writes every key (null where unset), so a
    missing one means an app.json from another version of the formula: the error
    names the key and the way out instead of guessing a default.
    """

    def __init__(self, path, data):
        super().__init__(data)
        self.path = path

    def __missing__(self, key):
        raise CommandExecutionError(
            f"{self.path} has no key {key!r}: it was written by another version of "
            "the formula; run state.apply to write it again"
        )


def list_apps(config_dir=CONFIG_DIR):
    """The names of the apps configured on this host."""
    try:
        names = sorted(os.listdir(config_dir))
    except FileNotFoundError:
        return []
    return [n for n in names if os.path.isfile(os.path.join(config_dir, n, "app.json"))]


def load_app(name, config_dir=CONFIG_DIR):
    """The app.json of app ``name`` as an ``AppConfig``."""
    path = os.path.join(config_dir, name, "app.json")
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(f"cannot read {path}: {exc}") from exc
    if data is None:
        raise CommandExecutionError(
            f"app {name!r} is not configured on this host ({path} does not exist)"
        )
    if not isinstance(data, dict):
        raise CommandExecutionError(f"{path} must hold a JSON object")
    cfg = AppConfig(path, data)
    cfg["name"] = name
    cfg["config_dir"] = config_dir
    return cfg


def load_env(cfg):
    """The app's environment (env.json) plus what the engine always sets."""
    env = read_json(cfg["env_file"], default={}) or {}
    if not isinstance(env, dict):
        raise CommandExecutionError(f"{cfg['env_file']} must hold a JSON object")
    env = {str(k): str(v) for k, v in env.items()}
    if cfg["settings_module"]:
        env.setdefault("DJANGO_SETTINGS_MODULE", cfg["settings_module"])
    return env


def proxy_env(cfg):
    """The proxy variables for the app's downloads (git, uv, pip)."""
    proxy = cfg["proxy"] or {}
    env = {}
    if proxy.get("http"):
        env["http_proxy"] = env["HTTP_PROXY"] = proxy["http"]
    if proxy.get("https"):
        env["https_proxy"] = env["HTTPS_PROXY"] = proxy["https"]
    no_proxy = proxy.get("no_proxy")
    if no_proxy:
        if isinstance(no_proxy, (list, tuple)):
            no_proxy = ",".join(no_proxy)
        env["no_proxy"] = env["NO_PROXY"] = no_proxy
    return env
