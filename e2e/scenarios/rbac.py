"""Scenario 10: the node agent's RBAC is enough and not more. The agent runs with its
ServiceAccount's token (bound to a Pod on its node, so the token names the node); it may write
its own node's MockAccelNode's status and nothing of another node's, never the spec (users
write it), and holds no broad rights."""

from pathlib import Path

from harness.wait import check, equal

from scenarios.framework import Context, say, scenario

NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"

# Rights the node agent must not have (it reads claims and writes its MockAccelNode; the
# controller, not the agent, writes ResourceSlices).
MUST_NOT = [
    ("create", "pods"), ("get", "secrets"), ("list", "secrets"), ("delete", "nodes"), ("update", "nodes"),
    ("create", "resourceslices.resource.k8s.io"), ("delete", "resourceslices.resource.k8s.io"),
    ("create", "deviceclasses.resource.k8s.io"), ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("delete", "mockaccelnodes.mock-accel.example.com"),
]
MUST = [("get", "resourceclaims.resource.k8s.io"), ("patch", "mockaccelnodes.mock-accel.example.com"),
        ("patch", "mockaccelnodes.mock-accel.example.com/status")]


def can(k, verb: str, resource: str) -> str:
    """kubectl auth can-i's answer ("yes"/"no"); `resource/sub` asks about a subresource."""
    resource, _, sub = resource.partition("/")
    code, out, err = k.try_run("auth", "can-i", verb, resource, "--all-namespaces",
                               *([f"--subresource={sub}"] if sub else []))
    return (out or err).strip().splitlines()[0] if (out or err).strip() else f"exit {code}"


@scenario("10", "node agent RBAC: own ServiceAccount token; another node's MockAccelNode and any spec are denied")
def rbac(ctx: Context) -> None:
    info = ctx.cluster.info["nodes"]["node1"]
    check(Path(info["kubeconfig"]) != ctx.cluster.kubeconfig,
          f"the node1 agent does not run with a ServiceAccount token: {info['identity']}")
    wl = ctx.cluster.info["agent_workload"]
    agent = ctx.k.as_user(Path(info["kubeconfig"]))
    user = agent.json("auth", "whoami")["status"]["userInfo"]
    equal(user["username"], f"system:serviceaccount:{wl['namespace']}:{wl['service_account']}", "agent user")
    equal((user.get("extra") or {}).get(NODE_NAME_EXTRA), ["node1"], f"agent token extra {NODE_NAME_EXTRA}")
    say(f"agent runs as {user['username']} on node1 ({info['identity']})")

    patch = '{"status":{"deviceCount":6}}'
    code, _, err = agent.try_run("patch", "mockaccelnode", "node1", "--subresource=status", "--type=merge",
                                 "-p", patch, "--dry-run=server")
    equal((code, err.strip()), (0, ""), "agent of node1 patching MockAccelNode node1 status (server dry run)")
    code, _, err = agent.try_run("patch", "mockaccelnode", "node2", "--subresource=status", "--type=merge",
                                 "-p", patch, "--dry-run=server")
    check(code != 0, "agent of node1 may patch MockAccelNode node2's status")
    check("denied" in err.lower() or "forbidden" in err.lower(), "unexpected error for node2's status", err)
    say(f"node2 status write denied: {err.strip().splitlines()[-1][:200]}")
    code, _, err = agent.try_run("create", "--dry-run=server", "-f", "-", input=(
        '{"apiVersion":"mock-accel.example.com/v1alpha1","kind":"MockAccelNode",'
        '"metadata":{"name":"node2-impostor"},"spec":{"nodeName":"node2"}}'))
    check(code != 0, "agent of node1 may create a MockAccelNode for another node")

    # spec is the users' (the fixture's control surface): the agent may not write it, even on
    # its own node; an admin may.
    spec_patch = '{"spec":{"faults":[{"operation":"Prepare","action":"Fail","count":1}]}}'
    code, _, err = agent.try_run("patch", "mockaccelnode", "node1", "--type=merge", "-p", spec_patch,
                                 "--dry-run=server")
    check(code != 0 and "may write only the status" in err,
          "agent of node1 may write spec of its own MockAccelNode", err)
    say(f"agent spec write denied: {err.strip().splitlines()[-1][:200]}")
    code, _, err = ctx.k.try_run("patch", "mockaccelnode", "node1", "--type=merge", "-p", spec_patch,
                                 "--dry-run=server")
    equal((code, err.strip()), (0, ""), "admin writing MockAccelNode node1 spec (server dry run)")

    denied = {f"{v} {r}": can(agent, v, r) for v, r in MUST_NOT}
    allowed = {f"{v} {r}": can(agent, v, r) for v, r in MUST}
    check(all(a == "no" for a in denied.values()), "the agent holds rights it does not need", denied)
    check(all(a == "yes" for a in allowed.values()), "the agent lacks rights it needs", allowed)
    say(f"denied as expected: {', '.join(denied)}")

    controller = Path(ctx.cluster.state / "identities" / "controller.kubeconfig")
    check(controller.is_file(), f"the controller does not run with a ServiceAccount token: "
          f"{ctx.cluster.info.get('controller_identity')}")
    ck = ctx.k.as_user(controller)
    equal(can(ck, "get", "secrets"), "no", "controller: get secrets")
    equal(can(ck, "create", "pods"), "no", "controller: create pods")

    # Enough: the agent itself wrote its node's status with these rights.
    # kubectl hides managedFields unless asked.
    node1 = ctx.k.get("mockaccelnode", "node1", None, "--show-managed-fields")
    managers = {(m.get("manager"), m.get("subresource")) for m in node1["metadata"].get("managedFields") or []}
    check(("mock-accel-node-agent", "status") in managers,
          "MockAccelNode node1's status was not written by the agent's field manager", sorted(map(str, managers)))
