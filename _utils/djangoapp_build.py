"""
The build of a release: its virtualenv (uv, or pip where uv is missing), its
byte-code (linked from the live release where the files are the same, compiled
otherwise), and permissions that keep the app's user from writing its code.
"""

import contextlib
import os
import py_compile
import re
import shutil
import sys
import time

from djangoapp_common import (
    SAFE_PATH,
    StepFailed,
    naming_a_full_disk,
    read_json,
    tail,
    user_ids,
)
from djangoapp_config import proxy_env
from djangoapp_deps import Dependencies, interpreter_version

# A Python version rather than an interpreter: 3.12 (or 3.12.4).
PYTHON_VERSION_RE = re.compile(r"^3\.[0-9]{1,2}(\.[0-9]{1,2})?$")


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def fix_permissions(path):
    """Code and venv: nobody but the owner writes, everybody reads."""

    def fix(item, is_dir):
        try:
            st = os.lstat(item)
        except FileNotFoundError:
            return
        if os.path.islink(item):
            return
        mode = st.st_mode & 0o7777
        new = (mode & ~0o022) | 0o444
        if is_dir or mode & 0o100:
            new |= 0o111
        if new != mode:
            os.chmod(item, new)

    fix(path, True)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            fix(os.path.join(root, name), True)
        for name in files:
            fix(os.path.join(root, name), False)


def chown_tree(path, uid, gid):
    os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


@contextlib.contextmanager
def lent_to(user, paths):
    """
    ``paths`` (trees of a release being built) owned by ``user`` for the time of
    the block, for the project's own commands to write into; root's again, and
    writable by nobody else, afterwards.
    """
    paths = [path for path in paths if path and os.path.isdir(path)]
    uid, gid = user_ids(user)
    try:
        for path in paths:
            chown_tree(path, uid, gid)
        yield
    finally:
        for path in paths:
            chown_tree(path, 0, 0)
            fix_permissions(path)


def pyc_tag(venv):
    """``cpython-311`` for the venv's interpreter, from its lib dir name."""
    try:
        for name in os.listdir(os.path.join(venv, "lib")):
            match = re.match(r"^python(\d+)\.(\d+)$", name)
            if match:
                return "cpython-{}{}".format(*match.groups()), os.path.join(
                    venv, "lib", name
                )
    except OSError:
        pass
    return None, None


def venv_bytecode(old_venv, new_venv):
    """
    One pass over the new venv's packages: hard-link the old venv's
    ``__pycache__/*.pyc`` for every source file that is the very same file
    (same inode: uv links both from its cache). Returns (number linked,
    the sources left without byte-code).
    """
    tag, new_lib = pyc_tag(new_venv)
    old_tag, old_lib = pyc_tag(old_venv) if old_venv else (None, None)
    if not new_lib:
        return 0, []
    suffix = f".{tag}.pyc"
    linked = 0
    missing = []
    pending = [""]
    while pending:
        rel = pending.pop()
        new_dir = os.path.join(new_lib, rel)
        try:
            entries = list(os.scandir(new_dir))
        except OSError:
            continue
        sources = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name != "__pycache__":
                    pending.append(os.path.join(rel, entry.name))
            elif entry.name.endswith(".py"):
                sources.append(entry)
        if not sources:
            continue
        old_inodes, old_pycs = {}, set()
        if old_lib and old_tag == tag:
            old_dir = os.path.join(old_lib, rel)
            with contextlib.suppress(OSError):
                old_inodes = {e.name: e.inode() for e in os.scandir(old_dir)}
            with contextlib.suppress(OSError):
                old_pycs = set(os.listdir(os.path.join(old_dir, "__pycache__")))
        made_cache = False
        for entry in sources:
            pyc = entry.name[:-3] + suffix
            if pyc in old_pycs and old_inodes.get(entry.name) == entry.inode():
                try:
                    if not made_cache:
                        os.makedirs(
                            os.path.join(new_dir, "__pycache__"), 0o755, exist_ok=True
                        )
                        made_cache = True
                    os.link(
                        os.path.join(old_lib, rel, "__pycache__", pyc),
                        os.path.join(new_dir, "__pycache__", pyc),
                    )
                    linked += 1
                    continue
                except OSError:
                    pass
            missing.append(entry.path)
    return linked, missing


