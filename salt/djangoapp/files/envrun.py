#!/usr/bin/python3
"""Run a command with an app's environment.

    envrun [--release RELEASE_DIR] ENV_JSON COMMAND [ARG...]

ENV_JSON is the app's env.json (a flat JSON object of strings), readable by root and
the app's group only, so that secrets never pass through a command line. With
--release, SENTRY_RELEASE is the version recorded in RELEASE_DIR/release.json, unless
ENV_JSON sets it.
"""

import json
import os
import sys

USAGE = "usage: envrun [--release RELEASE_DIR] ENV_JSON COMMAND [ARG...]\n"


def release_version(release_dir):
    try:
        with open(os.path.join(release_dir, "release.json"), encoding="utf-8") as info:
            return json.load(info).get("version")
    except (OSError, ValueError, AttributeError):
        return None


def main(argv):
    args = argv[1:]
    release_dir = None
    if args[:1] == ["--release"]:
        if len(args) < 2:
            sys.stderr.write(USAGE)
            return 2
        release_dir, args = args[1], args[2:]
    if len(args) < 2:
        sys.stderr.write(USAGE)
        return 2
    with open(args[0], encoding="utf-8") as env_file:
        environment = json.load(env_file)
    version = release_version(release_dir) if release_dir else None
    if version:
        environment.setdefault("SENTRY_RELEASE", version)
    os.environ.update(environment)
    os.execvp(args[1], args[1:])  # noqa: S606 (running the command is the point)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
