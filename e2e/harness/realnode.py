"""A real node: kubelet v1.37.2 and containerd v2.4.2 (runc from the distribution) join the
local control plane as node `real1`, and the driver's node agent runs there as the DaemonSet's
pod, from an image built locally and deployed with the kustomize overlay for simulated devices
(`kustomize/simulated`: the agent builds its own device tree).

Isolation (nothing on the host changes, everything goes on `cluster.py down`):
- a holder process (`ns-<node>`) owns a private mount namespace; containerd and the kubelet
  join it with nsenter. Inside it, a tmpfs covers /run (containerd's shim sockets, runc state)
  and files holding the kubelet's wanted values are bind-mounted over the kernel sysctls the
  kubelet would otherwise rewrite (`vm.overcommit_memory`, `kernel.panic`, ...): with
  `protectKernelDefaults` it then only reads them. When the last process of the namespace
  exits, its mounts are gone;
- every directory (containerd root and state, kubelet root, pod logs, CNI config, images) is
  under `<state>/nodes/<node>/`; the kubelet listens on a free port;
- containers are stopped through containerd before it stops, and shims that outlive it are
  found by the containerd address on their command line and killed by pid.

Images: no registry is reachable, so OCI archives are built here (the pause program of
`e2e/realnode/pause`, busybox from `busybox-static`, the driver from our binary and the
libraries it links) and imported with `ctr -n k8s.io images import`.
"""

import base64
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

from harness import builds, controlplane, nodes, progress
from harness.builds import REPO, BuildError

NODE = "real1"
CONTAINERD_VERSION = "v2.4.2"
PAUSE_IMAGE = "localhost/mock-accel/pause:1"
BUSYBOX_IMAGE = "localhost/mock-accel/busybox:1"
APT_PACKAGES = {"runc": "/usr/sbin/runc", "containernetworking-plugins": "/usr/lib/cni/loopback",
                "busybox-static": "/bin/busybox"}
# The kubelet's kernel tunables (pkg/kubelet/cm/container_manager_linux.go, setupKernelTunables).
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}


class RealNodeError(RuntimeError):
    pass


# ---- prerequisites and builds ---------------------------------------------------------------

def ensure_packages() -> None:
    missing = [p for p, f in APT_PACKAGES.items() if not Path(f).exists()]
    if not missing:
        return
    progress.step(f"installing {' '.join(missing)} (apt-get)")
    for argv in (["apt-get", "install", "-y", *missing],):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if r.returncode != 0:
            raise RealNodeError(f"`{' '.join(argv)}` failed: {r.stderr.strip()[-800:]}; "
                                "install the packages by hand (the real node needs runc, the CNI plugins and busybox)")


def kubelet_bin() -> Path:
    lines = builds._stream(["bash", str(REPO / "e2e/k8sbins/build.sh"), "kubelet"], "kubelet")
    exe = Path(lines[-1]) / "kubelet" if lines else None
    if not exe or not exe.is_file():
        raise BuildError(f"e2e/k8sbins/build.sh kubelet did not produce a kubelet (got {lines[-1:]!r})")
    return exe


def containerd_bin_dir() -> Path:
    lines = builds._stream(["bash", str(REPO / "e2e/realnode/build-containerd.sh")], "containerd")
    d = Path(lines[-1]) if lines else None
    if not d or not (d / "containerd").is_file():
        raise BuildError(f"e2e/realnode/build-containerd.sh did not produce containerd (got {lines[-1:]!r})")
    return d


def pause_bin() -> Path:
    src = REPO / "e2e/realnode/pause"
    key = hashlib.sha256((src / "main.go").read_bytes() + (src / "go.mod").read_bytes()).hexdigest()[:12]
    out = Path(os.environ.get("MOCK_ACCEL_CACHE", "/var/cache/mock-accel")) / "pause" / key / "pause"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out), "."], cwd=src,
                           capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local"))
        if r.returncode != 0:
            raise BuildError(f"building the pause program in {src} failed: {r.stderr.strip()[-800:]}")
    return out


# ---- OCI image archives ---------------------------------------------------------------------