def naming_files(venv):
    """The files of a virtualenv that may hold its own path: ``bin/`` scripts,
    ``pyvenv.cfg``, and in site-packages ``.pth`` and ``.egg-link`` files,
    editable finders and ``direct_url.json``."""
    bin_dir = os.path.join(venv, "bin")
    with contextlib.suppress(OSError):
        for entry in os.scandir(bin_dir):
            if entry.is_file(follow_symlinks=False):
                yield entry.path
    yield os.path.join(venv, "pyvenv.cfg")
    _tag, lib = pyc_tag(venv)
    if not lib:
        return
    with contextlib.suppress(OSError):
        for entry in os.scandir(os.path.join(lib, "site-packages")):
            name = entry.name
            if name.endswith((".pth", ".egg-link")) or name.startswith("__editable__"):
                if entry.is_file(follow_symlinks=False):
                    yield entry.path
            elif name.endswith(".dist-info"):
                direct_url = os.path.join(entry.path, "direct_url.json")
                if os.path.isfile(direct_url):
                    yield direct_url


def link_project_bytecode(old_src, new_src, tag):
    """
    For each Python file of the project that did not change since the live
    release, give it the old file's modification time and hard-link the old
    byte-code: Python checks a ``.pyc`` against its source's size and
    modification time. Returns the set of source paths so served.
    """
    linked = set()
    suffix = f".{tag}.pyc"
    for root, dirs, files in os.walk(new_src):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(root, new_src)
        for name in files:
            if not name.endswith(".py"):
                continue
            new_path = os.path.join(root, name)
            old_path = os.path.normpath(os.path.join(old_src, rel, name))
            old_pyc = os.path.join(
                os.path.dirname(old_path), "__pycache__", name[:-3] + suffix
            )
            try:
                old_stat = os.stat(old_path)
                if old_stat.st_size != os.path.getsize(new_path) or not os.path.isfile(
                    old_pyc
                ):
                    continue
                with open(old_path, "rb") as old_file, open(new_path, "rb") as new_file:
                    if old_file.read() != new_file.read():
                        continue
                os.utime(new_path, ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))
                cache = os.path.join(root, "__pycache__")
                os.makedirs(cache, mode=0o755, exist_ok=True)
                os.link(old_pyc, os.path.join(cache, name[:-3] + suffix))
            except OSError:
                continue
            linked.add(new_path)
    return linked


def project_sources(src, done=frozenset()):
    """Python files of the project, but those in ``done``."""
    found = []
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".py") and path not in done:
                found.append(path)
    return found


def compile_sources(host, python, tag, sources):
    """
    Byte-compile ``sources`` for the interpreter ``python`` (cache tag
    ``tag``): a few files (those a code change brings) in this process when
    it is the same Python version, else with that python.
    """
    if not sources:
        return
    if sys.implementation.cache_tag == tag and len(sources) <= 200:
        for path in sources:
            with contextlib.suppress(py_compile.PyCompileError, OSError):
                py_compile.compile(path, doraise=True)
        return
    host.run(
        [python, "-m", "compileall", "-q", "-j", "0", "-i", "-"],
        stdin="\n".join(sources) + "\n",
        stdin_raw_newlines=True,
        env={"PATH": SAFE_PATH},
        umask="022",
        timeout=1800,
    )


