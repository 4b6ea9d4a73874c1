"""Scenarios 14-16: what only the kubelet's own DRA code can show. The fake kubelet runs the
kubelet's DRA manager and plugin manager (e2e/fakelet/kubelet.go), so these scenarios observe
real node behaviour: the manager's claim-info checkpoint across a kubelet restart, the plugin
manager re-registering a plugin while a NodePrepareResources call is in flight, and device
health from the plugin's health stream in the pod's status."""

import signal
import time
from pathlib import Path

from harness import controlplane, nodes
from harness.kube import DRIVER, claim, pod, request
from harness.wait import check, equal, stays, until

from scenarios.framework import (Context, elapsed, prepared_entry, say, scenario, sysfs_name,
                                 verify_prepared, verify_released, wait_unprepared)


def checkpointed(ctx: Context, node: str) -> dict[str, dict]:
    return nodes.dra_checkpoint(ctx.node_paths(node))


def check_checkpoint_entry(ctx: Context, node: str, pod_name: str, c: dict, devs: list[dict]) -> None:
    """The kubelet's checkpoint records the claim, the pod using it, and the prepared devices
    with the CDI ids the plugin returned."""
    uid = c["metadata"]["uid"]
    cp = checkpointed(ctx, node)
    check(uid in cp, f"claim {c['metadata']['name']} ({uid}) is not in {node}'s kubelet DRA checkpoint", sorted(cp))
    entry = cp[uid]
    pod_uid = ctx.pod(pod_name)["metadata"]["uid"]
    check(pod_uid in (entry.get("PodUIDs") or {}), f"checkpoint entry of {uid} does not list pod {pod_name}", entry)
    got = (entry.get("DriverState") or {}).get(DRIVER, {}).get("Devices") or []
    equal(sorted((d["PoolName"], d["DeviceName"]) for d in got), sorted((d["pool"], d["name"]) for d in devs),
          f"devices of claim {uid} in the kubelet's checkpoint")
    ids = sorted(i for d in got for i in d.get("CDIDeviceIDs") or [])
    equal(ids, sorted(prepared_entry(ctx, node, uid).get("cdiDeviceIds") or []),
          f"CDI ids of claim {uid} in the kubelet's checkpoint")


def lingering_pod(name: str, claim_name: str, node: str) -> dict:
    """A pod that stays Terminating after its deletion until a kubelet finishes it (the
    harness's pods have a grace period of 0, which the API server deletes at once)."""
    p = pod(name, claims={"accel": claim_name}, node=node)
    p["spec"]["terminationGracePeriodSeconds"] = 30
    return p