def _blob(out: tarfile.TarFile, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_archive(path: Path, ref: str, files: dict[str, Path], symlinks: dict[str, str],
                entrypoint: list[str] | None) -> None:
    """Writes an OCI image layout archive of one uncompressed layer: `files` maps the path in
    the image to a host file, `symlinks` a path in the image to its target."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()
        for p in list(files) + list(symlinks):
            parts = Path(p.lstrip("/")).parts[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
        for p, src in sorted(files.items()):
            data = src.read_bytes()
            info = tarfile.TarInfo(p.lstrip("/"))
            info.size, info.mode = len(data), 0o755
            t.addfile(info, io.BytesIO(data))
        for p, target in sorted(symlinks.items()):
            info = tarfile.TarInfo(p.lstrip("/"))
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            t.addfile(info)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], **({"Entrypoint": entrypoint} if entrypoint else {})},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    with tarfile.open(path, "w") as out:
        layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(out, layer_bytes)}
        config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                       **_blob(out, json.dumps(config).encode())}
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_desc, "layers": [layer_desc]}
        manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                         **_blob(out, json.dumps(manifest).encode()),
                         "platform": {"architecture": "amd64", "os": "linux"},
                         "annotations": {"io.containerd.image.name": ref,
                                         "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]}}
        for name, data in (("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
                           ("index.json", json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def _stripped(binary: Path, out: Path) -> Path:
    """A copy of `binary` without symbols at `out` (a plain copy where `strip` fails)."""
    r = subprocess.run(["strip", "-o", str(out), str(binary)], capture_output=True, timeout=300)
    if r.returncode != 0:
        shutil.copy2(binary, out)
    return out


def linked_libraries(binary: Path) -> dict[str, Path]:
    """The shared libraries `binary` links (ldd), by the path the loader looks them up at."""
    r = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30)
    libs = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs[parts[2]] = Path(parts[2]).resolve()
        elif parts and parts[0].startswith("/"):
            libs[parts[0]] = Path(parts[0]).resolve()
    return libs


def image_name(kustomization: Path) -> str:
    """The image reference the overlay deploys (`images[].newName:newTag`), normalised as
    containerd stores it."""
    name, tag = None, None
    for line in kustomization.read_text().splitlines():
        s = line.strip()
        if s.startswith("newName:"):
            name = s.split(":", 1)[1].strip()
        elif s.startswith("newTag:"):
            tag = s.split(":", 1)[1].strip()
    if not name:
        raise RealNodeError(f"{kustomization}: no images[].newName; cannot tell which image to import")
    ref = f"{name}:{tag or 'latest'}"
    first = ref.split("/", 1)[0]
    if "/" not in ref:
        return f"docker.io/library/{ref}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{ref}"
    return ref


# ---- the node -------------------------------------------------------------------------------

def node_ip() -> str:
    """The address the kubelet reports and listens on: the source address of the default route
    (a loopback node IP is refused by the kubelet)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))
        return s.getsockname()[0]
    except OSError:
        raise RealNodeError("no non-loopback IPv4 address (default route) for the kubelet's node IP") from None
    finally:
        s.close()


