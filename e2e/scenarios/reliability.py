"""Scenarios 21a-21b: reliability of the node agent (issue 10).

21a: a claim that was force-deleted while the node agent was down, and that the kubelet will
never unprepare because it lost its own record of it, is released by the agent itself: at
start it compares its checkpoint with the API. The device is free and allocatable again.
21b: a rolling update of the node agent without a gap (see its docstring).
"""

import json
import time
import urllib.request

from harness.kube import claim, pod, request
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
