#!/usr/bin/python3
"""Run a command with an app's environment: envrun ENV_JSON COMMAND [ARG...].

ENV_JSON is the app's env.json (a flat JSON object of strings), readable by root and
the app's group only, so that secrets never pass through a command line.
"""

import json
import os
import sys


def main(argv):
    if len(argv) < 3:
        sys.stderr.write("usage: envrun ENV_JSON COMMAND [ARG...]\n")
        return 2
    with open(argv[1], encoding="utf-8") as env_file:
        os.environ.update(json.load(env_file))
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
