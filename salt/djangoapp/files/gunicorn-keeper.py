"""
Keeps an app's Gunicorn masters when the app preloads (`preload_app: true`), managed
by Salt (djangoapp). The process manager runs this program in Gunicorn's place and
hands it the socket; it starts a master of the live release on that socket, each
master importing the app once and forking its workers from it.

SIGHUP is a hand-over: a new master of the release `current` names now starts beside
the serving one, and once all its workers have loaded the app the old master is told
to stop (TERM: its workers finish their requests). When the new master fails or is
not ready in time it is stopped and the old one goes on serving. A master that dies
unexpectedly is replaced at once; meanwhile the socket, held here, keeps the
connections waiting. SIGTERM stops every master gracefully, then this program.

SIGUSR1 starts a standby: a master of the release `standby.json` names (a release
about to go live) that imports the app and then waits, serving nothing, until the
hand-over to that release tells it to fork its workers; a hand-over to another
release, SIGUSR2, or STANDBY_LIFETIME seconds end it. The release engine starts one
while it checks the release, so that the app is imported by the time it switches.
When that standby takes over (`keep_previous`), a standby of the release it replaced
starts, WARM_NICENESS behind everything else, for a switch-back or a rollback to
it. Once a rollback is done, the engine asks for a standby of the release a next
rollback would take (without `keep_previous`).

SIGWINCH renews this program: once no hand-over runs, the process executes this
program's file again (a newer one, after the formula updated it), with the socket
and the masters it has: the new one takes them over, serving all along. A standby
ends with it.

What happened is in `keeper.json` in the run directory: `requests` counts the SIGHUPs
taken, and `last` says how the last hand-over ended (`request`: the count when it
started); `program` is the SHA-256 of the file this process runs. `gunicorn.pid`
names the master serving, `gunicorn.json` what it loaded.

Usage: gunicorn-keeper RELEASE_LINK RUN_DIR TIMEOUT -- GUNICORN_ARGUMENTS...
"""

import contextlib
import ctypes
import hashlib
import json
import os
import select
import signal
import sys
import time

POLL = 0.02
PR_SET_PDEATHSIG = 1
STANDBY_LIFETIME = 600
WARM_NICENESS = 10  # a standby kept for a switch-back, relative to this program
GO = b"go"
# What a renewed keeper is told of the one it replaces (in its environment).
TAKEN_OVER = "DJANGOAPP_KEEPER_STATE"
RENEWAL_IGNORES = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)


def stop_with_parent():
    """This process gets SIGTERM when its parent dies: a master does not outlive its
    keeper (the process manager starts a new keeper, and that one new masters)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def write_file(path, text):
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return {int(child) for child in handle.read().split()}
    except (OSError, ValueError):
        return set()


def file_digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def release_dir_of(pid):
    """The release a master of ours runs (its environment says)."""
    prefix = b"DJANGOAPP_RELEASE_DIR="
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read().split(b"\0")
    except OSError:
        return None
    found = [item[len(prefix) :] for item in environ if item.startswith(prefix)]
    return os.fsdecode(found[0]) if found else None


def listening_descriptor():
    """The socket the process manager holds: systemd's first LISTEN_FDS, or the
    descriptor Supervisor's program names in DJANGOAPP_LISTEN_FD."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get(
        "LISTEN_FDS"
    ):
        return 3
    if os.environ.get("DJANGOAPP_LISTEN_FD"):
        return int(os.environ["DJANGOAPP_LISTEN_FD"])
    sys.exit("gunicorn-keeper: no socket given (LISTEN_FDS or DJANGOAPP_LISTEN_FD)")


