"""Scenario 18a: partitionable devices (KEP-4815). Each card (a PF and its own VFs) is one
counter set that the PF consumes whole and each VF in part, so the scheduler never hands out a
PF together with one of its VFs, in one claim or across claims.

The controller decides at start-up (`--partitionable=auto`, the default) from the API server
itself; on a server that does not take counter sets in slices of their own (Kubernetes 1.34)
it logs one line and publishes the slices without counters, and this scenario checks exactly
that instead.
"""

from harness import controlplane, kube
from harness.kube import claim, match, pod, request
from harness.wait import check, equal, stays, until

from scenarios.framework import Context, say, scenario

ROOT = "resource.kubernetes.io/pcieRoot"
NODE = "node1"
CARD_ROOT = "pci0000:10"   # the NUMA 0 card of a canonical node: mock0 and its two VFs
ON_ROOT = [f'device.attributes["resource.kubernetes.io"].pcieRoot == "{CARD_ROOT}"']
DECISION = "partitionable devices:"


def counters_published(ctx: Context, node: str = NODE) -> bool:
    """Whether the node's slices carry shared counters (the controller's decision, as seen)."""
    return any(s["spec"].get("sharedCounters") for s in ctx.cluster.slices(node))


def decision_lines(ctx: Context) -> list[str]:
    lines = []
    for log in sorted((ctx.cluster.state / "logs").glob("controller-*.log")):
        lines += [line for line in log.read_text(errors="replace").splitlines() if DECISION in line]
    return lines


def unschedulable(ctx: Context, name: str, why: str) -> None:
    """The pod is reported unschedulable and stays unbound with an unallocated claim."""
    def probe():
        c = kube.condition(ctx.pod(name), "PodScheduled") or {}
        return c.get("status") == "False", c
    cond = until(f"pod {name} ({why}) to be reported unschedulable", probe, 60)
    stays(f"pod {name} unbound", lambda: (not (n := ctx.pod(name)["spec"].get("nodeName")), n), 3)
    say(f"{name} stays pending ({why}): {cond.get('message')}")


def device(ctx: Context, claim_name: str) -> dict:
    devs = ctx.allocated(ctx.claim(claim_name))
    equal(len(devs), 1, f"devices of claim {claim_name}")
    return devs[0]


@scenario("18a", "partitionable devices: a PF and its own VFs exclude each other (shared counters)", cost=20)
def partitionable(ctx: Context) -> None:
    minor = controlplane.kube_minor(ctx.cluster.binaries)
    lines = decision_lines(ctx)
    check(bool(lines), "the controller logged no 'partitionable devices:' decision")
    if tuple(int(x) for x in minor.split(".")) < (1, 35):
        check(not counters_published(ctx), f"Kubernetes {minor}: slices carry shared counters")
        check(all("skipped" in line for line in lines), "the controller did not skip counters", lines)
        say(f"Kubernetes {minor}: skipped by the controller: {lines[0][-220:]}")
        return
    check(counters_published(ctx), f"Kubernetes {minor}: {NODE}'s slices carry no shared counters", lines)
    check(all("publishing" in line for line in lines), "the controller skipped counters", lines)
    for s in ctx.cluster.slices(NODE):
        spec = s["spec"]
        check(not (spec.get("devices") and spec.get("sharedCounters")),
              f"slice {s['metadata']['name']} carries devices and counters")
        for d in spec.get("devices") or []:
            consumes = d.get("consumesCounters") or []
            equal(len(consumes), 1, f"counter sets consumed by {d['name']}")
            parent = kube.attr(d, "physfn") or d["name"]
            equal(consumes[0]["counterSet"], parent, f"counter set consumed by {d['name']}")
    say(f"{NODE}: one counter set per card, every function consumes its card's")

    # One claim: a PF and a VF behind one PCIe root is a PF with its own VF.
    ctx.apply(claim("pf-vf-root", [request("pf", "mock-accel-pf"), request("vf", "mock-accel-vf")],
                    [match(ROOT, ["pf", "vf"])]),
              pod("pf-vf-root", claims={"accel": "pf-vf-root"}))
    unschedulable(ctx, "pf-vf-root", "a PF and a VF of one card in one claim")
    check(not (ctx.claim("pf-vf-root").get("status") or {}).get("allocation"), "claim pf-vf-root got allocated")
    ctx.delete_pod("pf-vf-root")

    # PF first: its card's VFs wait, and get allocated once the PF is released.
    ctx.apply(claim("pf", [request("pf", "mock-accel-pf", selectors=ON_ROOT)]),
              pod("pf", claims={"accel": "pf"}, node=NODE))
    ctx.wait_running("pf")
    pf = device(ctx, "pf")
    ctx.apply(claim("vf", [request("vf", "mock-accel-vf", selectors=ON_ROOT)]),
              pod("vf", claims={"accel": "vf"}, node=NODE))
    unschedulable(ctx, "vf", f"VF of card {pf['name']} while its PF is allocated")
    ctx.delete_pod_and_wait("pf")
    until("claim pf to be deallocated", lambda: (not (ctx.claim("pf").get("status") or {}).get("allocation"), None), 30)
    ctx.wait_running("vf")
    vf = device(ctx, "vf")
    equal(kube.attr(vf, "physfn"), pf["name"], "parent PF of the VF allocated after the PF was released")
    say(f"{NODE}: {vf['name']} allocated once {pf['name']} was released")

    # VF first: the PF waits until the VF is released.
    ctx.apply(claim("pf-after", [request("pf", "mock-accel-pf", selectors=ON_ROOT)]),
              pod("pf-after", claims={"accel": "pf-after"}, node=NODE))
    unschedulable(ctx, "pf-after", f"PF {pf['name']} while its VF {vf['name']} is allocated")
    ctx.delete_pod_and_wait("vf")
    ctx.wait_running("pf-after")
    equal(device(ctx, "pf-after")["name"], pf["name"], "PF allocated after its VF was released")
    say(f"{NODE}: {pf['name']} allocated once {vf['name']} was released")
    ctx.delete_pod_and_wait("pf-after")
