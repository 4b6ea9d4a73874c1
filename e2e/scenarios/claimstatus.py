"""Scenario 3b: the node agent writes the claim's device status (KEP-4817).

After prepare, `status.devices` of the ResourceClaim holds one entry per allocated device of
ours, with a `Ready` condition and `data` (uuid, pciAddress, numaNode, physfn for a VF) that
match the published device; the entries are written by the node agent's field manager, and are
gone once the pod is."""

from harness import kube
from harness.kube import DRIVER, claim, pod, request
from harness.wait import check, equal, until

from scenarios.framework import Context, say, scenario, verify_prepared, verify_released

FIELD_MANAGER = "mock-accel-node-agent"


def ours(c: dict) -> list[dict]:
    return [d for d in (c.get("status") or {}).get("devices") or [] if d.get("driver") == DRIVER]


@scenario("3b", "claim device status: Ready and device data in status.devices while prepared, gone after")
def claim_device_status(ctx: Context) -> None:
    ctx.apply(claim("with-status", [request("pf", "mock-accel-pf"), request("vf", "mock-accel-vf")]),
              pod("with-status", claims={"accel": "with-status"}))
    ctx.wait_running("with-status")
    node, c, devs = verify_prepared(ctx, "with-status", "accel")

    entries = until("status.devices of claim with-status to list both devices",
                    lambda: (len(e := ours(ctx.claim("with-status"))) == 2, e), 20)
    by_device = {(e["pool"], e["device"]): e for e in entries}
    for d in devs:
        e = by_device.get((d["pool"], d["name"]))
        check(e is not None, f"no status.devices entry for {d['pool']}/{d['name']}", entries)
        cond = next((x for x in e.get("conditions") or [] if x["type"] == "Ready"), None)
        check(cond is not None and cond["status"] == "True", f"Ready condition of {d['name']}", e)
        data = e.get("data") or {}
        equal(data.get("uuid"), kube.attr(d, "uuid"), f"data.uuid of {d['name']}")
        equal(data.get("pciAddress"), kube.attr(d, "pciAddress"), f"data.pciAddress of {d['name']}")
        equal(data.get("numaNode"), kube.attr(d, "resource.kubernetes.io/numaNode"), f"data.numaNode of {d['name']}")
        equal(data.get("physfn"), kube.attr(d, "physfn"), f"data.physfn of {d['name']}")
    full = ctx.k.json("get", "resourceclaim", "with-status", "-n", ctx.ns, "--show-managed-fields", "-o", "json")
    managers = {m.get("manager") for m in full["metadata"].get("managedFields") or []
                if m.get("subresource") == "status" and "f:devices" in str(m.get("fieldsV1"))}
    check(FIELD_MANAGER in managers, f"status.devices is written by {FIELD_MANAGER}", sorted(m for m in managers if m))
    say(f"with-status on {node}: {[(e['device'], e['data']) for e in entries]}")

    ctx.delete_pod_and_wait("with-status")
    verify_released(ctx, node, c["metadata"]["uid"], devs)
    until("our status.devices entries to be removed",
          lambda: (not (e := ours(ctx.claim("with-status"))), e), 30)
    say("pod gone: entries removed")
