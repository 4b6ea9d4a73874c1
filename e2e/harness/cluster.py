#!/usr/bin/env python3
"""The local cluster: a real control plane on loopback, simulated nodes, the driver's node
agents and two controller replicas, all as local processes of one state directory.

Importable (`Cluster`) and a command line:

    cluster.py up     [--state DIR] [--nodes node1,node2] [--control-plane-only]
    cluster.py down   [--state DIR]
    cluster.py env    [--state DIR]     shell exports: PATH with kubectl, KUBECONFIG
    cluster.py status [--state DIR]

State directory layout: `kubeconfig` (admin), `cluster.json` (ports, binaries, nodes), `pki/`,
`logs/<process>.log`, `pids/<process>.json`, `identities/` (ServiceAccount kubeconfigs),
`nodes/<node>/{sys,dev,cdi,kubelet,containers}`. etcd keeps its data on tmpfs when it can.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import builds, controlplane, manifests, nodes, pki, procs, progress, realnode  # noqa: E402
from harness.builds import Binaries  # noqa: E402
from harness.kube import DRIVER, Kubectl, KubectlError  # noqa: E402
from harness.manifests import Workload  # noqa: E402
from harness.procs import Supervisor  # noqa: E402

DEFAULT_NODES = ("node1", "node2")
# Nodes whose agent builds its own simulated tree (`node-agent --simulate`, the settings of
# kustomize/simulated); the others get a tree created outside the agent, as the kernel module
# would, with `sim watch` playing the kernel.
SIMULATED_NODES = ("node1",)
CONTROLLER_REPLICAS = 2
TOKEN_DURATION = "8760h"
# The node agents' stale-claim pass: short, so that every scenario also runs it (production: 5m).
STALE_CLAIM_INTERVAL = "10s"


class ClusterError(RuntimeError):
    pass


class Cluster:
    def __init__(self, state: Path, die_with_parent: bool = False):
        self.state = state.resolve()
        self.state.mkdir(parents=True, exist_ok=True)
        self.sup = Supervisor(self.state, die_with_parent)
        self.info: dict = {}
        if self.info_file.is_file():
            self.info = json.loads(self.info_file.read_text())

    # ---- state ------------------------------------------------------------------------------

    @property
    def info_file(self) -> Path:
        return self.state / "cluster.json"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    def save(self) -> None:
        tmp = self.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.info, indent=2, sort_keys=True))
        tmp.replace(self.info_file)

    @property
    def binaries(self) -> Binaries:
        return Binaries.from_json(self.info["binaries"])

    @property
    def kubectl(self) -> Kubectl:
        return Kubectl(self.binaries.kubectl, self.kubeconfig)

    @property
    def pki(self) -> pki.Pki:
        return pki.Pki(self.state / "pki")

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.info['ports']['apiserver']}"

    def node_paths(self, node: str) -> nodes.NodePaths:
        return nodes.layout(self.state, node)

    def node_names(self) -> list[str]:
        return sorted(self.info.get("nodes", {}))

    def running(self) -> bool:
        return any(p.name == "kube-apiserver" for p in self.sup.running())

    def crashed(self) -> list[str]:
        """Processes that should run (pid file present) but do not, with their log tails."""
        return [f"{p.name} (pid {p.pid}) is not running; log {p.log}:\n{p.log_tail(15)}" for p in self.sup.dead()]

    # ---- up and down ------------------------------------------------------------------------

    def up(self, node_names=DEFAULT_NODES, with_driver: bool = True, agent_grace_period: str | None = None,
           real_node: bool = False) -> None:
        """`real_node`: also node `real1` with a real kubelet and containerd (harness/realnode.py)."""
        if self.running():
            raise ClusterError(f"a cluster already runs from {self.state} (stop it with `cluster.py down`)")
        started = time.monotonic()
        self._clean_stale()
        binaries = builds.all_binaries(need_nodes=with_driver)
        progress.step(f"state directory {self.state}")
        if binaries.driver:
            # The cluster runs a copy of the driver for its whole life: a rebuild in the cargo
            # target directory meanwhile (another checkout sharing it, a `make test`) must not
            # swap the binary under an agent that a scenario restarts.
            # The node agent alone beside it: the nodes run it (start_agent, realnode.py).
            own = builds.copy_driver(binaries.driver, self.state / "bin")
            binaries = dataclasses.replace(binaries, driver=own)
        p = pki.create(self.state / "pki")
        ports = controlplane.Ports.allocate()
        etcd_dir = self._etcd_dir()
        self.info = {
            "binaries": binaries.to_json(),
            "ports": ports.__dict__,
            "etcd_dir": str(etcd_dir),
            "nodes": {},
            "controllers": [],
            "agent_grace_period": agent_grace_period,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.save()
        pki.write_admin_kubeconfig(p, self.server, self.kubeconfig)
        controlplane.start(self.state, binaries, p, ports, etcd_dir, self.kubeconfig, self.sup, real_node=real_node)
        if not with_driver:
            progress.step(f"control plane up in {time.monotonic() - started:.0f}s (no nodes, no driver)")
            return
        self.info["manifests"] = manifests.apply_local(self.kubectl, binaries.driver)
        agent, controller = manifests.workloads(self.kubectl)
        progress.step(f"node agent settings from {agent.source}; controller settings from {controller.source}")
        self.info["agent_workload"] = agent.to_json()
        simulated = manifests.simulated_agent(self.kubectl)
        progress.step(f"simulated nodes' agent settings from {simulated.source}")
        self.info["agent_workload_simulated"] = simulated.to_json()
        self.info["controller_workload"] = controller.to_json()
        self.save()
        for i, name in enumerate(node_names, start=1):
            self.add_node(name, "canonical", i, wait=False, simulate=name in SIMULATED_NODES)
        for i in range(CONTROLLER_REPLICAS):
            self.start_controller(i)
        for name in node_names:
            self.wait_published(name, nodes.CANONICAL_DEVICES, timeout=120)
        if real_node:
            realnode.add(self)
        progress.step(f"cluster up in {time.monotonic() - started:.0f}s: {len(node_names)} simulated nodes"
                      f"{', real node ' + realnode.NODE if real_node else ''}, {CONTROLLER_REPLICAS} controller replicas")

    def down(self) -> list[str]:
        # A real node first: its containers run under shims that stopping containerd leaves.
        stopped = realnode.remove_all(self)
        stopped += self.sup.stop_all()
        etcd = self.info.get("etcd_dir")
        if etcd and etcd.startswith("/dev/shm/mock-accel-"):
            shutil.rmtree(Path(etcd).parent, ignore_errors=True)
        for n in self.info.get("nodes", {}).values():
            if n.get("kubelet_real", "").startswith("/tmp/mock-accel-"):
                shutil.rmtree(n["kubelet_real"], ignore_errors=True)
        return stopped

    def _clean_stale(self) -> None:
        """A previous run that was killed may have left pid files and per-run directories."""
        stale = self.sup.stop_all()
        if stale:
            progress.warn(f"stopped processes left by an earlier run: {', '.join(stale)}")
        for sub in ("pki", "identities", "nodes", "etcd"):
            shutil.rmtree(self.state / sub, ignore_errors=True)
        if self.info:
            self.down()
        self.kubeconfig.unlink(missing_ok=True)

    def _etcd_dir(self) -> Path:
        """etcd's data on tmpfs when possible: `/dev/shm/mock-accel-<key>/etcd`, with a `state`
        file naming the state directory, so that a later run can sweep what a killed run left."""
        shm = Path("/dev/shm")
        if not (shm.is_dir() and os.access(shm, os.W_OK)):
            return self.state / "etcd"
        _sweep_shm(shm)
        key = hashlib.sha1(str(self.state).encode()).hexdigest()[:10]
        top = shm / f"mock-accel-{key}"
        shutil.rmtree(top, ignore_errors=True)
        top.mkdir(mode=0o700)
        (top / "state").write_text(str(self.state))
        return top / "etcd"

    # ---- identities -------------------------------------------------------------------------

    def _token_kubeconfig(self, name: str, sa: str, namespace: str, bound: list[str]) -> Path:
        token = self.kubectl.run("create", "token", sa, "-n", namespace, f"--duration={TOKEN_DURATION}",
                                 *bound).strip()
        path = self.state / "identities" / f"{name}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        pki.write_token_kubeconfig(self.pki, self.server, f"system:serviceaccount:{namespace}:{sa}", token, path)
        return path

    def _agent_identity(self, node: str, wl: Workload) -> tuple[Path, str]:
        """A kubeconfig with the node agent's ServiceAccount token, bound to a Pod on the node
        (as a DaemonSet pod's projected token is), so the token carries the node name that the
        admission policy checks. Falls back to a Node-bound token, then to admin."""
        pod_name = f"{wl.service_account}-{node}"
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": wl.namespace, "labels": wl.labels},
            "spec": {
                "nodeName": node, "serviceAccountName": wl.service_account,
                "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 0,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "node-agent", "image": "mock-accel-dra:local",
                                "args": ["node-agent", f"--node-name={node}"]}],
            },
        }
        try:
            existing = self.kubectl.get_or_none("pod", pod_name, wl.namespace)
            uid = existing["metadata"]["uid"] if existing else self.kubectl.create(pod)["metadata"]["uid"]
            path = self._token_kubeconfig(f"agent-{node}", wl.service_account, wl.namespace,
                                          ["--bound-object-kind=Pod", f"--bound-object-name={pod_name}",
                                           f"--bound-object-uid={uid}"])
            return path, f"ServiceAccount {wl.namespace}/{wl.service_account}, token bound to Pod {pod_name}"
        except KubectlError as e:
            progress.warn(f"{node}: Pod-bound token failed ({e}); trying a Node-bound token")
        try:
            uid = self.kubectl.get("node", node)["metadata"]["uid"]
            path = self._token_kubeconfig(f"agent-{node}", wl.service_account, wl.namespace,
                                          ["--bound-object-kind=Node", f"--bound-object-name={node}",
                                           f"--bound-object-uid={uid}"])
            return path, f"ServiceAccount {wl.namespace}/{wl.service_account}, token bound to Node {node}"
        except KubectlError as e:
            progress.warn(f"{node}: NO ServiceAccount token ({e}); the node agent runs as ADMIN")
            return self.kubeconfig, "admin (ServiceAccount token unavailable)"

    def _controller_identity(self, wl: Workload) -> tuple[Path, str]:
        path = self.state / "identities" / "controller.kubeconfig"
        if path.is_file():
            return path, f"ServiceAccount {wl.namespace}/{wl.service_account}"
        try:
            return (self._token_kubeconfig("controller", wl.service_account, wl.namespace, []),
                    f"ServiceAccount {wl.namespace}/{wl.service_account}")
        except KubectlError as e:
            progress.warn(f"controller: NO ServiceAccount token ({e}); it runs as ADMIN")
            return self.kubeconfig, "admin (ServiceAccount token unavailable)"

    # ---- nodes ------------------------------------------------------------------------------

    def add_node(self, name: str, topology: str = "canonical", index: int | None = None,
                 wait: bool = True, expected_devices: int | None = None, simulate: bool = False) -> nodes.NodePaths:
        """`simulate`: the node agent builds the tree itself (`--simulate`, canonical layout
        unless the node's spec.simulation says otherwise); `topology` then only names it."""
        if name in self.info.get("nodes", {}):
            raise ClusterError(f"node {name} already exists in {self.state}")
        if index is None:
            index = len(self.info.get("nodes", {})) + 1
        paths = self.node_paths(name)
        if simulate:
            progress.step(f"{name}: the node agent simulates its devices (--simulate, node index {index}) in {paths.sys}")
        else:
            progress.step(f"{name}: simulated sysfs ({topology} topology, node index {index}) in {paths.sys}")
            nodes.create_sysfs(self.binaries.driver, paths, topology, index)
        self.info.setdefault("nodes", {})[name] = {
            "topology": topology, "index": index, "kubelet_real": str(paths.kubelet_real),
            "agent_metrics_port": controlplane.free_port(), "simulate": simulate,
        }
        self.save()
        if not simulate:
            self.start_kernel(name)
        self.start_fakelet(name)
        self.wait_node_ready(name)
        wl = Workload.from_json(self.info["agent_workload"])
        kubeconfig, identity = self._agent_identity(name, wl)
        self.info["nodes"][name].update({"kubeconfig": str(kubeconfig), "identity": identity})
        self.save()
        progress.step(f"{name}: node agent identity: {identity}")
        self.start_agent(name)
        if wait:
            if expected_devices is None and topology == "canonical":
                expected_devices = nodes.CANONICAL_DEVICES
            self.wait_published(name, expected_devices)
        return paths

    def start_kernel(self, node: str) -> None:
        """`sim watch` on the node's tree: reacts to sysfs writes as the kernel module does."""
        self.sup.start(f"kernel-{node}", nodes.kernel_argv(self.binaries.driver, self.node_paths(node)))

    def start_fakelet(self, node: str) -> None:
        paths = self.node_paths(node)
        progress.step(f"{node}: starting the fake kubelet")
        self.sup.start(f"fakelet-{node}", [
            str(self.binaries.fakelet), "run",
            f"--kubeconfig={self.kubeconfig}",
            f"--node-name={node}",
            f"--kubelet-dir={paths.kubelet}",
            f"--cdi-dir={paths.cdi}",
            f"--containers-dir={paths.containers}",
            # V(4): the kubelet code logs each NodePrepareResources call (scenario 15 waits
            # for it) and each health report it handles.
            "--v=4",
        ])

    def start_agent(self, node: str, process: str | None = None, env: dict | None = None) -> None:
        """Starts the node's agent as process `agent-<node>`, or under another process name
        (a second instance of the same node's agent, as during a rolling update), with `env`
        added (`POD_UID`, which a DaemonSet pod gets from the downward API)."""
        paths = self.node_paths(node)
        n = self.info["nodes"][node]
        simulated = n.get("simulate", False)
        wl = Workload.from_json(self.info["agent_workload_simulated" if simulated else "agent_workload"])
        sim_args = [f"--sim-root={paths.sys}", f"--sim-node-index={n['index']}"] if simulated else []
        default = f"agent-{node}"
        process = process or default
        # A second instance needs a metrics port of its own.
        port = n["agent_metrics_port"] if process == default else controlplane.free_port()
        progress.step(f"{node}: starting the node agent ({process})")
        # The binary the DaemonSet runs (the node agent alone), where it was built.
        program = builds.node_agent_beside(self.binaries.driver) or self.binaries.driver
        self.sup.start(process, [
            str(program), "node-agent", *wl.args,
            f"--node-name={node}",
            f"--sysfs-root={paths.sys}",
            f"--dev-root={paths.dev}",
            f"--cdi-dir={paths.cdi}",
            f"--registry-dir={paths.registry_dir}",
            f"--plugin-dir={paths.plugin_dir}",
            f"--metrics-addr=127.0.0.1:{port}",
            *sim_args,
            # Every scenario then also checks that the periodic stale-claim pass never
            # releases a claim in use.
            f"--stale-claim-interval={STALE_CLAIM_INTERVAL}",
        ], env={**wl.env, "KUBECONFIG": n["kubeconfig"], **(env or {})})

    def stop_node(self, node: str) -> None:
        """Stops the node's agent, fake kubelet and simulated kernel (the Node object stays)."""
        self.sup.stop(f"agent-{node}")
        self.sup.stop(f"fakelet-{node}")
        self.sup.stop(f"kernel-{node}")

    def forget_node(self, node: str) -> None:
        self.stop_node(node)
        info = self.info.get("nodes", {}).pop(node, None)
        self.save()
        if info and info.get("kubelet_real", "").startswith("/tmp/mock-accel-"):
            shutil.rmtree(info["kubelet_real"], ignore_errors=True)

    # ---- control-plane faults -----------------------------------------------------------------

    def stop_component(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stops one control-plane process (`etcd`, `kube-apiserver`, ...) in place: with `sig`
        (SIGKILL: no grace at all). `start_component` starts it again with the same command
        line, so the same ports, flags, certificates and data directory."""
        proc = self.sup.get(name)
        self.info.setdefault("stopped_components", {})[name] = proc.argv
        self.save()
        if sig == signal.SIGKILL:
            self.sup.kill(name)
        else:
            self.sup.stop(name, sig=sig, timeout=30)

    def start_component(self, name: str, timeout: float = 90) -> None:
        """Starts a process stopped by `stop_component` and waits until it reports ready."""
        argv = self.info.get("stopped_components", {}).get(name)
        if argv is None:
            raise ClusterError(f"{name} was not stopped by stop_component; nothing to start")
        self.sup.start(name, argv)
        del self.info["stopped_components"][name]
        self.save()
        controlplane.wait_ready(name, self.info["ports"], self.pki, self.sup, timeout)

    def heal(self) -> list[str]:
        """Restarts every control-plane process stopped by a fault scenario, and every fake
        kubelet, node agent and controller replica that should run but does not (crashed, or
        stopped by a test that failed before restarting it)."""
        restarted = []
        order = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
        for name in sorted(self.info.get("stopped_components", {}), key=lambda n: order.index(n) if n in order else 9):
            self.start_component(name)
            restarted.append(name)
        running = {p.name for p in self.sup.running()}
        for node in self.node_names():
            if f"kernel-{node}" not in running and not self.info["nodes"][node].get("simulate"):
                self.start_kernel(node)
                restarted.append(f"kernel-{node}")
            if f"fakelet-{node}" not in running:
                self.start_fakelet(node)
                restarted.append(f"fakelet-{node}")
            if f"agent-{node}" not in running:
                self.start_agent(node)
                restarted.append(f"agent-{node}")
        for i in self.info.get("controllers", []):
            if f"controller-{i}" not in running:
                self.start_controller(i)
                restarted.append(f"controller-{i}")
        return restarted

    # ---- controllers ------------------------------------------------------------------------

    def controller_identity_name(self, i: int) -> str:
        return f"mock-accel-controller-{i}"

    def start_controller(self, i: int) -> None:
        wl = Workload.from_json(self.info["controller_workload"])
        kubeconfig, identity = self._controller_identity(wl)
        args = list(wl.args)
        grace = self.info.get("agent_grace_period")
        if grace:
            args = _without_flag(args, "--agent-grace-period") + [f"--agent-grace-period={grace}"]
        ports = self.info.setdefault("controller_ports", {})
        port = ports.get(str(i)) or controlplane.free_port()
        ports[str(i)] = port
        if i not in self.info["controllers"]:
            self.info["controllers"].append(i)
        self.info["controller_identity"] = identity
        self.save()
        progress.step(f"starting controller replica {i} ({identity})")
        self.sup.start(f"controller-{i}", [
            str(self.binaries.driver), "controller", *args,
            f"--metrics-addr=127.0.0.1:{port}",
            f"--identity={self.controller_identity_name(i)}",
            f"--lease-namespace={wl.namespace}",
        ], env={**wl.env, "KUBECONFIG": str(kubeconfig)})

    # ---- readiness --------------------------------------------------------------------------

    def wait_node_ready(self, node: str, timeout: float = 60) -> None:
        """Waits for the fake kubelet to create the Node and report it Ready."""
        deadline = time.monotonic() + timeout
        last = "no Node object"
        while time.monotonic() < deadline:
            bad = self.crashed()
            if bad:
                raise ClusterError(f"a process died while waiting for Node {node}:\n" + "\n".join(bad))
            obj = self.kubectl.get_or_none("node", node)
            if obj is not None:
                ready = [c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == "Ready"]
                if ready and ready[0]["status"] == "True":
                    progress.step(f"{node}: Node Ready")
                    return
                last = f"conditions {obj.get('status', {}).get('conditions')}"
            time.sleep(0.3)
        raise ClusterError(f"Node {node} not Ready within {timeout:.0f}s ({last}); "
                           f"log {self.state / 'logs' / f'fakelet-{node}.log'}")

    def slices(self, node: str | None = None) -> list[dict]:
        fs = f"spec.driver={DRIVER}" + (f",spec.nodeName={node}" if node else "")
        return self.kubectl.items("resourceslices", field_selector=fs)

    def wait_published(self, node: str, devices: int | None, timeout: float = 90) -> list[dict]:
        """Waits until the node's slices hold exactly `devices` devices (None: at least one)."""
        deadline = time.monotonic() + timeout
        last = "nothing yet"
        while time.monotonic() < deadline:
            bad = self.crashed()
            if bad:
                raise ClusterError("a process died while waiting for " + node + ":\n" + "\n".join(bad))
            try:
                sl = self.slices(node)
                n = sum(len(s["spec"].get("devices") or []) for s in sl)
                pools = sorted({s["spec"]["pool"]["name"] for s in sl})
                if n == devices or (devices is None and n > 0):
                    progress.step(f"{node}: {n} devices published in {len(pools)} pools ({', '.join(pools)})")
                    return sl
                last = f"{n} devices in pools {pools}"
            except KubectlError as e:
                last = str(e)
            time.sleep(0.5)
        tails = "".join(f"\n--- last lines of {p.log}:\n{p.log_tail(8)}" for p in self.sup.running()
                        if p.name in (f"agent-{node}", f"fakelet-{node}", "controller-0", "controller-1"))
        raise ClusterError(f"{node}: expected {devices if devices is not None else 'some'} published devices "
                           f"within {timeout:.0f}s, saw {last}; logs: {self.state / 'logs'}{tails}")

    # ---- user-facing output -----------------------------------------------------------------

    def env_lines(self) -> list[str]:
        dirs = [str(self.binaries.k8s)]
        if self.binaries.driver:
            dirs.append(str(self.binaries.driver.parent))
        return [f'export PATH="{":".join(dirs)}:$PATH"', f'export KUBECONFIG="{self.kubeconfig}"']

    def usage(self) -> str:
        rel = os.path.relpath(self.state) if self.state.is_relative_to(Path.cwd()) else str(self.state)
        lines = [
            "",
            f"The local cluster runs (state in {rel}/). Use it with:",
            '    eval "$(make -s dev-cluster-env)"',
            "    kubectl get nodes,mockaccelnodes",
            "    kubectl get resourceslices -o wide",
            "Per node (" + ", ".join(self.node_names()) + f"): {rel}/nodes/<node>/sys (simulated sysfs), "
            ".../cdi (CDI specs), .../kubelet (sockets, checkpoint), .../containers (what containers receive)",
            f"Logs: {rel}/logs/.   Stop it with: make dev-cluster-down",
        ]
        return "\n".join(lines)


def _sweep_shm(shm: Path) -> None:
    """Removes tmpfs etcd directories of runs whose etcd no longer runs (killed runs)."""
    for top in shm.glob("mock-accel-*"):
        try:
            state = Path((top / "state").read_text().strip())
        except OSError:
            continue
        pid_file = state / "pids" / "etcd.json"
        try:
            rec = json.loads(pid_file.read_text())
            alive = procs.pid_runs(rec["pid"], rec["argv"])
        except (OSError, ValueError, KeyError):
            alive = False
        if not alive:
            shutil.rmtree(top, ignore_errors=True)


def _without_flag(args: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP behave like Ctrl-C, so `finally` blocks stop the children."""
    def raise_interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGHUP, raise_interrupt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["up", "down", "env", "status"])
    ap.add_argument("--state", default=".dev-cluster", help="state directory (default .dev-cluster)")
    ap.add_argument("--nodes", default=",".join(DEFAULT_NODES), help="comma-separated node names")
    ap.add_argument("--control-plane-only", action="store_true", help="no nodes, no driver")
    ap.add_argument("--agent-grace-period", default=None, help="override the controller's --agent-grace-period")
    ap.add_argument("--real-node", action="store_true", default=os.environ.get("REAL_NODE") == "1",
                    help="also node real1 with a real kubelet and containerd (default: $REAL_NODE=1)")
    args = ap.parse_args(argv)
    state = Path(args.state)
    progress.set_prefix("dev-cluster")

    if args.command == "env":
        c = Cluster(state)
        if not c.info or not c.running():
            print(f"echo 'no local cluster runs from {state}; start one with: make dev-cluster' >&2; false")
            return 1
        print("\n".join(c.env_lines()))
        return 0

    if args.command == "status":
        c = Cluster(state)
        for p in c.sup.procs.values():
            print(f"{p.name:28} pid {p.pid:<8} {'running' if p.alive() else 'NOT RUNNING'}  {p.log}")
        if not c.sup.procs:
            print(f"nothing runs from {state}")
        return 0 if c.running() else 1

    if args.command == "down":
        c = Cluster(state)
        stopped = c.down()
        progress.step(f"stopped {len(stopped)} processes" + (f": {', '.join(stopped)}" if stopped else ""))
        return 0

    install_signal_handlers()
    c = Cluster(state, die_with_parent=False)
    if c.running():
        progress.step(f"a cluster already runs from {state}")
        print(c.usage())
        return 0
    try:
        c.up([n for n in args.nodes.split(",") if n], with_driver=not args.control_plane_only,
             agent_grace_period=args.agent_grace_period, real_node=args.real_node)
    except KeyboardInterrupt:
        progress.step("interrupted: stopping everything that was started")
        c.down()
        return 130
    except Exception as e:  # noqa: BLE001 - reported, then everything is stopped
        progress.step(f"FAILED: {e}")
        progress.step(f"logs kept in {state / 'logs'}; stopping everything that was started")
        c.down()
        return 1
    print(c.usage())
    return 0


if __name__ == "__main__":
    sys.exit(main())
