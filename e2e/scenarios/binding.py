"""Scenario 18c: binding conditions (KEP-5007). Nodes labelled
`mock-accel.example.com/attachment=fabric` publish devices with
`bindingConditions: [mock-accel.example.com/Attached]` and
`bindingFailureConditions: [mock-accel.example.com/AttachFailed]`. The scheduler allocates such
a device and holds the pod in PreBind until the claim's device status carries one of them; the
controller's attacher sets `Attached` `--attach-delay` (3 s) after the allocation, or
`AttachFailed` on the nodes the claim's `mock-accel.example.com/attach-fail` annotation names.

Checked: the pod stays unbound while the delay runs and binds after it, with `Attached` in the
claim's device status; a claim whose attach fails on node1 while node2's matching PF is held by
another pod is retried by the scheduler (allocation given up, device status cleared) and, once
node2's PF is free, runs there; every allocation carries the `allocationTimestamp` the binding
timeout is measured from.

Scenario 18d: the binding timeout. The harness gives kube-scheduler `bindingTimeout: 15s`
(`DynamicResources` plugin arguments, 600 s by default; see `controlplane.binding_timeout`). A
claim annotated `mock-accel.example.com/attach-never: "*"` is never attached (neither condition
is written). Checked: the pod stays unbound with a `BindingConditionsPending` Event; no sooner
than the timeout after `allocationTimestamp` the scheduler gives the allocation up (a
`FailedScheduling` Event names the binding timeout) and allocates again; once the annotation is removed, the new allocation is attached and the pod runs.
"""

import time
from datetime import datetime

from harness import controlplane, kube
from harness.kube import claim, pod, request
from harness.wait import check, equal, stays, until

from scenarios.framework import Context, say, scenario
from scenarios.partitionable import skipped_before_136

LABEL = "mock-accel.example.com/attachment"
ATTACHED = "mock-accel.example.com/Attached"
FAILED = "mock-accel.example.com/AttachFailed"
FAIL_ANNOTATION = "mock-accel.example.com/attach-fail"
NEVER_ANNOTATION = "mock-accel.example.com/attach-never"
DECISION = "binding conditions:"
DELAY = 3.0
ON_MOCK0 = ['device.attributes["mock-accel.example.com"].sysfsName == "mock0"']


def label_nodes(ctx: Context, value: str | None) -> None:
    for node in ctx.cluster.node_names():
        ctx.k.run("label", "node", node, f"{LABEL}={value}" if value else f"{LABEL}-", "--overwrite")


def waiting_devices(ctx: Context) -> list[dict]:
    return [d for d in ctx.slice_devices().values() if d.get("bindingConditions")]


def device_conditions(c: dict) -> list[tuple[str, str, str]]:
    """(pool/device, condition type, status) of the claim's device status."""
    return [(f"{d['pool']}/{d['device']}", x["type"], x["status"])
            for d in (c.get("status") or {}).get("devices") or [] for x in d.get("conditions") or []]


@scenario("18c", "binding conditions: a pod binds once its devices are attached; a failed attach is retried elsewhere", cost=45)
def binding_conditions(ctx: Context) -> None:
    skipped, lines, minor = skipped_before_136(ctx, DECISION)
    if skipped:
        label_nodes(ctx, "fabric")
        try:
            stays("no device with binding conditions", lambda: (not (w := waiting_devices(ctx)), w), 3)
        finally:
            label_nodes(ctx, None)
        say(f"Kubernetes {minor}: skipped by the controller: {lines[0][-200:]}")
        return

    label_nodes(ctx, "fabric")
    try:
        until("every device published with binding conditions",
              lambda: (len(w := waiting_devices(ctx)) == len(ctx.slice_devices()), len(w)), 30)
        d = waiting_devices(ctx)[0]
        equal((d["bindingConditions"], d["bindingFailureConditions"]), ([ATTACHED], [FAILED]),
              f"binding conditions of {d['name']}")

        # Attach after the delay: unbound until then.
        ctx.apply(claim("attach", [request("vf", "mock-accel-vf")]), pod("attach", claims={"accel": "attach"}))
        c = until("claim attach to be allocated",
                  lambda: (bool(((c := ctx.claim("attach")).get("status") or {}).get("allocation")), c), 30)
        allocation = c["status"]["allocation"]
        check("allocationTimestamp" in allocation, "allocation without allocationTimestamp", allocation)
        result = allocation["devices"]["results"][0]
        equal(result.get("bindingConditions"), [ATTACHED], "bindingConditions copied into the allocation")
        stays("pod attach unbound during the attach delay",
              lambda: (not (n := ctx.pod("attach")["spec"].get("nodeName")), n), DELAY - 1.5)
        p = ctx.wait_running("attach")
        bound = kube.condition(p, "PodScheduled")["lastTransitionTime"]
        check(bound >= allocation["allocationTimestamp"], "pod bound before its allocation", bound)
        conds = device_conditions(ctx.claim("attach"))
        check((f"{result['pool']}/{result['device']}", ATTACHED, "True") in conds,
              "no Attached condition in the device status", conds)
        say(f"attach: allocated {result['pool']}/{result['device']} at {allocation['allocationTimestamp']}, "
            f"bound at {bound} once Attached (delay {DELAY:.0f} s)")
        ctx.delete_pod_and_wait("attach")

        # A failed attach: node1's mock0 fails, node2's is held by another pod at first.
        ctx.apply(claim("hold", [request("pf", "mock-accel-pf", selectors=ON_MOCK0)]),
                  pod("hold", claims={"accel": "hold"}, node="node2"))
        ctx.wait_running("hold")
        failing = claim("retry", [request("pf", "mock-accel-pf", selectors=ON_MOCK0)])
        failing["metadata"]["annotations"] = {FAIL_ANNOTATION: "node1"}
        ctx.apply(failing, pod("retry", claims={"accel": "retry"}))
        def failed_attach():
            c = ctx.claim("retry")
            return any(t == FAILED for _, t, _ in device_conditions(c)), c
        seen = until("AttachFailed on node1 in claim retry's device status", failed_attach, 45)
        first = seen["status"]["allocation"]
        say(f"retry: attach failed on node1: {device_conditions(seen)}")
        check(not ctx.pod("retry")["spec"].get("nodeName"), "pod retry bound despite a failed attach")
        started = time.monotonic()
        ctx.delete_pod_and_wait("hold")
        p = ctx.wait_running("retry", timeout=90)
        equal(p["spec"]["nodeName"], "node2", "node of pod retry after the failed attach on node1")
        final = ctx.claim("retry")
        check(final["status"]["allocation"].get("allocationTimestamp") != first.get("allocationTimestamp"),
              "the failed allocation was not given up and made again", final["status"]["allocation"])
        conds = device_conditions(final)
        check(("node2/numa0/mock0", ATTACHED, "True") in conds, "device status of the final allocation", conds)
        say(f"retry: allocated again and bound on node2 {time.monotonic() - started:.0f} s after node2's PF was freed")
        ctx.delete_pod_and_wait("retry")
    finally:
        label_nodes(ctx, None)
    until("devices without binding conditions again", lambda: (not (w := waiting_devices(ctx)), len(w)), 30)


