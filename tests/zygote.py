"""Real Python processes without their seconds of imports: forked from a process that has them.

Some tests need the CLI as a process of its own (signals, exit codes, ranks of a DDP job, a lock held by
another process); each such process used to spend about 3 s of CPU importing torch, Hydra and mtlrun before
doing anything, and a torchrun launch three times that. A zygote does those imports once per pytest worker and
then forks one child per process asked for. The child sets up what a fresh `python -m MODULE ARGS` (or
`python -c CODE ARGS`, `python SCRIPT ARGS`) would have: working directory, environment, argv, sys.path, the
stdio file descriptors with unbuffered text streams, default signal handlers; then it runs the module. It is a
real process: its own pid, signal handlers, exit status, and the kernel's view of it (locks, mounts).

The ranks torchrun starts come from the zygote too: `popen` (tests/contracts.py) runs `torchrun ... -m mtlrun`
as `torchrun --no-python ... python zygote.py --relay -m mtlrun`, and the relay (a Python without imports,
milliseconds) asks the zygote for the rank, passes it the signals torchrun sends and exits as it did.

What stays a real `exec` of the interpreter: tests of start-up itself (tests/cli/test_packaging.py, the
console script), `unshare` mounts, and any process whose environment differs from the zygote's in what is read
at import time (IMPORT_TIME_ENV). MTLRUN_TEST_ZYGOTE=0 makes every process a real one, to check that both
agree.

Protocol: one SOCK_SEQPACKET message per child (JSON: what to run, cwd, env) with four file descriptors
(stdin, stdout, stderr, a status socket). The zygote forks a monitor, which forks the child and writes the
child's pid and later its wait status to the status socket; the one who asked is not the child's parent, so it
reads the status there (ZygotePopen._try_wait). If the status socket closes first (the asker died), the
monitor kills the child.

Run as a script, this file is the zygote (`python zygote.py --serve FD FD`) or a relay (`--relay ...`).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading

STATUS = struct.Struct("i")
# Variables a process reads while importing torch, Python or mtlrun, not later: a child must have the zygote's.
IMPORT_TIME_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "PYTHONSAFEPATH", "PYTHONWARNINGS",
                   "LD_PRELOAD", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                   "TORCH_LOGS")
# What `mtlrun train` / `eval` / `predict` and torchrun import; anything else a child imports itself. torch._dynamo:
# building a torch.optim optimizer imports it (torch's @_disable_dynamo), 3.6 s of CPU in every train process;
# torchjd: every gradient-level weighting (1.3 s), in many of the suite's processes and torchrun ranks.
PRELOAD = ("torch", "numpy", "hydra", "omegaconf", "matplotlib", "matplotlib.pyplot", "mtlrun.cli",
           "mtlrun.build", "mtlrun.train", "mtlrun.eval", "mtlrun.predict", "mtlrun.engine.trainer",
           "torch.distributed.launcher.api",  # not torch.distributed.run itself: runpy would warn
           "torch._dynamo", "torchjd.autojac", "torchjd.aggregation")
PRELOAD_IF_INSTALLED = ("torchmetrics",)  # the detection metrics, where the extra is installed
SOCKET_ENV = "MTLRUN_TEST_ZYGOTE_SOCKET"  # where a relay finds the zygote
RELAYED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# The Popen options a forked child gets as an exec'd one would; anything else (pass_fds, start_new_session,
# preexec_fn, ...) needs subprocess.Popen.
POPEN_OPTIONS = frozenset({"stdin", "stdout", "stderr", "text", "encoding", "errors"})


# ------------------------------------------------------------------------------------------ the test side
class _Zygote:
    """The zygote of this test process, started at the first request with the environment `env`."""

    def __init__(self, env: dict):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.path = os.path.join(tempfile.mkdtemp(prefix="mtlrun-zygote-"), "socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.path)
        listener.listen(16)
        self.env = dict(env)
        fds = [theirs.fileno(), listener.fileno()]
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", *map(str, fds)], pass_fds=fds,
                                     env={**self.env, "MPLBACKEND": "Agg"}, stdin=subprocess.DEVNULL)
        theirs.close()
        listener.close()
        self.sock = ours
        self.lock = threading.Lock()
        atexit.register(self.close)

    def fits(self, env: dict) -> bool:
        return all(env.get(k) == self.env.get(k) for k in IMPORT_TIME_ENV)

    def spawn(self, argv: list[str], cwd: str, env: dict, fds: list[int]) -> tuple[int, socket.socket]:
        """Fork a child running the Python command line `argv` (one `command()` accepts): its pid and the
        socket its wait status comes on."""
        status, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self.lock:
                _send(self.sock, {**command(argv), "cwd": cwd, "env": env}, [*fds, theirs.fileno()])
        finally:
            theirs.close()
        pid = _read_int(status)
        if pid is None:
            raise OSError(f"the zygote (pid {self.proc.pid}) did not start {argv}")
        return pid, status

    def close(self):
        self.sock.close()  # the zygote leaves when its socket closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        try:
            os.unlink(self.path)
            os.rmdir(os.path.dirname(self.path))
        except OSError:
            pass


_zygote: _Zygote | None = None


def command(argv: list[str]) -> dict | None:
    """What a child runs for the command line `argv`, if it is this Python's `[-P] -m MODULE ARGS`,
    `-c CODE ARGS` or `SCRIPT ARGS`; None for anything else (exec it)."""
    if not argv or str(argv[0]) != sys.executable:
        return None
    rest, safe_path = [str(a) for a in argv[1:]], False
    if rest[:1] == ["-P"]:
        rest, safe_path = rest[1:], True
    if len(rest) >= 2 and rest[0] in ("-m", "-c"):
        return {"module" if rest[0] == "-m" else "code": rest[1], "args": rest[2:], "safe_path": safe_path}
    if rest and not rest[0].startswith("-") and rest[0].endswith(".py"):
        return {"script": rest[0], "args": rest[1:], "safe_path": safe_path}
    return None


def zygote(env: dict, argv: list[str]) -> _Zygote | None:
    """This test process's zygote, if it can be the parent of `argv` run with `env` (else None: exec it)."""
    global _zygote
    if command(argv) is None or "0" in (os.environ.get("MTLRUN_TEST_ZYGOTE"), env.get("MTLRUN_TEST_ZYGOTE")):
        return None
    if _zygote is None or _zygote.proc.poll() is not None:
        _zygote = _Zygote({k: v for k, v in env.items() if not k.startswith(
            ("SLURM_", "MASTER_", "RANK", "WORLD_SIZE", "LOCAL_", "HYDRA_", "MTLRUN_", "TORCHELASTIC_"))})
    return _zygote if _zygote.fits(env) else None