@scenario("14", "kubelet code: fake kubelet restart; the DRA manager's checkpoint replays the prepared claims", cost=75)
def restart_replays_checkpoint(ctx: Context) -> None:
    node = "node1"
    ctx.apply(claim("kept", [request("pf", "mock-accel-pf")]), claim("leaving", [request("vf", "mock-accel-vf")]),
              claim("dropped", [request("vf", "mock-accel-vf")]),
              pod("kept", claims={"accel": "kept"}, node=node), lingering_pod("leaving", "leaving", node),
              pod("dropped", claims={"accel": "dropped"}, node=node))
    held = {}
    for name in ("kept", "leaving", "dropped"):
        ctx.wait_running(name)
        _, c, devs = verify_prepared(ctx, name, "accel")
        check_checkpoint_entry(ctx, node, name, c, devs)
        held[name] = (c["metadata"]["uid"], devs)
    kept_uid, kept_devs = held["kept"]
    spec_before = ctx.cdi_files_for(node, kept_uid)
    edits_before = ctx.edits(node, "kept")
    say(f"{node}: claims kept, leaving and dropped prepared and in the kubelet's checkpoint")

    ctx.cluster.sup.stop(f"fakelet-{node}")
    ctx.k.delete("pod", "leaving", ctx.ns, wait=False)
    ctx.k.delete("pod", "dropped", ctx.ns, wait=False)
    ctx.wait_gone("pod", "dropped", timeout=30)
    p = ctx.pod("leaving")
    check(p["metadata"].get("deletionTimestamp") is not None, "pod leaving has no deletionTimestamp", p["metadata"])
    uids = ctx.prepared_claim_uids(node)
    check({held["leaving"][0], held["dropped"][0]} <= uids, "claims were unprepared while no kubelet ran", sorted(uids))
    say("fake kubelet stopped; pod leaving deleted (Terminating), pod dropped deleted (gone from the API)")

    ctx.cluster.start_fakelet(node)
    start = time.monotonic()
    # The pod worker finishes leaving: UnprepareResources takes the pod's claims from the
    # checkpoint (for a claim its cache does not hold it would call nothing).
    ctx.wait_gone("pod", "leaving")
    verify_released(ctx, node, *held["leaving"])
    say(f"leaving: unprepared from the checkpoint and deleted {elapsed(start)} after the restart")
    # Only the kubelet's checkpoint remembers dropped: the manager's reconcile loop (every
    # 60 s) unprepares the claims of pods that are no longer active. The node agent may release
    # it first on its own (its claim is gone from the API: the stale-claim check, every 10 s on
    # this cluster); the kubelet's later unprepare of it then succeeds and clears its record.
    until("claim dropped to be unprepared on the node",
          lambda: (held["dropped"][0] not in (u := ctx.prepared_claim_uids(node)), sorted(u)), 100, 1)
    verify_released(ctx, node, *held["dropped"])
    say(f"dropped: unprepared on the node {elapsed(start)} after the restart")
    until("claims leaving and dropped to leave the kubelet's checkpoint (its reconcile loop, every 60 s)",
          lambda: (held["leaving"][0] not in (c := checkpointed(ctx, node)) and held["dropped"][0] not in c,
                   sorted(c)), 100, 1)
    say(f"dropped: gone from the kubelet's checkpoint {elapsed(start)} after the restart")

    # The kubelet prepares only before it creates a sandbox: a pod whose containers still run
    # is not prepared again; its claim stays in the checkpoint and prepared on the node.
    equal(ctx.pod("kept")["status"].get("phase"), "Running", "phase of pod kept after the restart")
    check_checkpoint_entry(ctx, node, "kept", ctx.claim("kept"), kept_devs)
    for d in kept_devs:
        equal(ctx.register(node, sysfs_name(d)), 1, f"register of {sysfs_name(d)} after the restart")
    equal(ctx.cdi_files_for(node, kept_uid), spec_before, "CDI spec of claim kept after the restart")
    equal(ctx.edits(node, "kept"), edits_before, "container record of pod kept after the restart")
    ctx.cluster.wait_node_ready(node, 30)

    ctx.delete_pod_and_wait("kept")
    verify_released(ctx, node, kept_uid, kept_devs)
    check(not checkpointed(ctx, node), "the kubelet's checkpoint still holds claims", checkpointed(ctx, node))
    say("kept unprepared through the restarted kubelet code; checkpoint empty")


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def events(ctx: Context, pod_name: str, reason: str) -> list[dict]:
    return ctx.k.items("events", ctx.ns, field_selector=f"involvedObject.name={pod_name},reason={reason}")


@scenario("15", "kubelet code: plugin re-registers (rolling update) while NodePrepareResources is in flight", cost=25)
def reregister_during_prepare(ctx: Context) -> None:
    node = "node2"
    paths = ctx.node_paths(node)
    old, new = f"agent-{node}", f"agent-{node}-next"
    fakelet_log = ctx.cluster.sup.get(f"fakelet-{node}").log
    offset = log_size(fakelet_log)
    try:
        # The old instance stops answering (SIGSTOP): the kubelet's call to it stays in flight.
        ctx.cluster.sup.send_signal(old, signal.SIGSTOP)
        ctx.apply(claim("inflight", [request("pf", "mock-accel-pf")]),
                  pod("inflight", claims={"accel": "inflight"}, node=node))
        until("the kubelet code to call NodePrepareResources on the stopped instance",
              lambda: ("Calling NodePrepareResources rpc" in (t := log_since(fakelet_log, offset)), t[-600:]), 60)
        say(f"NodePrepareResources in flight to {old} (stopped)")
        # A second instance takes over the sockets (rolling update): the plugin manager sees a
        # new registration socket, unregisters the old plugin, which closes its connection and
        # the call on it, and registers the new one.
        ctx.cluster.start_agent(node, new)
        failed = until("the in-flight prepare to fail with a FailedPrepareDynamicResources event",
                       lambda: (bool(e := events(ctx, "inflight", "FailedPrepareDynamicResources")), e), 30)
        message = failed[0].get("message", "")
        check("NodePrepareResources" in message and "closing" in message,
              "the event does not say that the connection of the in-flight NodePrepareResources was closed",
              message)
        say(f"the kubelet code reported: {message[:200]}")
        start = time.monotonic()
        ctx.wait_running("inflight", timeout=60)
        say(f"the pod worker's retry prepared through {new}; Running {elapsed(start)} after the failure")
        ctx.cluster.sup.kill(old)
        check(paths.registry_dir.joinpath(f"{DRIVER}-reg.sock").is_socket(),
              f"the registration socket of {new} is gone")
        n, c, devs = verify_prepared(ctx, "inflight", "accel")
        equal(n, node, "node of pod inflight")
        check_checkpoint_entry(ctx, node, "inflight", c, devs)
        ctx.delete_pod_and_wait("inflight")
        verify_released(ctx, node, c["metadata"]["uid"], devs)
        say(f"unprepared through {new} after {old} was killed")
    finally:
        # Back to one agent under its usual name.
        ctx.cluster.sup.kill(old)
        ctx.cluster.sup.stop(new)
        ctx.cluster.start_agent(node)
        ctx.cluster.wait_published(node, nodes.CANONICAL_DEVICES, timeout=60)


