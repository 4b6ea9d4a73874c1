"""Scenario 22a: `mock-accel-dra fleet` against the real control plane. A handful of simulated
nodes without kubelets or node agents get their slices published by the controller, the
scheduler allocates a claim on one of them for a pod that tolerates the fleet's taint, and
`fleet --delete` removes every object the fleet made (the slices go with them).
"""

import subprocess
import time

from harness import kube
from harness.kube import claim, pod, request
from harness.wait import check, equal, until

from scenarios.framework import Context, say, scenario

PREFIX = "e2efleet-"
NODES = 3
LABEL = "mock-accel.example.com/fleet=e2efleet"
PROCESS = "fleet-e2e"


def fleet_argv(ctx: Context, *args: str) -> list[str]:
    return [str(ctx.cluster.binaries.driver), "fleet", f"--prefix={PREFIX}", *args]


@scenario("22a", "fleet: 3 simulated nodes get slices, a claim is allocated on one, fleet --delete removes them",
          cost=10)
def fleet_nodes(ctx: Context) -> None:
    c = ctx.cluster
    names = [f"{PREFIX}{i:04d}" for i in range(NODES)]
    c.sup.start(PROCESS, fleet_argv(ctx, f"--nodes={NODES}", "--heartbeat=2s"),
                env={"KUBECONFIG": str(c.kubeconfig)})
    try:
        for name in names:
            c.wait_published(name, 6, timeout=60)
        node = ctx.k.get("node", names[1])
        taints = node["spec"].get("taints") or []
        equal([(t["key"], t["effect"]) for t in taints], [("mock-accel.example.com/fleet", "NoSchedule")],
              "taints of a fleet node (not-ready removed, the fleet's own kept)")
        ready = kube.condition(node, "Ready") or {}
        equal(ready.get("status"), "True", "Ready condition of a fleet node")
        man = ctx.k.get("mockaccelnode", names[1])
        equal((man["status"].get("agent") or {}).get("pluginRegistered"), True, "agent status of a fleet node")

        # The scheduler allocates a PF on the fleet node for a pod that tolerates the taint; no
        # kubelet runs there, so the pod stays bound but never runs.
        p = pod("on-fleet", claims={"accel": "fleet-pf"}, node=names[1])
        p["spec"]["tolerations"] = [{"key": "mock-accel.example.com/fleet", "operator": "Exists",
                                     "effect": "NoSchedule"}]
        ctx.apply(claim("fleet-pf", [request("pf", "mock-accel-pf")]), p)

        def allocated():
            cl = ctx.claim("fleet-pf")
            alloc = (cl.get("status") or {}).get("allocation")
            bound = ctx.pod("on-fleet")["spec"].get("nodeName")
            return bool(alloc) and bound == names[1], {"allocation": alloc, "nodeName": bound}
        alloc = until("the claim to be allocated on the fleet node", allocated, 60)
        results = alloc["allocation"]["devices"]["results"]
        equal([(r["pool"].split("/")[0], r["device"] in ("mock0", "mock3")) for r in results],
              [(names[1], True)], "node and PF of the allocation")
        say(f"claim fleet-pf allocated {results[0]['pool']}/{results[0]['device']}; pod bound to {names[1]}")
        ctx.k.run("delete", "pod", "on-fleet", "-n", ctx.ns, "--grace-period=0", "--force")
    finally:
        c.sup.stop(PROCESS)

    began = time.monotonic()
    done = subprocess.run(fleet_argv(ctx, "--delete"), env={"KUBECONFIG": str(c.kubeconfig)},
                          capture_output=True, text=True, timeout=150)
    check(done.returncode == 0, f"fleet --delete failed ({done.returncode}): {done.stderr[-2000:]}")
    equal(ctx.k.items("nodes", selector=LABEL), [], "fleet Nodes after --delete")
    equal(ctx.k.items("mockaccelnodes", selector=LABEL), [], "fleet MockAccelNodes after --delete")
    equal(ctx.k.items("leases", namespace="kube-node-lease", selector=LABEL), [], "fleet Leases after --delete")
    left = [s["metadata"]["name"] for s in c.slices() if s["spec"].get("nodeName", "").startswith(PREFIX)]
    equal(left, [], "fleet slices after --delete")
    say(f"fleet --delete removed {NODES} nodes and their slices in {time.monotonic() - began:.1f}s")
