"""Simulated nodes: a sysfs tree, kubelet directories and a CDI directory per node.

Layout under `<state>/nodes/<node>/`:
    sys/         the simulated sysfs root (`class/mock-accel/<name>/status` is the register)
    dev/         device nodes (`/dev/<sysfs name>` stand-ins)
    cdi/         the node's CDI spec directory
    kubelet/     plugins_registry/ (registration socket), plugins/<driver>/ (dra.sock, checkpoint),
                 dra_manager_state and dra_health_state (the kubelet DRA manager's checkpoints)
    containers/  what each container would receive: <namespace>_<pod>_<container>.json

The simulator's command line is built in exactly five functions, `create_sysfs`,
`kernel_argv`, `set_num_vfs`, `add_device` and `remove_device`: if `mock-accel-dra sim`
changes, only they change.
"""

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.kube import DRIVER

# Unix socket paths are limited to 108 bytes (with the terminating NUL); keep a margin.
_MAX_SOCKET_PATH = 100
_SOCKETS = (f"plugins_registry/{DRIVER}-reg.sock", f"plugins/{DRIVER}/dra.sock")

# Topologies the harness knows. `canonical`: the shipped static-function layout, 6 devices
# (2 PFs, 4 VFs, NUMA 0 and 1). `sriov`: PFs only, VFs created at run time through
# `sriov_numvfs` (named mock<P>_vf<I>, with a physfn link).
CANONICAL_DEVICES = 6


class NodeError(RuntimeError):
    pass


@dataclass
class NodePaths:
    root: Path
    kubelet_real: Path

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    @property
    def cdi(self) -> Path:
        return self.root / "cdi"

    @property
    def kubelet(self) -> Path:
        """The kubelet directory as the processes see it (may be a short path, see `layout`)."""
        return self.kubelet_real

    @property
    def registry_dir(self) -> Path:
        return self.kubelet_real / "plugins_registry"

    @property
    def plugin_dir(self) -> Path:
        return self.kubelet_real / "plugins" / DRIVER

    @property
    def containers(self) -> Path:
        return self.root / "containers"

    def class_dir(self, sysfs_name: str) -> Path:
        return self.sys / "class" / "mock-accel" / sysfs_name


def layout(state: Path, node: str) -> NodePaths:
    """Creates the node's directories. When the state directory is so deep that the plugin's
    sockets would not fit in a Unix socket path, the kubelet directory lives under /tmp and
    `<node>/kubelet` is a symlink to it."""
    root = state / "nodes" / node
    for d in ("sys", "dev", "cdi", "containers"):
        (root / d).mkdir(parents=True, exist_ok=True)
    kubelet = root / "kubelet"
    if kubelet.is_symlink():
        real = Path(os.readlink(kubelet))
    elif max(len(str(kubelet / s)) for s in _SOCKETS) > _MAX_SOCKET_PATH:
        real = Path(f"/tmp/mock-accel-{hashlib.sha1(str(state).encode()).hexdigest()[:8]}-{node}")
        real.mkdir(parents=True, exist_ok=True)
        kubelet.symlink_to(real)
    else:
        real = kubelet
    paths = NodePaths(root, real)
    paths.registry_dir.mkdir(parents=True, exist_ok=True)
    paths.plugin_dir.mkdir(parents=True, exist_ok=True)
    return paths


def _sim(driver: Path, args: list[str]) -> str:
    argv = [str(driver), "sim", *args]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise NodeError(f"cannot run {argv[0]}: {e}") from e
    if res.returncode != 0:
        raise NodeError(f"`{' '.join(argv)}` failed (exit {res.returncode}): {res.stderr.strip()}")
    return res.stdout


def create_sysfs(driver: Path, paths: NodePaths, topology: str, node_index: int) -> None:
    """Creates the node's simulated sysfs tree (the one place that calls `sim create`)."""
    _sim(driver, ["create", "--root", str(paths.sys), "--dev-root", str(paths.dev),
                  "--topology", topology, "--node-index", str(node_index)])


