"""Scenarios 19*: simulated nodes and SR-IOV through `MockAccelNode.spec`.

19a: node1's agent runs with `--simulate` (the settings of kustomize/simulated) and builds its
own tree; a change of `spec.simulation` reshapes the tree and reaches the ResourceSlices
within 2 s, and a device that still exists keeps its status register (a prepared device
stays prepared).

19b: on a node in the SR-IOV layout (a tree made outside the agent, `sim watch` playing the
kernel, so the agent writes `sriov_numvfs` as on a real node), `spec.sriov` publishes and
withdraws VFs; a change that would remove a prepared VF is refused with the SriovReconciled
condition and an Event naming the claim, the VF and its claim keep working, and the change
is made once the claim is unprepared.
"""

import json
import time

from harness import nodes
from harness.kube import claim, pod, request
from harness.wait import check, equal, until

from scenarios.framework import Context, extra_node, say, scenario, sysfs_name, verify_prepared, wait_prepared, wait_unprepared

SIM_NODE = "node1"
# A spec change must reach the slices this fast (issue 11).
RESHAPE_TIMEOUT = 2.0


SRIOV_NODE = "node6"
SRIOV_PF = "mock0"
# VFs written through sriov_numvfs must reach the slices this fast.
SRIOV_TIMEOUT = 15


def patch_spec(k, node: str, spec: dict) -> None:
    k.run("patch", "mockaccelnode", node, "--type=merge", "-p", json.dumps({"spec": spec}))


def node_slice_devices(ctx: Context, node: str) -> dict[str, str]:
    """DRA device name → pool, for the node's published devices."""
    return {name: pool for (pool, name), d in ctx.slice_devices().items() if d["node"] == node}


@scenario("19a", "simulated node: spec.simulation (a NUMA node more, VFs per PF) reaches the slices within 2 s; "
                 "kept devices keep their register", cost=8)
def simulated_topology(ctx: Context) -> None:
    info = ctx.cluster.info["nodes"][SIM_NODE]
    check(info.get("simulate"), f"{SIM_NODE}'s agent does not simulate its devices", info)
    k = ctx.k
    paths = ctx.node_paths(SIM_NODE)
    # Register 1 stands for a prepared device: the rebuild must not touch a device that stays.
    nodes.write_register(paths, "mock1", 1)
    steps = [
        ({"numaNodes": 3}, 9, {f"{SIM_NODE}/numa{i}" for i in range(3)}),
        ({"numaNodes": 2, "vfsPerPF": 3}, 8, {f"{SIM_NODE}/numa{i}" for i in range(2)}),
    ]
    try:
        for sim, count, pools in steps:
            start = time.monotonic()
            patch_spec(k, SIM_NODE, {"simulation": sim})

            def reshaped():
                devs = node_slice_devices(ctx, SIM_NODE)
                return len(devs) == count and set(devs.values()) == pools, devs
            until(f"{SIM_NODE}'s slices to show {count} devices in pools {sorted(pools)}", reshaped,
                  RESHAPE_TIMEOUT, 0.05)
            took = time.monotonic() - start
            equal(len(nodes.sysfs_names(paths)), count, f"devices in {SIM_NODE}'s simulated tree")
            equal(nodes.read_register(paths, "mock1"), 1, "register of mock1, a device that stayed")
            say(f"simulation {sim}: {count} devices in {len(pools)} pools published {took:.2f}s after the patch")
    finally:
        patch_spec(k, SIM_NODE, {"simulation": None})
        nodes.write_register(paths, "mock1", 0)
    until(f"{SIM_NODE} back to the canonical 6 devices",
          lambda: (len(d := node_slice_devices(ctx, SIM_NODE)) == nodes.CANONICAL_DEVICES, d), 10, 0.1)
    say("simulation removed: back to the canonical layout")


def sriov_condition(ctx: Context) -> dict:
    n = ctx.k.get("mockaccelnode", SRIOV_NODE)
    return next((c for c in (n.get("status") or {}).get("conditions") or [] if c["type"] == "SriovReconciled"), {})


def sriov_status(ctx: Context) -> list[dict]:
    return (ctx.k.get("mockaccelnode", SRIOV_NODE).get("status") or {}).get("sriov") or []


def vfs_of(ctx: Context) -> set[str]:
    return {n for n in node_slice_devices(ctx, SRIOV_NODE) if n.startswith(f"{SRIOV_PF}-vf")}


