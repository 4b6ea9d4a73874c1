"""Scenario 9: resilience. The node agent crashes with a claim prepared; the agent stays away
past the grace period; the controller leader dies; the fake kubelet restarts and wipes the
node's slices; a node is deleted. Each part restores what it broke before it returns."""

import time

from harness import nodes
from harness.kube import claim, pod, request
from harness.wait import check, equal, until

from scenarios.framework import (Context, duration_seconds, elapsed, prepared_entry, say, scenario, sysfs_name,
                                 verify_prepared, verify_released)



def controller_flag(ctx: Context, flag: str, default: str) -> str:
    """A controller flag's value as the local replicas run it (manifest args, harness override)."""
    if flag == "--agent-grace-period" and ctx.cluster.info.get("agent_grace_period"):
        return ctx.cluster.info["agent_grace_period"]
    args = ctx.cluster.info["controller_workload"]["args"]
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return default


def grace_seconds(ctx: Context) -> float:
    return duration_seconds(controller_flag(ctx, "--agent-grace-period", "40s"))


def slice_uids(ctx: Context, node: str) -> dict[str, str]:
    return {s["metadata"]["name"]: s["metadata"]["uid"] for s in ctx.cluster.slices(node)}


def device_count(ctx: Context, node: str) -> int:
    return sum(len(s["spec"].get("devices") or []) for s in ctx.cluster.slices(node))


@scenario("9a", "resilience: node agent killed and restarted while a claim is prepared")
def agent_restart(ctx: Context) -> None:
    ctx.apply(claim("held", [request("pf", "mock-accel-pf")]), pod("held", claims={"accel": "held"}))
    ctx.wait_running("held")
    node, c, devs = verify_prepared(ctx, "held", "accel")
    uid = c["metadata"]["uid"]
    spec_before = ctx.cdi_files_for(node, uid)
    heartbeat_before = ((ctx.mock_node(node).get("status") or {}).get("agent") or {}).get("heartbeat")

    ctx.cluster.sup.kill(f"agent-{node}")
    say(f"agent-{node} killed (SIGKILL) with claim held prepared")
    for d in devs:
        equal(ctx.register(node, sysfs_name(d)), 1, f"register of {sysfs_name(d)} with the agent down")
    equal(ctx.cdi_files_for(node, uid), spec_before, "CDI spec while the agent is down")
    ctx.cluster.start_agent(node)
    def back():
        agent = (ctx.mock_node(node).get("status") or {}).get("agent") or {}
        n = device_count(ctx, node)
        fresh = agent.get("heartbeat") != heartbeat_before
        return fresh and agent.get("pluginRegistered") is True and n == nodes.CANONICAL_DEVICES, \
            {"agent": agent, "devices": n}
    until(f"the {node} agent to re-register its plugin", back, 60)
    prepared_entry(ctx, node, uid)
    equal(ctx.cdi_files_for(node, uid), spec_before, "CDI spec after the agent restarted")
    say("agent back: claim still recorded, register and CDI spec untouched")

    ctx.delete_pod_and_wait("held")
    verify_released(ctx, node, uid, devs)
    say("unprepare after the restart released register, CDI spec and record")


@scenario("9b", "resilience: node agent down past the grace period withdraws slices; they return with it", cost=44)
def agent_grace(ctx: Context) -> None:
    node = "node2"
    grace = grace_seconds(ctx)
    before = device_count(ctx, node)
    equal(before, nodes.CANONICAL_DEVICES, f"devices of {node} before")
    ctx.cluster.sup.kill(f"agent-{node}")
    start = time.monotonic()
    say(f"agent-{node} killed; grace period {grace:.0f}s")
    until(f"{node}'s slices to be withdrawn", lambda: ((n := device_count(ctx, node)) == 0, n), grace + 45, 1)
    say(f"slices withdrawn after {elapsed(start)}")
    ctx.cluster.start_agent(node)
    start = time.monotonic()
    until(f"{node}'s slices to come back", lambda: ((n := device_count(ctx, node)) == nodes.CANONICAL_DEVICES, n), 60)
    say(f"slices back {elapsed(start)} after the agent restarted")


