"""Scenario 18b: consumable capacity (KEP-5075). A node labelled
`mock-accel.example.com/pf-sharing=shared` publishes its PFs with `allowMultipleAllocations`
and a `memory` capacity shared in 1Gi steps: two claims of 8Gi land on one 16Gi PF, each
prepared with its own share (shareID, granted memory in `MOCK_ACCEL_MEMORY`), the register
set while any share is prepared; a third claim waits until one share is released.

The controller decides at start-up (`--consumable-capacity=auto`) from the API server; on a
server that drops the fields (Kubernetes 1.34 with its default gates) it logs one
'consumable capacity: skipped' line and a labelled node keeps whole PFs, which the scenario
checks instead.
"""

from harness.kube import claim, pod, request
from harness.wait import check, equal, stays, until

from scenarios.framework import Context, say, scenario, sysfs_name
from scenarios.partitionable import skipped_before_136, unschedulable

NODE = "node2"
LABEL = "mock-accel.example.com/pf-sharing"
MEMORY = "mock-accel.example.com/memory"
POOL = f"{NODE}/numa0"
# The NUMA 0 card of a canonical node: its PF (16Gi) is the one the claims share.
ON_ROOT = ['device.attributes["resource.kubernetes.io"].pcieRoot == "pci0000:10"']
DECISION = "consumable capacity:"
GIB = 1 << 30


def shared_pf(ctx: Context) -> dict | None:
    """The PF of POOL as published now, when it allows multiple allocations."""
    for (pool, _), d in ctx.slice_devices().items():
        if pool == POOL and d.get("allowMultipleAllocations"):
            return d
    return None


def set_label(ctx: Context, value: str | None) -> None:
    arg = f"{LABEL}={value}" if value else f"{LABEL}-"
    ctx.k.run("label", "node", NODE, arg, "--overwrite")


def share_claim(name: str) -> dict:
    return claim(name, [request("mem", "mock-accel-pf-shared", selectors=ON_ROOT,
                                capacity={MEMORY: "8Gi"})])


@scenario("18b", "consumable capacity: two 8Gi claims share one 16Gi PF; a third waits for a share", cost=12)
def consumable_capacity(ctx: Context) -> None:
    skipped, lines, minor = skipped_before_136(ctx, DECISION)
    if skipped:
        # 1.34 with its default gates: the label must change nothing.
        set_label(ctx, "shared")
        try:
            stays(f"{POOL} without a device allowing multiple allocations",
                  lambda: ((d := shared_pf(ctx)) is None, d), 3)
        finally:
            set_label(ctx, None)
        say(f"Kubernetes {minor}: skipped by the controller: {lines[0][-200:]}")
        return
    check(all("nodes labelled" in line for line in lines), "unexpected consumable capacity decision", lines)

    set_label(ctx, "shared")
    try:
        pf = until(f"{POOL}'s PF published in shares", lambda: ((d := shared_pf(ctx)) is not None, d), 30)
        policy = pf["capacity"][MEMORY]["requestPolicy"]
        equal(policy["validRange"]["step"], "1Gi", "share step")
        say(f"{NODE}: {pf['name']} allows multiple allocations, memory {pf['capacity'][MEMORY]['value']} "
            f"in steps of {policy['validRange']['step']} (default {policy['default']})")

        ctx.apply(share_claim("share-a"), pod("share-a", claims={"accel": "share-a"}, node=NODE),
                  share_claim("share-b"), pod("share-b", claims={"accel": "share-b"}, node=NODE))
        ctx.wait_running("share-a")
        ctx.wait_running("share-b")
        results = {n: ctx.results(ctx.claim(n))[0] for n in ("share-a", "share-b")}
        equal({r["device"] for r in results.values()}, {pf["name"]}, "device of both shares")
        ids = {r.get("shareID") for r in results.values()}
        check(None not in ids and len(ids) == 2, "the two shares have no distinct shareIDs", results)
        for n, r in results.items():
            equal(r.get("consumedCapacity", {}).get(MEMORY), "8Gi", f"memory consumed by {n}")
            equal(ctx.env(NODE, n).get("MOCK_ACCEL_MEMORY"), str(8 * GIB), f"MOCK_ACCEL_MEMORY of {n}")
        sysfs = sysfs_name(pf)
        equal(ctx.register(NODE, sysfs), 1, f"register of {sysfs} with two shares prepared")
        say(f"share-a and share-b share {pf['name']} (shareIDs {sorted(ids)}), 8Gi each in the container")

        ctx.apply(share_claim("share-c"), pod("share-c", claims={"accel": "share-c"}, node=NODE))
        unschedulable(ctx, "share-c", f"a third 8Gi share of the 16Gi {pf['name']}")
        ctx.delete_pod_and_wait("share-a")
        ctx.wait_running("share-c")
        equal(ctx.results(ctx.claim("share-c"))[0]["device"], pf["name"], "device of share-c")
        equal(ctx.register(NODE, sysfs), 1, f"register of {sysfs} while shares remain")
        say(f"share-c got {pf['name']} once share-a was released")

        ctx.delete_pod_and_wait("share-b")
        ctx.delete_pod_and_wait("share-c")
        until(f"register of {sysfs} cleared after the last share",
              lambda: ((v := ctx.register(NODE, sysfs)) == 0, v), 30)
    finally:
        set_label(ctx, None)
    until(f"{POOL}'s PF whole again", lambda: (shared_pf(ctx) is None, None), 30)
    say(f"{NODE} unlabelled: {pf['name']} is published whole again")
