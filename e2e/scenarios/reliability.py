"""Scenarios 21a-21b: reliability of the node agent (issue 10).

21a: a claim that was force-deleted while the node agent was down, and that the kubelet will
never unprepare because it lost its own record of it, is released by the agent itself: at
start it compares its checkpoint with the API. The device is free and allocatable again.
21b: a rolling update of the node agent without a gap (see its docstring).
"""

import re
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from harness.kube import DRIVER, claim, claim_template, pod, request
from harness.wait import check, equal, until

from scenarios.framework import (Context, elapsed, say, scenario, sysfs_name, verify_prepared,
                                 verify_released)

# From the restarted agent's start to the device free (register, CDI, preparedClaims) and to a
# new claim for that device prepared: the bound.
STALE_DEADLINE = 30.0
STALE_REASON = "StaleClaimReleased"


def agent_metrics(ctx: Context, node: str) -> str:
    port = ctx.cluster.info["nodes"][node]["agent_metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def force_delete(ctx: Context, kind: str, name: str) -> None:
    """Deletes without waiting for anyone: finalizers dropped, no grace period."""
    ctx.k.run("patch", kind, name, "-n", ctx.ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    ctx.k.run("delete", kind, name, "-n", ctx.ns, "--grace-period=0", "--force", "--ignore-not-found",
              "--wait=false")


@scenario("21a", "reliability: a claim force-deleted while the agent was down is released by the agent itself")
def stale_claim(ctx: Context) -> None:
    node = "node2"
    ctx.apply(claim("stale", [request("pf", "mock-accel-pf")]), pod("stale", claims={"accel": "stale"}, node=node))
    ctx.wait_running("stale")
    _, c, devs = verify_prepared(ctx, "stale", "accel")
    uid = c["metadata"]["uid"]
    device = sysfs_name(devs[0])

    # The kubelet loses its record of the claim (its DRA checkpoint gone, as when a node's
    # kubelet state is reset), and the agent is down while the pod and the claim are deleted:
    # no NodeUnprepareResources will ever come.
    ctx.cluster.sup.stop(f"fakelet-{node}")
    ctx.cluster.sup.stop(f"agent-{node}")
    paths = ctx.node_paths(node)
    (paths.kubelet / "dra_manager_state").unlink(missing_ok=True)
    force_delete(ctx, "pod", "stale")
    force_delete(ctx, "resourceclaim", "stale")
    until("pod and claim gone from the API",
          lambda: (ctx.k.get_or_none("pod", "stale", ctx.ns) is None
                   and ctx.k.get_or_none("resourceclaim", "stale", ctx.ns) is None, None), 30)
    equal(ctx.register(node, device), 1, f"register of {device} while nobody released it")
    say(f"agent and kubelet of {node} down; pod and claim {uid} force-deleted; kubelet record dropped")

    ctx.cluster.start_fakelet(node)
    ctx.cluster.start_agent(node)
    start = time.monotonic()
    verify_released(ctx, node, uid, devs)
    released = time.monotonic() - start
    check(released <= STALE_DEADLINE, f"stale claim released after {released:.1f}s, more than {STALE_DEADLINE:.0f}s")
    say(f"stale claim released {elapsed(start)} after the agent started (register 0, CDI gone, preparedClaims)")

    events = ctx.k.json("get", "events", "-A", "--field-selector",
                        f"reason={STALE_REASON},involvedObject.name={node}")["items"]
    mine = [e for e in events if uid in (e.get("message") or e.get("note") or "")]
    check(bool(mine), f"no {STALE_REASON} Event on MockAccelNode {node} for claim {uid}",
          [e.get("message") for e in events])
    equal(mine[0]["involvedObject"]["kind"], "MockAccelNode", "kind of the Event's object")
    metrics = agent_metrics(ctx, node)
    check('mock_accel_stale_claims_released_total{reason="deleted"} 1' in metrics,
          "the agent's metrics do not count the released claim",
          [l for l in metrics.splitlines() if "stale" in l])

    # The same device, claimed anew, is allocated and prepared.
    selector = f'device.attributes["mock-accel.example.com"].sysfsName == "{device}"'
    ctx.apply(claim("again", [request("pf", "mock-accel-pf", selectors=[selector])]),
              pod("again", claims={"accel": "again"}, node=node))
    ctx.wait_running("again", timeout=max(5.0, STALE_DEADLINE - (time.monotonic() - start)))
    _, c2, devs2 = verify_prepared(ctx, "again", "accel")
    equal([sysfs_name(d) for d in devs2], [device], "device of the new claim")
    say(f"{device} allocated and prepared for a new claim {elapsed(start)} after the agent started")
    ctx.delete_pod_and_wait("again")
    verify_released(ctx, node, c2["metadata"]["uid"], devs2)


# ---- 21b: rolling update ----------------------------------------------------------------------

# How long one pod of the stream may take from creation to Running, and to be gone after its
# deletion (scheduling, prepare, unprepare through the fake kubelet).
CYCLE_TIMEOUT = 30.0


class PodStream(threading.Thread):
    """Creates a pod with a fresh one-VF claim on `node`, waits for it to run, deletes it and
    waits until it is gone (unprepared), over and over until stopped. Records every failure:
    a pod not Running in time, a prepare error the fake kubelet left on a pod, a pod not gone."""

    def __init__(self, ctx: Context, node: str):
        super().__init__(daemon=True)
        self.ctx, self.node = ctx, node
        self.done = threading.Event()
        self.cycles = 0
        self.claim_uids: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.done.is_set():
            name = f"roll-{i}"
            i += 1
            try:
                self.ctx.apply(pod(name, templates={"accel": "roll"}, node=self.node))
                p = self.ctx.wait_running(name, timeout=CYCLE_TIMEOUT)
                ann = (p["metadata"].get("annotations") or {}).get(f"{DRIVER}/prepare-error")
                if ann:
                    self.failures.append(f"{name}: prepare error {ann}")
                self.claim_uids.append(self.ctx.pod_claim(p, "accel")["metadata"]["uid"])
                self.ctx.delete_pod(name)
                self.ctx.wait_gone("pod", name, timeout=CYCLE_TIMEOUT)
                self.cycles += 1
            except Exception as e:  # noqa: BLE001 - every failure is a finding of the scenario
                self.failures.append(f"{name}: {e}")

    def wait_cycles(self, n: int, what: str) -> None:
        target = self.cycles + n
        until(f"{n} more pod cycles ({what})", lambda: (self.cycles >= target or bool(self.failures),
                                                        {"cycles": self.cycles, "failures": self.failures}),
              2 * CYCLE_TIMEOUT, 0.2)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_since(path: Path, offset: int) -> str:
    """A process log from byte `offset` on, without terminal colours."""
    with open(path, "rb") as f:
        f.seek(offset)
        return ANSI.sub("", f.read().decode(errors="replace"))


def log_path(ctx: Context, process: str) -> Path:
    """A process's log file, which outlives the process (and its record)."""
    return ctx.cluster.sup.logs / f"{process}.log"


def log_size(ctx: Context, process: str) -> int:
    path = log_path(ctx, process)
    return path.stat().st_size if path.exists() else 0


def wait_registered(ctx: Context, process: str, offset: int) -> None:
    """Until the instance's own log says the kubelet (the fake kubelet's plugin manager, the
    kubelet's code) registered it."""
    log = log_path(ctx, process)
    until(f"the kubelet to register {process}",
          lambda: ("kubelet registered the plugin" in log_since(log, offset), None), 30, 0.2)


@scenario("21b", "reliability: rolling update of the node agent without a gap (per-pod socket names)")
def rolling_update(ctx: Context) -> None:
    node = "node1"
    old, new = f"agent-{node}", f"agent-{node}-surge"
    paths = ctx.node_paths(node)
    new_uid = str(uuid.uuid4())
    sup = ctx.cluster.sup
    fakelet_log = log_path(ctx, f"fakelet-{node}")
    fakelet_offset = log_size(ctx, f"fakelet-{node}")
    ctx.apply(claim_template("roll", [request("vf", "mock-accel-vf")]))
    stream = PodStream(ctx, node)
    stream.start()
    try:
        stream.wait_cycles(1, "before the update")
        # The new DaemonSet pod starts beside the old one (maxSurge 1, maxUnavailable 0).
        new_offset = log_size(ctx, new)
        reg_before = set(p.name for p in paths.registry_dir.iterdir())
        dra_before = set(p.name for p in paths.plugin_dir.glob("dra-*.sock"))
        ctx.cluster.start_agent(node, process=new, env={"POD_UID": new_uid})
        wait_registered(ctx, new, new_offset)
        # The names carry the pod UID, hashed when the full name would not fit in a socket path
        # (as under the harness's deep state directory).
        reg_new = set(p.name for p in paths.registry_dir.iterdir()) - reg_before
        dra_new = set(p.name for p in paths.plugin_dir.glob("dra-*.sock")) - dra_before
        sockets = sorted(p.name for p in paths.registry_dir.iterdir())
        check(f"{DRIVER}-reg.sock" in sockets and len(reg_new) == 1,
              "both instances' registration sockets in the kubelet's registry", sockets)
        check(len(dra_new) == 1, "the new instance's DRA socket", sorted(dra_new))
        say(f"second agent registered beside the first: {sockets}")
        stream.wait_cycles(1, "both agents running")
        # The old pod goes.
        sup.stop(old)
        check(not (paths.registry_dir / f"{DRIVER}-reg.sock").exists(),
              "the old instance removed its registration socket", None)
        stream.wait_cycles(2, "only the new agent")
        new_log = log_since(log_path(ctx, new), new_offset)
        check("prepared claim=" in new_log or '"message":"prepared"' in new_log, "the new agent served prepares", None)
        say(f"old agent stopped; {stream.cycles} pod cycles so far, none failed")

        # And back (the cluster's own agent again), the same way.
        old_offset = log_size(ctx, old)
        ctx.cluster.start_agent(node)
        wait_registered(ctx, old, old_offset)
        sup.stop(new)
        check(not any((paths.registry_dir / n).exists() for n in reg_new)
              and not any((paths.plugin_dir / n).exists() for n in dra_new),
              "the surge instance removed its sockets", sorted(p.name for p in paths.registry_dir.iterdir()))
        stream.wait_cycles(1, "after the second update")
    finally:
        stream.done.set()
        stream.join(3 * CYCLE_TIMEOUT)
        if new in sup.procs and sup.get(new).alive():
            sup.stop(new)
    check(not stream.failures, "pods of the stream failed during the rolling update", stream.failures)
    retries = [l for l in log_since(fakelet_log, fakelet_offset).splitlines() if "roll-" in l and "retrying" in l]
    check(not retries, "the fake kubelet retried calls of the stream", retries[:10])
    until(f"every claim of the stream unprepared on {node}",
          lambda: (not (left := set(stream.claim_uids) & ctx.prepared_claim_uids(node)), sorted(left)), 30)
    say(f"{stream.cycles} pod cycles through two rolling updates, no failed or retried call")
