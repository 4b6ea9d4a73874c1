"""Scenarios 17*: the programmable test fixture, `MockAccelNode.spec`. A user writes the
fixture fields with kubectl; the API server's schema refuses misspelt enum values, the node
agent reports every other problem in the `SpecValid` condition, and `kubectl get
mockaccelnodes` shows the node's state at a glance."""

import json
import time

from harness.wait import check, equal, until

from scenarios.framework import Context, say, scenario

NODE = "node1"


def spec_valid(k) -> dict:
    node = k.get("mockaccelnode", NODE)
    for c in (node.get("status") or {}).get("conditions") or []:
        if c["type"] == "SpecValid":
            return c
    return {}


def merge_spec(k, spec: dict) -> None:
    k.run("patch", "mockaccelnode", NODE, "--type=merge", "-p", json.dumps({"spec": spec}))


@scenario("17a", "fixture spec: schema refuses bad enums; SpecValid names unknown devices and bad values; columns")
def spec_validation(ctx: Context) -> None:
    k = ctx.k
    code, _, err = k.try_run("patch", "mockaccelnode", NODE, "--type=merge", "--dry-run=server", "-p",
                             json.dumps({"spec": {"health": [{"device": "mock0", "state": "Broken"}]}}))
    check(code != 0 and "Unsupported value" in err, "the schema accepted health state Broken", err)
    say(f"schema refuses state Broken: {err.strip().splitlines()[-1][:160]}")

    bad = {"health": [{"device": "mock9-vf9", "state": "Unhealthy", "message": "simulated ECC error"}],
           "faults": [{"operation": "Prepare", "action": "Delay", "delay": "soon"}],
           "simulation": {"numaNodes": 16, "pfMemory": "16GB"}}
    start = time.monotonic()
    merge_spec(k, bad)
    try:
        c = until("SpecValid False on node1", lambda: ((c := spec_valid(k)).get("status") == "False", c), 10)
        took = time.monotonic() - start
        for want in ['spec.health[0].device: no device "mock9-vf9" on this node (devices: mock0,',
                     'spec.faults[0].delay: "soon" is not a duration',
                     "spec.simulation.numaNodes: 16 is out of range, at most 15",
                     'spec.simulation.pfMemory: "16GB" is not a quantity of bytes']:
            check(want in c["message"], f"SpecValid message lacks {want!r}", c["message"])
        equal(c["reason"], "Invalid", "SpecValid reason")
        say(f"SpecValid False after {took:.1f}s: {c['message'][:200]}")

        table = k.run("get", "mockaccelnodes", NODE)
        header, row = table.splitlines()[0].split(), table.splitlines()[1].split()
        check("UNHEALTHY" in header and "SPEC" in header, "kubectl columns lack UNHEALTHY/SPEC", table)
        equal(row[header.index("SPEC")], "Invalid", "SPEC column")
        equal(row[header.index("UNHEALTHY")], "0", "UNHEALTHY column (the declared device does not exist)")
        say(f"kubectl get mockaccelnodes:\n{table}")

        merge_spec(k, {"health": [{"device": "mock2", "state": "Unhealthy", "effect": "NoExecute"}],
                       "faults": [{"operation": "Prepare", "action": "Fail", "count": 1}],
                       "simulation": None})
        c = until("SpecValid True on node1", lambda: ((c := spec_valid(k)).get("status") == "True", c), 10)
        equal(c["reason"], "Valid", "SpecValid reason")
        node = k.get("mockaccelnode", NODE)
        equal(node["spec"]["faults"][0]["count"], 1, "fault count kept")
        say("fixed spec: SpecValid True")
    finally:
        merge_spec(k, {"health": None, "faults": None, "simulation": None})
    until("node1 spec back to nodeName only",
          lambda: (set((n := k.get("mockaccelnode", NODE))["spec"]) == {"nodeName"}, n["spec"]), 10)