class Builder:
    """
    Builds ``src/`` and ``venv/`` of a release, as root, world-readable.
    ``previous`` is the live release's directory, if any: when the requirements
    did not change, packages come from uv's cache without asking the index, and
    the byte-code of unchanged files is linked from it instead of compiled again.
    """

    def __init__(self, cfg, host, notes, rdir, previous=None):
        self.cfg = cfg
        self.host = host
        self.notes = notes
        self.rdir = rdir
        self.previous = previous
        self.src = os.path.join(rdir, "src")
        self.venv = os.path.join(rdir, "venv")
        self.timings = {}
        self.linked = 0
        self.compiled = 0
        self.cloned = False
        self._lap = time.monotonic()

    def build(self, git, sha):
        """Export ``sha``, install its dependencies, compile. Returns how it
        installed them (``uv`` or ``pip``, and the format)."""
        with naming_a_full_disk("build", self.rdir):
            return self.build_in_place(git, sha)

    def build_in_place(self, git, sha):
        git.export(sha, self.src)
        self.lap("export")
        self.deps = Dependencies(self.cfg, self.src)
        uv = self.uv()
        if self.can_clone():
            self.clone_venv()
        elif uv:
            self.install_with_uv(uv)
        elif self.deps.format == "requirements":
            self.install_with_pip()
        else:
            raise StepFailed(
                "build",
                f"a project with {self.deps.format} is installed with uv, and uv is "
                f"not installed ({self.cfg['uv']}): state.apply installs it",
            )
        self.compile()
        self.lap("compile")
        # a cloned virtualenv has the modes of the live one already
        tree = self.src if self.cloned else self.rdir
        self.host.check("build", ["chmod", "-R", "go-w,a+rX", "--", tree])
        self.lap("permissions")
        return {"tool": "uv" if uv else "pip", "dependencies": self.deps.format}

    def lap(self, name):
        now = time.monotonic()
        self.timings[name] = round(now - self._lap, 3)
        self._lap = now

    def command_options(self):
        env = {
            "PATH": SAFE_PATH,
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_PROGRESS": "1",
            # Trust the host's CA store (corporate or proxy CAs), as pip and git do.
            "UV_SYSTEM_CERTS": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        env.update(proxy_env(self.cfg))
        return {"env": env, "cwd": self.src, "umask": "022"}

    def uv(self):
        uv = self.cfg["uv"]
        if uv and os.access(uv, os.X_OK):
            return uv
        return shutil.which("uv", path=SAFE_PATH)

    def extra_packages(self):
        extra = [str(x) for x in (self.cfg["pip_extra"] or [])]
        if any(x.startswith("-") for x in extra):
            raise StepFailed(
                "build", "pip_extra entries must be requirements, not options"
            )
        return extra

    def selections(self):
        """The pillar's dependency groups and extras, as uv's options."""
        options = []
        for group in self.cfg["dependency_groups"] or []:
            options += ["--group", str(group)]
        for extra in self.cfg["extras"] or []:
            options += ["--extra", str(extra)]
        return options

    def same_requirements(self):
        """True when the live release was built from the same dependencies."""
        if not self.previous:
            return False
        info = read_json(os.path.join(self.previous, "release.json"), default={})
        return (info or {}).get("requirements") == self.deps.digest()

    def can_clone(self):
        """
        The live release's virtualenv can be taken over: the same dependencies,
        installed without the project itself (a ``uv.lock`` project is installed
        into its environment, so its virtualenv holds code of its release).
        """
        # isfile follows the venv's link to its interpreter, which an upgrade of
        # the distribution's Python takes away
        return (
            self.deps.format in ("requirements", "pyproject")
            and self.same_requirements()
            and os.path.isfile(os.path.join(self.previous, "venv", "bin", "python"))
        )

    def clone_venv(self):
        """
        The live release's virtualenv for this one, its files hard-linked (no
        byte is copied, byte-code included); the few files that name the old
        release's path (scripts' ``#!`` lines, ``.pth`` files, a package's
        ``direct_url.json``) are written anew for this one.
        """
        old_venv = os.path.join(self.previous, "venv")
        self.host.check("build", ["cp", "-a", "--link", "--", old_venv, self.venv])
        self.deps.check_python(interpreter_version(self.venv))
        moves = {
            os.fsencode(old): os.fsencode(new)
            for old, new in (
                (self.previous, self.rdir),
                (os.path.realpath(self.previous), os.path.realpath(self.rdir)),
            )
        }
        for path in naming_files(self.venv):
            with open(path, "rb") as handle:
                content = handle.read()
            if not any(old in content for old in moves):
                continue
            for old, new in moves.items():
                content = content.replace(old, new)
            fresh = path + ".djangoapp-new"
            with open(fresh, "wb") as handle:
                handle.write(content)
            shutil.copymode(path, fresh)
            os.replace(fresh, path)
        self.cloned = True
        self.notes.append("requirements unchanged: took over the live virtualenv")
        self.lap("install")

    def install_commands(self, uv):
        """The uv commands that install the release's dependencies."""
        python = os.path.join(self.venv, "bin", "python")
        extra = self.extra_packages()
        install = [uv, "pip", "install", "--quiet", "--python", python]
        if self.deps.format == "uv.lock":
            sync = [uv, "sync", "--quiet", "--frozen", "--no-dev"]
            sync += ["--python", self.cfg["python"], *self.selections()]
            return [sync] + ([install + extra] if extra else [])
        if self.deps.format == "pyproject":
            return [install + ["-r", self.deps.pyproject, *self.selections(), *extra]]
        files = [arg for path in self.deps.requirement_files() for arg in ("-r", path)]
        if not files and not extra:
            raise StepFailed(
                "build", "nothing to install: no requirements and no pip_extra"
            )
        return [install + files + extra]

    def install_with_uv(self, uv):
        options = self.command_options()
        cache = self.cfg["uv_cache"]
        if cache:
            os.makedirs(cache, mode=0o755, exist_ok=True)
            same_fs = os.stat(cache).st_dev == os.stat(self.rdir).st_dev
            options["env"].update(
                UV_CACHE_DIR=cache, UV_LINK_MODE="hardlink" if same_fs else "copy"
            )
        options["env"]["UV_PROJECT_ENVIRONMENT"] = self.venv
        self.make_venv(uv, options)
        self.deps.check_python(interpreter_version(self.venv))
        self.lap("venv")
        commands = self.install_commands(uv)
        if self.same_requirements():
            # Same dependencies as the live release: resolve from the cache alone
            # (fast, and the same versions as last time).
            offline = [argv[:2] + ["--offline"] + argv[2:] for argv in commands]
            if all(
                self.host.run(argv, timeout=1800, **options).get("retcode") == 0
                for argv in offline
            ):
                self.notes.append("requirements unchanged: installed from the uv cache")
                self.lap("install")
                return
        for argv in commands:
            self.host.check("build", argv, timeout=1800, **options)
        self.lap("install")

    def make_venv(self, uv, options):
        """
        The release's virtualenv, with the pillar's ``python``: a path or a name
        found on the host, or a version (``3.12``): the host's, else one that uv
        installs from the pillar's ``python_install_mirror`` (into
        ``python_install_dir``, shared by the releases and apps of the host).
        """
        python = self.cfg["python"]
        mirror = self.cfg["python_install_mirror"]
        preference = "only-system"
        if mirror and PYTHON_VERSION_RE.match(python):
            preference = "system"
            options["env"].update(
                UV_PYTHON_DOWNLOADS="automatic",
                UV_PYTHON_INSTALL_MIRROR=mirror,
                UV_PYTHON_INSTALL_DIR=self.cfg["python_install_dir"],
            )
        argv = [uv, "venv", "--quiet", "--python", python]
        ret = self.host.run(
            argv + ["--python-preference", preference, self.venv],
            timeout=900,
            **options,
        )
        if ret.get("retcode") == 0:
            return
        detail = tail((ret.get("stderr") or "") + (ret.get("stdout") or ""), 1000)
        way_out = (
            "install it (the OS package where the OS has one), or name another "
            "interpreter in the app's python"
        )
        if PYTHON_VERSION_RE.match(python) and not mirror:
            way_out += ", or set the app's python_install_mirror for uv to install it"
        raise StepFailed(
            "build", f"no Python {python!r} for the virtualenv ({detail}): {way_out}"
        )

    def install_with_pip(self):
        options = self.command_options()
        self.notes.append("uv not found: built the virtualenv with pip (slower)")
        self.host.check(
            "build",
            [self.cfg["python"], "-m", "venv", self.venv],
            timeout=300,
            **options,
        )
        self.deps.check_python(interpreter_version(self.venv))
        self.lap("venv")
        pip = os.path.join(self.venv, "bin", "pip")
        files = [arg for path in self.deps.requirement_files() for arg in ("-r", path)]
        argv = [pip, "install", "--quiet", *files, *self.extra_packages()]
        self.host.check("build", argv, timeout=1800, **options)
        self.lap("install")

    def compile(self):
        """
        Byte-compile as root: the app user cannot write ``__pycache__`` into its
        own code and virtualenv, so without this every worker start would compile
        Django again in memory.
        """
        tag, _lib = pyc_tag(self.venv)
        old_venv = os.path.join(self.previous, "venv") if self.previous else None
        if self.cloned:
            linked, sources = 0, []  # its byte-code came with it
        else:
            linked, sources = venv_bytecode(old_venv, self.venv)
        unchanged = set()
        if old_venv and tag and tag == pyc_tag(old_venv)[0]:
            old_src = os.path.join(self.previous, "src")
            unchanged = link_project_bytecode(old_src, self.src, tag)
        sources += project_sources(self.src, unchanged)
        python = os.path.join(self.venv, "bin", "python")
        compile_sources(self.host, python, tag, sources)
        self.linked = linked + len(unchanged)
        self.compiled = len(sources)


def venv_package_version(venv, name):
    """The version of package ``name`` installed in ``venv`` (from its dist-info)."""
    _tag, lib = pyc_tag(venv)
    prefix = name.replace("-", "_").lower() + "-"
    try:
        entries = os.listdir(os.path.join(lib, "site-packages")) if lib else []
    except OSError:
        return None
    for entry in entries:
        if entry.lower().startswith(prefix) and entry.endswith(".dist-info"):
            return entry[len(prefix) : -len(".dist-info")]
    return None
