"""Scenario 6: SR-IOV. Two VFs of the same parent through `matchAttribute` on `physfn`; and
on a third node in the real SR-IOV layout (PFs only at start), VFs created at run time through
`sriov_numvfs` appear in the slices within seconds, can be allocated and prepared, and vanish
when removed. The third node is added for this scenario and deleted at its end."""

import time

from harness import kube, nodes
from harness.kube import claim, match, pod, request
from harness.wait import check, equal, until

from scenarios.framework import Context, say, scenario, sysfs_name, verify_prepared, verify_released

PHYSFN = "mock-accel.example.com/physfn"
SRIOV_NODE = "node3"
# VFs must show up in the slices this fast after sriov_numvfs is written.
VF_APPEAR_TIMEOUT = 15


def node_devices(ctx: Context, node: str) -> dict[str, dict]:
    return {d["name"]: d for (pool, _), d in ctx.slice_devices().items() if d["node"] == node}


@scenario("6", "SR-IOV: VFs of one physfn; runtime VFs in the SR-IOV layout published and allocated", cost=12)
def sriov(ctx: Context) -> None:
    ctx.apply(claim("same-parent", [request("vfs", "mock-accel-vf", count=2)], [match(PHYSFN)]),
              pod("same-parent", claims={"accel": "same-parent"}))
    ctx.wait_running("same-parent")
    node, c, devs = verify_prepared(ctx, "same-parent", "accel")
    parents = {kube.attr(d, "physfn") for d in devs}
    equal(len(parents), 1, "parents of the two VFs")
    say(f"same-parent: {[d['name'] for d in devs]} share physfn {parents.pop()} on {node}")
    ctx.delete_pod_and_wait("same-parent")
    verify_released(ctx, node, c["metadata"]["uid"], devs)

    cluster = ctx.cluster
    paths = cluster.add_node(SRIOV_NODE, "sriov")
    try:
        run_sriov_node(ctx, paths)
    finally:
        cluster.forget_node(SRIOV_NODE)
        ctx.k.delete("node", SRIOV_NODE, wait=True, timeout=30)


def run_sriov_node(ctx: Context, paths: nodes.NodePaths) -> None:
    before = node_devices(ctx, SRIOV_NODE)
    check(all(kube.attr(d, "deviceType") == "pf" for d in before.values()),
          f"{SRIOV_NODE} should start with PFs only", {n: kube.attr(d, 'deviceType') for n, d in before.items()})
    pf = "mock0"
    check(pf in before, f"{SRIOV_NODE} has no PF {pf}", sorted(before))
    say(f"{SRIOV_NODE}: PFs {sorted(before)}; writing 2 to {pf}/sriov_numvfs")

    start = time.monotonic()
    nodes.set_num_vfs(ctx.cluster.binaries.driver, paths, pf, 2)
    want = {"mock0-vf0": "mock0_vf0", "mock0-vf1": "mock0_vf1"}

    def vfs_published():
        devs = node_devices(ctx, SRIOV_NODE)
        return set(want) <= set(devs), sorted(devs)
    until(f"VFs {sorted(want)} in {SRIOV_NODE}'s slices", vfs_published, VF_APPEAR_TIMEOUT, 0.2)
    say(f"VFs published {time.monotonic() - start:.1f}s after sriov_numvfs was written")
    devs = node_devices(ctx, SRIOV_NODE)
    for name, sysfs in want.items():
        d = devs[name]
        equal(kube.attr(d, "deviceType"), "vf", f"{name} deviceType")
        equal(kube.attr(d, "sysfsName"), sysfs, f"{name} sysfsName")
        equal(kube.attr(d, "physfn"), pf, f"{name} physfn")
        equal(kube.attr(d, "numaNode"), kube.attr(devs[pf], "numaNode"), f"{name} NUMA node (inherited from {pf})")

    ctx.apply(
        claim("runtime-vfs", [request("vfs", "mock-accel-vf", count=2,
                                      selectors=['device.attributes["mock-accel.example.com"].sysfsName.startsWith("mock0_vf")'])],
              [match(PHYSFN)]),
        pod("runtime-vfs", claims={"accel": "runtime-vfs"}, node=SRIOV_NODE),
    )
    ctx.wait_running("runtime-vfs")
    node, c, got = verify_prepared(ctx, "runtime-vfs", "accel")
    equal(node, SRIOV_NODE, "node of the pod using runtime VFs")
    equal(sorted(d["name"] for d in got), sorted(want), "devices allocated from the runtime VFs")
    say(f"runtime-vfs: {sorted(sysfs_name(d) for d in got)} prepared on {node}")
    ctx.delete_pod_and_wait("runtime-vfs")
    verify_released(ctx, node, c["metadata"]["uid"], got)

    nodes.set_num_vfs(ctx.cluster.binaries.driver, paths, pf, 0)
    until(f"VFs to leave {SRIOV_NODE}'s slices",
          lambda: (not (set(want) & set(d := node_devices(ctx, SRIOV_NODE))), sorted(d)), VF_APPEAR_TIMEOUT, 0.2)
    say("sriov_numvfs=0: VFs withdrawn from the slices")
