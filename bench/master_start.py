"""
How long a new Gunicorn master takes to have all its workers ready, beside the
app's own master: each worker importing the app (as now), or the master importing
it once and forking (``preload_app``), with and without Gunicorn's random pause of
up to 0.1 s between forks. This is the hand-over a master per release would make
(docs/benchmarks.md, "What is left").

Run as root in a host kept by ``bench/release.py --keep --no-master --runs 1
--fresh-runs 1 --scale 1``; it starts each master as the app's user with a copy
of the app's gunicorn.conf.py on a run directory and socket of its own, waits
for the workers' reports and stops it:

    python3 master_start.py [--app demo] [--runs 5]
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

NO_PAUSE_BETWEEN_FORKS = """

import gunicorn.arbiter


class _NoPause:
    @staticmethod
    def random():
        return 0.0


gunicorn.arbiter.random = _NoPause
"""
VARIANTS = {
    "each worker imports the app": (False, False),
    "preload_app": (True, False),
    "each worker imports the app, no pause": (False, True),
    "preload_app, no pause": (True, True),
}


def trial_config(app, run_dir, preload, no_pause):
    """The app's config on ``run_dir``, with ``preload_app`` as asked."""
    with open(f"/etc/djangoapp/{app}/gunicorn.conf.py", encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace(json.dumps(f"/run/djangoapp/{app}"), json.dumps(run_dir))
    text = re.sub(
        r"^preload_app = False$", f"preload_app = {preload}", text, flags=re.M
    )
    text = re.sub(
        r"^(\s*)bind = \[.*\]$",
        rf'\1bind = ["unix:{run_dir}/trial.sock"]',
        text,
        flags=re.M,
    )
    text = re.sub(
        r"^control_socket = .*$",
        f'control_socket = "{run_dir}/trial.ctl"',
        text,
        flags=re.M,
    )
    if no_pause:
        text += NO_PAUSE_BETWEEN_FORKS
    path = os.path.join(run_dir, f"trial-{int(preload)}{int(no_pause)}.conf.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def app_argument(app):
    """The WSGI or ASGI path the app's running master was started with."""
    with open(f"/run/djangoapp/{app}/gunicorn.pid", encoding="ascii") as pidfile:
        pid = pidfile.read().strip()
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read().rstrip(b"\0").split(b"\0")[-1].decode()


def time_to_ready(app, run_dir, config, workers):
    """Seconds from the start of a master until ``workers`` have reported ready."""
    reports = os.path.join(run_dir, "workers")
    shutil.rmtree(reports, ignore_errors=True)
    base = f"/srv/djangoapp/{app}"
    started = time.monotonic()
    with open(os.path.join(run_dir, "trial.log"), "ab") as log:
        master = subprocess.Popen(
            [
                *("setpriv", f"--reuid={app}", f"--regid={app}", "--init-groups"),
                *(f"{base}/current/venv/bin/python", "-m", "gunicorn"),
                *("--config", config, app_argument(app)),
            ],
            cwd=base,
            env={"PATH": "/usr/bin:/bin", "HOME": base, "LANG": "C.UTF-8"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        while not (os.path.isdir(reports) and len(os.listdir(reports)) >= workers):
            if master.poll() is not None:
                sys.exit(f"the trial master exited: see {run_dir}/trial.log")
            time.sleep(0.01)
        return round(time.monotonic() - started, 3)
    finally:
        master.send_signal(signal.SIGTERM)
        master.wait(60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="demo")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=5)
    args = parser.parse_args()
    run_dir = f"/run/djangoapp/{args.app}-trial"
    os.makedirs(run_dir, exist_ok=True)
    shutil.chown(run_dir, args.app, args.app)
    try:
        for _ in range(2):
            for label, (preload, no_pause) in VARIANTS.items():
                config = trial_config(args.app, run_dir, preload, no_pause)
                seconds = [
                    time_to_ready(args.app, run_dir, config, args.workers)
                    for _ in range(args.runs)
                ]
                print(f"{label}: {seconds}", flush=True)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