TORCHRUN = "torch.distributed.run"


def through_relay(argv: list[str], env: dict) -> tuple[list[str], dict]:
    """`python -m torch.distributed.run FLAGS (-m MODULE | SCRIPT) ARGS` with its ranks forked by the zygote:
    torchrun's --no-python running a relay in front of them. Other command lines come back unchanged."""
    z = zygote(env, argv)
    if z is None or [str(a) for a in argv[1:3]] != ["-m", TORCHRUN]:
        return argv, env
    flags, rest = [], [str(a) for a in argv[3:]]
    while rest and rest[0].startswith("--") and ("=" in rest[0] or rest[0] == "--standalone"):
        flags.append(rest.pop(0))  # every flag as --name=value: an entry point cannot be mistaken for a value
    if not rest or rest[0] in ("--no-python", "--no_python", "--run-path", "--run_path") or \
            (rest[0].startswith("-") and rest[0] not in ("-m", "--module")):
        return argv, env
    entry = ["-m", *rest[1:]] if rest[0] in ("-m", "--module") else rest
    return ([*argv[:3], *flags, "--no-python", sys.executable, __file__, "--relay", *entry],
            {**env, SOCKET_ENV: z.path})


class ZygotePopen(subprocess.Popen):
    """subprocess.Popen of a Python command line forked by the zygote (pipes, communicate, send_signal, wait
    and returncode as Popen has them). Build it only where `zygote(env, args)` is not None."""

    def __init__(self, args: list[str], *, env: dict, cwd, **kwargs):
        if set(kwargs) - POPEN_OPTIONS:
            raise TypeError(f"ZygotePopen does not take {sorted(set(kwargs) - POPEN_OPTIONS)}: use subprocess.Popen")
        self._zygote = zygote(env, args)
        assert self._zygote is not None, "ZygotePopen for a command or environment the zygote cannot take"
        self._status = None
        super().__init__(args, env=env, cwd=cwd, **kwargs)

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                       creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, *rest):
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            fds = [devnull if fd == -1 else fd for fd in (p2cread, c2pwrite, errwrite)]
            self.pid, self._status = self._zygote.spawn(list(args), str(cwd or os.getcwd()), dict(env), fds)
            self._child_created = True
        finally:
            os.close(devnull)
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _try_wait(self, wait_flags):
        """(pid, wait status) once the child has ended, (0, 0) before (with os.WNOHANG)."""
        self._status.setblocking(not wait_flags & os.WNOHANG)
        try:
            sts = _read_int(self._status)
        except BlockingIOError:
            return 0, 0
        return self.pid, (signal.SIGKILL if sts is None else sts)  # no status: the monitor itself was killed

    def _internal_poll(self, _deadstate=None, **_):
        if self.returncode is None and self._waitpid_lock.acquire(False):
            try:
                if self.returncode is None:
                    pid, sts = self._try_wait(os.WNOHANG)
                    if pid == self.pid:
                        self._handle_exitstatus(sts)
            finally:
                self._waitpid_lock.release()
        return self.returncode