class RealNode:
    def __init__(self, cluster, name: str = NODE):
        self.c = cluster
        self.name = name
        self.root = cluster.state / "nodes" / name
        self.sock = self.root / "containerd" / "containerd.sock"

    @property
    def info(self) -> dict:
        return self.c.info.setdefault("real_nodes", {}).setdefault(self.name, {})

    @property
    def paths(self) -> nodes.NodePaths:
        return nodes.layout(self.c.state, self.name)

    def dirs(self) -> dict[str, Path]:
        d = {k: self.root / k for k in ("containerd", "containerd-root", "cni", "pod-logs", "sysctl", "images")}
        for p in d.values():
            p.mkdir(parents=True, exist_ok=True)
        paths = self.paths
        # The kubelet's root: the plugin sockets live below it, so it may be a short /tmp path.
        d.update({"kubelet": paths.kubelet, "sys": paths.sys, "dev": paths.dev, "cdi": paths.cdi})
        return d

    def ctr(self, *args: str, timeout: float = 120) -> str:
        argv = ["nsenter", f"--target={self.c.sup.get(f'ns-{self.name}').pid}", "--mount", "--",
                str(Path(self.info["containerd_bin"]) / "ctr"), f"--address={self.sock}", "-n", "k8s.io", *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RealNodeError(f"ctr {' '.join(args)} on {self.name} failed: {r.stderr.strip()[-600:]}")
        return r.stdout

    def start(self, driver: Path, kubelet: Path, containerd: Path, pause: Path) -> None:
        d = self.dirs()
        self.info.update({"containerd_bin": str(containerd), "kubelet_bin": str(kubelet),
                          "kubelet_port": controlplane.free_port(), "healthz_port": controlplane.free_port(),
                          "ip": node_ip()})
        self.c.save()
        # Sysctl stand-ins: the kubelet's values in files bind-mounted over /proc/sys inside the
        # namespace, only where the host differs (a bind over an equal value changes nothing).
        binds = []
        for key, want in KUBELET_SYSCTLS.items():
            host = Path("/proc/sys") / key
            try:
                if host.read_text().strip() == want:
                    continue
            except OSError:
                continue
            f = d["sysctl"] / key.replace("/", ".")
            f.write_text(want + "\n")
            binds.append(f"mount --bind {f} {host}")
        script = " && ".join(["mount -t tmpfs -o mode=755 tmpfs /run", *binds, "exec sleep infinity"])
        self.c.sup.start(f"ns-{self.name}", ["unshare", "--mount", "--propagation", "private", "--",
                                             "/bin/sh", "-c", script], program="sleep")
        time.sleep(0.5)
        holder = self.c.sup.get(f"ns-{self.name}")
        if not holder.alive():
            raise RealNodeError(f"the mount namespace holder of {self.name} exited: {holder.log_tail(5)}")
        self._write_cni(d["cni"])
        cfg = self._containerd_config(d)
        path = os.pathsep.join([str(containerd), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        self.c.sup.start(f"containerd-{self.name}", self._nsenter(str(containerd / "containerd"), f"--config={cfg}"),
                         env={"PATH": path}, program="containerd")
        self._wait_socket(self.sock, f"containerd-{self.name}")
        self._import_images(d["images"], driver, pause)
        kcfg = self._kubelet_config(d)
        progress.step(f"{self.name}: starting kubelet {kubelet}")
        self.c.sup.start(f"kubelet-{self.name}", self._nsenter(
            str(kubelet), f"--config={kcfg}", f"--kubeconfig={self.c.kubeconfig}",
            f"--hostname-override={self.name}", f"--node-ip={self.info['ip']}",
            f"--root-dir={d['kubelet']}", f"--cert-dir={d['kubelet'] / 'pki'}", "--v=2"), env={"PATH": path}, program="kubelet")

    def _nsenter(self, *argv: str) -> list[str]:
        return ["nsenter", f"--target={self.c.sup.get(f'ns-{self.name}').pid}", "--mount", "--", *argv]

    def _wait_socket(self, sock: Path, proc: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.c.sup.get(proc)
            if not p.alive():
                raise RealNodeError(f"{proc} exited; log {p.log}:\n{p.log_tail(15)}")
            if sock.is_socket():
                return
            time.sleep(0.2)
        raise RealNodeError(f"{proc}: no socket {sock} within {timeout:.0f}s; log {self.c.sup.get(proc).log}")

    def _write_cni(self, cni: Path) -> None:
        # Loopback only: the node's pods use the host network; the runtime still needs a CNI
        # config to report NetworkReady.
        (cni / "10-loopback.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "mock-accel-loopback",
            "plugins": [{"type": "loopback"}]}, indent=2))

    def _containerd_config(self, d: dict[str, Path]) -> Path:
        cfg = d["containerd"] / "config.toml"
        cfg.write_text(f"""version = 3
root = "{d['containerd-root']}"
state = "{d['containerd'] / 'state'}"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.sock}"

[ttrpc]
  address = "{self.sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

# The native snapshotter copies instead of overlay-mounting: the images here are small, and it
# works on any filesystem under the state directory.
[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
  platform = "linux/amd64"
  snapshotter = "native"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "native"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  enable_cdi = true
  cdi_spec_dirs = ["{d['cdi']}"]
  # No CAP_SYS_RESOURCE in this environment: containers may not lower their OOM score below
  # containerd's own.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{d['cni']}"
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
""")
        return cfg

    def _import_images(self, images: Path, driver: Path, pause: Path) -> None:
        stripped = _stripped(driver, images / "mock-accel-dra")
        # The DaemonSet runs mock-accel-node-agent (config/node-agent.yaml). It takes the same
        # arguments as mock-accel-dra, so a driver built without it (MOCK_ACCEL_DRA_BIN naming
        # a lone binary) stands in for it.
        agent = builds.node_agent_beside(driver)
        if agent is None:
            progress.step(f"{self.name}: no {builds.NODE_AGENT} beside {driver}; the image runs {driver.name} under its name")
        agent_stripped = _stripped(agent or driver, images / builds.NODE_AGENT)
        driver_ref = image_name(REPO / "kustomize/default/kustomization.yaml")
        libs = {p: src for p, src in linked_libraries(driver).items()}
        bb = Path("/bin/busybox")
        archives = {
            PAUSE_IMAGE: (images / "pause.tar", {"/pause": pause}, {}, ["/pause"]),
            BUSYBOX_IMAGE: (images / "busybox.tar", {"/bin/busybox": bb},
                            {f"/bin/{a}": "busybox" for a in ("sh", "env", "sleep", "cat", "ls", "echo", "true")}, None),
            driver_ref: (images / "driver.tar", {"/usr/local/bin/mock-accel-dra": stripped,
                                                 f"/usr/local/bin/{builds.NODE_AGENT}": agent_stripped, **libs}, {},
                         ["/usr/local/bin/mock-accel-dra"]),
        }
        for ref, (tar, files, links, entry) in archives.items():
            oci_archive(tar, ref, files, links, entry)
            self.ctr("images", "import", "--snapshotter=native", "--platform=linux/amd64", str(tar), timeout=600)
            progress.step(f"{self.name}: imported {ref} ({tar.stat().st_size // 1024} KiB)")
        self.ctr("images", "label", PAUSE_IMAGE, "io.cri-containerd.pinned=pinned")
        self.info["driver_image"] = driver_ref
        self.c.save()

    def _kubelet_config(self, d: dict[str, Path]) -> Path:
        cfg = d["kubelet"] / "config.json"
        cfg.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": self.info["ip"], "port": self.info["kubelet_port"],
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.info["healthz_port"],
            "readOnlyPort": 0,
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            # The apiserver's kubelet client is the admin certificate, from the cluster's client CA.
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.c.pki.client_ca)}},
            "authorization": {"mode": "Webhook"},
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [], "failSwapOn": False, "oomScoreAdj": 0,
            "protectKernelDefaults": True,
            "podLogsDir": str(d["pod-logs"]),
            "resolvConf": "/etc/resolv.conf",
            "registerNode": True,
            "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            # The shared disk runs close to the default eviction thresholds; this node must not
            # evict the test pods for a disk it does not own.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "fileCheckFrequency": "0s", "syncFrequency": "10s",
            "nodeStatusReportFrequency": "10s",
            "shutdownGracePeriod": "0s",
            "localStorageCapacityIsolation": False,
        }, indent=2))
        return cfg

    def stop(self) -> None:
        """Stops the kubelet, every container through containerd, containerd, shims that
        outlived it, and the namespace holder (its mounts go with it)."""
        sup = self.c.sup
        sup.stop(f"kubelet-{self.name}")
        containers: list[str] = []
        if f"containerd-{self.name}" in sup.procs and sup.get(f"containerd-{self.name}").alive():
            try:
                containers = self.ctr("containers", "ls", "-q", timeout=30).split()
                for task in self.ctr("tasks", "ls", "-q", timeout=30).split():
                    subprocess.run(self._nsenter(str(Path(self.info["containerd_bin"]) / "ctr"), f"--address={self.sock}",
                                                 "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", task),
                                   capture_output=True, timeout=30)
            except (RealNodeError, subprocess.TimeoutExpired, KeyError) as e:
                progress.warn(f"{self.name}: could not stop containers through containerd: {e}")
        sup.stop(f"containerd-{self.name}")
        for pid in shim_pids(self.sock):
            try:
                os.killpg(pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        sup.stop(f"ns-{self.name}")
        # Without per-QoS cgroups the kubelet names no cgroup parent, and containerd puts each
        # container at `/k8s.io/<container id>` in every hierarchy: remove this node's.
        for c in containers:
            remove_cgroups(f"/k8s.io/{c}")
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            try:
                (hierarchy / "k8s.io").rmdir()  # only when empty: another containerd may use it
            except OSError:
                pass


def remove_cgroups(root: str) -> None:
    """Removes the cgroup `root` (and everything below it) in every hierarchy, deepest first;
    a cgroup that still holds a process stays, with a warning."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / root.lstrip("/")
        if not top.is_dir():
            continue
        for d, _subdirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                os.rmdir(d)
            except OSError as e:
                progress.warn(f"cgroup {d} not removed: {e}")


def shim_pids(sock: Path) -> list[int]:
    """containerd-shim-runc-v2 processes started for the containerd at `sock` (the address is on
    their command line)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(sock).encode() in b" ".join(argv):
            out.append(int(p.name))
    return out


def overlay(cluster, node: RealNode, index: int) -> Path:
    """A kustomize overlay on `kustomize/simulated` (the users' overlay for nodes without the
    kernel module: `node-agent --simulate`, image name from kustomize/default) with what this
    test node needs: the node agent on the host network (the node's pods get loopback only)
    reaching the apiserver on 127.0.0.1, on this node only, with its simulated tree (`sys/`,
    built by the agent), /dev, CDI and kubelet directories mounted at the same paths inside and
    outside (the CDI specs and the registration name host paths), and a free metrics port."""
    p = node.paths
    port = node.info.setdefault("agent_metrics_port", controlplane.free_port())
    cluster.save()
    base = "/spec/template/spec"
    ctr = f"{base}/containers/0"
    vols = [("sim", p.sys), ("dev", p.dev), ("plugins-registry", p.registry_dir), ("plugin-dir", p.plugin_dir),
            ("cdi", p.cdi)]
    ops: list[dict] = [
        {"op": "add", "path": f"{base}/hostNetwork", "value": True},
        {"op": "add", "path": f"{base}/dnsPolicy", "value": "ClusterFirstWithHostNet"},
        {"op": "add", "path": f"{base}/nodeSelector", "value": {"kubernetes.io/hostname": node.name}},
        {"op": "test", "path": f"{ctr}/ports/0/name", "value": "metrics"},
        {"op": "replace", "path": f"{ctr}/ports/0/containerPort", "value": port},
        {"op": "add", "path": f"{ctr}/env/-", "value": {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}},
        {"op": "add", "path": f"{ctr}/env/-",
         "value": {"name": "KUBERNETES_SERVICE_PORT", "value": str(cluster.info["ports"]["apiserver"])}},
        {"op": "add", "path": f"{ctr}/args/-", "value": f"--metrics-addr={node.info['ip']}:{port}"},
        {"op": "test", "path": f"{ctr}/args/2", "value": "--sim-root=/var/run/mock-accel/sim"},
        {"op": "replace", "path": f"{ctr}/args/2", "value": f"--sim-root={p.sys}"},
        {"op": "add", "path": f"{ctr}/args/-", "value": f"--sim-node-index={index}"},
        {"op": "add", "path": f"{ctr}/args/-", "value": f"--dev-root={p.dev}"},
        {"op": "add", "path": f"{ctr}/args/-", "value": f"--cdi-dir={p.cdi}"},
        {"op": "add", "path": f"{ctr}/args/-", "value": f"--registry-dir={p.registry_dir}"},
        {"op": "add", "path": f"{ctr}/args/-", "value": f"--plugin-dir={p.plugin_dir}"},
    ]
    for i, (name, path) in enumerate(vols):
        ops += [{"op": "test", "path": f"{base}/volumes/{i}/name", "value": name},
                {"op": "test", "path": f"{ctr}/volumeMounts/{i}/name", "value": name},
                {"op": "replace", "path": f"{base}/volumes/{i}/hostPath/path", "value": str(path)},
                {"op": "replace", "path": f"{ctr}/volumeMounts/{i}/mountPath", "value": str(path)}]
    d = cluster.state / "kustomize-real-node"
    d.mkdir(parents=True, exist_ok=True)
    (d / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(REPO / "kustomize/simulated", d)],
        "patches": [{"target": {"kind": "DaemonSet", "name": "mock-accel-node-agent"}, "patch": json.dumps(ops)}],
    }, indent=2))
    return d


