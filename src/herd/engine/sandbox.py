"""Run untrusted, model-generated Python: one short-lived subprocess per sample.

HumanEval/MBPP scoring executes whatever a model wrote. openai/human-eval runs it in-process behind
a monkey-patching "reliability guard" and tells users to bring their own sandbox; this module is
that sandbox, built from layers that each back up the others:

1. Process limits, always: a fresh temp directory as cwd, ``HOME`` and ``TMPDIR``; rlimits set in a
   ``preexec_fn`` (address space, CPU seconds, file size, process count, no core dumps); a new session,
   so on a timeout the whole process group is SIGKILLed; stdout/stderr go to size-capped files.
2. Namespaces, where ``unshare --user --net --pid --fork --kill-child`` works (probed once): an empty
   network namespace (no network at all) and a PID namespace, so every process a sample starts dies
   with it. No uid is mapped, so the sample holds no capabilities inside either.
3. A privilege drop when herd runs as root (root ignores RLIMIT_NPROC and every file permission): the
   sample runs as ``nobody``, with an interpreter that ``nobody`` may execute (``sys.executable`` if
   it can, else the system ``python3``: samples use only the standard library).
4. An audit hook (``sys.addaudithook``) the child installs before the sample runs: it blocks process
   creation and signals, sockets, ctypes, rlimit changes, gc introspection, writes/removals/renames/
   chmods outside the temp dir and reads under the user's home (except the interpreter's own paths).
   The hook stops accidents and naive hostility; a program written to defeat this harness is held by
   layers 1–3, which are enforced by the kernel.

The verdict travels on an inherited file descriptor, prefixed with a per-run nonce that the sample
never sees directly, so a program that prints "passed" or calls ``sys.exit(0)``/``os._exit(0)`` early
does not pass. Samples run in a small thread pool (default 2 workers: this machine has 2 cores).
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_TIMEOUT = 3.0  # seconds, openai/human-eval's default per sample
DEFAULT_MEMORY_MB = 1024
FILE_LIMIT_MB = 16  # any file the sample writes, its stdout/stderr included
NPROC_MARGIN = 64  # tasks (processes + threads) a sample may add to what its uid already runs
STARTUP_GRACE = 2.0  # wall-clock allowance for interpreter start-up on a loaded machine
NOBODY = 65534
NS_FLAGS = ("--user", "--net", "--pid", "--fork", "--kill-child")
STATUSES = ("passed", "failed", "timeout", "error")
UNSHARE_KILLED = "unshare: sigprocmask unblock failed"  # see _execute: the wrapper's child died by SIGKILL

# The child's first code: read the verdict nonce, install the audit hook, run the sample with an
# interval timer (like human-eval's time_limit), and report on the inherited fd. Kept self-contained:
# it runs under whichever interpreter the sample gets (3.8+ for audit hooks).
PREAMBLE = r'''
import os, sys
def _herd_sandbox():
    import json, signal
    cfg = json.loads(sys.argv[1])
    me = os.getpid()  # only this process reports: a child forked by the sample must not speak for it
    nonce = sys.stdin.readline().strip()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    rep = cfg["report_fd"]

    def report(status, detail=""):
        os.write(rep, (nonce + " " + status + " " + detail.replace("\n", " ")[:500] + "\n").encode("utf-8", "replace"))

    try:
        with open(cfg["program"], encoding="utf-8") as f:
            src = f.read()
    except Exception as e:
        report("error", "cannot read the program: %r" % (e,))
        return
    try:
        code = compile(src, "<sample>", "exec")
    except BaseException as e:
        report("failed", "%s: %s" % (type(e).__name__, e))
        return
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-long write raises instead of killing

    sep, real, isabs, fspath, fsdecode = os.sep, os.path.realpath, os.path.isabs, os.fspath, os.fsdecode

    def slash(p):
        return p if p.endswith(sep) else p + sep

    root = slash(real(cfg["root"]))
    write_files = frozenset(["/dev/null"])
    deny_read = tuple(slash(real(p)) for p in cfg["deny_read"])
    allow_read = tuple(slash(real(p)) for p in
                       [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, root]
                       + [p for p in sys.path if p])

    def where(path, dir_fd=None):
        if path is None:
            path = "."
        if isinstance(path, int):
            return real("/proc/self/fd/%d" % path)
        path = fsdecode(fspath(path))
        if dir_fd is not None and dir_fd >= 0 and not isabs(path):
            path = os.path.join(real("/proc/self/fd/%d" % dir_fd), path)
        return real(path)

    def check_write(event, path, dir_fd=None):
        p = where(path, dir_fd)
        if p not in write_files and not slash(p).startswith(root):
            raise PermissionError("sandbox: %s outside the sandbox directory (%s)" % (event, p))

    def check_read(event, path, dir_fd=None):
        p = where(path, dir_fd)
        if deny_read and slash(p).startswith(deny_read) and not slash(p).startswith(allow_read):
            raise PermissionError("sandbox: %s under the home directory (%s)" % (event, p))

    write_bits = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def on_open(event, args):
        path, mode, flags = args
        if isinstance(path, int):
            return
        if mode is None and not isabs(fsdecode(fspath(path))):
            # os.open's event omits dir_fd, so a relative path cannot be placed: refuse it
            raise PermissionError("sandbox: os.open needs an absolute path")
        if (flags or 0) & write_bits or (isinstance(mode, str) and any(c in mode for c in "wax+")):
            check_write(event, path)
        check_read(event, path)

    def path_write(i, fd_i=None):
        def handler(event, args):
            check_write(event, args[i], args[fd_i] if fd_i is not None else None)
        return handler

    def path_read(event, args):
        check_read(event, args[0])

    def two_paths(event, args):  # os.rename / shutil.move style (src, dst, src_dir_fd, dst_dir_fd)
        check_write(event, args[0], args[2] if len(args) > 2 else None)
        check_write(event, args[1], args[3] if len(args) > 3 else None)

    def copy(event, args):  # shutil.copy*: read src, write dst
        check_read(event, args[0])
        check_write(event, args[1])

    def block(event, args):
        raise PermissionError("sandbox: %s is not allowed" % event)

    handlers = {
        "open": on_open,
        "os.remove": path_write(0, 1), "os.rmdir": path_write(0, 1), "os.mkdir": path_write(0, 2),
        "os.chmod": path_write(0, 2), "os.chown": path_write(0, 3), "os.utime": path_write(0, 3),
        "os.truncate": path_write(0), "os.chflags": path_write(0), "os.lchflags": path_write(0),
        "os.setxattr": path_write(0), "os.removexattr": path_write(0), "shutil.rmtree": path_write(0, 1),
        "sqlite3.connect": path_write(0), "os.rename": two_paths, "shutil.move": two_paths,
        "shutil.copyfile": copy, "shutil.copymode": copy, "shutil.copystat": copy, "shutil.copytree": copy,
        "shutil.unpack_archive": lambda e, a: check_write(e, a[1] if a[1] is not None else "."),
        "shutil.make_archive": lambda e, a: check_write(e, a[0]),
        "os.listdir": path_read, "os.scandir": path_read, "os.listxattr": path_read,
        "os.getxattr": path_read, "glob.glob": path_read,
    }
    for name in ("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                 "subprocess.Popen", "os.startfile", "os.kill", "os.killpg", "signal.pthread_kill",
                 "os.link", "os.symlink", "resource.setrlimit", "resource.prlimit", "gc.get_objects",
                 "gc.get_referrers", "gc.get_referents", "sqlite3.enable_load_extension",
                 "sqlite3.load_extension", "sys.remote_exec"):
        handlers[name] = block
    blocked_prefixes = ("socket.", "ctypes.", "_winapi.", "winreg.", "msvcrt.")
    # _posixsubprocess.fork_exec forks without an audit event of its own
    blocked_imports = frozenset(["ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters",
                                 "_testcapi", "_testinternalcapi"])
    get = handlers.get

    def hook(event, args):
        h = get(event)
        if h is not None:
            h(event, args)
        elif event == "import":
            if args[0] in blocked_imports or args[0].startswith("ctypes."):
                raise PermissionError("sandbox: import %s is not allowed" % args[0])
        elif event.startswith(blocked_prefixes):
            raise PermissionError("sandbox: %s is not allowed" % event)

    class Timeout(BaseException):
        pass

    def alarm(signum, frame):
        raise Timeout()

    def describe(e):
        try:
            line, tb = None, e.__traceback__
            while tb is not None:
                if tb.tb_frame.f_code.co_filename == "<sample>":
                    line = tb.tb_lineno
                tb = tb.tb_next
            text = "%s: %s" % (type(e).__name__, e)
            return text + (" (line %d)" % line if line else "")
        except BaseException:
            return type(e).__name__

    signal.signal(signal.SIGALRM, alarm)
    if cfg["audit_hook"]:
        sys.addaudithook(hook)
    outcome = ("failed", "no result")
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, cfg["timeout"])
            exec(code, {})  # like human-eval: exec(check_program, exec_globals) with exec_globals = {}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        outcome = ("passed", "")
    except Timeout:
        outcome = ("timeout", "time limit %.1f s" % cfg["timeout"])
    except BaseException as e:
        outcome = ("failed", describe(e))
    if os.getpid() != me:
        os._exit(1)
    report(*outcome)
    os._exit(0)  # no interpreter teardown: threads or atexit hooks the sample left behind don't run
_herd_sandbox()
'''


@dataclass
class SandboxResult:
    passed: bool
    status: str  # passed | failed | timeout | error
    detail: str
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Isolation:
    """What this machine allows: decided once per process, reported with every eval."""

    interpreter: str
    uid: int | None  # the uid samples run as, None = herd's own
    unshare: tuple[str, ...]  # the namespace wrapper, () when namespaces are unavailable
    deny_read: tuple[str, ...]

    def describe(self) -> dict:
        return {"interpreter": self.interpreter,
                "run_as": "herd's own user" if self.uid is None else f"uid {self.uid} (dropped from root)",
                "namespaces": "user+net+pid (no network)" if self.unshare else "unavailable",
                "rlimits": "address space, CPU, file size, process count, core",
                "audit_hook": True}


def _runs(cmd: list[str], uid: int | None) -> bool:
    ids = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    try:
        r = subprocess.run(cmd, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30, env={"PATH": "/usr/bin:/bin"}, **ids)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe the machine once: privilege drop (root only), a usable interpreter, namespaces."""
    check = "import sys; assert sys.version_info >= (3, 8)"
    uid, interpreter = None, sys.executable
    if os.geteuid() == 0:
        for cand in (sys.executable, getattr(sys, "_base_executable", ""), "/usr/bin/python3",
                     "/usr/local/bin/python3", shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
            if cand and _runs([cand, "-I", "-c", check], NOBODY):
                uid, interpreter = NOBODY, cand
                break
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    ns: tuple[str, ...] = ()
    if unshare and _runs([unshare, *NS_FLAGS, interpreter, "-I", "-c", check], uid):
        ns = (unshare, *NS_FLAGS)
    home = str(Path.home())
    return Isolation(interpreter, uid, ns, (home,) if home not in ("", "/") else ())


def _tasks_of(uid: int) -> int | None:
    """Processes + threads the uid runs now (RLIMIT_NPROC counts them all, per uid); None without /proc."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    n = 0
    for d in entries:
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{d}/task"))
            except OSError:
                pass
    return n


def _capped(res: int, soft: int, hard: int) -> tuple[int, int]:
    """(soft, hard) no higher than the current hard limit: only root may raise one."""
    cur = resource.getrlimit(res)[1]
    if cur != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur), min(hard, cur)
    return soft, hard


def _limits(memory_mb: int, timeout: float, nproc: int | None):
    """The preexec_fn: only setrlimit calls, values computed beforehand (it runs between fork and exec)."""
    mem, cpu, fsize = memory_mb * 2**20, math.ceil(timeout) + 1, FILE_LIMIT_MB * 2**20
    limits = [(resource.RLIMIT_AS, _capped(resource.RLIMIT_AS, mem, mem)),
              (resource.RLIMIT_CPU, _capped(resource.RLIMIT_CPU, cpu, cpu + 1)),  # SIGXCPU, then SIGKILL
              (resource.RLIMIT_FSIZE, _capped(resource.RLIMIT_FSIZE, fsize, fsize)),
              (resource.RLIMIT_CORE, (0, 0))]
    if nproc is not None:
        limits.append((resource.RLIMIT_NPROC, _capped(resource.RLIMIT_NPROC, nproc, nproc)))
    setr = resource.setrlimit

    def apply() -> None:
        for res, value in limits:
            setr(res, value)

    return apply


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(f, n: int = 400) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - n))
    return f.read().decode("utf-8", "replace").strip()


def run_program(program: str, *, timeout: float = DEFAULT_TIMEOUT, memory_mb: int = DEFAULT_MEMORY_MB,
                audit_hook: bool = True) -> SandboxResult:
    """Execute ``program`` in the sandbox; it passes when it runs to its end without raising.

    ``audit_hook=False`` leaves only the kernel-enforced layers: for tests that prove they hold alone."""
    iso = isolation()
    start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="herd-sandbox-")
    try:
        if iso.uid is not None:
            os.chown(tmp, iso.uid, iso.uid)
        prog = os.path.join(tmp, "sample.py")
        with open(prog, "w", encoding="utf-8") as f:
            f.write(program)
        with tempfile.TemporaryFile() as rep, tempfile.TemporaryFile() as out, \
                tempfile.TemporaryFile() as err:
            return _execute(iso, tmp, prog, rep, out, err, timeout, memory_mb, audit_hook, start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _execute(iso: Isolation, tmp: str, prog: str, rep, out, err, timeout: float, memory_mb: int,
             audit_hook: bool, start: float) -> SandboxResult:
    def result(status: str, detail: str) -> SandboxResult:
        return SandboxResult(status == "passed", status, detail, round(time.monotonic() - start, 3))

    nonce = secrets.token_hex(16)
    cfg = {"program": prog, "timeout": timeout, "report_fd": rep.fileno(), "root": tmp,
           "deny_read": list(iso.deny_read), "audit_hook": audit_hook}
    cmd = [*iso.unshare, iso.interpreter, "-I", "-B", "-c", PREAMBLE, json.dumps(cfg)]
    env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    uid = iso.uid if iso.uid is not None else os.getuid()
    tasks = _tasks_of(uid) if uid != 0 else 0  # root ignores RLIMIT_NPROC anyway
    nproc = None if tasks is None else tasks + NPROC_MARGIN
    ids = {} if iso.uid is None else {"user": iso.uid, "group": iso.uid, "extra_groups": []}
    try:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                pass_fds=(rep.fileno(),), start_new_session=True,
                                preexec_fn=_limits(memory_mb, timeout, nproc), **ids)
    except (OSError, subprocess.SubprocessError) as e:
        return result("error", f"could not start the sandbox: {e}")
    killed = False
    try:
        try:
            proc.stdin.write(nonce.encode() + b"\n")
            proc.stdin.close()
        except OSError:
            pass
        deadline = time.monotonic() + timeout + STARTUP_GRACE
        pause = 0.001
        # wait without reaping (WNOWAIT): the zombie leader keeps its pgid reserved for the killpg below
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() >= deadline:
                killed = True
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
    finally:
        _killpg(proc.pid)  # stragglers the sample left in its process group
        proc.wait()
    rep.seek(0)
    for line in rep.read(65536).decode("utf-8", "replace").splitlines():
        token, _, rest = line.partition(" ")
        if token == nonce:
            status, _, detail = rest.partition(" ")
            if status in STATUSES:
                return result(status, detail)
    if killed:
        return result("timeout", f"killed after {timeout + STARTUP_GRACE:.1f} s wall clock")
    rc = proc.returncode
    if rc == 1 and UNSHARE_KILLED in _tail(err):
        # util-linux's `unshare --fork` re-raises its child's fatal signal on itself, which fails for
        # SIGKILL ("sigprocmask unblock failed: Invalid argument", exit 1): the sample died by SIGKILL
        rc = -signal.SIGKILL
    killers = (-signal.SIGXCPU, 128 + signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGKILL)
    if rc in killers and time.monotonic() - start >= timeout:  # RLIMIT_CPU: SIGXCPU, then SIGKILL
        return result("timeout", f"CPU time limit (exit status {rc})")
    return result("failed", f"exited with status {rc} before finishing; stderr: {_tail(err)}")


def run_programs(programs: list[str], *, timeout: float = DEFAULT_TIMEOUT, memory_mb: int = DEFAULT_MEMORY_MB,
                 workers: int = 2, progress: bool = False, desc: str = "execute") -> list[SandboxResult]:
    """Execute many programs, at most ``workers`` at a time; results in input order (``progress``
    reports programs finished, in input order)."""
    from herd.core.progress import Progress

    if not programs:
        return []
    isolation()  # probe once, before the threads start
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(programs)))) as pool:
        results = pool.map(lambda p: run_program(p, timeout=timeout, memory_mb=memory_mb), programs)
        return list(Progress(results, total=len(programs), desc=desc, unit="program", enabled=progress))
