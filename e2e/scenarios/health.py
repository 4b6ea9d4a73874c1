"""Scenario 17c: device health from `MockAccelNode.spec.health` to the scheduler. Declaring a
device Unhealthy taints it in its ResourceSlice within 2 s, and a new claim that could only use
it stays unallocated; back to Healthy the taint goes and the claim is allocated; declared
Unhealthy with `effect: NoExecute`, the device-taint eviction controller evicts the pod using
it."""

import time

from harness.kube import claim, pod, request
from harness.wait import check, equal, stays, until

from scenarios.fixture import NODE, merge_spec
from scenarios.partitionable import skipped_before_136
from scenarios.framework import Context, elapsed, say, scenario

DEVICE = "mock2"  # a VF of mock0 on NUMA node 0 (canonical layout)
SYSFS = "mock2"
KEY = "mock-accel.example.com/unhealthy"


def taints(ctx: Context) -> list[dict]:
    for (_, name), d in ctx.slice_devices().items():
        if d["node"] == NODE and name == DEVICE:
            return d.get("taints") or []
    return []


def device_status(ctx: Context) -> dict:
    for d in (ctx.mock_node(NODE).get("status") or {}).get("devices") or []:
        if d["name"] == DEVICE:
            return d
    return {}


def wait_taint(ctx: Context, effect: str | None, what: str) -> float:
    start = time.monotonic()
    want = [(KEY, effect)] if effect else []
    until(what, lambda: ((t := [(x["key"], x["effect"]) for x in taints(ctx)]) == want, t), 10, 0.1)
    return time.monotonic() - start


def clean_up(ctx: Context) -> None:
    """The health declaration gone, pod and claim h1 deleted."""
    merge_spec(ctx.k, {"health": None})
    ctx.k.delete("pod", "h1", ctx.ns)
    ctx.wait_gone("pod", "h1")
    ctx.k.delete("resourceclaim", "h1", ctx.ns)


def wait_healthy_count(ctx: Context) -> None:
    until("UNHEALTHY back to 0", lambda: (
        (n := (ctx.mock_node(NODE).get("status") or {}).get("unhealthyDeviceCount")) == 0, n), 10, 0.2)


def without_taints(ctx: Context, minor: str, decision: str, only_it: str) -> None:
    """Before 1.36 (`DRADeviceTaints` alpha and off) the controller skips taints with one log
    line: a declared Unhealthy device still shows in the MockAccelNode's status, its slices
    stay as they were (no taint, nothing rejected), and the scheduler may still pick it."""
    k = ctx.k
    say(f"Kubernetes {minor}: taints skipped by the controller: {decision[-200:]}")
    try:
        merge_spec(k, {"health": [{"device": DEVICE, "state": "Unhealthy", "message": "simulated ECC error"}]})
        until(f"status.devices[{DEVICE}].health Unhealthy",
              lambda: ((h := device_status(ctx).get("health")) == "Unhealthy", h), 10, 0.1)
        stays(f"{DEVICE} untainted", lambda: (not (t := taints(ctx)), t), 3)
        ctx.apply(claim("h1", [request("vf", "mock-accel-vf", selectors=[only_it])]),
                  pod("h1", claims={"accel": "h1"}, node=NODE))
        ctx.wait_running("h1", timeout=60)
        say(f"{DEVICE} Unhealthy in status.devices, no taint in its slice, pod h1 runs on it (taints skipped)")
    finally:
        clean_up(ctx)
    wait_healthy_count(ctx)


@scenario("17c", "health: a device declared Unhealthy is tainted within 2 s and avoided; Healthy clears it; "
                 "NoExecute evicts the pod using it", cost=10)
def declared_health(ctx: Context) -> None:
    k = ctx.k
    only_it = f'device.attributes["mock-accel.example.com"].sysfsName == "{SYSFS}"'
    skipped, lines, minor = skipped_before_136(ctx, "device taints:")
    if skipped:
        without_taints(ctx, minor, lines[0], only_it)
        return
    try:
        merge_spec(k, {"health": [{"device": DEVICE, "state": "Unhealthy", "message": "simulated ECC error"}]})
        took = wait_taint(ctx, "NoSchedule", f"{DEVICE} tainted NoSchedule")
        check(took <= 2.0, f"the taint took {took:.2f}s (more than 2 s)")
        st = device_status(ctx)
        equal(st.get("health"), "Unhealthy", f"status.devices[{DEVICE}].health")
        check("simulated ECC error" in (st.get("healthMessage") or ""), "healthMessage lacks the declared message", st)
        table = k.run("get", "mockaccelnodes", NODE)
        header, row = table.splitlines()[0].split(), table.splitlines()[1].split()
        equal(row[header.index("UNHEALTHY")], "1", "UNHEALTHY column")
        say(f"{DEVICE} tainted {took:.2f}s after the spec change; {st.get('healthMessage')}")

        # A claim that only this device satisfies is not allocated while it is tainted.
        ctx.apply(claim("h1", [request("vf", "mock-accel-vf", selectors=[only_it])]),
                  pod("h1", claims={"accel": "h1"}, node=NODE))
        until("pod h1 unschedulable", lambda: (
            ((c := next((c for c in (ctx.pod("h1").get("status") or {}).get("conditions") or []
                         if c["type"] == "PodScheduled"), {})).get("reason") == "Unschedulable"), c), 30, 0.2)
        check(not (ctx.claim("h1").get("status") or {}).get("allocation"), "claim h1 was allocated the tainted device")
        say("claim h1 (only the tainted device fits) is not allocated; pod h1 Unschedulable")

        merge_spec(k, {"health": None})
        took = wait_taint(ctx, None, f"{DEVICE}'s taint removed")
        check(took <= 2.0, f"removing the taint took {took:.2f}s (more than 2 s)")
        ctx.wait_running("h1", timeout=60)
        say(f"Healthy again: taint gone after {took:.2f}s, pod h1 Running on {DEVICE}")

        start = time.monotonic()
        merge_spec(k, {"health": [{"device": DEVICE, "state": "Unhealthy", "effect": "NoExecute"}]})
        wait_taint(ctx, "NoExecute", f"{DEVICE} tainted NoExecute")
        ctx.wait_gone("pod", "h1", 60)
        say(f"NoExecute: pod h1 evicted {elapsed(start)} after the spec change")
    finally:
        clean_up(ctx)
    wait_taint(ctx, None, f"{DEVICE}'s taint removed at the end")
    wait_healthy_count(ctx)