# The longest socket path the agent binds (sun_path is 108 bytes with its terminating NUL).
MAX_SOCKET_PATH = 107


def registration_socket_name(registry_dir: Path, driver: str, pod_uid: str) -> str:
    """The registration socket's name an agent started with `--pod-uid` binds in
    `registry_dir`: the kubelet plugin library's order of preference, the first whose full path
    fits. Written here from that contract, not from the agent's code, so that a scenario
    checks the agent against it."""
    def digest(data: bytes, n: int) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()[:n]).decode().rstrip("=")

    driver_uid = driver.encode() + b"\0" + pod_uid.encode()
    candidates = [f"{driver}-{pod_uid}-reg.sock",
                  f"{driver}-{digest(pod_uid.encode(), 8)}-reg.sock",
                  f"dra-{digest(driver_uid, 16)}-reg.sock"]
    return next((c for c in candidates if len(str(registry_dir / c)) <= MAX_SOCKET_PATH), candidates[-1])


def agent_pod(cluster, node: str) -> dict | None:
    pods = cluster.kubectl.items("pods", namespace="mock-device", field_selector=f"spec.nodeName={node}")
    pods = [p for p in pods if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "node-agent"
            and not p["metadata"].get("deletionTimestamp")]
    return pods[0] if pods else None


