"""What every scenario gets: a registry, a per-scenario namespace, and helpers that read the
cluster the way a DRA user would (claims, allocations, slices) plus what only a node shows
(status registers, CDI specs, what the container receives).

A scenario is a function `fn(ctx)` decorated with `@scenario(id, title)`; it raises
`wait.Failure` (through `check`, `equal`, `until`) when an expectation does not hold.
"""

import contextlib
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from harness import kube, nodes, wait
from harness.cluster import Cluster
from harness.kube import DRIVER
from harness.wait import Failure, check, equal, until

# Bounds used across scenarios (seconds).
SCHEDULE_TIMEOUT = 60      # pod created → Running (scheduled, allocated, prepared)
TEARDOWN_TIMEOUT = 60      # pod deleted → gone (unprepared, deleted by the fake kubelet)
PUBLISH_TIMEOUT = 60       # a change in sysfs or the cluster → reflected in the slices


@dataclass
class Scenario:
    id: str
    title: str
    fn: Callable[["Context"], None]
    needs_driver: bool
    # Runs only on a cluster with the real node (`make e2e-node`), never in `make e2e`.
    real_node: bool = False
    # Estimated seconds on a warm idle machine: `run.py --jobs N` balances the shards by it.
    cost: float = 10.0

    @property
    def label(self) -> str:
        return f"[{self.id}] {self.title}"


REGISTRY: list[Scenario] = []


def ordered() -> list[Scenario]:
    """Scenarios by number, then suffix: 0, 1, 2, ..., 9a, 9b, 10, 11."""
    def key(s: Scenario):
        digits = "".join(ch for ch in s.id if ch.isdigit())
        return (int(digits or 0), s.id)
    return sorted(REGISTRY, key=key)


def scenario(id: str, title: str, needs_driver: bool = True, real_node: bool = False, cost: float = 10.0):
    def register(fn):
        REGISTRY.append(Scenario(id, title, fn, needs_driver, real_node, cost))
        return fn
    return register


def say(message: str) -> None:
    print(f"      {message}", flush=True)


