"""Scenarios 4b, 4c and 4d: what a topology-aggregating meta-driver does with our devices.

A coordinator such as k8s-dra-topology-coordinator rewrites a user's claim into one sub-request
per driver, with `deviceClassName` set to the driver's name, a generated request name and its
own CEL selector, and aligns drivers through the standard `resource.kubernetes.io/numaNode`.
These scenarios send claims of exactly that shape, without running the coordinator, and check
the allocation the scheduler makes from our slices.
"""

from harness import kube, nodes
from harness.kube import DRIVER, claim, distinct, match, pod, request
from harness.wait import check, equal, until

from scenarios import partitionable
from scenarios.framework import Context, say, scenario, verify_prepared, verify_released
from scenarios.topology import NUMA, release, stays_unschedulable

# The request name and selector the coordinator generates for our driver.
PARTITION_REQUEST = "partition-mock-accel-example-com"
COORDINATOR_NUMA1 = (f'has(device.attributes["{DRIVER}"].numaNode) && '
                     f'device.attributes["{DRIVER}"].numaNode == 1')

# A second node-local driver, published as a static slice: CPUs with only the standard
# attribute in common with us.
CPU_DRIVER = "cpu.e2e.example.com"
CPU_CLASS = "e2e-cpu"


@scenario("4b", "meta-driver: a coordinator-shaped claim (class = driver name, generated request, CEL on NUMA 1)",
          cost=10)
def coordinator_claim(ctx: Context) -> None:
    c = claim("partition", [request(PARTITION_REQUEST, DRIVER, count=2, selectors=[COORDINATOR_NUMA1])])
    # Opaque configuration addressed to another driver rides along in coordinator claims; ours
    # must ignore it, not fail the prepare.
    c["spec"]["devices"]["config"] = [{
        "requests": [PARTITION_REQUEST],
        "opaque": {"driver": CPU_DRIVER, "parameters": {"policy": "exclusive"}},
    }]
    ctx.apply(c, pod("partition", claims={"accel": "partition"}))
    ctx.wait_running("partition")
    node, got, devs = verify_prepared(ctx, "partition", "accel")
    equal(len(devs), 2, "devices allocated to the coordinator-shaped request")
    equal({d["request"] for d in devs}, {PARTITION_REQUEST}, "request name in the allocation")
    equal(sorted(kube.attr(d, "numaNode") for d in devs), [1, 1], "driver numaNode of both devices")
    equal(sorted(kube.attr(d, NUMA) for d in devs), [1, 1], "standard numaNode of both devices")
    say(f"{PARTITION_REQUEST}: {[d['name'] for d in devs]} on {node}, NUMA 1; foreign opaque config ignored")
    release(ctx, {"partition": (node, got, devs)})

    # A canonical NUMA node holds one card; with shared counters (partitionable devices) its PF
    # and its own VFs exclude each other, so a second PF joins NUMA 0 of one node for this part.
    spare = None
    if partitionable.counters_published(ctx):
        spare = (ctx.cluster.node_names()[0], "mock8")
        nodes.add_device(ctx.cluster.binaries.driver, ctx.node_paths(spare[0]), spare[1], "0000:13:00.0", 0, "pf")
        until(f"{spare[1]} to be published on {spare[0]}", lambda: (
            any(kube.attr(d, "sysfsName") == spare[1] for (p, _), d in ctx.slice_devices().items()
                if p == f"{spare[0]}/numa0"), None), 30)
    try:
        ctx.apply(
            claim("pf-vf-numa", [request("pf", "mock-accel-pf"), request("vf", "mock-accel-vf")],
                  [match(NUMA, ["pf", "vf"])]),
            pod("pf-vf-numa", claims={"accel": "pf-vf-numa"}),
        )
        ctx.wait_running("pf-vf-numa")
        node, got, devs = verify_prepared(ctx, "pf-vf-numa", "accel")
        numas = {d["request"]: kube.attr(d, NUMA) for d in devs}
        equal(numas["pf"], numas["vf"], "standard numaNode of the PF and the VF")
        by_req = {d["request"]: d for d in devs}
        if spare:
            equal((node, by_req["pf"]["name"]), spare, "node and PF of claim pf-vf-numa (the only PF without own VFs on a NUMA node)")
            check(kube.attr(by_req["vf"], "physfn") != by_req["pf"]["name"], "the PF came with its own VF")
        say(f"pf-vf-numa: PF {by_req['pf']['name']} and VF {by_req['vf']['name']} both on NUMA {numas['pf']} of {node}")
        release(ctx, {"pf-vf-numa": (node, got, devs)})
    finally:
        if spare:
            nodes.remove_device(ctx.cluster.binaries.driver, ctx.node_paths(spare[0]), spare[1])
    if spare:
        until(f"{spare[1]} to leave the slices", lambda: (
            not any(kube.attr(d, "sysfsName") == spare[1] for (p, _), d in ctx.slice_devices().items()
                    if p.startswith(f"{spare[0]}/")), None), 30)


def _cpu_slice(node: str) -> dict:
    """One CPU device on NUMA 1 only, so that alignment with it decides where our VFs go."""
    return {
        "apiVersion": kube.RESOURCE_API, "kind": "ResourceSlice",
        "metadata": {"name": f"e2e-cpus-{node}"},
        "spec": {
            "driver": CPU_DRIVER, "nodeName": node,
            "pool": {"name": f"{node}-cpus", "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": "cpu-socket1", "attributes": {
                "resource.kubernetes.io/numaNode": {"int": 1},
                f"{CPU_DRIVER}/socket": {"int": 1},
            }}],
        },
    }


