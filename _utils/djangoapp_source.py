"""
The source of a release: the origin's heads and tags in a bare mirror, refs
resolved to commits, and a commit's tree exported into a release.
"""

import contextlib
import os
import re
import shutil
from datetime import UTC, datetime

from djangoapp_common import SAFE_PATH, StepFailed, tail
from djangoapp_config import proxy_env

SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
HEX_RE = re.compile(r"^[0-9a-f]{7,64}$")


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


class Git:
    """The app's bare mirror of its origin, driven with git as root."""

    def __init__(self, cfg, layout, host):
        self.cfg = cfg
        self.layout = layout
        self.host = host

    def env(self):
        env = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        env.update(proxy_env(self.cfg))
        key = self.cfg["deploy_key"]
        if key:
            parts = [
                "ssh",
                "-i",
                key,
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ]
            if self.cfg["known_hosts"]:
                parts += ["-o", "UserKnownHostsFile=" + self.cfg["known_hosts"]]
            env["GIT_SSH_COMMAND"] = " ".join(shell_word(p) for p in parts)
        return env

    def git(self, *args):
        return ["git", f"--git-dir={self.layout.mirror}", *args]

    def run(self, step, argv, **kwargs):
        kwargs.setdefault("env", self.env())
        return self.host.check(step, argv, **kwargs)

    def fetch(self):
        repo = self.cfg["repo"]
        if not repo or repo.startswith("-"):
            raise StepFailed("fetch", f"app.json repo {repo!r} is not a repository URL")
        if not shutil.which("git", path=os.environ.get("PATH") or SAFE_PATH):
            raise StepFailed("fetch", "git is not installed")
        mirror = self.layout.mirror
        if not os.path.exists(os.path.join(mirror, "HEAD")):
            self.run("fetch", ["git", "init", "--quiet", "--bare", mirror])
        ret = self.host.run(self.git("remote", "get-url", "origin"))
        url = (ret.get("stdout") or "").strip()
        if ret.get("retcode") != 0:
            self.run("fetch", self.git("remote", "add", "origin", repo))
        elif url != repo:
            self.run("fetch", self.git("remote", "set-url", "origin", repo))
        self.run(
            "fetch",
            self.git(
                "fetch",
                "--quiet",
                "--prune",
                "--prune-tags",
                "--force",
                "--no-write-fetch-head",
                "origin",
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ),
            timeout=900,
        )

    def resolve(self, ref):
        """The commit sha of ``ref`` in the mirror, or None."""
        if not os.path.exists(os.path.join(self.layout.mirror, "HEAD")):
            return None
        ret = self.host.run(
            self.git(
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                f"{ref}^{{commit}}",
            )
        )
        sha = (ret.get("stdout") or "").strip()
        if ret.get("retcode") == 0 and SHA_RE.match(sha):
            return sha
        return None

    def remote_resolve(self, ref):
        """
        Resolve ``ref`` against the origin without changing anything
        (``git ls-remote``). Falls back to the mirror for commit ids.
        Returns (sha or None, detail).
        """
        repo = self.cfg["repo"]
        if not repo or repo.startswith("-"):
            return None, f"app.json repo {repo!r} is not a repository URL"
        ret = self.host.run(["git", "ls-remote", repo], env=self.env(), timeout=120)
        if ret.get("retcode") != 0:
            local = self.resolve(ref)
            if local:
                return local, "origin unreachable; resolved in the local mirror"
            return None, "cannot read the repository: " + tail(ret.get("stderr"), 500)
        refs = {}
        for line in (ret.get("stdout") or "").splitlines():
            parts = line.split("\t")
            if len(parts) == 2:
                refs[parts[1]] = parts[0]
        for name in (
            f"refs/tags/{ref}^{{}}",
            f"refs/tags/{ref}",
            f"refs/heads/{ref}",
            ref,
        ):
            if name in refs:
                return refs[name], name
        if HEX_RE.match(ref):
            local = self.resolve(ref)
            if local:
                return local, "commit"
        return None, "unknown ref"

    def commit_info(self, sha):
        ret = self.host.run(self.git("log", "-1", "--format=%ct%n%an%n%s", sha, "--"))
        lines = (ret.get("stdout") or "").splitlines()
        if ret.get("retcode") != 0 or len(lines) < 2:
            return {}
        return {
            "committed": datetime.fromtimestamp(int(lines[0]), UTC).isoformat(),
            "author": lines[1],
            "subject": lines[2] if len(lines) > 2 else "",
        }

    def changed_paths(self, old, new):
        """The paths of the files that differ between commits ``old`` and
        ``new``; None when git cannot tell (``old`` is no longer in the mirror)."""
        ret = self.host.run(
            self.git("-c", "core.quotePath=off", "diff", "--name-only", old, new, "--")
        )
        if ret.get("retcode") != 0:
            return None
        return (ret.get("stdout") or "").splitlines()

    def export(self, sha, dest):
        """Write the tree of ``sha`` into ``dest`` (created)."""
        tarball = dest.rstrip("/") + ".tar"
        self.run(
            "build",
            self.git(
                "-c", "tar.umask=0022", "archive", "--format=tar", "-o", tarball, sha
            ),
        )
        try:
            os.makedirs(dest, exist_ok=True)
            self.host.check(
                "build",
                ["tar", "-x", "-f", tarball, "-C", dest, "--no-same-owner"],
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tarball)


def shell_word(word):
    """``word`` quoted for the shell that git runs GIT_SSH_COMMAND with."""
    if re.match(r"^[A-Za-z0-9_./=@:+-]+$", word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def unknown_ref(version):
    """What a release of a ``version`` the repository does not have says."""
    return f"version {version!r} is not a branch, tag or commit of the repository"


def release_id(version, sha):
    """The id of the release of ``version`` at commit ``sha``: its directory name."""
    return "{}-{}".format(version.replace("/", "_"), sha[:8])
