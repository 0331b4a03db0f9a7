"""Renders the state tree with `salt-call --local state.show_sls` for an OS's grains
and a pillar, on this machine, without applying anything."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SALT_CALL = Path(sys.executable).with_name("salt-call")

PLATFORMS = {
    "debian-12": {
        "os_family": "Debian",
        "os": "Debian",
        "osfinger": "Debian-12",
        "osmajorrelease": 12,
    },
    "debian-13": {
        "os_family": "Debian",
        "os": "Debian",
        "osfinger": "Debian-13",
        "osmajorrelease": 13,
    },
    "rocky-9": {
        "os_family": "RedHat",
        "os": "Rocky",
        "osfinger": "Rocky Linux-9",
        "osmajorrelease": 9,
    },
    "almalinux-9": {
        "os_family": "RedHat",
        "os": "AlmaLinux",
        "osfinger": "AlmaLinux-9",
        "osmajorrelease": 9,
    },
    "centos-stream-9": {
        "os_family": "RedHat",
        "os": "CentOS Stream",
        "osfinger": "CentOS Stream-9",
        "osmajorrelease": 9,
    },
    "rocky-10": {
        "os_family": "RedHat",
        "os": "Rocky",
        "osfinger": "Rocky Linux-10",
        "osmajorrelease": 10,
    },
    "almalinux-10": {
        "os_family": "RedHat",
        "os": "AlmaLinux",
        "osfinger": "AlmaLinux-10",
        "osmajorrelease": 10,
    },
    "centos-stream-10": {
        "os_family": "RedHat",
        "os": "CentOS Stream",
        "osfinger": "CentOS Stream-10",
        "osmajorrelease": 10,
    },
}


class RenderError(Exception):
    pass


class Renderer:
    def __init__(self, workdir: Path):
        self.workdir = workdir

    def _config_dir(
        self, platform: str, pillar: dict, options: dict | None = None
    ) -> Path:
        root = self.workdir / f"{platform}-{len(list(self.workdir.iterdir()))}"
        pillar_dir = root / "pillar"
        pillar_dir.mkdir(parents=True)
        (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - render\n")
        (pillar_dir / "render.sls").write_text(json.dumps(pillar))
        grains = {"num_cpus": 2, "fqdn": "web1.example.com", **PLATFORMS[platform]}
        config = {
            "id": "web1",
            "file_client": "local",
            "file_roots": {"base": [str(REPO / "salt")]},
            "pillar_roots": {"base": [str(pillar_dir)]},
            "module_dirs": [str(REPO / "_modules")],
            "states_dirs": [str(REPO / "_states")],
            "utils_dirs": [str(REPO / "_utils")],
            "cachedir": str(root / "cache"),
            "pki_dir": str(root / "pki"),
            "log_file": str(root / "minion.log"),
            "grains": grains,
            "autoload_dynamic_modules": False,
            **(options or {}),
        }
        (root / "minion").write_text(yaml.safe_dump(config))
        return root

    def show_sls(
        self,
        platform: str,
        pillar: dict,
        sls: str = "djangoapp",
        options: dict | None = None,
    ) -> dict:
        """The rendered states of `sls`, keyed by state ID; `options` are minion
        settings added to the configuration."""
        config_dir = self._config_dir(platform, pillar, options)
        proc = salt_call(config_dir, "state.show_sls", sls)
        try:
            rendered = json.loads(proc.stdout)["local"]
        except (ValueError, KeyError) as exc:
            raise RenderError(proc.stdout + proc.stderr) from exc
        if proc.returncode != 0 or not isinstance(rendered, dict):
            raise RenderError(
                "\n".join(map(str, rendered))
                if isinstance(rendered, list)
                else proc.stdout + proc.stderr
            )
        return rendered

    def render_file(
        self,
        platform: str,
        source: str,
        context: dict,
        options: dict | None = None,
        pillar: dict | None = None,
    ) -> str:
        """A file template of the state tree (``salt://...``) rendered with
        ``context``, as file.managed would render it; ``options`` are minion options
        (such as ``djangoapp.config_dir``), ``pillar`` what the template may read."""
        config_dir = self._config_dir(platform, pillar or {}, options)
        dest = config_dir / "rendered"
        arguments = [f"{key}={json.dumps(value)}" for key, value in context.items()]
        proc = salt_call(config_dir, "cp.get_template", source, str(dest), *arguments)
        if proc.returncode != 0 or not dest.exists():
            raise RenderError(proc.stdout + proc.stderr)
        return dest.read_text()


def salt_call(config_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`salt-call --local` with the minion config of `config_dir`, JSON out."""
    return subprocess.run(
        [
            str(SALT_CALL),
            "--local",
            "-c",
            str(config_dir),
            "--retcode-passthrough",
            "--out",
            "json",
            "--log-level",
            "quiet",
            *args,
        ],
        cwd=config_dir,  # away from the repository's Saltfile
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def state_args(states: dict, state_id: str) -> tuple[str, dict]:
    """The function name (e.g. `pkg.installed`) and merged arguments of a state ID."""
    state = states[state_id]
    for module, body in state.items():
        if module.startswith("__"):
            continue
        function = next(item for item in body if isinstance(item, str))
        args = {}
        for item in body:
            if isinstance(item, dict):
                args.update(item)
        return f"{module}.{function}", args
    raise KeyError(state_id)


def app_pillar(name, **settings):
    """The pillar of an app called ``name``: the keys every app needs, with
    ``settings`` over them."""
    return {
        "repo": f"https://git.example.com/{name}.git",
        "version": "v1.0.0",
        "settings_module": f"{name}.settings",
        "wsgi": f"{name}.wsgi:application",
        "server_names": [f"{name}.example.com"],
        "env": {"DJANGO_SECRET_KEY": "x" * 50},
        "database": {"engine": "postgresql", "password": "pg-password"},
        **settings,
    }
