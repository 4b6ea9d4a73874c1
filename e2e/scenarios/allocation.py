"""Scenarios 3, 7 and 8: a claim's whole life on a node (prepare and unprepare with every
trace they leave), a mixed PF + VF claim, claims from templates, and a claim shared by pods."""

from harness import kube
from harness.kube import claim, claim_template, pod, request
from harness.wait import check, equal, until

from scenarios.framework import (Context, reset_registers, say, scenario, sysfs_name, verify_prepared,
                                 verify_released)


@scenario("3", "allocation: register 1, CDI spec, container env; deallocation undoes all of it")
def allocation_lifecycle(ctx: Context) -> None:
    for node in ctx.cluster.node_names():
        reset_registers(ctx, node)
    ctx.apply(claim("accel", [request("pf", "mock-accel-pf")]), pod("app", claims={"accel": "accel"}))
    ctx.wait_running("app")
    node, c, devs = verify_prepared(ctx, "app", "accel")
    equal(len(devs), 1, "devices allocated to claim accel")
    d = devs[0]
    equal(kube.attr(d, "deviceType"), "pf", "type of the allocated device")
    uid = c["metadata"]["uid"]
    say(f"claim accel ({uid}) → {d['pool']}/{d['name']} on {node}; register 1; CDI spec present and resolved")

    edits = ctx.edits(node, "app")
    ctx.save("container-edits.json", edits)
    name = sysfs_name(d)
    mounts = edits.get("mounts") or []
    check(any(name in (m.get("hostPath", "") + m.get("source", "") + m.get("containerPath", "")
                       + m.get("destination", "")) for m in mounts),
          f"no mount of the device's sysfs directory ({name}) in the container", mounts)
    if (ctx.node_paths(node).dev / name).exists():
        paths = [n.get("path") for n in edits.get("deviceNodes") or []]
        check(f"/dev/{name}" in paths, f"device node /dev/{name} exists on the node but is not in the container",
              paths)
    claim_before = ctx.claim("accel")
    check(bool(claim_before["status"].get("reservedFor")), "claim accel has no reservation while the pod runs")

    ctx.delete_pod_and_wait("app")
    verify_released(ctx, node, uid, devs)
    until("claim accel to be deallocated and unreserved",
          lambda: (not (st := ctx.claim("accel").get("status") or {}).get("allocation")
                   and not st.get("reservedFor"), st), 30)
    say("pod deleted: register 0, CDI spec removed, preparedClaims updated, claim deallocated")


@scenario("7", "mixed PF + VF in one claim")
def mixed(ctx: Context) -> None:
    ctx.apply(claim("mixed", [request("pf", "mock-accel-pf"), request("vf", "mock-accel-vf")]),
              pod("mixed", claims={"accel": "mixed"}))
    ctx.wait_running("mixed")
    node, c, devs = verify_prepared(ctx, "mixed", "accel")
    by_request = {d["request"]: d for d in devs}
    equal(sorted(by_request), ["pf", "vf"], "requests of the allocation results")
    equal(kube.attr(by_request["pf"], "deviceType"), "pf", "device of request pf")
    equal(kube.attr(by_request["vf"], "deviceType"), "vf", "device of request vf")
    env = ctx.env(node, "mixed")
    equal(sorted(env["MOCK_ACCEL_DEVICES"].split(",")), sorted(sysfs_name(d) for d in devs), "MOCK_ACCEL_DEVICES")
    spec_text = "".join(ctx.cdi_files_for(node, c["metadata"]["uid"]).values())
    for d in devs:
        check(kube.attr(d, "uuid") in spec_text, f"the claim's CDI spec lacks device {d['name']}")
    say(f"{node}: pf={by_request['pf']['name']} vf={by_request['vf']['name']}, both prepared")
    ctx.delete_pod_and_wait("mixed")
    verify_released(ctx, node, c["metadata"]["uid"], devs)


@scenario("8", "ResourceClaimTemplate per pod; one claim shared by two pods on one node", cost=12)
def templates_and_sharing(ctx: Context) -> None:
    ctx.apply(claim_template("one-vf", [request("vf", "mock-accel-vf")]),
              pod("tpl-a", templates={"accel": "one-vf"}), pod("tpl-b", templates={"accel": "one-vf"}))
    ctx.wait_running("tpl-a")
    ctx.wait_running("tpl-b")
    got = {}
    for name in ("tpl-a", "tpl-b"):
        node, c, devs = verify_prepared(ctx, name, "accel")
        owners = [(o["kind"], o["name"]) for o in c["metadata"].get("ownerReferences") or []]
        check(("Pod", name) in owners, f"generated claim {c['metadata']['name']} is not owned by pod {name}", owners)
        got[name] = (node, c, devs)
    a, b = got["tpl-a"], got["tpl-b"]
    check(a[1]["metadata"]["name"] != b[1]["metadata"]["name"], "two pods got the same generated claim")
    check({(d["pool"], d["name"]) for d in a[2]}.isdisjoint({(d["pool"], d["name"]) for d in b[2]}),
          "two generated claims hold the same device")
    say(f"tpl-a → {a[1]['metadata']['name']}, tpl-b → {b[1]['metadata']['name']}: separate claims and devices")
    for name, (node, c, devs) in got.items():
        ctx.delete_pod_and_wait(name)
        ctx.wait_gone("resourceclaim", c["metadata"]["name"])
        verify_released(ctx, node, c["metadata"]["uid"], devs)
    say("generated claims deleted with their pods, devices released")

    ctx.apply(claim("shared", [request("pf", "mock-accel-pf")]),
              pod("share-a", claims={"accel": "shared"}), pod("share-b", claims={"accel": "shared"}))
    pa = ctx.wait_running("share-a")
    pb = ctx.wait_running("share-b")
    equal(pa["spec"]["nodeName"], pb["spec"]["nodeName"], "nodes of the two pods sharing one claim")
    node, c, devs = verify_prepared(ctx, "share-a", "accel")
    verify_prepared(ctx, "share-b", "accel")
    reserved = sorted(r["name"] for r in c["status"]["reservedFor"])
    equal(reserved, ["share-a", "share-b"], "reservedFor of the shared claim")
    equal(ctx.env(node, "share-a")["MOCK_ACCEL_UUID"], ctx.env(node, "share-b")["MOCK_ACCEL_UUID"],
          "device seen by the two pods")
    uid = c["metadata"]["uid"]

    ctx.delete_pod_and_wait("share-a")
    # The other pod still uses the claim: it must stay prepared.
    check(uid in ctx.prepared_claim_uids(node), "shared claim unprepared while pod share-b still uses it")
    for d in devs:
        equal(ctx.register(node, sysfs_name(d)), 1, f"register of {sysfs_name(d)} while share-b runs")
    check(bool(ctx.cdi_files_for(node, uid)), "CDI spec of the shared claim removed while share-b runs")
    ctx.delete_pod_and_wait("share-b")
    verify_released(ctx, node, uid, devs)
    say(f"shared claim on {node}: prepared once, released after the last pod")