def kernel_argv(driver: Path, paths: NodePaths) -> list[str]:
    """The simulator's stand-in for the kernel module: applies the kernel's reaction to writes
    (status normalised to 0x%08x, sriov_numvfs creating and removing VFs)."""
    return [str(driver), "sim", "watch", "--root", str(paths.sys), "--dev-root", str(paths.dev)]


def set_num_vfs(driver: Path, paths: NodePaths, pf_sysfs_name: str, count: int) -> None:
    """Writes `sriov_numvfs` of a PF the way the kernel driver reacts to it: creates or removes
    the VFs (the one place that calls the simulator for runtime VFs)."""
    _sim(driver, ["set-numvfs", "--root", str(paths.sys), "--dev-root", str(paths.dev),
                  "--device", pf_sysfs_name, "--count", str(count)])


def add_device(driver: Path, paths: NodePaths, name: str, bdf: str, numa_node: int, kind: str = "pf") -> None:
    """Hot-adds a function to the node's tree, as the kernel module does when a device appears."""
    _sim(driver, ["add-device", "--root", str(paths.sys), "--dev-root", str(paths.dev),
                  "--name", name, "--bdf", bdf, "--numa-node", str(numa_node), "--type", kind])


def remove_device(driver: Path, paths: NodePaths, name: str) -> None:
    """Hot-removes a function (and, for a PF, its VFs) from the node's tree."""
    _sim(driver, ["remove-device", "--root", str(paths.sys), "--dev-root", str(paths.dev),
                  "--device", name])


def dra_checkpoint(paths: NodePaths) -> dict[str, dict]:
    """The kubelet DRA manager's checkpoint (`<kubelet dir>/dra_manager_state`, written by the
    kubelet's own code in the fake kubelet), by claim UID: {ClaimName, Namespace, PodUIDs,
    DriverState: {driver: {Devices: [{PoolName, DeviceName, RequestNames, CDIDeviceIDs}]}}}."""
    f = paths.kubelet / "dra_manager_state"
    if not f.is_file():
        return {}
    outer = json.loads(f.read_text())
    data = json.loads(outer["Data"])
    return {e["ClaimUID"]: e for e in data.get("ClaimInfoStateList") or []}


def read_register(paths: NodePaths, sysfs_name: str) -> int:
    """The status register as the kernel prints it (`0x%08x`), parsed; decimal also accepted."""
    text = (paths.class_dir(sysfs_name) / "status").read_text().strip()
    return int(text, 0)


def write_register(paths: NodePaths, sysfs_name: str, value: int) -> None:
    """Sets a register in the kernel's output format, as a device reset would."""
    (paths.class_dir(sysfs_name) / "status").write_text(f"0x{value:08x}\n")


def sysfs_names(paths: NodePaths) -> list[str]:
    d = paths.sys / "class" / "mock-accel"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def read_attr(paths: NodePaths, sysfs_name: str, attr: str) -> str:
    return (paths.class_dir(sysfs_name) / attr).read_text().strip()


def cdi_specs(paths: NodePaths) -> dict[str, str]:
    """CDI spec files of the node: file name → content."""
    out = {}
    for f in sorted(paths.cdi.iterdir()) if paths.cdi.is_dir() else []:
        if f.is_file() and f.suffix in (".json", ".yaml", ".yml"):
            out[f.name] = f.read_text(errors="replace")
    return out


def container_edits(paths: NodePaths, namespace: str, pod: str, container: str) -> dict | None:
    f = paths.containers / f"{namespace}_{pod}_{container}.json"
    if not f.is_file():
        return None
    return json.loads(f.read_text())


def env_map(edits: dict) -> dict[str, str]:
    """`env` of a container edit, as a dict, whether recorded as KEY=VALUE strings or a map."""
    env = edits.get("env") or []
    if isinstance(env, dict):
        return {str(k): str(v) for k, v in env.items()}
    out = {}
    for item in env:
        if isinstance(item, str) and "=" in item:
            k, v = item.split("=", 1)
            out[k] = v
        elif isinstance(item, dict) and "name" in item:
            out[item["name"]] = str(item.get("value", ""))
    return out
