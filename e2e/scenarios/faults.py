"""Scenario 17b: injected kubelet plugin failures (`MockAccelNode.spec.faults`). A `Fail` entry
fails exactly the calls it counts, the kubelet stand-in shows the driver's message as an Event
on the pod and retries; a `Delay` entry delays a prepare that then succeeds; the counts live on
the node and survive a restart of the node agent."""

import time

from harness.kube import claim, pod, request
from harness.wait import check, equal, until

from scenarios.fixture import NODE, merge_spec
from scenarios.framework import Context, elapsed, say, scenario, verify_prepared

MESSAGE = "injected failure (17b)"


def node_status(ctx: Context) -> dict:
    return ctx.mock_node(NODE).get("status") or {}


def fault_hits(ctx: Context) -> list[int]:
    return [f["hits"] for f in node_status(ctx).get("faults") or []]


def prepare_failures(ctx: Context, pod_name: str) -> list[dict]:
    return ctx.k.items("events", ctx.ns,
                       field_selector=f"involvedObject.name={pod_name},reason=FailedPrepareDynamicResources")


def wait_agent_back(ctx: Context, heartbeat_before: str | None) -> None:
    def back():
        agent = node_status(ctx).get("agent") or {}
        return agent.get("heartbeat") != heartbeat_before and agent.get("pluginRegistered") is True, agent
    until(f"the {NODE} agent to re-register its plugin", back, 60, 0.2)


@scenario("17b", "faults: Fail count 1 fails exactly one prepare (Event on the pod), the retry succeeds; "
                 "Delay delays and succeeds; counts survive an agent restart", cost=30)
def injected_faults(ctx: Context) -> None:
    k = ctx.k
    fail = {"operation": "Prepare", "action": "Fail", "count": 1, "message": MESSAGE}
    delay = {"operation": "Prepare", "action": "Delay", "delay": "3s", "count": 1}
    merge_spec(k, {"faults": [fail]})
    try:
        until("status.faults to list the entry", lambda: ((h := fault_hits(ctx)) == [0], h), 10, 0.2)

        ctx.apply(claim("f1", [request("vf", "mock-accel-vf")]), pod("f1", claims={"accel": "f1"}, node=NODE))
        start = time.monotonic()
        ctx.wait_running("f1", timeout=60)
        took = elapsed(start)
        events = prepare_failures(ctx, "f1")
        equal(sum(e.get("count", 1) for e in events), 1, "FailedPrepareDynamicResources events on pod f1")
        check(MESSAGE in events[0]["message"], "the Event lacks the driver's message", events[0]["message"])
        say(f"pod f1 Running after {took}; one Event: {events[0]['message'][:160]}")
        verify_prepared(ctx, "f1", "accel")
        status = node_status(ctx)
        equal([(f["hits"], f["active"]) for f in status["faults"]], [(1, False)], "status.faults after the retry")
        equal(status.get("activeFaultCount"), 0, "status.activeFaultCount")
        table = k.run("get", "mockaccelnodes", NODE)
        header, row = table.splitlines()[0].split(), table.splitlines()[1].split()
        equal(row[header.index("FAULTS")], "0", "FAULTS column once the entry is spent")

        # The spent Fail stays in the spec; the agent restarts. Were its count lost, the next
        # prepare would fail again; it must only be delayed by the new Delay entry.
        merge_spec(k, {"faults": [fail, delay]})
        until("status.faults to list both entries", lambda: ((h := fault_hits(ctx)) == [1, 0], h), 10, 0.2)
        heartbeat = (node_status(ctx).get("agent") or {}).get("heartbeat")
        ctx.cluster.sup.kill(f"agent-{NODE}")
        ctx.cluster.start_agent(NODE)
        wait_agent_back(ctx, heartbeat)
        say("agent restarted with the Fail entry spent and a Delay 3s entry")

        ctx.apply(claim("f2", [request("vf", "mock-accel-vf")]), pod("f2", claims={"accel": "f2"}, node=NODE))
        start = time.monotonic()
        ctx.wait_running("f2", timeout=60)
        took = time.monotonic() - start
        check(took >= 3, f"pod f2 ran after {took:.1f}s, before the 3s delay")
        equal(prepare_failures(ctx, "f2"), [], "prepare failures of pod f2 (the Fail count survived)")
        until("status.faults hits after the delay", lambda: ((h := fault_hits(ctx)) == [1, 1], h), 10, 0.2)
        say(f"pod f2 Running after {took:.1f}s (delayed 3s, not failed); hits [1, 1]")
    finally:
        merge_spec(k, {"faults": None})
        for name in ("f1", "f2"):
            k.delete("pod", name, ctx.ns)
        for name in ("f1", "f2"):
            ctx.wait_gone("pod", name)
    until("status.faults to be empty", lambda: ((h := fault_hits(ctx)) == [], h), 10, 0.2)
