"""Child processes of the harness, tracked by pid.

Every process runs in its own session (so a terminal's Ctrl-C reaches only the harness, which
then stops the children in order), writes its output to `<state>/logs/<name>.log`, and has a pid
file `<state>/pids/<name>.json` recording its pid, argv and start sequence. A later invocation
(`cluster.py down`) can therefore stop exactly the processes an earlier one started, in reverse
start order, after checking that each pid still runs the recorded program (a recycled pid is
never signalled).
"""

import ctypes
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from harness import progress

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec hook: the kernel sends SIGKILL to the child when the harness dies, so an e2e run
    killed with SIGKILL leaves nothing behind. Not used for the long-lived dev cluster."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


class ProcessError(RuntimeError):
    pass


class Proc:
    def __init__(self, name: str, pid: int, argv: list[str], log: Path, seq: int, popen=None,
                 program: str | None = None):
        self.name = name
        self.pid = pid
        self.argv = argv
        # The program the pid runs once started, when argv[0] execs another (unshare, nsenter).
        self.program = program
        self.log = log
        self.seq = seq
        self.popen = popen

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_runs(self.pid, [self.program] if self.program else self.argv)

    def exit_code(self):
        if self.popen is not None:
            return self.popen.poll()
        return None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


def pid_runs(pid: int, argv: list[str]) -> bool:
    """True when `pid` is alive and still runs the program of `argv` (guards against pid reuse)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; it only waits for its parent to reap it.
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    parts = [p.decode(errors="replace") for p in raw.split(b"\0") if p]
    if not parts:
        # Right after exec the command line can read empty for a moment; the pid is ours.
        return True
    return os.path.basename(parts[0]) == os.path.basename(argv[0])


class Supervisor:
    """Starts, tracks and stops the processes of one state directory."""

    def __init__(self, state: Path, die_with_parent: bool):
        self.state = state
        self.logs = state / "logs"
        self.pids = state / "pids"
        self.die_with_parent = die_with_parent
        self.procs: dict[str, Proc] = {}
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        for f in sorted(self.pids.glob("*.json")):
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            self.procs[rec["name"]] = Proc(rec["name"], rec["pid"], rec["argv"], Path(rec["log"]), rec["seq"],
                                           program=rec.get("program"))

    def _next_seq(self) -> int:
        return max((p.seq for p in self.procs.values()), default=0) + 1

    def start(self, name: str, argv: list[str], env: dict | None = None, cwd: Path | None = None,
              program: str | None = None) -> Proc:
        """`program`: what the process runs after argv[0] has exec'd it (for a later
        invocation's pid check), when that differs from argv[0]."""
        old = self.procs.get(name)
        if old is not None and old.alive():
            raise ProcessError(f"process {name} is already running (pid {old.pid})")
        log = self.logs / f"{name}.log"
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with open(log, "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
            out.flush()
            try:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    cwd=str(cwd) if cwd else None,
                    start_new_session=True,
                    preexec_fn=die_with_parent if self.die_with_parent else None,
                )
            except OSError as e:
                raise ProcessError(f"cannot start {name} ({argv[0]}): {e}") from e
        proc = Proc(name, popen.pid, argv, log, self._next_seq(), popen, program)
        self.procs[name] = proc
        (self.pids / f"{name}.json").write_text(
            json.dumps({"name": name, "pid": popen.pid, "argv": argv, "log": str(log), "seq": proc.seq,
                        "program": program})
        )
        return proc

    def get(self, name: str) -> Proc:
        try:
            return self.procs[name]
        except KeyError:
            raise ProcessError(f"no process named {name} in {self.pids}") from None

    def send_signal(self, name: str, sig: int) -> None:
        proc = self.get(name)
        if proc.alive():
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, name: str, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Stops one process group: `sig`, then SIGKILL after `timeout` seconds."""
        proc = self.procs.get(name)
        if proc is None:
            return
        was_alive = proc.alive()
        if was_alive:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while proc.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.alive() and sig != signal.SIGKILL:
                progress.warn(f"{name} (pid {proc.pid}) ignored signal {sig} for {timeout:.0f}s; killing it")
            if proc.alive():
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + 5
                while proc.alive() and time.monotonic() < deadline:
                    time.sleep(0.1)
        if proc.popen is not None:
            try:
                proc.popen.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        # The group may hold children that outlived the leader. Linux does not reuse a pid
        # while a process group of that id exists, so this signal cannot reach a stranger.
        if was_alive:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        (self.pids / f"{name}.json").unlink(missing_ok=True)
        self.procs.pop(name, None)

    def kill(self, name: str) -> None:
        """SIGKILL, no grace: a crash as the resilience scenarios need it."""
        self.stop(name, timeout=0.0, sig=signal.SIGKILL)

    def stop_all(self, timeout: float = 10.0) -> list[str]:
        """Stops every known process in reverse start order; returns the names stopped."""
        stopped = []
        for proc in sorted(self.procs.values(), key=lambda p: p.seq, reverse=True):
            was_alive = proc.alive()
            self.stop(proc.name, timeout)
            if was_alive:
                stopped.append(proc.name)
        self.procs.clear()
        return stopped

    def running(self) -> list[Proc]:
        return [p for p in sorted(self.procs.values(), key=lambda p: p.seq) if p.alive()]

    def dead(self) -> list[Proc]:
        return [p for p in sorted(self.procs.values(), key=lambda p: p.seq) if not p.alive()]