def _send(sock: socket.socket, request: dict, fds: list[int]) -> None:
    socket.send_fds(sock, [json.dumps(request).encode()], fds)


def _read_int(sock: socket.socket) -> int | None:
    data = b""
    while len(data) < STATUS.size:
        chunk = sock.recv(STATUS.size - len(data))
        if not chunk:
            return None
        data += chunk
    return STATUS.unpack(data)[0]


# ------------------------------------------------------------------------------------------ the relay
def relay(argv: list[str]) -> None:
    """A rank torchrun starts: `python zygote.py --relay (-m MODULE | SCRIPT) ARGS`. The zygote forks the rank
    with this process's stdio, working directory and environment; signals to this process go to the rank; this
    process ends as the rank did. Where the zygote cannot take it (an import-time variable changed), exec."""
    cmd = [sys.executable, *argv]
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(os.environ[SOCKET_ENV])
        _send(sock, {**command(cmd), "cwd": os.getcwd(), "env": dict(os.environ)}, [0, 1, 2])
        pid = _read_int(sock)
    except OSError:
        pid = None
    if pid is None or pid < 0:
        os.execv(sys.executable, cmd)
    def forward(signum, _):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # it has just ended: its status is on the way
            pass

    for sig in RELAYED_SIGNALS:
        signal.signal(sig, forward)
    sts = _read_int(sock)
    code = 1 if sts is None else os.waitstatus_to_exitcode(sts)
    if code < 0:  # killed by a signal: so is the relay, as torchrun would have seen the rank end
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


# ------------------------------------------------------------------------------------------ the zygote
def serve(control: socket.socket, listener: socket.socket) -> None:
    for name in PRELOAD:
        __import__(name)
    for name in PRELOAD_IF_INSTALLED:
        try:
            __import__(name)
        except ImportError:
            pass
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the monitors are reaped by the kernel
    while True:
        ready, _, _ = select.select([control, listener], [], [])
        if listener in ready:  # a relay: the connection is its status socket
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(message) if message and len(fds) == 3 else None
            if request is None or any(request["env"].get(k) != os.environ.get(k) for k in IMPORT_TIME_ENV):
                conn.sendall(STATUS.pack(-1))  # the relay execs instead
            else:
                fds.append(os.dup(conn.fileno()))
                _fork_monitor(request, fds, (control, listener))
            for fd in fds:
                os.close(fd)
            conn.close()
        if control in ready:
            try:
                message, fds, _, _ = socket.recv_fds(control, 1 << 20, 4)
            except OSError:
                return
            if not message:
                return  # the test process has gone
            _fork_monitor(json.loads(message), fds, (control, listener))
            for fd in fds:
                os.close(fd)