def wait_vfs(ctx: Context, want: set[str]) -> None:
    start = time.monotonic()
    until(f"{SRIOV_NODE}'s published VFs of {SRIOV_PF} to be {sorted(want)}",
          lambda: ((v := vfs_of(ctx)) == want, sorted(v)), SRIOV_TIMEOUT, 0.1)
    until(f"status.sriov of {SRIOV_NODE} to report {len(want)} VFs",
          lambda: ((s := sriov_status(ctx)) == [{"pf": SRIOV_PF, "desired": len(want), "actual": len(want)}], s),
          SRIOV_TIMEOUT, 0.1)
    say(f"{SRIOV_PF}: VFs {sorted(want)} published {time.monotonic() - start:.1f}s after the spec change")


@scenario("19b", "SR-IOV through spec.sriov: VFs published and withdrawn; a shrink that would remove a prepared VF "
                 "is refused (condition, Event) and the claim keeps working", cost=18)
def sriov_spec(ctx: Context) -> None:
    with extra_node(ctx, SRIOV_NODE, "sriov") as paths:
        run_sriov_spec(ctx, paths)


def run_sriov_spec(ctx: Context, paths: nodes.NodePaths) -> None:
    k = ctx.k
    patch_spec(k, SRIOV_NODE, {"sriov": [{"pf": SRIOV_PF, "numVFs": 2}]})
    wait_vfs(ctx, {f"{SRIOV_PF}-vf0", f"{SRIOV_PF}-vf1"})
    equal(nodes.read_attr(paths, SRIOV_PF, "sriov_numvfs"), "2", f"{SRIOV_PF}/sriov_numvfs on the node")
    until("SriovReconciled True", lambda: ((c := sriov_condition(ctx)).get("status") == "True", c), 10, 0.1)

    held = f"{SRIOV_PF}_vf1"
    ctx.apply(claim("sriov-held", [request("vf", "mock-accel-vf",
                                           selectors=[f'device.attributes["mock-accel.example.com"].sysfsName == "{held}"'])]),
              pod("sriov-held", claims={"accel": "sriov-held"}, node=SRIOV_NODE))
    ctx.wait_running("sriov-held")
    node, c, devs = verify_prepared(ctx, "sriov-held", "accel")
    equal([sysfs_name(d) for d in devs], [held], "device of claim sriov-held")
    uid = c["metadata"]["uid"]

    patch_spec(k, SRIOV_NODE, {"sriov": [{"pf": SRIOV_PF, "numVFs": 1}]})
    cond = until("SriovReconciled False (PreparedVFs)",
                 lambda: ((c := sriov_condition(ctx)).get("reason") == "PreparedVFs", c), 10, 0.1)
    check(f"{ctx.ns}/sriov-held" in cond["message"], "the refusal does not name the claim", cond)
    events = until("a SriovChangeRefused Event on the MockAccelNode", lambda: (bool(e := [
        ev for ev in k.items("events.events.k8s.io", namespace="default")
        if ev.get("reason") == "SriovChangeRefused" and (ev.get("regarding") or {}).get("name") == SRIOV_NODE]), e),
        10, 0.2)
    check(f"{ctx.ns}/sriov-held" in events[0].get("note", ""), "the Event does not name the claim", events[0])
    equal(sriov_status(ctx), [{"pf": SRIOV_PF, "desired": 1, "actual": 2}], "status.sriov while refused")
    equal(vfs_of(ctx), {f"{SRIOV_PF}-vf0", f"{SRIOV_PF}-vf1"}, "VFs published while the shrink is refused")
    equal(nodes.read_register(paths, held), 1, f"register of the prepared {held}")
    wait_prepared(ctx, node, uid)
    say(f"shrink refused: {cond['message'][:160]}")

    ctx.delete_pod_and_wait("sriov-held")
    # The refused change is made as soon as the claim is unprepared, so mock0_vf1 goes away
    # (its register with it): only the claim's release is checked here.
    wait_unprepared(ctx, node, uid)
    wait_vfs(ctx, {f"{SRIOV_PF}-vf0"})
    until("SriovReconciled True again", lambda: ((c := sriov_condition(ctx)).get("status") == "True", c), 10, 0.1)

    patch_spec(k, SRIOV_NODE, {"sriov": [{"pf": SRIOV_PF, "numVFs": 0}]})
    wait_vfs(ctx, set())
    say("numVFs 0: every VF withdrawn")
