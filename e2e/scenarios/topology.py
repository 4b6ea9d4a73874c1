"""Scenarios 4 and 5: NUMA and PCIe locality through the standard attributes.

Each positive case has a negative twin that only the constraint makes unsatisfiable (the
canonical node has 2 VFs per NUMA node and per PCIe root, 1 PF per root), so a driver that
published wrong or missing attributes cannot pass by luck.
"""

from harness import kube
from harness.kube import claim, distinct, match, pod, request
from harness.wait import equal, stays, until

from scenarios import partitionable
from scenarios.framework import Context, say, scenario, verify_prepared, verify_released

NUMA = "resource.kubernetes.io/numaNode"
ROOT = "resource.kubernetes.io/pcieRoot"


def numa_is(n: int) -> str:
    return f'device.attributes["resource.kubernetes.io"].numaNode == {n}'


def run_and_collect(ctx: Context, names: list[str]) -> dict[str, tuple[str, dict, list[dict]]]:
    out = {}
    for name in names:
        ctx.wait_running(name)
        out[name] = verify_prepared(ctx, name, "accel")
    return out


def release(ctx: Context, got: dict) -> None:
    for name, (node, c, devs) in got.items():
        ctx.delete_pod_and_wait(name)
        verify_released(ctx, node, c["metadata"]["uid"], devs)


def stays_unschedulable(ctx: Context, name: str, why: str) -> None:
    def probe():
        c = kube.condition(ctx.pod(name), "PodScheduled") or {}
        return c.get("status") == "False", c
    cond = until(f"pod {name} ({why}) to be reported unschedulable", probe, 60)
    stays(f"pod {name} unscheduled", lambda: (not (n := ctx.pod(name)["spec"].get("nodeName")), n), 3)
    say(f"{name} stays pending ({why}): {cond.get('message')}")
    ctx.delete_pod(name)


@scenario("4", "NUMA locality: matchAttribute keeps devices on one NUMA node; per-NUMA requests spread", cost=13)
def numa(ctx: Context) -> None:
    # Two rounds, so that no order of scheduling can exhaust a NUMA node another claim needs.
    ctx.apply(
        claim("same-numa", [request("vfs", "mock-accel-vf", count=2)], [match(NUMA)]),
        pod("same-numa", claims={"accel": "same-numa"}),
        claim("spread", [request("numa0", "mock-accel-vf", selectors=[numa_is(0)]),
                         request("numa1", "mock-accel-vf", selectors=[numa_is(1)])]),
        pod("spread", claims={"accel": "spread"}),
    )
    got = run_and_collect(ctx, ["same-numa", "spread"])
    by_req = {d["request"]: kube.attr(d, NUMA) for d in got["spread"][2]}
    equal(by_req, {"numa0": 0, "numa1": 1}, "NUMA node per request of claim spread")
    say("spread: one VF on NUMA 0 and one on NUMA 1 of one node")
    # Released before round two: with shared counters a node whose card has VFs allocated has
    # no two free PFs, so a held claim could leave claim distinct no node at all.
    kept = {"same-numa": [d.copy() for d in got["same-numa"][2]]}
    release(ctx, got)

    ctx.apply(
        claim("same-numa-driver-attr", [request("vfs", "mock-accel-vf", count=2)],
              [match("mock-accel.example.com/numaNode")]),
        pod("same-numa-driver-attr", claims={"accel": "same-numa-driver-attr"}),
        claim("distinct", [request("pfs", "mock-accel-pf", count=2)], [distinct(NUMA)]),
        pod("distinct", claims={"accel": "distinct"}),
    )
    got = run_and_collect(ctx, ["same-numa-driver-attr", "distinct"])
    for name, devs in (("same-numa", kept["same-numa"]), ("same-numa-driver-attr", got["same-numa-driver-attr"][2])):
        numas = {kube.attr(d, NUMA) for d in devs}
        equal(len(numas), 1, f"NUMA nodes of the devices of claim {name}")
        say(f"{name}: {[d['name'] for d in devs]} all on NUMA {numas.pop()}")
    equal(sorted(kube.attr(d, NUMA) for d in got["distinct"][2]), [0, 1], "NUMA nodes of claim distinct")
    say("distinct: PFs on NUMA 0 and 1")
    release(ctx, got)

    ctx.apply(claim("three-numa", [request("vfs", "mock-accel-vf", count=3)], [match(NUMA)]),
              pod("three-numa", claims={"accel": "three-numa"}))
    stays_unschedulable(ctx, "three-numa", "3 VFs on one NUMA node; each has 2")


@scenario("5", "PCIe locality: matchAttribute on resource.kubernetes.io/pcieRoot", cost=12)
def pcie(ctx: Context) -> None:
    # A PF and a VF behind one root are a PF and its own VF: with shared counters published
    # (partitionable devices) that pair is never allocated, which scenario 18a checks.
    pf_vf = not partitionable.counters_published(ctx)
    if pf_vf:
        ctx.apply(claim("pf-vf-root", [request("pf", "mock-accel-pf"), request("vf", "mock-accel-vf")],
                        [match(ROOT, ["pf", "vf"])]),
                  pod("pf-vf-root", claims={"accel": "pf-vf-root"}))
    ctx.apply(
        claim("root-20", [request("vf", "mock-accel-vf",
                                  selectors=['device.attributes["resource.kubernetes.io"].pcieRoot == "pci0000:20"'])]),
        pod("root-20", claims={"accel": "root-20"}),
    )
    got = run_and_collect(ctx, ["pf-vf-root", "root-20"] if pf_vf else ["root-20"])
    if pf_vf:
        devs = {d["request"]: d for d in got["pf-vf-root"][2]}
        equal(kube.attr(devs["pf"], ROOT), kube.attr(devs["vf"], ROOT), "pcieRoot of the PF and the VF")
        equal(kube.attr(devs["vf"], "physfn"), devs["pf"]["name"], "physfn of the VF behind the same root as the PF")
        say(f"pf-vf-root: {devs['pf']['name']} + {devs['vf']['name']} under {kube.attr(devs['pf'], ROOT)}")
    else:
        say("pf-vf-root: not tried, a PF and its own VF exclude each other (shared counters, scenario 18a)")
    d = got["root-20"][2][0]
    equal(kube.attr(d, ROOT), "pci0000:20", "pcieRoot of the device selected by root")
    equal(kube.attr(d, NUMA), 1, "NUMA node of a device under pci0000:20")
    release(ctx, got)

    ctx.apply(claim("two-pf-root", [request("pfs", "mock-accel-pf", count=2)], [match(ROOT)]),
              pod("two-pf-root", claims={"accel": "two-pf-root"}))
    stays_unschedulable(ctx, "two-pf-root", "2 PFs under one PCIe root; each root has 1")
