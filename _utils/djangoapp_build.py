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
from djangoapp_disk import Layout

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


# Formats whose virtualenv holds the dependencies only (a uv.lock project is
# installed into its environment: code of its release), shared by the releases
# with the same requirements.
SHARED_FORMATS = ("requirements", "pyproject")
# In a shared virtualenv once it is complete: one without it is a build that
# did not finish, built again.
BUILT_MARK = ".djangoapp-built"


def shared_venv_built(path):
    """A shared virtualenv that finished building and still has its
    interpreter (an upgrade of the distribution's Python takes it away)."""
    return os.path.isfile(os.path.join(path, BUILT_MARK)) and os.path.isfile(
        os.path.join(path, "bin", "python")
    )


class Builder:
    """
    Builds ``src/`` and ``venv/`` of a release, as root, world-readable.
    The virtualenv of a project that declares its dependencies only is shared
    by the releases with the same requirements (``venv`` links to it in
    ``Layout.venvs``): built once, with the byte-code of the packages the live
    release has linked from it. ``previous`` is the live release's directory,
    if any; the byte-code of the project's unchanged files is linked from it
    instead of compiled again.
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
        # the shared virtualenv this build makes, and whether it took one made
        self.new_shared = None
        self.reused = False
        self._lap = time.monotonic()

    def build(self, git, sha):
        """Export ``sha``, install its dependencies, compile. Returns how it
        installed them (``uv`` or ``pip``, and the format). A shared
        virtualenv whose build failed is removed."""
        try:
            with naming_a_full_disk("build", self.rdir):
                return self.build_in_place(git, sha)
        except BaseException:
            if self.new_shared:
                shutil.rmtree(self.new_shared, ignore_errors=True)
            raise

    def build_in_place(self, git, sha):
        git.export(sha, self.src)
        self.lap("export")
        self.deps = Dependencies(self.cfg, self.src)
        uv = self.uv()
        if not uv and self.deps.format != "requirements":
            raise StepFailed(
                "build",
                f"a project with {self.deps.format} is installed with uv, and uv is "
                f"not installed ({self.cfg['uv']}): state.apply installs it",
            )
        release_venv = self.venv
        shared = self.deps.format in SHARED_FORMATS
        if shared:
            self.share_venv(uv)
        else:
            self.install(uv)
        self.compile()
        self.lap("compile")
        trees = [self.src] if shared else [self.rdir]
        if self.new_shared:
            trees.append(self.new_shared)
        self.host.check("build", ["chmod", "-R", "go-w,a+rX", "--", *trees])
        if self.new_shared:
            with open(os.path.join(self.new_shared, BUILT_MARK), "w") as mark:
                mark.write(os.path.basename(self.new_shared) + "\n")
            os.chmod(os.path.join(self.new_shared, BUILT_MARK), 0o644)
        if shared:
            os.symlink(os.path.relpath(self.venv, self.rdir), release_venv)
        self.lap("permissions")
        return {
            "tool": "uv" if uv else "pip",
            "dependencies": self.deps.format,
            "requirements": self.deps.digest(),
        }

    def install(self, uv):
        if uv:
            self.install_with_uv(uv)
        else:
            self.install_with_pip()

    def share_venv(self, uv):
        """The shared virtualenv of these requirements: taken when built,
        else built (a half-built one removed first)."""
        shared = os.path.join(Layout(self.cfg["base_dir"]).venvs, self.deps.digest())
        self.venv = shared
        if shared_venv_built(shared):
            self.reused = True
            self.deps.check_python(interpreter_version(shared))
            self.notes.append(
                "the virtualenv of these requirements is built already "
                f"({os.path.basename(shared)}): shared"
            )
            self.lap("install")
            return
        if os.path.lexists(shared):
            shutil.rmtree(shared)
        os.makedirs(os.path.dirname(shared), mode=0o755, exist_ok=True)
        self.new_shared = shared
        self.install(uv)

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
        if self.reused:
            linked, sources = 0, []  # compiled when it was built
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
