"""The binaries the harness runs, built when missing, with the builds' progress streamed.

- control plane: `e2e/k8sbins/build.sh` prints the bin directory last (cached per version);
- fake kubelet: `e2e/fakelet/build.sh` prints the fakelet binary path last;
- `mock-accel-dra`: `cargo build`, the path taken from cargo's JSON messages.

The Go builds cache under `MOCK_ACCEL_CACHE`, else `/var/cache/mock-accel` when writable, else
`${XDG_CACHE_HOME:-~/.cache}/mock-accel` (reusing binaries a readable `/var/cache/mock-accel`
already holds); `e2e/cache.sh` decides and the harness prints the choice.

Each can be overridden by an environment variable pointing at a ready binary or directory:
`K8S_BIN_DIR`, `FAKELET_BIN`, `MOCK_ACCEL_DRA_BIN`. `MOCK_ACCEL_PROFILE=release` builds the
driver in release mode (default: debug, which shares the unit tests' dependency builds).
"""

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness import progress

REPO = Path(__file__).resolve().parents[2]
K8S_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


class BuildError(RuntimeError):
    pass


@dataclass
class Binaries:
    k8s: Path
    fakelet: Path | None
    driver: Path | None

    def k(self, name: str) -> Path:
        return self.k8s / name

    @property
    def kubectl(self) -> Path:
        return self.k8s / "kubectl"

    def to_json(self) -> dict:
        return {"k8s": str(self.k8s), "fakelet": str(self.fakelet) if self.fakelet else None,
                "driver": str(self.driver) if self.driver else None}

    @staticmethod
    def from_json(d: dict) -> "Binaries":
        return Binaries(Path(d["k8s"]), Path(d["fakelet"]) if d.get("fakelet") else None,
                        Path(d["driver"]) if d.get("driver") else None)


class _Summary:
    """Counts a build's routine lines (`go: downloading ...`, cargo's `Compiling ...`) and
    prints one line about them at most every `every` seconds, instead of hundreds of lines."""

    def __init__(self, label: str, what: str, every: float = 20.0):
        self.label, self.what, self.every = label, what, every
        self.count, self.last, self.printed_at = 0, "", time.monotonic()
        self.lock = threading.Lock()

    def add(self, item: str) -> None:
        with self.lock:
            self.count += 1
            self.last = item
            if time.monotonic() - self.printed_at >= self.every:
                self._print()

    def _print(self) -> None:
        self.printed_at = time.monotonic()
        progress.detail(f"{self.label}: {self.count} {self.what} so far (latest: {self.last})")

    def finish(self) -> None:
        with self.lock:
            if self.count:
                progress.detail(f"{self.label}: {self.count} {self.what}")


# Routine lines of a build, summarised rather than echoed: prefix -> what they count.
_ROUTINE = {
    "go: downloading ": "Go modules downloaded",
    "Compiling ": "crates compiled",
    "Downloaded ": "crates downloaded",
}


def _stream(argv: list[str], label: str, env: dict | None = None, timeout: float = 3600) -> list[str]:
    """Runs a build, echoing its stderr as whole progress lines (routine lines summarised), and
    returns its stdout lines."""
    progress.step(f"{label}: {' '.join(argv)}")
    full_env = dict(os.environ, **(env or {}))
    try:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=full_env, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise BuildError(f"{label}: cannot run {argv[0]}: {e}") from e
    tail: list[str] = []
    out: list[str] = []
    summaries = {prefix: _Summary(label, what) for prefix, what in _ROUTINE.items()}

    # One reader per pipe, and nobody else reads them: two readers of one pipe split its lines.
    def pump_stderr() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            # Universal newlines turn cargo's `\r` progress updates into lines of their own.
            line = raw.rstrip()
            if not line:
                continue
            tail.append(line)
            del tail[:-30]
            stripped = line.lstrip()
            routine = next((p for p in summaries if stripped.startswith(p)), None)
            if routine:
                summaries[routine].add(stripped[len(routine):])
            else:
                progress.detail(f"{label}: {line}")

    def pump_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line.rstrip("\n"))

    readers = [threading.Thread(target=f, daemon=True) for f in (pump_stderr, pump_stdout)]
    for t in readers:
        t.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise BuildError(f"{label}: no result after {timeout:.0f}s") from None
    except KeyboardInterrupt:
        proc.terminate()
        raise
    for t in readers:
        t.join(timeout=5)
    for s in summaries.values():
        s.finish()
    if proc.returncode != 0:
        raise BuildError(f"{label} failed (exit {proc.returncode}); last output:\n" + "\n".join(tail[-15:]))
    return [line for line in out if line.strip()]


