#!/usr/bin/python3
"""Test the whole Nginx configuration with a candidate site file in place, before Salt
installs it: one app's bad site must never stop Nginx from taking up the others.

    nginx-check-site --site /etc/nginx/sites-available/djangoapp-shop.conf \
        [--enabled /etc/nginx/sites-enabled/djangoapp-shop.conf] CANDIDATE

(Salt's ``check_cmd`` appends CANDIDATE, the new contents in a temporary file.) The
configuration directory is copied, links followed, the candidate is put at the site's
path (and at its link in sites-enabled, which Salt makes next), the copy's own paths
are made to point into the copy, and ``nginx -t -c <copy>/nginx.conf`` decides. The
live configuration is never touched. Exit status: nginx's; its message names the
real paths.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

DEFAULT_CONF = "/etc/nginx/nginx.conf"


def conf_path():
    """The main config file nginx was built to read (``nginx -V``)."""
    result = subprocess.run(["nginx", "-V"], capture_output=True, text=True)
    found = re.search(r"--conf-path=(\S+)", result.stderr + result.stdout)
    return found.group(1) if found else DEFAULT_CONF


def rewrite_paths(copy_root, real_root):
    """Every file of the copy that names the real directory names the copy instead."""
    old, new = (real_root.rstrip("/") + "/").encode(), (copy_root + "/").encode()
    for directory, _, files in os.walk(copy_root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                data = handle.read()
            if old in data:
                with open(path, "wb") as handle:
                    handle.write(data.replace(old, new))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", required=True, help="where the site file goes")
    parser.add_argument("--enabled", help="its link in sites-enabled, if any")
    parser.add_argument("candidate", help="the new contents of the site file")
    args = parser.parse_args(argv)
    conf = conf_path()
    real_root = os.path.dirname(os.path.realpath(conf))
    with tempfile.TemporaryDirectory(prefix="djangoapp-nginx-check-") as work:
        copy_root = os.path.join(work, "nginx")
        shutil.copytree(
            real_root, copy_root, symlinks=False, ignore_dangling_symlinks=True
        )
        targets = [args.site] + ([args.enabled] if args.enabled else [])
        for target in targets:
            rel = os.path.relpath(os.path.abspath(target), real_root)
            if rel.startswith(".."):
                sys.exit(f"nginx-check-site: {target} is outside {real_root}")
            placed = os.path.join(copy_root, rel)
            os.makedirs(os.path.dirname(placed), exist_ok=True)
            if os.path.lexists(placed):
                os.unlink(placed)
            shutil.copyfile(args.candidate, placed)
        rewrite_paths(copy_root, real_root)
        main_conf = os.path.join(copy_root, os.path.relpath(conf, real_root))
        result = subprocess.run(
            ["nginx", "-t", "-q", "-c", main_conf], capture_output=True, text=True
        )
        output = (result.stdout + result.stderr).replace(copy_root, real_root)
        sys.stderr.write(output)
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