class Keeper:
    def __init__(self, release_link, run_dir, timeout, gunicorn_arguments):
        self.program = os.path.abspath(sys.argv[0])
        self.digest = file_digest(self.program)
        self.release_link = release_link
        self.run_dir = run_dir
        self.timeout = timeout
        self.gunicorn_arguments = gunicorn_arguments
        self.listen_fd = listening_descriptor()
        self.masters = set()
        self.live = None
        # the master being started: pid, the request it answers, since, whether it
        # was the standby, and whether the release it replaces is kept warm
        self.starting = None
        # the standby: pid, release, the pipe that tells it to go, since, keep_previous
        self.standby = None
        self.release_of = {}  # master pid: its release directory
        self.niceness = os.getpriority(os.PRIO_PROCESS, 0)
        self.requests = 0
        self.last = None
        self.stopping = self.renewing = False
        self.standby_told = self.standby_asked = False
        self.wake_read, wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGHUP, self.on_hup)
        signal.signal(signal.SIGUSR1, self.on_standby)
        signal.signal(signal.SIGUSR2, self.on_standby)
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)
        signal.signal(signal.SIGWINCH, self.on_renew)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def on_hup(self, *_):
        self.requests += 1

    def on_stop(self, *_):
        self.stopping = True

    def on_renew(self, *_):
        self.renewing = True

    def on_standby(self, signum, _frame):
        self.standby_asked = signum == signal.SIGUSR1
        self.standby_told = True

    def record(self):
        state = {
            "pid": os.getpid(),
            "live": self.live,
            "starting": self.starting["pid"] if self.starting else None,
            "standby": self.standby["pid"] if self.standby else None,
            "requests": self.requests,
            "last": self.last,
            "program": self.digest,
        }
        write_file(os.path.join(self.run_dir, "keeper.json"), json.dumps(state))

    # ------------------------------------------------------------------ masters

    def spawn(self, request):
        """Start a master of the release `current` names now, resolved once (the
        master's code and packages stay those of one release), or have the standby
        of that release go on."""
        release = os.path.realpath(self.release_link)
        standby, self.standby = self.standby, None
        pid = None
        if standby and standby["release"] == release:
            pid = self.go(standby)
        else:
            self.drop(standby)
        self.starting = {
            "pid": pid or self.fork_master(release),
            "request": request,
            "since": time.monotonic(),
            "standby": bool(pid),
            "keep_previous": bool(pid and standby["keep_previous"]),
        }
        self.record()

    def fork_master(self, release, go=None, version=None, niceness=None):
        python = os.path.join(release, "venv", "bin", "python")
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("LISTEN_")
        }
        environment["DJANGOAPP_LISTEN_FD"] = str(self.listen_fd)
        environment["DJANGOAPP_RELEASE_DIR"] = release
        if go is not None:
            environment["DJANGOAPP_STANDBY_FD"] = str(go)
        if version:
            # imported before its release.json is written, the app sees its version
            environment["SENTRY_RELEASE"] = version
        pid = os.fork()
        if pid == 0:
            try:
                stop_with_parent()
                if niceness is not None:
                    with contextlib.suppress(OSError):
                        os.setpriority(os.PRIO_PROCESS, 0, niceness)
                os.set_inheritable(self.listen_fd, True)
                if go is not None:
                    os.set_inheritable(go, True)
                argv = [python, "-m", "gunicorn", *self.gunicorn_arguments]
                os.execve(python, argv, environment)  # noqa: S606 (the point)
            except OSError as error:
                print(f"gunicorn-keeper: {python}: {error}", file=sys.stderr)
            finally:
                os._exit(127)
        self.masters.add(pid)
        self.release_of[pid] = release
        return pid

    # ---------------------------------------------------------------- standby

    def asked_release(self):
        """The release standby.json names, if it is one of the app's releases: the
        arguments of ``start_standby``."""
        nothing = None, None, False
        asked = read_json(os.path.join(self.run_dir, "standby.json"))
        if not isinstance(asked, dict) or not isinstance(asked.get("release"), str):
            return nothing
        release = os.path.realpath(asked["release"])
        releases = os.path.dirname(os.path.realpath(self.release_link))
        if os.path.dirname(release) != releases or not os.path.isfile(
            os.path.join(release, "venv", "bin", "python")
        ):
            print(f"gunicorn-keeper: no standby of {release}", file=sys.stderr)
            return nothing
        version = str(asked.get("version") or "")
        return release, version, asked.get("keep_previous") is True

    def start_standby(self, release, version=None, keep_previous=False, niceness=None):
        """A standby of ``release`` in place of the one there was, if any."""
        self.drop(self.standby)
        self.standby = None
        if release:
            go_read, go_write = os.pipe()
            try:
                pid = self.fork_master(release, go_read, version, niceness)
            finally:
                os.close(go_read)
            self.standby = {
                "pid": pid,
                "release": release,
                "go": go_write,
                "since": time.monotonic(),
                "keep_previous": keep_previous,
            }
        self.record()

    def go(self, standby):
        """Tell the standby to fork its workers; its pid, or None when it is gone."""
        try:
            os.write(standby["go"], GO)
        except OSError:
            return None
        finally:
            os.close(standby["go"])
        return standby["pid"] if standby["pid"] in self.masters else None

    def keep_warm(self, release, live):
        """A standby of the release a release's standby replaced, behind everything
        else on the host (a hand-over to it boosts it): a switch-back or rollback to
        it then forks workers only."""
        if release and release != self.release_of.get(live) and os.path.isdir(release):
            self.start_standby(release, niceness=self.niceness + WARM_NICENESS)

    def drop(self, standby):
        """End a standby: the end of its pipe has it exit without forking."""
        if standby:
            with contextlib.suppress(OSError):
                os.close(standby["go"])

    def end_standby(self):
        self.drop(self.standby)
        self.standby = None
        self.record()

    def watch_standby(self, ended):
        if self.standby_told:
            self.standby_told = False
            if self.standby_asked:
                self.start_standby(*self.asked_release())
            else:
                self.end_standby()
        standby = self.standby
        if standby and (
            standby["pid"] in ended
            or time.monotonic() - standby["since"] > STANDBY_LIFETIME
        ):
            self.end_standby()

    def signal_master(self, pid, signum=signal.SIGTERM):
        with contextlib.suppress(OSError):
            os.kill(pid, signum)

    def ready(self, pid):
        """All the master's workers have loaded the app and reported it."""
        state = read_json(os.path.join(self.run_dir, "masters", f"{pid}.json"))
        if not isinstance(state, dict) or not state.get("workers"):
            return False
        reported = set()
        with contextlib.suppress(OSError):
            for name in os.listdir(os.path.join(self.run_dir, "workers")):
                stem, _, ext = name.partition(".")
                if ext == "json" and stem.isdigit():
                    reported.add(int(stem))
        return len(children(pid) & reported) >= int(state["workers"])

    def promote(self, pid):
        """The master serves: the pidfile and the master's record name it."""
        self.live = pid
        write_file(os.path.join(self.run_dir, "gunicorn.pid"), f"{pid}\n")
        with contextlib.suppress(OSError):
            os.replace(
                os.path.join(self.run_dir, "masters", f"{pid}.json"),
                os.path.join(self.run_dir, "gunicorn.json"),
            )

    def reap(self):
        """Collect the masters that exited; returns {pid: exit status}."""
        ended = {}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ended[pid] = os.waitstatus_to_exitcode(status)
            self.masters.discard(pid)
            self.release_of.pop(pid, None)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.run_dir, "masters", f"{pid}.json"))
        return ended

    # ---------------------------------------------------------------- the loop

    def step(self, ended):
        """React to the masters that ended and to the one starting."""
        if self.live in ended:
            # gone without being told: replaced at once, or by the one starting
            print(
                f"gunicorn-keeper: master {self.live} exited ({ended[self.live]})",
                file=sys.stderr,
                flush=True,
            )
            self.live = None
        self.watch_standby(ended)
        if self.starting:
            pid, started = self.starting["pid"], self.starting["since"]
            if pid in ended:
                self.finish(False, f"master {pid} exited ({ended[pid]}) before ready")
            elif self.ready(pid):
                old = self.live
                self.promote(pid)
                if old:
                    self.signal_master(old)
                    if self.starting["keep_previous"]:
                        # named in keeper.json before the hand-over's end is
                        self.keep_warm(self.release_of.get(old), pid)
                self.finish(True, None)
            elif time.monotonic() - started > self.timeout:
                self.signal_master(pid)
                self.finish(False, f"master {pid} not ready after {self.timeout}s")
            if self.live is None and not self.starting:
                # nothing serves: the process manager's restarts (and their limit)
                # take over from here
                sys.exit(f"gunicorn-keeper: {self.last['error']}")
        if not self.starting and (self.live is None or self.answered < self.requests):
            self.spawn(self.requests)

    @property
    def answered(self):
        return self.last["request"] if self.last else 0

    def finish(self, ready, error):
        starting, self.starting = self.starting, None
        self.last = {
            "request": starting["request"],
            "result": "ready" if ready else "failed",
            "master": starting["pid"],
            "standby": starting["standby"],
            "error": error,
            "seconds": round(time.monotonic() - starting["since"], 3),
        }
        if error:
            print(f"gunicorn-keeper: {error}", file=sys.stderr, flush=True)
        self.record()

    # ------------------------------------------------------------- renewal

    def renew(self):
        """Execute this program's file again in this process (the masters stay
        its children, the socket open): the new program takes over from what
        this one tells it. The standby's pipe closes, which ends it."""
        self.renewing = False
        told = {"live": self.live, "requests": self.requests, "last": self.last}
        environment = dict(os.environ, **{TAKEN_OVER: json.dumps(told)})
        python = os.path.join(self.release_link, "venv", "bin", "python")
        argv = [python, self.program, *sys.argv[1:]]
        os.set_inheritable(self.listen_fd, True)
        # until the new program has its handlers, these would end the process
        handlers = {signum: signal.getsignal(signum) for signum in RENEWAL_IGNORES}
        for signum in RENEWAL_IGNORES:
            signal.signal(signum, signal.SIG_IGN)
        try:
            os.execve(python, argv, environment)  # noqa: S606 (the point)
        except OSError as error:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            print(f"gunicorn-keeper: not renewed: {error}", file=sys.stderr, flush=True)

    def take_over(self):
        """The masters of the keeper this program renewed, if it is one; whether
        one serves."""
        told = os.environ.pop(TAKEN_OVER, None)
        if not told:
            return False
        told = json.loads(told)
        for pid in children(os.getpid()):
            release = release_dir_of(pid)
            if release:
                self.masters.add(pid)
                self.release_of[pid] = release
        self.requests, self.last = told["requests"], told["last"]
        self.live = told["live"] if told["live"] in self.masters else None
        print(
            f"gunicorn-keeper: renewed, {len(self.masters)} master(s) kept",
            file=sys.stderr,
            flush=True,
        )
        self.record()
        return self.live is not None

    def run(self):
        os.makedirs(os.path.join(self.run_dir, "masters"), exist_ok=True)
        if not self.take_over():
            self.spawn(self.requests)
        while not self.stopping:
            if self.renewing and not self.starting:
                self.renew()
            self.step(self.reap())
            with contextlib.suppress(InterruptedError):
                select.select([self.wake_read], [], [], POLL if self.starting else 1)
            with contextlib.suppress(OSError):
                os.read(self.wake_read, 4096)
        self.drop(self.standby)
        for pid in self.masters:
            self.signal_master(pid)
        deadline = time.monotonic() + self.timeout
        while self.masters and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in self.masters:
            self.signal_master(pid, signal.SIGKILL)


def main(argv):
    if len(argv) < 5 or argv[3] != "--":
        sys.exit(__doc__.strip().splitlines()[-1])
    release_link, run_dir, timeout = argv[0], argv[1], float(argv[2])
    Keeper(release_link, run_dir, timeout, argv[4:]).run()


if __name__ == "__main__":
    main(sys.argv[1:])