class Context:
    def __init__(self, cluster: Cluster, ns: str, artifacts: Path):
        self.cluster = cluster
        self.k = cluster.kubectl
        self.ns = ns
        self.artifacts = artifacts

    # ---- objects ----------------------------------------------------------------------------

    def apply(self, *objs: dict) -> None:
        self.k.apply(list(objs), namespace=self.ns)

    def delete_pod(self, name: str) -> None:
        self.k.delete("pod", name, self.ns)

    def pod(self, name: str) -> dict:
        return self.k.get("pod", name, self.ns)

    def claim(self, name: str) -> dict:
        return self.k.get("resourceclaim", name, self.ns)

    def wait_running(self, name: str, timeout: float = SCHEDULE_TIMEOUT) -> dict:
        def probe():
            p = self.pod(name)
            st = p.get("status") or {}
            if st.get("phase") == "Running":
                return True, p
            sched = kube.condition(p, "PodScheduled") or {}
            ann = (p["metadata"].get("annotations") or {}).get(f"{DRIVER}/prepare-error")
            return False, {"phase": st.get("phase"), "nodeName": p["spec"].get("nodeName"),
                           "scheduled": sched.get("status"), "reason": sched.get("reason"),
                           "message": sched.get("message"), "prepareError": ann,
                           "claimStatuses": st.get("resourceClaimStatuses")}
        return until(f"pod {self.ns}/{name} to run", probe, timeout)

    def wait_gone(self, kind: str, name: str, timeout: float = TEARDOWN_TIMEOUT) -> None:
        def probe():
            obj = self.k.get_or_none(kind, name, self.ns)
            if obj is None:
                return True, None
            return False, {"deletionTimestamp": obj["metadata"].get("deletionTimestamp"),
                           "finalizers": obj["metadata"].get("finalizers"),
                           "phase": (obj.get("status") or {}).get("phase")}
        until(f"{kind} {self.ns}/{name} to be gone", probe, timeout)

    def delete_pod_and_wait(self, name: str) -> None:
        self.delete_pod(name)
        self.wait_gone("pod", name)

    def pod_claim(self, pod: dict, pod_claim_name: str) -> dict:
        """The ResourceClaim behind one of the pod's claims (direct, or generated from a
        template and recorded in the pod's status)."""
        for c in pod["spec"].get("resourceClaims") or []:
            if c["name"] == pod_claim_name and c.get("resourceClaimName"):
                return self.claim(c["resourceClaimName"])
        for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []:
            if s["name"] == pod_claim_name and s.get("resourceClaimName"):
                return self.claim(s["resourceClaimName"])
        raise Failure(f"pod {pod['metadata']['name']} has no resolved claim {pod_claim_name}; "
                      f"status: {wait.show(pod.get('status'))}")

    # ---- allocations and slices -------------------------------------------------------------

    def results(self, claim: dict) -> list[dict]:
        """Allocation results of this driver: [{request, driver, pool, device}]."""
        alloc = (claim.get("status") or {}).get("allocation")
        check(alloc is not None, f"claim {claim['metadata']['name']} is not allocated", claim.get("status"))
        return [r for r in alloc["devices"]["results"] if r["driver"] == DRIVER]

    def slice_devices(self) -> dict[tuple[str, str], dict]:
        """(pool, device) → {device fields..., node} over all of the driver's slices, taking
        only each pool's newest generation."""
        slices = self.cluster.slices()
        newest: dict[str, int] = {}
        for s in slices:
            p = s["spec"]["pool"]
            newest[p["name"]] = max(newest.get(p["name"], 0), p["generation"])
        out = {}
        for s in slices:
            p = s["spec"]["pool"]
            if p["generation"] != newest[p["name"]]:
                continue
            for d in s["spec"].get("devices") or []:
                out[(p["name"], d["name"])] = {**d, "node": s["spec"].get("nodeName"), "slice": s["metadata"]["name"]}
        return out

    def allocated(self, claim: dict) -> list[dict]:
        """The claim's allocated devices as published: each with `request`, `pool`, `node`."""
        devs = self.slice_devices()
        out = []
        for r in self.results(claim):
            d = devs.get((r["pool"], r["device"]))
            check(d is not None, f"allocated device {r['pool']}/{r['device']} is not in any published slice",
                  sorted(devs))
            out.append({**d, "request": r["request"], "pool": r["pool"]})
        return out

    def node_paths(self, node: str) -> nodes.NodePaths:
        return self.cluster.node_paths(node)

    # ---- node-side evidence -----------------------------------------------------------------

    def register(self, node: str, sysfs_name: str) -> int:
        return nodes.read_register(self.node_paths(node), sysfs_name)

    def mock_node(self, node: str) -> dict:
        return self.k.get("mockaccelnode", node)

    def prepared_claim_uids(self, node: str) -> set[str]:
        st = self.mock_node(node).get("status") or {}
        return {c["uid"] for c in st.get("preparedClaims") or []}

    def cdi_files_for(self, node: str, claim_uid: str) -> dict[str, str]:
        return {f: text for f, text in nodes.cdi_specs(self.node_paths(node)).items()
                if claim_uid in f or claim_uid in text}

    def edits(self, node: str, pod: str, container: str = "main") -> dict:
        e = nodes.container_edits(self.node_paths(node), self.ns, pod, container)
        check(e is not None, f"no container record {self.ns}_{pod}_{container}.json on {node}")
        return e

    def env(self, node: str, pod: str, container: str = "main") -> dict[str, str]:
        return nodes.env_map(self.edits(node, pod, container))

    def save(self, name: str, data: Any) -> None:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        text = data if isinstance(data, str) else json.dumps(data, indent=2, sort_keys=True)
        (self.artifacts / name).write_text(text)


def sysfs_name(device: dict) -> str:
    return kube.attr(device, "sysfsName")


def wait_prepared(ctx: Context, node: str, claim_uid: str, timeout: float = 30) -> None:
    until(f"claim {claim_uid} in {node}'s MockAccelNode.status.preparedClaims",
          lambda: (claim_uid in (u := ctx.prepared_claim_uids(node)), sorted(u)), timeout)


def wait_unprepared(ctx: Context, node: str, claim_uid: str, timeout: float = 30) -> None:
    until(f"claim {claim_uid} to leave {node}'s MockAccelNode.status.preparedClaims",
          lambda: (claim_uid not in (u := ctx.prepared_claim_uids(node)), sorted(u)), timeout)
    until(f"the CDI spec of claim {claim_uid} to be removed on {node}",
          lambda: (not (f := ctx.cdi_files_for(node, claim_uid)), sorted(f)), timeout)


def resolve_cdi(ctx: Context, node: str, ids: list[str]) -> dict:
    """Resolves CDI ids in the node's CDI directory with the upstream CDI library (through the
    fake kubelet's one-shot command), as a container runtime would."""
    fakelet = ctx.cluster.binaries.fakelet
    argv = [str(fakelet), "cdi-resolve", f"--cdi-dir={ctx.node_paths(node).cdi}"]
    for i in ids:
        argv += ["--id", i]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    check(res.returncode == 0, f"CDI ids {ids} do not resolve on {node}: {res.stderr.strip() or res.stdout.strip()}")
    try:
        return json.loads(res.stdout)
    except ValueError:
        raise Failure(f"fakelet cdi-resolve printed no JSON: {res.stdout[:300]!r}") from None


