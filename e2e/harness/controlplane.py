"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback.

Everything binds 127.0.0.1 on free ports (the machines also have a routed interface the
apiserver would otherwise advertise). Traps handled here rather than in tests:
- `TaintNodesByCondition` admission is off, so new Nodes carry no not-ready taint;
- `ServiceAccount` admission is off, so pods need no token volume or default ServiceAccount;
- no node-lifecycle controller, so nothing taints or evicts the fake nodes;
- `--endpoint-reconciler-type=none`, so the loopback advertise address breaks nothing.
"""

import base64
import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness import progress
from harness.builds import Binaries
from harness.pki import Pki
from harness.procs import Supervisor

# Feature gates and runtime-config per Kubernetes minor: every DRA feature the scenarios use is
# on by default from 1.36; an unknown gate name is fatal at start-up, so keep one list per minor.
FEATURE_GATES = {
    # 1.34 runs with its defaults: its alpha DRA gates switch the scheduler to the experimental
    # allocator, which panics on allocationMode All (CmpRequestOverCapacity, v1.34.4), and
    # DRADeviceTaints makes it wait for a DeviceTaintRule API this server does not serve. The
    # driver skips what 1.34 does not accept (see the README's compatibility table).
    "1.34": "",
    "1.35": "DRAPartitionableDevices=true,DRADeviceTaints=true,DRAConsumableCapacity=true,"
            "DRADeviceBindingConditions=true,DRADeviceTaintRules=true",
    "1.36": "",
    "1.37": "",
}

# The scheduler's binding timeout (`bindingTimeout` of the DynamicResources plugin arguments):
# how long PreBind waits for a device's binding conditions, counted from the claim's
# `allocationTimestamp`, before the allocation is given up (600 s by default). Short here so
# that scenario 18d sees it pass. The field exists from 1.35 and is accepted only with the
# DRADeviceBindingConditions gate on (1.35 by the list above, 1.36+ by default); 1.34's
# scheduler rejects it, so 1.34 runs without it.
BINDING_TIMEOUT_SECONDS = 15
BINDING_TIMEOUT_FROM = (1, 35)


def binding_timeout(minor: str) -> int | None:
    """The binding timeout the harness gives kube-scheduler on Kubernetes `minor`, or None
    where the scheduler does not accept the setting."""
    major_minor = tuple(int(x) for x in minor.split("."))
    return BINDING_TIMEOUT_SECONDS if major_minor >= BINDING_TIMEOUT_FROM else None


def scheduler_config(minor: str, kubeconfig: Path) -> str:
    """kube-scheduler's configuration file: the flags' connection and leader-election settings
    (a config file replaces them) and, where accepted, the binding timeout."""
    lines = [
        "apiVersion: kubescheduler.config.k8s.io/v1",
        "kind: KubeSchedulerConfiguration",
        "clientConnection:",
        f"  kubeconfig: {json.dumps(str(kubeconfig))}",
        "leaderElection:",
        "  leaderElect: false",
    ]
    timeout = binding_timeout(minor)
    if timeout is not None:
        lines += [
            "profiles:",
            "- schedulerName: default-scheduler",
            "  pluginConfig:",
            "  - name: DynamicResources",
            "    args:",
            f"      bindingTimeout: {timeout}s",
        ]
    return "\n".join(lines) + "\n"


# Controllers the DRA flow needs (see reference/k8s-harness.md §4); never the node-lifecycle one.
KCM_CONTROLLERS = [
    "resourceclaim-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "pod-garbage-collector-controller",
    # Evicts pods whose allocated devices carry a NoExecute taint (device health, scenario 17c).
    "device-taint-eviction-controller",
]
# With a real kubelet (`REAL_NODE=1`): the node agent runs from the DaemonSet with its
# ServiceAccount's projected token, which needs the namespace's default ServiceAccount and the
# kube-root-ca.crt ConfigMap.
REAL_NODE_CONTROLLERS = ["daemonset-controller", "serviceaccount-controller", "root-ca-certificate-publisher-controller"]


class ControlPlaneError(RuntimeError):
    pass


_taken: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now (and that this process has not handed out)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _taken:
            _taken.add(port)
            return port
    raise ControlPlaneError("could not find a free loopback port")


@dataclass
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    kcm: int
    scheduler: int

    @staticmethod
    def allocate() -> "Ports":
        return Ports(free_port(), free_port(), free_port(), free_port(), free_port())


def kube_minor(binaries: Binaries) -> str:
    out = subprocess.run([str(binaries.k("kube-apiserver")), "--version"], capture_output=True,
                         text=True, timeout=30).stdout.strip()
    # "Kubernetes v1.37.2"
    try:
        version = out.split()[-1].lstrip("v")
        major, minor = version.split(".")[:2]
        return f"{major}.{minor}"
    except (IndexError, ValueError):
        raise ControlPlaneError(f"cannot read the Kubernetes version from {out!r}") from None


def _get(url: str, context: ssl.SSLContext | None, timeout: float = 3) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_http(what: str, url: str, context: ssl.SSLContext | None, sup: Supervisor, proc_name: str,
              timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        proc = sup.get(proc_name)
        if not proc.alive():
            raise ControlPlaneError(f"{what} exited during start-up (exit {proc.exit_code()}); "
                                    f"log {proc.log}:\n{proc.log_tail(25)}")
        try:
            code, body = _get(url, context)
            if code == 200:
                return
            last = f"HTTP {code}: {body[:300]}"
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        time.sleep(0.3)
    raise ControlPlaneError(f"{what} not ready at {url} after {timeout:.0f}s (last: {last}); "
                            f"log {sup.get(proc_name).log}:\n{sup.get(proc_name).log_tail(25)}")


def start(state: Path, binaries: Binaries, pki: Pki, ports: Ports, etcd_dir: Path, kubeconfig: Path,
          sup: Supervisor, real_node: bool = False) -> None:
    """`real_node`: also what a real kubelet and a DaemonSet need (ServiceAccount admission,
    the controllers of REAL_NODE_CONTROLLERS, a client certificate for the kubelet's API)."""
    minor = kube_minor(binaries)
    gates = FEATURE_GATES.get(minor)
    if gates is None:
        progress.warn(f"no feature-gate list for Kubernetes {minor}; starting with defaults")
        gates = ""
    gate_flags = [f"--feature-gates={gates}"] if gates else []
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE

    progress.step(f"starting etcd on 127.0.0.1:{ports.etcd_client} (data in {etcd_dir})")
    etcd_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    sup.start("etcd", [
        str(binaries.k("etcd")),
        "--name=e2e",
        f"--data-dir={etcd_dir}",
        f"--listen-client-urls=http://127.0.0.1:{ports.etcd_client}",
        f"--advertise-client-urls=http://127.0.0.1:{ports.etcd_client}",
        f"--listen-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
        f"--initial-cluster=e2e=http://127.0.0.1:{ports.etcd_peer}",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ])
    wait_http("etcd", f"http://127.0.0.1:{ports.etcd_client}/health", None, sup, "etcd", 30)

    progress.step(f"starting kube-apiserver {minor} on https://127.0.0.1:{ports.apiserver}")
    sup.start("kube-apiserver", [
        str(binaries.k("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.client_ca}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer=https://127.0.0.1:{ports.apiserver}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--allow-privileged=true",
        "--endpoint-reconciler-type=none",
        "--disable-admission-plugins=" + ("TaintNodesByCondition" if real_node
                                          else "ServiceAccount,TaintNodesByCondition"),
        # `kubectl logs` and `exec` on a real kubelet: the apiserver authenticates as admin, at
        # the node's InternalIP (the real node's name does not resolve).
        *([f"--kubelet-client-certificate={pki.admin_cert}", f"--kubelet-client-key={pki.admin_key}",
           "--kubelet-preferred-address-types=InternalIP,Hostname"] if real_node else []),
        f"--cert-dir={state / 'pki' / 'apiserver'}",
        "--profiling=false",
        *gate_flags,
    ])
    ca = ssl.create_default_context(cafile=str(pki.serving_ca))
    wait_http("kube-apiserver", f"https://127.0.0.1:{ports.apiserver}/readyz", ca, sup, "kube-apiserver", 90)

    common = [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        # The apiserver has no front proxy: do not look up its request-header CA (log noise).
        "--authentication-skip-lookup=true",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        *gate_flags,
    ]
    controllers = KCM_CONTROLLERS + (REAL_NODE_CONTROLLERS if real_node else [])
    progress.step(f"starting kube-controller-manager ({', '.join(controllers)})")
    sup.start("kube-controller-manager", [
        str(binaries.k("kube-controller-manager")),
        *common,
        f"--secure-port={ports.kcm}",
        f"--cert-dir={state / 'pki' / 'kcm'}",
        f"--controllers={','.join(controllers)}",
        "--kube-api-qps=100",
        "--kube-api-burst=200",
        "-v=2",
    ])
    timeout = binding_timeout(minor)
    progress.step("starting kube-scheduler" + (f" (binding timeout {timeout} s)" if timeout else ""))
    config = state / "kube-scheduler.yaml"
    config.write_text(scheduler_config(minor, kubeconfig))
    sup.start("kube-scheduler", [
        str(binaries.k("kube-scheduler")),
        *common,
        f"--config={config}",
        f"--secure-port={ports.scheduler}",
        f"--cert-dir={state / 'pki' / 'scheduler'}",
        "-v=2",
    ])
    wait_http("kube-controller-manager", f"https://127.0.0.1:{ports.kcm}/healthz", insecure, sup,
              "kube-controller-manager", 60)
    wait_http("kube-scheduler", f"https://127.0.0.1:{ports.scheduler}/healthz", insecure, sup,
              "kube-scheduler", 60)
    progress.step("control plane ready")


def ready_url(name: str, ports: dict) -> tuple[str, bool] | None:
    """The readiness endpoint of a control-plane process and whether it is HTTPS with the
    serving CA (True) or plain HTTP (False); None for processes restarted without a check."""
    if name == "etcd":
        return f"http://127.0.0.1:{ports['etcd_client']}/health", False
    if name == "kube-apiserver":
        return f"https://127.0.0.1:{ports['apiserver']}/readyz", True
    return None


def wait_ready(name: str, ports: dict, pki: Pki, sup: Supervisor, timeout: float) -> None:
    """Waits for a (re)started control-plane process to report ready."""
    target = ready_url(name, ports)
    if target is None:
        return
    url, tls = target
    context = ssl.create_default_context(cafile=str(pki.serving_ca)) if tls else None
    wait_http(name, url, context, sup, name, timeout)


def etcd_count(port: int, prefix: str, timeout: float = 2) -> int:
    """Number of keys under `prefix`, read from etcd's JSON gateway (works while the API
    server is down)."""
    key, end = prefix_range(prefix)
    body = json.dumps({
        "key": base64.b64encode(key).decode(),
        "range_end": base64.b64encode(end).decode(),
        "count_only": True,
    }).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v3/kv/range", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return int(json.loads(r.read()).get("count", 0))


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """etcd's [key, range_end) for every key starting with `prefix`: the end is the prefix with
    its last byte incremented."""
    key = prefix.encode()
    return key, key[:-1] + bytes([key[-1] + 1])
