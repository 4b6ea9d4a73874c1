"""Scenario 2: each DeviceClass allocates only what it promises, and a claim for more devices
than any node has stays pending with the scheduler's reason."""

from harness import kube
from harness.kube import claim, pod, request
from harness.wait import check, equal, stays, until

from scenarios.framework import Context, say, scenario

GIB = 2**30

# class → (what every allocated device must satisfy, how many such devices a canonical node has)
PROMISES = {
    "mock-accel-pf": (lambda d: kube.attr(d, "deviceType") == "pf", 2),
    "mock-accel-vf": (lambda d: kube.attr(d, "deviceType") == "vf", 4),
    "mock-accel-vf-2gb": (lambda d: kube.attr(d, "deviceType") == "vf"
                          and kube.quantity_bytes(d["capacity"]["mock-accel.example.com/memory"]["value"]) >= 2 * GIB, 4),
}


@scenario("2", "device classes: pf, vf, vf-2gb allocate what they promise; too many stays pending", cost=13)
def device_classes(ctx: Context) -> None:
    for name in PROMISES:
        dc = ctx.k.get_or_none("deviceclass", name)
        check(dc is not None, f"DeviceClass {name} is not installed")
        exprs = [s["cel"]["expression"] for s in dc["spec"].get("selectors") or []]
        check(any('device.driver == "mock-accel.example.com"' in e for e in exprs),
              f"DeviceClass {name} has no driver guard", exprs)

    # allocationMode All takes every matching device of one node: the count proves that the
    # class matched exactly the devices it promises (no more, no fewer).
    for name, (promise, per_node) in PROMISES.items():
        pname = f"all-{name}"
        ctx.apply(claim(pname, [request("devs", name, all_devices=True)]),
                  pod(pname, claims={"devs": pname}))
        p = ctx.wait_running(pname)
        devs = ctx.allocated(ctx.claim(pname))
        names = sorted(f"{d['pool']}/{d['name']}" for d in devs)
        for d in devs:
            check(promise(d), f"{name} allocated {d['pool']}/{d['name']}, which it does not promise",
                  d.get("attributes"))
            equal(d["node"], p["spec"]["nodeName"], f"node of device {d['name']}")
        equal(len(devs), per_node, f"devices allocated by {name} with allocationMode All ({names})")
        say(f"{name}: {names}")
        ctx.delete_pod_and_wait(pname)
        ctx.k.delete("resourceclaim", pname, ctx.ns)

    # Two PFs per node: three in one claim fit nowhere.
    ctx.apply(claim("too-many", [request("pfs", "mock-accel-pf", count=3)]),
              pod("too-many", claims={"pfs": "too-many"}))

    def unschedulable():
        p = ctx.pod("too-many")
        c = kube.condition(p, "PodScheduled") or {}
        return c.get("status") == "False" and c.get("reason") == "Unschedulable", c
    cond = until("pod too-many to be reported unschedulable", unschedulable, 60)
    say(f"scheduler: {cond.get('message')}")
    check("claim" in (cond.get("message") or "").lower(),
          "the scheduler's reason does not mention the claim", cond)

    def still_pending():
        p = ctx.pod("too-many")
        c = ctx.claim("too-many")
        return (p["status"].get("phase") == "Pending" and not p["spec"].get("nodeName")
                and not (c.get("status") or {}).get("allocation")), {"phase": p["status"].get("phase"),
                                                                   "claim": c.get("status")}
    stays("pod too-many pending and its claim unallocated", still_pending, 5)
    events = ctx.k.items("events", ctx.ns, field_selector="involvedObject.name=too-many,reason=FailedScheduling")
    check(bool(events), "no FailedScheduling event for pod too-many")