def prepared_entry(ctx: Context, node: str, claim_uid: str) -> dict:
    st = ctx.mock_node(node).get("status") or {}
    for c in st.get("preparedClaims") or []:
        if c["uid"] == claim_uid:
            return c
    raise Failure(f"claim {claim_uid} is not in {node}'s preparedClaims: {wait.show(st.get('preparedClaims'))}")


@contextlib.contextmanager
def extra_node(ctx: "Context", name: str, topology: str) -> Iterator[nodes.NodePaths]:
    """A simulated node added for one scenario (tree made outside the agent in `topology`),
    stopped and deleted at its end whatever happens."""
    paths = ctx.cluster.add_node(name, topology)
    try:
        yield paths
    finally:
        ctx.cluster.forget_node(name)
        ctx.k.delete("node", name, wait=True, timeout=30)


def verify_prepared(ctx: Context, pod_name: str, pod_claim: str, container: str = "main") -> tuple[str, dict, list[dict]]:
    """Everything a prepared claim must show, for a Running pod: reservation, register 1 on
    each device, a resolvable CDI spec, the container's env, and the MockAccelNode record.
    Returns (node, claim, allocated devices)."""
    p = ctx.pod(pod_name)
    node = p["spec"]["nodeName"]
    c = ctx.pod_claim(p, pod_claim)
    uid = c["metadata"]["uid"]
    reserved = [r.get("uid") for r in (c.get("status") or {}).get("reservedFor") or []]
    check(p["metadata"]["uid"] in reserved, f"claim {c['metadata']['name']} is not reserved for pod {pod_name}", reserved)
    devs = ctx.allocated(c)
    for d in devs:
        equal(d["node"], node, f"node of allocated device {d['pool']}/{d['name']}")
        equal(ctx.register(node, sysfs_name(d)), 1, f"status register of {node}/{sysfs_name(d)} while prepared")
    wait_prepared(ctx, node, uid)
    entry = prepared_entry(ctx, node, uid)
    ids = entry.get("cdiDeviceIds") or []
    check(bool(ids), f"preparedClaims entry of {uid} lists no CDI device ids", entry)
    files = ctx.cdi_files_for(node, uid)
    check(bool(files), f"no CDI spec for claim {uid} in {ctx.node_paths(node).cdi}",
          sorted(nodes.cdi_specs(ctx.node_paths(node))))
    resolve_cdi(ctx, node, ids)
    edits = ctx.edits(node, pod_name, container)
    env = nodes.env_map(edits)
    names = {sysfs_name(d) for d in devs}
    check(set((env.get("MOCK_ACCEL_DEVICES") or "").split(",")) >= names,
          f"MOCK_ACCEL_DEVICES of {pod_name}/{container} does not list {sorted(names)}", env)
    check(env.get("MOCK_ACCEL_DEVICE") in names, f"MOCK_ACCEL_DEVICE of {pod_name}/{container} is not one of {sorted(names)}", env)
    chosen = next(d for d in devs if sysfs_name(d) == env["MOCK_ACCEL_DEVICE"])
    equal(env.get("MOCK_ACCEL_UUID"), kube.attr(chosen, "uuid"), f"MOCK_ACCEL_UUID of {pod_name}/{container}")
    equal(env.get("MOCK_ACCEL_PCI"), kube.attr(chosen, "pciAddress"), f"MOCK_ACCEL_PCI of {pod_name}/{container}")
    ann = (p["metadata"].get("annotations") or {}).get(f"{DRIVER}/container-edits")
    check(ann is not None, f"pod {pod_name} has no {DRIVER}/container-edits annotation")
    return node, c, devs


def verify_released(ctx: Context, node: str, claim_uid: str, devs: list[dict]) -> None:
    """After the last pod using a claim is gone: register 0, CDI spec removed, no record."""
    wait_unprepared(ctx, node, claim_uid)
    for d in devs:
        until(f"status register of {node}/{sysfs_name(d)} back at 0",
              lambda d=d: ((v := ctx.register(node, sysfs_name(d))) == 0, v), 15)


def reset_registers(ctx: Context, node: str) -> None:
    """Sets every free device's register to 0 (a device reset leaves 1, which would make "1
    while prepared" prove nothing)."""
    paths = ctx.node_paths(node)
    busy = {d.get("sysfsName") for d in (ctx.mock_node(node).get("status") or {}).get("devices") or []
            if d.get("allocatedClaim")}
    for name in nodes.sysfs_names(paths):
        if name not in busy:
            nodes.write_register(paths, name, 0)


def elapsed(start: float) -> str:
    return f"{time.monotonic() - start:.1f}s"


def duration_seconds(text: str) -> float:
    """A duration as Go's time.Duration and our flags print it ("32ms", "1.5s", "1m2.5s",
    "850µs"), or a bare number of seconds, in seconds."""
    if re.fullmatch(r"[0-9.]+", text):
        return float(text)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"([0-9.]+)(h|ms|m|s|us|µs|ns)", text)
    check(bool(parts) and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)