def cache_choice() -> dict[str, str]:
    """Which cache root the Go builds use and why (e2e/cache.sh decides; see its header)."""
    try:
        text = subprocess.run(["bash", str(REPO / "e2e/cache.sh")], capture_output=True, text=True,
                              check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"e2e/cache.sh failed: {e}") from e
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def report_cache() -> None:
    if os.environ.get("K8S_BIN_DIR") and os.environ.get("FAKELET_BIN"):
        return
    c = cache_choice()
    progress.step(f"build cache {c.get('root')} ({c.get('reason')})")


def k8s_bin_dir() -> Path:
    override = os.environ.get("K8S_BIN_DIR")
    if override:
        d = Path(override)
    else:
        lines = _stream(["bash", str(REPO / "e2e/k8sbins/build.sh")], "k8sbins")
        if not lines:
            raise BuildError("e2e/k8sbins/build.sh printed no bin directory")
        d = Path(lines[-1])
    missing = [b for b in K8S_BINARIES if not (d / b).is_file()]
    if missing:
        raise BuildError(f"control-plane bin directory {d} lacks {', '.join(missing)}")
    return d


def fakelet() -> Path:
    override = os.environ.get("FAKELET_BIN")
    if override:
        return Path(override)
    script = REPO / "e2e/fakelet/build.sh"
    if not script.is_file():
        raise BuildError(f"{script} does not exist yet: the fake kubelet is needed for simulated nodes")
    lines = _stream(["bash", str(script)], "fakelet")
    if not lines or not Path(lines[-1]).is_file():
        raise BuildError(f"e2e/fakelet/build.sh did not print a binary path (got {lines[-1:]!r})")
    return Path(lines[-1])


# The node agent alone, built beside mock-accel-dra (Cargo.toml); the DaemonSet runs it.
NODE_AGENT = "mock-accel-node-agent"


def node_agent_beside(driver_bin: Path) -> Path | None:
    """mock-accel-node-agent in the directory of `driver_bin`, if it was built there."""
    agent = driver_bin.with_name(NODE_AGENT)
    return agent if agent.is_file() else None


def copy_driver(driver_bin: Path, bin_dir: Path) -> Path:
    """Copies `driver_bin`, and the node agent beside it if built, into `bin_dir`; returns the
    driver's copy. Runs hold copies: a rebuild in the cargo target directory meanwhile (another
    checkout sharing it, a `make test`) must not swap a binary under a process a scenario
    restarts."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    own = bin_dir / driver_bin.name
    shutil.copy2(driver_bin, own)
    agent = node_agent_beside(driver_bin)
    if agent:
        shutil.copy2(agent, bin_dir / agent.name)
    return own


def driver() -> Path:
    override = os.environ.get("MOCK_ACCEL_DRA_BIN")
    if override:
        return Path(override)
    # Debug: the same `--all-targets` build as the tests (`make bin`), so after `make test` only
    # a link remains; a plain `cargo build` would resolve other dependency features and rebuild
    # the whole tree.
    argv = ["cargo", "build", "--locked", "--message-format=json-render-diagnostics"]
    # Both binaries: the DaemonSet of a real node runs mock-accel-node-agent (realnode.py).
    argv += ["--release", "--bin", "mock-accel-dra", "--bin", NODE_AGENT] \
        if os.environ.get("MOCK_ACCEL_PROFILE") == "release" \
        else ["--all-targets"]
    progress.step(f"cargo target directory {os.environ.get('CARGO_TARGET_DIR') or REPO / 'target'}")
    lines = _stream(argv, "cargo")
    exe = None
    for line in lines:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        target = msg.get("target") or {}
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and target.get("name") == "mock-accel-dra" and "bin" in target.get("kind", []) \
                and not (msg.get("profile") or {}).get("test"):
            exe = msg["executable"]
    if not exe:
        raise BuildError("cargo build finished without reporting the mock-accel-dra executable")
    return Path(exe)


def all_binaries(need_nodes: bool) -> Binaries:
    report_cache()
    k8s = k8s_bin_dir()
    if not need_nodes:
        return Binaries(k8s, None, None)
    return Binaries(k8s, fakelet(), driver())
