"""kubectl, with timeouts and readable errors, plus small builders for the DRA objects the
scenarios create (claims, templates, pods) so that tests read as intent, not as YAML.

Every call runs the built kubectl against one kubeconfig; nothing here reads the user's
~/.kube/config.
"""

import json
import subprocess
from pathlib import Path
from typing import Any

DRIVER = "mock-accel.example.com"
RESOURCE_API = "resource.k8s.io/v1"


class KubectlError(RuntimeError):
    def __init__(self, args: list[str], code: int, stderr: str):
        self.args_ = args
        self.code = code
        self.stderr = stderr.strip()
        super().__init__(f"kubectl {' '.join(args)} failed (exit {code}): {self.stderr}")

    @property
    def not_found(self) -> bool:
        return "NotFound" in self.stderr or "not found" in self.stderr


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path):
        self.binary = binary
        self.kubeconfig = kubeconfig

    def _base(self) -> list[str]:
        # Discovery cache next to the kubeconfig, not in ~/.kube: runs never share or leave it.
        return [str(self.binary), f"--kubeconfig={self.kubeconfig}",
                f"--cache-dir={self.kubeconfig.parent / 'kubectl-cache'}"]

    def as_user(self, kubeconfig: Path) -> "Kubectl":
        return Kubectl(self.binary, kubeconfig)

    def run(self, *args: str, input: str | None = None, timeout: float = 60, check: bool = True) -> str:
        argv = [*self._base(), *args]
        try:
            res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise KubectlError(list(args), -1, f"no answer within {timeout:.0f}s") from None
        if check and res.returncode != 0:
            raise KubectlError(list(args), res.returncode, res.stderr)
        return res.stdout

    def try_run(self, *args: str, input: str | None = None, timeout: float = 60) -> tuple[int, str, str]:
        argv = [*self._base(), *args]
        try:
            res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return -1, "", f"no answer within {timeout:.0f}s"
        return res.returncode, res.stdout, res.stderr

    def json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self.run(*args, "-o", "json", timeout=timeout))

    def get(self, kind: str, name: str | None = None, namespace: str | None = None, *extra: str) -> Any:
        args = ["get", kind]
        if name:
            args.append(name)
        if namespace:
            args += ["-n", namespace]
        return self.json(*args, *extra)

    def get_or_none(self, kind: str, name: str, namespace: str | None = None) -> Any:
        try:
            return self.get(kind, name, namespace)
        except KubectlError as e:
            if e.not_found:
                return None
            raise

    def items(self, kind: str, namespace: str | None = None, selector: str | None = None,
              field_selector: str | None = None) -> list[Any]:
        args = ["get", kind]
        args += ["-n", namespace] if namespace else ["-A"] if _namespaced(kind) else []
        if selector:
            args += ["-l", selector]
        if field_selector:
            args += ["--field-selector", field_selector]
        return self.json(*args)["items"]

    def apply(self, objs: Any, namespace: str | None = None, server_side: bool = True) -> str:
        """Applies objects (a dict, or a list of dicts) given as data."""
        if isinstance(objs, dict):
            objs = [objs]
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)})
        args = ["apply", "-f", "-"]
        if server_side:
            args += ["--server-side", "--field-manager=e2e"]
        if namespace:
            args += ["-n", namespace]
        return self.run(*args, input=doc)

    def create(self, obj: dict, namespace: str | None = None) -> Any:
        args = ["create", "-f", "-", "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        return json.loads(self.run(*args, input=json.dumps(obj)))

    def delete(self, kind: str, name: str, namespace: str | None = None, wait: bool = False,
               timeout: float = 60) -> None:
        args = ["delete", kind, name, "--ignore-not-found", f"--wait={'true' if wait else 'false'}"]
        if namespace:
            args += ["-n", namespace]
        if wait:
            args += [f"--timeout={int(timeout)}s"]
        self.run(*args, timeout=timeout + 10)


_CLUSTER_SCOPED = {
    "node", "nodes", "namespace", "namespaces", "resourceslice", "resourceslices", "deviceclass",
    "deviceclasses", "mockaccelnode", "mockaccelnodes", "man", "customresourcedefinitions", "crd",
    "clusterrole", "clusterroles", "clusterrolebinding", "clusterrolebindings",
    "validatingadmissionpolicies", "validatingadmissionpolicybindings",
}


def _namespaced(kind: str) -> bool:
    return kind.split(".")[0].lower() not in _CLUSTER_SCOPED


def parse_objects(text: str) -> list[dict]:
    """Objects from kubectl's `-o json` output: one object, a List, or (for several objects
    from `create`/`apply -f`) objects printed one after the other."""
    dec = json.JSONDecoder()
    out: list[dict] = []
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = dec.raw_decode(text, i)
        if obj.get("kind", "").endswith("List"):
            out.extend(obj.get("items") or [])
        else:
            out.append(obj)


# ---- builders ---------------------------------------------------------------------------------


def request(name: str, device_class: str, count: int | None = 1, selectors: list[str] | None = None,
            all_devices: bool = False, capacity: dict[str, str] | None = None) -> dict:
    """`capacity`: `capacity.requests` of a request for consumable capacity (name → quantity)."""
    exactly: dict[str, Any] = {"deviceClassName": device_class}
    if capacity:
        exactly["capacity"] = {"requests": capacity}
    if all_devices:
        exactly["allocationMode"] = "All"
    elif count is not None:
        exactly["count"] = count
    if selectors:
        exactly["selectors"] = [{"cel": {"expression": s}} for s in selectors]
    return {"name": name, "exactly": exactly}


def match(attribute: str, requests: list[str] | None = None) -> dict:
    c: dict[str, Any] = {"matchAttribute": attribute}
    if requests:
        c["requests"] = requests
    return c


def distinct(attribute: str, requests: list[str] | None = None) -> dict:
    c: dict[str, Any] = {"distinctAttribute": attribute}
    if requests:
        c["requests"] = requests
    return c


def _devices(requests: list[dict], constraints: list[dict] | None) -> dict:
    d: dict[str, Any] = {"requests": requests}
    if constraints:
        d["constraints"] = constraints
    return d


def claim(name: str, requests: list[dict], constraints: list[dict] | None = None) -> dict:
    return {"apiVersion": RESOURCE_API, "kind": "ResourceClaim", "metadata": {"name": name},
            "spec": {"devices": _devices(requests, constraints)}}


def claim_template(name: str, requests: list[dict], constraints: list[dict] | None = None) -> dict:
    return {"apiVersion": RESOURCE_API, "kind": "ResourceClaimTemplate", "metadata": {"name": name},
            "spec": {"spec": {"devices": _devices(requests, constraints)}}}


def pod(name: str, claims: dict[str, str] | None = None, templates: dict[str, str] | None = None,
        node: str | None = None, containers: list[str] | None = None) -> dict:
    """A pod whose containers use every listed claim. `claims` maps the pod's claim name to a
    ResourceClaim name, `templates` to a ResourceClaimTemplate name; `node` pins it with a
    nodeSelector (the scheduler still has to agree)."""
    pod_claims = [{"name": k, "resourceClaimName": v} for k, v in (claims or {}).items()]
    pod_claims += [{"name": k, "resourceClaimTemplateName": v} for k, v in (templates or {}).items()]
    refs = [{"name": c["name"]} for c in pod_claims]
    ctrs = []
    for cname in containers or ["main"]:
        c: dict[str, Any] = {"name": cname, "image": "registry.k8s.io/pause:3.10"}
        if refs:
            c["resources"] = {"claims": refs}
        ctrs.append(c)
    spec: dict[str, Any] = {"containers": ctrs, "terminationGracePeriodSeconds": 0}
    if pod_claims:
        spec["resourceClaims"] = pod_claims
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def namespace(name: str, labels: dict[str, str] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"mock-accel.example.com/e2e": "true", **(labels or {})}}}


# ---- readers ----------------------------------------------------------------------------------


def condition(obj: dict, ctype: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def attr(device: dict, name: str) -> Any:
    """Value of a ResourceSlice device attribute (`domain/id`, or an id in the driver's domain)."""
    attrs = device.get("attributes") or {}
    a = attrs.get(name)
    if a is None and "/" not in name:
        a = attrs.get(f"{DRIVER}/{name}")
    if a is None:
        return None
    for k in ("int", "bool", "string", "version"):
        if k in a:
            return a[k]
    return a


def quantity_bytes(q: str) -> int:
    """Parses a Kubernetes quantity of bytes (`17179869184`, `16Gi`, `2G`, `512Mi`)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
    for suffix in sorted(units, key=len, reverse=True):
        if q.endswith(suffix):
            return int(float(q[: -len(suffix)]) * units[suffix])
    return int(float(q))