def wait_agent_ready(cluster, node: str, timeout: float = 120, not_uid: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    last = "no pod"
    while time.monotonic() < deadline:
        p = agent_pod(cluster, node)
        if p is not None and p["metadata"]["uid"] != not_uid:
            conds = {c["type"]: c["status"] for c in (p.get("status") or {}).get("conditions") or []}
            if conds.get("Ready") == "True":
                return p
            last = f"pod {p['metadata']['name']}: phase {(p.get('status') or {}).get('phase')}, conditions {conds}, " \
                   f"containers {(p.get('status') or {}).get('containerStatuses')}"
        time.sleep(1)
    raise RealNodeError(f"{node}: the node agent pod of DaemonSet mock-device/mock-accel-node-agent is not Ready "
                        f"within {timeout:.0f}s ({last}); kubelet log {cluster.state / 'logs' / f'kubelet-{node}.log'}")


def add(cluster, name: str = NODE) -> RealNode:
    """Builds what is missing, starts the node, deploys the driver's DaemonSet there and waits
    until the agent pod is Ready and its devices are published."""
    started = time.monotonic()
    ensure_packages()
    kubelet = kubelet_bin()
    containerd = containerd_bin_dir()
    pause = pause_bin()
    node = RealNode(cluster, name)
    index = len(cluster.info.get("nodes", {})) + 1
    paths = node.paths
    progress.step(f"{name}: the node agent simulates its devices (--simulate, node index {index}) in {paths.sys}")
    node.start(cluster.binaries.driver, kubelet, containerd, pause)
    cluster.wait_node_ready(name, timeout=120)
    d = overlay(cluster, node, index)
    progress.step(f"{name}: kubectl apply -k {d} (kustomize/simulated, image {node.info['driver_image']})")
    cluster.kubectl.run("apply", "-k", str(d))
    p = wait_agent_ready(cluster, name)
    progress.step(f"{name}: node agent pod {p['metadata']['name']} Ready")
    cluster.wait_published(name, nodes.CANONICAL_DEVICES, timeout=90)
    progress.step(f"{name}: real node up in {time.monotonic() - started:.0f}s")
    return node


def remove_all(cluster) -> list[str]:
    """Stops every real node of the cluster (containers first) and removes its /tmp directory;
    returns the names of the processes that ran."""
    stopped = []
    for name in list(cluster.info.get("real_nodes", {})):
        node = RealNode(cluster, name)
        stopped += [p.name for p in cluster.sup.running()
                    if p.name in (f"kubelet-{name}", f"containerd-{name}", f"ns-{name}", f"kernel-{name}")]
        if f"ns-{name}" in cluster.sup.procs:
            node.stop()
        cluster.sup.stop(f"kernel-{name}")
        kubelet = cluster.state / "nodes" / name / "kubelet"
        if kubelet.is_symlink() and os.readlink(kubelet).startswith("/tmp/mock-accel-"):
            shutil.rmtree(os.readlink(kubelet), ignore_errors=True)
    return stopped
