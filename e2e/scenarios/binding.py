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
node2's PF is free, runs there. The binding timeout (the scheduler's `bindingTimeout`, 600 s by
default in v1.37) is not waited for: the scenario asserts instead that every allocation of such
a device carries the `allocationTimestamp` the timeout is measured from.
"""

import time

from harness import kube
from harness.kube import claim, pod, request
from harness.wait import check, equal, stays, until

from scenarios.framework import Context, say, scenario
from scenarios.partitionable import skipped_before_136

LABEL = "mock-accel.example.com/attachment"
ATTACHED = "mock-accel.example.com/Attached"
FAILED = "mock-accel.example.com/AttachFailed"
FAIL_ANNOTATION = "mock-accel.example.com/attach-fail"
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