def _fork_monitor(request: dict, fds: list[int], close: tuple) -> None:
    if os.fork() != 0:
        return
    try:  # the monitor never returns into the zygote's loop, whatever fails here
        for sock in close:
            sock.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # to wait for the child
        status = socket.socket(fileno=fds[3])
        pid = os.fork()
        if pid == 0:
            status.close()
            _become(request, fds[:3])
        for fd in fds[:3]:
            os.close(fd)
        _monitor(pid, status)
    finally:
        os._exit(0)


def _monitor(pid: int, status: socket.socket) -> None:
    """Report the child's pid and, once it has ended, its wait status on `status`; if the asker goes first (its
    end of `status` closes), the child is killed."""
    asker_gone = False
    try:
        status.sendall(STATUS.pack(pid))
        child = os.pidfd_open(pid)
        while True:
            ready, _, _ = select.select([child, status], [], [])
            if child in ready:
                break
            if not status.recv(1, socket.MSG_PEEK):
                asker_gone = True
                break
    except OSError:
        asker_gone = True
    if asker_gone:
        os.kill(pid, signal.SIGKILL)
    _, sts = os.waitpid(pid, 0)
    if not asker_gone:
        status.sendall(STATUS.pack(sts))


def _become(request: dict, stdio: list[int]) -> None:
    """Turn this fork into `python -m MODULE ARGS` (`-c CODE ARGS`, `SCRIPT ARGS`) started in request["cwd"] with
    request["env"]; never returns."""
    import io
    import runpy
    import traceback
    import types

    code = 1
    try:
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _reseed()
        # sys.path[0] is this script's folder here; `-m` puts the working directory there, `-c` '', a script
        # its folder, -P nothing
        if request["safe_path"]:
            del sys.path[0]
        elif "script" in request:
            sys.path[0] = os.path.dirname(os.path.abspath(request["script"]))
        else:
            sys.path[0] = os.getcwd() if "module" in request else ""
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        for name, fd in (("stdout", 1), ("stderr", 2)):
            raw = io.FileIO(fd, "w", closefd=False)
            stream = io.TextIOWrapper(raw if unbuffered else io.BufferedWriter(raw), encoding="utf-8",
                                      errors="backslashreplace" if fd == 2 else "strict",
                                      write_through=unbuffered, line_buffering=fd == 2)
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        try:
            if "module" in request:
                sys.argv = ["-m", *request["args"]]  # runpy sets argv[0] to the module's file
                runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            elif "script" in request:
                sys.argv = [request["script"], *request["args"]]
                runpy.run_path(request["script"], run_name="__main__")
            else:
                sys.argv = ["-c", *request["args"]]
                main = sys.modules["__main__"] = types.ModuleType("__main__")  # not this script's module
                exec(compile(request["code"], "<string>", "exec"), main.__dict__)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else _print_exit(exc.code)
        except KeyboardInterrupt:
            traceback.print_exc()
            _flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # as Python ends on an uncaught KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:
            traceback.print_exc()
            code = 1
        threading._shutdown()  # what the interpreter does at exit: wait for non-daemon threads, run atexit
        atexit._run_exitfuncs()
    finally:
        _flush()
        os._exit(code & 0xFF)


def _reseed() -> None:
    """The unseeded generators a fresh process seeds from the OS at start-up (here: the zygote's, shared by every
    fork): Python's and numpy's global ones. torch's default seed is a constant in every process anyway."""
    import random

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


def _print_exit(message) -> int:
    print(message, file=sys.stderr)
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


if __name__ == "__main__":
    if sys.argv[1] == "--relay":
        relay(sys.argv[2:])
    else:
        serve(socket.socket(fileno=int(sys.argv[2])), socket.socket(fileno=int(sys.argv[3])))
