"""Scenario 1: discovery. Two canonical nodes × 6 devices → 4 pools, 12 devices, with every
attribute and capacity as the sysfs contract says, and both MockAccelNodes ready."""

from harness import kube, nodes
from harness.kube import DRIVER
from harness.wait import check, equal

from scenarios.framework import Context, say, scenario

# The canonical static-function layout of one node (sysfs-contract.md §9): sysfs name, BDF,
# type, NUMA node, PCIe root, parent PF, and the device server's `-u` string without "NODEn-".
CANONICAL = [
    ("mock0", "0000:11:00.0", "pf", 0, "pci0000:10", None, "NUMA0-PF"),
    ("mock1", "0000:11:00.1", "vf", 0, "pci0000:10", "mock0", "NUMA0-VF0"),
    ("mock2", "0000:11:00.2", "vf", 0, "pci0000:10", "mock0", "NUMA0-VF1"),
    ("mock3", "0000:21:00.0", "pf", 1, "pci0000:20", None, "NUMA1-PF"),
    ("mock4", "0000:21:00.1", "vf", 1, "pci0000:20", "mock3", "NUMA1-VF0"),
    ("mock5", "0000:21:00.2", "vf", 1, "pci0000:20", "mock3", "NUMA1-VF1"),
]
PF_MEMORY = 17179869184
VF_MEMORY = 2147483648


def uuid_of(u_string: str) -> str:
    """The kernel's `%pUb` of the device server's `-u` string: its first 16 ASCII bytes,
    zero-padded, printed as a UUID."""
    raw = u_string.encode()[:16].ljust(16, b"\0").hex()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def expected_devices(ctx: Context, node: str, node_index: int) -> dict[str, dict]:
    paths = ctx.node_paths(node)
    out = {}
    for sysfs, bdf, dtype, numa, root, physfn, u in CANONICAL:
        memory = int(nodes.read_attr(paths, sysfs, "memory_size"))
        # A 16 GiB PF may read 0 (the kernel's 32-bit read of a 64-bit register): both are real.
        allowed = (PF_MEMORY, 0) if dtype == "pf" else (VF_MEMORY,)
        check(memory in allowed, f"{node} {sysfs}: simulated memory_size {memory} is not one of {allowed}")
        out[sysfs] = {
            "attributes": {
                f"{DRIVER}/uuid": uuid_of(f"NODE{node_index}-{u}"),
                f"{DRIVER}/memory": memory,
                f"{DRIVER}/deviceType": dtype,
                f"{DRIVER}/pciAddress": bdf,
                f"{DRIVER}/capabilities": 1,
                f"{DRIVER}/numaNode": numa,
                f"{DRIVER}/sysfsName": sysfs,
                f"{DRIVER}/fwVersion": "1.0.0",
                "resource.kubernetes.io/pciBusID": bdf,
                "resource.kubernetes.io/pcieRoot": root,
                "resource.kubernetes.io/numaNode": numa,
                **({f"{DRIVER}/physfn": physfn} if physfn else {}),
            },
            "memory": memory,
            "pool": f"{node}/numa{numa}",
            "absent": [] if physfn else [f"{DRIVER}/physfn"],
        }
    return out


@scenario("1", "discovery: 2 nodes x 6 devices, 4 pools, every attribute and capacity")
def discovery(ctx: Context) -> None:
    canonical_nodes = [n for n, i in ctx.cluster.info["nodes"].items() if i["topology"] == "canonical"]
    equal(sorted(canonical_nodes), ["node1", "node2"], "canonical nodes of the cluster")
    total_devices, pools = 0, set()
    for node in canonical_nodes:
        index = ctx.cluster.info["nodes"][node]["index"]
        slices = ctx.cluster.slices(node)
        ctx.save(f"slices-{node}.json", slices)
        expected = expected_devices(ctx, node, index)
        seen: dict[str, dict] = {}
        node_uid = ctx.k.get("node", node)["metadata"]["uid"]
        by_pool: dict[str, list] = {}
        for s in slices:
            spec = s["spec"]
            equal(spec["driver"], DRIVER, f"slice {s['metadata']['name']} driver")
            equal(spec.get("nodeName"), node, f"slice {s['metadata']['name']} nodeName")
            owners = [(o["kind"], o["name"], o["uid"], o.get("controller")) for o in s["metadata"].get("ownerReferences") or []]
            check(("Node", node, node_uid, True) in owners,
                  f"slice {s['metadata']['name']} is not owned (controller) by Node {node}", owners)
            by_pool.setdefault(spec["pool"]["name"], []).append(spec["pool"])
            for d in spec.get("devices") or []:
                seen[d["name"]] = {**d, "pool": spec["pool"]["name"]}
        for pool, refs in by_pool.items():
            gens = {r["generation"] for r in refs}
            equal(len(gens), 1, f"pool {pool}: slices of one generation")
            equal(refs[0]["resourceSliceCount"], len(refs), f"pool {pool}: resourceSliceCount")
        equal(sorted(seen), sorted(expected), f"{node}: published device names")
        for name, exp in expected.items():
            d = seen[name]
            equal(d["pool"], exp["pool"], f"{node}/{name} pool")
            for key, value in exp["attributes"].items():
                got = kube.attr(d, key)
                equal(got, value, f"{node}/{name} attribute {key}")
            for key in exp["absent"]:
                check(key not in (d.get("attributes") or {}), f"{node}/{name} must not have {key}", d["attributes"])
            cap = (d.get("capacity") or {}).get(f"{DRIVER}/memory")
            check(cap is not None, f"{node}/{name} has no capacity {DRIVER}/memory", d.get("capacity"))
            equal(kube.quantity_bytes(cap["value"]), exp["memory"], f"{node}/{name} capacity memory (bytes)")
        total_devices += len(seen)
        pools |= set(by_pool)
        say(f"{node}: {len(seen)} devices in pools {sorted(by_pool)}; attributes and capacity as expected")
    equal(total_devices, 12, "devices published over both nodes")
    equal(sorted(pools), ["node1/numa0", "node1/numa1", "node2/numa0", "node2/numa1"], "pools")

    for node in canonical_nodes:
        st = ctx.mock_node(node).get("status") or {}
        equal((st.get("deviceCount"), st.get("pfCount"), st.get("vfCount")), (6, 2, 4),
              f"MockAccelNode {node} deviceCount/pfCount/vfCount")
        for ctype in ("DevicesDiscovered", "PluginRegistered", "SlicesPublished", "Ready"):
            c = kube.condition(ctx.mock_node(node), ctype) or {}
            equal(c.get("status"), "True", f"MockAccelNode {node} condition {ctype}")
        equal((st.get("agent") or {}).get("pluginRegistered"), True, f"MockAccelNode {node} agent.pluginRegistered")
        equal(sorted(p["name"] for p in st.get("pools") or []), [f"{node}/numa0", f"{node}/numa1"],
              f"MockAccelNode {node} pools")
        equal(len(st.get("devices") or []), 6, f"MockAccelNode {node} status.devices")

    table = ctx.k.run("get", "mockaccelnodes")
    say("kubectl get mockaccelnodes:\n" + "\n".join("        " + line for line in table.splitlines()))
    lines = table.splitlines()
    header = lines[0].split()
    check("READY" in header, "kubectl get mockaccelnodes has no READY column", lines[0])
    ready_col = header.index("READY")
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    for node in canonical_nodes:
        check(node in rows, f"kubectl get mockaccelnodes does not list {node}", table)
        equal(rows[node][ready_col], "True", f"READY column of {node}")