def epoch(timestamp: str) -> float:
    """Seconds since the epoch of an API timestamp (`2026-11-30T12:00:00Z`)."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


@scenario("18d", "binding timeout: a device never attached is given up after the scheduler's bindingTimeout and allocated again", cost=35)
def binding_timeout(ctx: Context) -> None:
    skipped, lines, minor = skipped_before_136(ctx, DECISION)
    timeout = controlplane.binding_timeout(minor)
    if skipped or timeout is None:
        why = "the controller skipped binding conditions" if skipped else "the scheduler takes no bindingTimeout"
        say(f"Kubernetes {minor}: skipped, {why}")
        return

    label_nodes(ctx, "fabric")
    try:
        until("every device published with binding conditions",
              lambda: (len(w := waiting_devices(ctx)) == len(ctx.slice_devices()), len(w)), 30)
        stalled = claim("stall", [request("vf", "mock-accel-vf")])
        stalled["metadata"]["annotations"] = {NEVER_ANNOTATION: "*"}
        ctx.apply(stalled, pod("stall", claims={"accel": "stall"}))
        c = until("claim stall to be allocated",
                  lambda: (bool(((c := ctx.claim("stall")).get("status") or {}).get("allocation")), c), 30)
        first = c["status"]["allocation"]
        allocated_at = first["allocationTimestamp"]
        until("a BindingConditionsPending Event on pod stall", lambda: (bool(e := ctx.k.items(
            "events", ctx.ns, field_selector="involvedObject.name=stall,reason=BindingConditionsPending")), e), 15)

        # Until the timeout: unbound, the allocation kept, no condition written.
        bound_early: list[str] = []
        def given_up():
            c = ctx.claim("stall")
            if n := ctx.pod("stall")["spec"].get("nodeName"):
                bound_early.append(n)
            alloc = (c.get("status") or {}).get("allocation")
            return alloc is None or alloc.get("allocationTimestamp") != allocated_at, (time.time(), c)
        seen_at, c = until(f"the scheduler to give up claim stall's allocation ({timeout} s binding timeout)",
                           given_up, timeout + 30, interval=0.25)
        check(not bound_early, "pod stall bound although its device was never attached", bound_early)
        waited = seen_at - epoch(allocated_at)
        check(waited >= timeout, f"allocation given up {waited:.1f} s after allocationTimestamp, "
              f"before the {timeout} s binding timeout", c.get("status"))
        failures = until("a FailedScheduling Event naming the binding timeout", lambda: (bool(e := [
            ev for ev in ctx.k.items("events", ctx.ns, field_selector="involvedObject.name=stall,reason=FailedScheduling")
            if "binding timeout" in (ev.get("message") or "")]), e), 15)
        say(f"stall: allocated {first['devices']['results'][0]['device']} at {allocated_at}, given up "
            f"{waited:.1f} s later (timeout {timeout} s): {failures[0]['message'][:160]}")

        # The scheduler allocates again; without the annotation the new allocation is attached.
        again = until("claim stall allocated again", lambda: (
            (a := (ctx.claim("stall").get("status") or {}).get("allocation") or {}).get("allocationTimestamp")
            not in (None, allocated_at), a), 30)
        ctx.k.run("annotate", "resourceclaim", "stall", "-n", ctx.ns, f"{NEVER_ANNOTATION}-")
        p = ctx.wait_running("stall")
        final = ctx.claim("stall")["status"]["allocation"]
        check(epoch(final["allocationTimestamp"]) >= epoch(again["allocationTimestamp"]),
              "pod stall runs on an allocation older than the re-allocation", final)
        conds = device_conditions(ctx.claim("stall"))
        check(any(t == ATTACHED and s == "True" for _, t, s in conds), "no Attached condition after the re-allocation", conds)
        say(f"stall: allocated again at {again['allocationTimestamp']} "
            f"({epoch(again['allocationTimestamp']) - epoch(allocated_at):.0f} s after the first), "
            f"attached once the annotation was removed, running on {p['spec']['nodeName']}")
        ctx.delete_pod_and_wait("stall")
    finally:
        label_nodes(ctx, None)
    until("devices without binding conditions again", lambda: (not (w := waiting_devices(ctx)), len(w)), 30)
