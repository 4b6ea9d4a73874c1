"""The shipped manifests, as the local cluster uses them.

`kustomize/local` holds everything from `config/` except the controller Deployment and the
node-agent DaemonSet (those run as local processes). Their pod specs are still read from
`config/`, so the local processes run with the manifests' arguments, environment and
ServiceAccounts; only paths, addresses and identities are replaced by local ones.
"""

from dataclasses import dataclass, field
from pathlib import Path

from harness import progress
from harness.builds import REPO
from harness.kube import Kubectl, KubectlError, parse_objects

LOCAL_OVERLAY = REPO / "kustomize" / "local"
# The users' overlay for simulated devices: the harness's simulated nodes run its agent settings.
SIMULATED_OVERLAY = REPO / "kustomize" / "simulated"
CONFIG = REPO / "config"
NAMESPACE = "mock-device"
CRD_NAME = "mockaccelnodes.mock-accel.example.com"

# Flags whose values the harness sets itself (all take a value).
LOCAL_FLAGS = {
    "--node-name", "--sysfs-root", "--dev-root", "--cdi-dir", "--registry-dir", "--plugin-dir",
    "--metrics-addr", "--identity", "--lease-namespace", "--sim-root", "--sim-node-index",
}
# Environment variables that name pod-local paths or pod identity; replaced by flags.
LOCAL_ENV = {"NODE_NAME", "SYSFS_ROOT", "DEV_ROOT", "CDI_DIR", "REGISTRY_DIR", "PLUGIN_DIR",
             "METRICS_ADDR", "POD_NAME", "POD_NAMESPACE", "SIM_ROOT", "SIM_NODE_INDEX"}


class ManifestError(RuntimeError):
    pass


@dataclass
class Workload:
    """What the harness takes from a Deployment or DaemonSet: the role's extra arguments,
    literal environment, ServiceAccount, namespace and pod labels."""
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    service_account: str = ""
    namespace: str = NAMESPACE
    labels: dict[str, str] = field(default_factory=dict)
    source: str = "built-in defaults"

    def to_json(self) -> dict:
        return self.__dict__.copy()

    @staticmethod
    def from_json(d: dict) -> "Workload":
        return Workload(**d)


DEFAULT_AGENT = Workload(service_account="mock-accel-node-agent",
                         labels={"app.kubernetes.io/name": "mock-accel-node-agent"})
DEFAULT_CONTROLLER = Workload(service_account="mock-accel-controller",
                              labels={"app.kubernetes.io/name": "mock-accel-controller"})


def render(kubectl: Kubectl, directory: Path) -> list[dict]:
    """Renders a kustomization into objects (kubectl's built-in kustomize; YAML to JSON through
    a client-side dry run, so no YAML library is needed)."""
    yaml = kubectl.run("kustomize", str(directory))
    return parse_objects(kubectl.run("create", "--dry-run=client", "-o", "json", "-f", "-", input=yaml))


def strip_local_flags(tokens: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for t in tokens:
        if skip:
            skip = False
            continue
        name = t.split("=", 1)[0]
        if name in LOCAL_FLAGS:
            skip = "=" not in t
            continue
        out.append(t)
    return out


def _workload(obj: dict, role: str) -> Workload:
    tmpl = obj["spec"]["template"]
    spec = tmpl["spec"]
    container = next((c for c in spec["containers"] if role in (c.get("args") or []) + (c.get("command") or [])),
                     spec["containers"][0])
    tokens = (container.get("command") or [])[1:] + (container.get("args") or [])
    if role in tokens:
        tokens = tokens[tokens.index(role) + 1:]
    env = {e["name"]: e["value"] for e in container.get("env") or []
           if "value" in e and e["name"] not in LOCAL_ENV}
    return Workload(
        args=strip_local_flags(tokens),
        env=env,
        service_account=spec.get("serviceAccountName") or "default",
        namespace=obj["metadata"].get("namespace", NAMESPACE),
        labels=tmpl.get("metadata", {}).get("labels", {}),
        source=f"{obj['kind']}/{obj['metadata']['name']} in config/",
    )


def workloads(kubectl: Kubectl) -> tuple[Workload, Workload]:
    """The node agent's and the controller's local settings, from config/ when it renders."""
    if not (CONFIG / "kustomization.yaml").is_file():
        progress.warn("config/kustomization.yaml missing: node agent and controller use built-in defaults")
        return DEFAULT_AGENT, DEFAULT_CONTROLLER
    try:
        objs = render(kubectl, CONFIG)
    except KubectlError as e:
        raise ManifestError(f"config/ does not render: {e}") from e
    agent, controller = DEFAULT_AGENT, DEFAULT_CONTROLLER
    for o in objs:
        if o.get("kind") == "DaemonSet":
            agent = _workload(o, "node-agent")
        elif o.get("kind") == "Deployment":
            controller = _workload(o, "controller")
    return agent, controller


def simulated_agent(kubectl: Kubectl) -> Workload:
    """The node agent's settings in kustomize/simulated (`--simulate` among its arguments), for
    the nodes whose agent builds its own simulated tree."""
    try:
        objs = render(kubectl, SIMULATED_OVERLAY)
    except KubectlError as e:
        raise ManifestError(f"kustomize/simulated does not render: {e}") from e
    for o in objs:
        if o.get("kind") == "DaemonSet":
            wl = _workload(o, "node-agent")
            wl.source = f"DaemonSet/{o['metadata']['name']} in kustomize/simulated"
            if "--simulate" not in wl.args:
                raise ManifestError(f"kustomize/simulated: the node agent is not started with --simulate ({wl.args})")
            return wl
    raise ManifestError("kustomize/simulated renders no DaemonSet")


def apply_local(kubectl: Kubectl, driver: Path | None) -> str:
    """Applies kustomize/local (CRD, namespace, RBAC, admission policy, DeviceClasses) and
    waits for the CRD. Returns a description of what was applied."""
    if (CONFIG / "kustomization.yaml").is_file():
        progress.step(f"applying {LOCAL_OVERLAY.relative_to(REPO)} (server-side)")
        kubectl.run("apply", "--server-side", "--force-conflicts", "--field-manager=e2e", "-k",
                    str(LOCAL_OVERLAY), timeout=120)
        what = "kustomize/local"
    else:
        # Before config/ exists: only what the processes cannot start without.
        if driver is None:
            raise ManifestError("config/ is missing and there is no driver binary to print the CRD")
        progress.warn("config/ is missing: applying only the namespace and the CRD from `mock-accel-dra crd`")
        import subprocess
        crd = subprocess.run([str(driver), "crd"], capture_output=True, text=True, timeout=60, check=True).stdout
        kubectl.run("apply", "--server-side", "--field-manager=e2e", "-f", "-", input=crd)
        kubectl.run("create", "namespace", NAMESPACE, check=False)
        what = "CRD only (config/ missing)"
    kubectl.run("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s", timeout=70)
    return what