def lease_holder(ctx: Context, namespace: str) -> str | None:
    lease = ctx.k.get_or_none("lease", controller_flag(ctx, "--lease-name", "mock-accel-controller"), namespace)
    return (lease or {}).get("spec", {}).get("holderIdentity")


@scenario("9c", "resilience: controller leader killed; the other replica takes over, slices untouched", cost=14)
def controller_failover(ctx: Context) -> None:
    ns = ctx.cluster.info["controller_workload"]["namespace"]
    ids = {ctx.cluster.controller_identity_name(i): i for i in ctx.cluster.info["controllers"]}
    leader = until("a controller leader", lambda: ((h := lease_holder(ctx, ns)) in ids, h), 30)
    uids_before = {n: slice_uids(ctx, n) for n in ("node1", "node2")}
    ctx.cluster.sup.kill(f"controller-{ids[leader]}")
    start = time.monotonic()
    say(f"leader {leader} killed")
    try:
        new = until("another replica to take the lease",
                    lambda: ((h := lease_holder(ctx, ns)) in ids and h != leader, h), 60, 0.5)
        say(f"{new} leads after {elapsed(start)}")
        equal({n: slice_uids(ctx, n) for n in ("node1", "node2")}, uids_before,
              "slices (name → uid) after the failover")
        # The new leader acts: a deleted slice comes back.
        victim = sorted(uids_before["node1"])[0]
        old_uid = uids_before["node1"][victim]
        ctx.k.delete("resourceslice", victim)
        until(f"slice {victim} to be replaced by {new}",
              lambda: (device_count(ctx, "node1") == nodes.CANONICAL_DEVICES
                       and old_uid not in (u := slice_uids(ctx, "node1")).values(), u), 30)
        say("the new leader re-created a deleted slice")
    finally:
        ctx.cluster.start_controller(ids[leader])


@scenario("9d", "resilience: fake kubelet restart wipes the node's slices; they are re-created")
def kubelet_restart(ctx: Context) -> None:
    node = "node1"
    before = slice_uids(ctx, node)
    ctx.cluster.sup.stop(f"fakelet-{node}")
    ctx.cluster.start_fakelet(node)
    start = time.monotonic()

    def recreated():
        now = slice_uids(ctx, node)
        return (device_count(ctx, node) == nodes.CANONICAL_DEVICES and not (set(now.values()) & set(before.values())),
                {"uids_before": before, "now": now})
    until(f"{node}'s slices wiped by the kubelet start and re-created", recreated, 60)
    say(f"slices re-created {elapsed(start)} after the fake kubelet restarted")
    ctx.cluster.wait_node_ready(node, 30)


@scenario("9e", "resilience: node deleted; its MockAccelNode and slices are garbage-collected")
def node_deleted(ctx: Context) -> None:
    node = "node4"
    ctx.cluster.add_node(node, "canonical")
    try:
        check(ctx.k.get_or_none("mockaccelnode", node) is not None, f"MockAccelNode {node} was not created")
        owners = [(o["kind"], o["name"]) for o in ctx.mock_node(node)["metadata"].get("ownerReferences") or []]
        check(("Node", node) in owners, f"MockAccelNode {node} is not owned by Node {node}", owners)
        # Stop what would re-create the Node (the fake kubelet's heartbeat) and the objects.
        ctx.cluster.stop_node(node)
        ctx.k.delete("node", node, wait=True, timeout=30)
        start = time.monotonic()
        until(f"MockAccelNode {node} to be garbage-collected",
              lambda: ((m := ctx.k.get_or_none("mockaccelnode", node)) is None, m and m["metadata"]), 60)
        until(f"{node}'s ResourceSlices to be garbage-collected",
              lambda: (not (s := ctx.cluster.slices(node)), [x["metadata"]["name"] for x in s]), 60)
        say(f"MockAccelNode and slices of {node} gone {elapsed(start)} after the Node was deleted")
    finally:
        ctx.cluster.forget_node(node)
        ctx.k.delete("node", node, wait=False)