@scenario("4c", "meta-driver: one claim aligns our VFs with another driver's CPU on resource.kubernetes.io/numaNode",
          cost=11)
def cross_driver_alignment(ctx: Context) -> None:
    node = ctx.cluster.node_names()[0]
    cpu_class = {"apiVersion": kube.RESOURCE_API, "kind": "DeviceClass", "metadata": {"name": CPU_CLASS},
                 "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{CPU_DRIVER}"'}}]}}
    ctx.k.apply([cpu_class, _cpu_slice(node)])
    try:
        ctx.apply(
            claim("aligned", [request("cpu", CPU_CLASS), request("accel", "mock-accel-vf", count=2)],
                  [match(NUMA)]),
            pod("aligned", claims={"accel": "aligned"}),
        )

        def allocation():
            alloc = (ctx.claim("aligned").get("status") or {}).get("allocation")
            return alloc is not None, alloc
        alloc = until("claim aligned to be allocated", allocation, 60)
        results = alloc["devices"]["results"]
        by_driver: dict[str, list[dict]] = {}
        for r in results:
            by_driver.setdefault(r["driver"], []).append(r)
        equal(sorted(by_driver), sorted([CPU_DRIVER, DRIVER]), "drivers in the allocation")
        equal([r["device"] for r in by_driver[CPU_DRIVER]], ["cpu-socket1"], "CPU device allocated")
        ours = ctx.allocated(ctx.claim("aligned"))
        equal(len(ours), 2, "our devices in the allocation")
        equal([kube.attr(d, NUMA) for d in ours], [1, 1], "standard numaNode of our VFs, aligned with the CPU")
        equal({d["node"] for d in ours}, {node}, "node of our VFs (the CPU slice's node)")
        say(f"aligned: cpu-socket1 + {[d['name'] for d in ours]} on NUMA 1 of {node}")
        # No plugin prepares the CPU driver's device here: only the allocation is the point.
        ctx.k.delete("pod", "aligned", ctx.ns, wait=True, timeout=60)

        # The negative twin: 3 VFs cannot share NUMA 1 with the CPU (each NUMA node has 2).
        ctx.apply(
            claim("aligned-3", [request("cpu", CPU_CLASS), request("accel", "mock-accel-vf", count=3)],
                  [match(NUMA)]),
            pod("aligned-3", claims={"accel": "aligned-3"}),
        )
        stays_unschedulable(ctx, "aligned-3", "3 VFs aligned with a NUMA-1 CPU; NUMA 1 has 2 VFs")
    finally:
        ctx.k.delete("resourceslice", f"e2e-cpus-{node}", wait=True, timeout=30)
        ctx.k.delete("deviceclass", CPU_CLASS, wait=True, timeout=30)
    for name in ("aligned", "aligned-3"):
        ctx.k.delete("resourceclaim", name, ctx.ns, wait=True, timeout=60)


@scenario("4d", "meta-driver: a device with numa_node -1 has no numaNode and is never picked under a NUMA constraint",
          cost=13)
def numa_none_device(ctx: Context) -> None:
    node = ctx.cluster.node_names()[1]
    paths = ctx.node_paths(node)
    driver = ctx.cluster.binaries.driver
    name = "mock9"
    nodes.add_device(driver, paths, name, "0000:61:00.0", -1, "pf")
    try:
        def published():
            devs = [d for (pool, _), d in ctx.slice_devices().items()
                    if pool == f"{node}/numa-none" and kube.attr(d, "sysfsName") == name]
            return bool(devs), devs
        dev = until(f"{name} to be published in pool {node}/numa-none", published, 30)[0]
        equal(kube.attr(dev, NUMA), None, f"standard numaNode of {name}")
        equal(kube.attr(dev, "numaNode"), None, f"driver numaNode of {name}")
        check(kube.attr(dev, "resource.kubernetes.io/pcieRoot") is not None,
              f"{name} still publishes its pcieRoot", dev.get("attributes"))

        # 3 PFs fit only this node, and only by taking the NUMA-less one: a NUMA constraint
        # must make that impossible, while the same claim without it runs.
        ctx.apply(claim("three-pf-distinct", [request("pfs", "mock-accel-pf", count=3)], [distinct(NUMA)]),
                  pod("three-pf-distinct", claims={"accel": "three-pf-distinct"}))
        stays_unschedulable(ctx, "three-pf-distinct", "3 PFs on distinct NUMA nodes; the third has none")
        ctx.apply(claim("three-pf", [request("pfs", "mock-accel-pf", count=3)]),
                  pod("three-pf", claims={"accel": "three-pf"}))
        ctx.wait_running("three-pf")
        got_node, got, devs = verify_prepared(ctx, "three-pf", "accel")
        equal(got_node, node, "node of the 3-PF claim")
        check(name in {d["name"] for d in devs}, f"the unconstrained 3-PF claim takes {name}",
              [d["name"] for d in devs])
        say(f"three-pf-distinct stays pending; three-pf runs with {[d['name'] for d in devs]}")
        release(ctx, {"three-pf": (got_node, got, devs)})
    finally:
        nodes.remove_device(driver, paths, name)
    until(f"{name} to leave the slices", lambda: (
        not any(kube.attr(d, "sysfsName") == name for (p, _), d in ctx.slice_devices().items()
                if p.startswith(f"{node}/")), None), 30)
