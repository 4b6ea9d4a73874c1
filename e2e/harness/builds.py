"""The binaries the harness runs, built when missing, with the builds' progress streamed.

- control plane: `e2e/k8sbins/build.sh` prints the bin directory last (cached per version);
- fake kubelet: `e2e/fakelet/build.sh` prints the fakelet binary path last;
- `mock-accel-dra`: `cargo build`, the path taken from cargo's JSON messages.

Each can be overridden by an environment variable pointing at a ready binary or directory:
`K8S_BIN_DIR`, `FAKELET_BIN`, `MOCK_ACCEL_DRA_BIN`. `MOCK_ACCEL_PROFILE=release` builds the
driver in release mode (default: debug, which shares the unit tests' dependency builds).
"""

import json
import os
import subprocess
import threading
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


def _stream(argv: list[str], label: str, env: dict | None = None, timeout: float = 3600) -> list[str]:
    """Runs a build, echoing its stderr as progress, and returns its stdout lines."""
    progress.step(f"{label}: {' '.join(argv)}")
    full_env = dict(os.environ, **(env or {}))
    try:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=full_env, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise BuildError(f"{label}: cannot run {argv[0]}: {e}") from e
    tail: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip()
            tail.append(line)
            del tail[:-30]
            progress.detail(f"{label}: {line}")

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise BuildError(f"{label}: no result after {timeout:.0f}s") from None
    except KeyboardInterrupt:
        proc.terminate()
        raise
    t.join(timeout=5)
    if proc.returncode != 0:
        raise BuildError(f"{label} failed (exit {proc.returncode}); last output:\n" + "\n".join(tail[-15:]))
    return [line for line in out.splitlines() if line.strip()]


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


def driver() -> Path:
    override = os.environ.get("MOCK_ACCEL_DRA_BIN")
    if override:
        return Path(override)
    # Debug: the same `--all-targets` build as the tests (`make bin`), so after `make test` only
    # a link remains; a plain `cargo build` would resolve other dependency features and rebuild
    # the whole tree.
    argv = ["cargo", "build", "--locked", "--message-format=json-render-diagnostics"]
    argv += ["--release", "--bin", "mock-accel-dra"] if os.environ.get("MOCK_ACCEL_PROFILE") == "release" \
        else ["--all-targets"]
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
    k8s = k8s_bin_dir()
    if not need_nodes:
        return Binaries(k8s, None, None)
    return Binaries(k8s, fakelet(), driver())
