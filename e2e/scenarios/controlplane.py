"""Scenario 0: the control plane itself answers, with the expected version, APIs and defaults
(a fast smoke test that needs neither nodes nor the driver)."""

from harness import controlplane
from harness.wait import check, equal, until

from scenarios.framework import Context, say, scenario


@scenario("0", "control plane: version, resource.k8s.io/v1, Node create/list/delete", needs_driver=False)
def control_plane(ctx: Context) -> None:
    version = ctx.k.json("version")
    server = version["serverVersion"]["gitVersion"]
    say(f"server {server}, client {version['clientVersion']['gitVersion']}")
    check(server.startswith("v1.") and "0.0.0" not in server, f"server version is not stamped: {server}")
    minor = controlplane.kube_minor(ctx.cluster.binaries)
    equal(f"{server.lstrip('v').split('.')[0]}.{server.split('.')[1]}", minor, "apiserver /version minor")

    resources = ctx.k.run("api-resources", "--api-group=resource.k8s.io", "-o", "name")
    for r in ("deviceclasses.resource.k8s.io", "resourceclaims.resource.k8s.io",
              "resourceclaimtemplates.resource.k8s.io", "resourceslices.resource.k8s.io"):
        check(r in resources.split(), f"{r} is not served", resources)
    versions = ctx.k.run("api-versions").split()
    check("resource.k8s.io/v1" in versions, "resource.k8s.io/v1 is not served", versions)

    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "smoke-node", "labels": {"kubernetes.io/hostname": "smoke-node"}},
        "spec": {"unschedulable": True},
    }
    ctx.k.apply(node)
    try:
        n = until("the smoke Node to be listed",
                  lambda: ((names := [i["metadata"]["name"] for i in ctx.k.items("nodes")]) and "smoke-node" in names,
                           names), 10)
        say(f"nodes listed: {n}")
        got = ctx.k.get("node", "smoke-node")
        # TaintNodesByCondition admission is off: no not-ready taint may appear.
        taints = [t["key"] for t in got["spec"].get("taints") or [] if "not-ready" in t["key"]]
        equal(taints, [], "not-ready taints on a new Node")
    finally:
        ctx.k.delete("node", "smoke-node", wait=True, timeout=30)

    # The namespace controller runs: the scenario's own namespace is Active.
    equal(ctx.k.get("namespace", ctx.ns)["status"]["phase"], "Active", f"namespace {ctx.ns} phase")