def allocated_health(ctx: Context, pod_name: str, container: str = "main") -> dict[str, dict[str, dict]]:
    """`status.containerStatuses[container].allocatedResourcesStatus` as
    {resource name: {resourceID: {health, message}}}."""
    for s in (ctx.pod(pod_name).get("status") or {}).get("containerStatuses") or []:
        if s["name"] == container:
            return {rs["name"]: {r["resourceID"]: r for r in rs.get("resources") or []}
                    for rs in s.get("allocatedResourcesStatus") or []}
    return {}


def pod_health_served(ctx: Context) -> bool:
    """Whether the API server keeps a pod's allocatedResourcesStatus (ResourceHealthStatus:
    beta and on by default from 1.36, alpha and off before)."""
    minor = controlplane.kube_minor(ctx.cluster.binaries)
    return tuple(int(x) for x in minor.split(".")) >= (1, 36)


@scenario("16", "kubelet code: device health in the pod's allocatedResourcesStatus; a removed prepared device turns Unhealthy",
          cost=12)
def device_health(ctx: Context) -> None:
    node = "node5"
    paths = ctx.cluster.add_node(node, "canonical")
    try:
        ctx.apply(claim("watched", [request("vf", "mock-accel-vf")]),
                  pod("watched", claims={"accel": "watched"}, node=node))
        ctx.wait_running("watched")
        n, c, devs = verify_prepared(ctx, "watched", "accel")
        equal(n, node, "node of pod watched")
        uid = c["metadata"]["uid"]
        ids = prepared_entry(ctx, node, uid).get("cdiDeviceIds") or []
        device = sysfs_name(devs[0])

        def health_is(want: str):
            def probe():
                h = allocated_health(ctx, "watched").get("claim:accel") or {}
                return bool(h) and set(h) <= set(ids) and all(r.get("health") == want for r in h.values()), h
            return probe
        if not pod_health_served(ctx):
            minor = controlplane.kube_minor(ctx.cluster.binaries)
            # Before 1.36 ResourceHealthStatus is alpha and off: the API server drops the pod's
            # allocatedResourcesStatus. What the driver still owes there: the node agent's own
            # health, which turns Unhealthy when the prepared device vanishes.
            stays("the pod's allocatedResourcesStatus empty (ResourceHealthStatus off)",
                  lambda: (not (h := allocated_health(ctx, "watched")), h), 3)
            nodes.remove_device(ctx.cluster.binaries.driver, paths, device)
            until(f"{node}'s unhealthyDeviceCount 1 after {device} vanished", lambda: (
                (n := (ctx.mock_node(node).get("status") or {}).get("unhealthyDeviceCount")) == 1, n), 30, 0.5)
            say(f"Kubernetes {minor}: ResourceHealthStatus is off, the pod's allocatedResourcesStatus stays "
                f"empty (pod part skipped); {device} hot-removed: the node agent counts it Unhealthy")
            ctx.delete_pod_and_wait("watched")
            wait_unprepared(ctx, node, uid)
            return
        healthy = until("the claim's device Healthy in the pod's allocatedResourcesStatus", health_is("Healthy"), 30)
        check(any(device in (r.get("message") or "") for r in healthy.values()),
              f"the health message does not come from the plugin (no mention of {device})", healthy)
        say(f"claim:accel {sorted(healthy)} Healthy: {next(iter(healthy.values())).get('message')}")

        nodes.remove_device(ctx.cluster.binaries.driver, paths, device)
        start = time.monotonic()
        # A prepared device that vanished is Unhealthy (not merely unreported): the plugin says
        # so on the health stream (v1, which the 1.37 kubelet code picks) and the pod shows it.
        gone = until("the removed device Unhealthy in the pod's allocatedResourcesStatus",
                     health_is("Unhealthy"), 30, 0.5)
        check(any("vanished" in (r.get("message") or "") for r in gone.values()),
              "the Unhealthy message does not say the device vanished", gone)
        say(f"{device} hot-removed: Unhealthy in the pod's status {elapsed(start)} later")

        ctx.delete_pod_and_wait("watched")
        wait_unprepared(ctx, node, uid)
    finally:
        ctx.cluster.forget_node(node)
        ctx.k.delete("node", node, wait=True, timeout=30)
