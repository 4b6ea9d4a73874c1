"""Scenarios 20a-20c, on node `real1` (a real kubelet v1.37.2 and containerd v2.4.2, see
harness/realnode.py; `make e2e-node`): the node agent from the DaemonSet registered through the
kubelet's plugin manager, a claim's container that prints its environment, prepare and
unprepare, and a node-agent pod restart while a claim is prepared.

The node agent runs as `kustomize/simulated` installs it (`--simulate`), so the claim pods
get simulated devices as any cluster without the kernel module would: the device's sysfs
directory mounted at /var/run/mock-accel/<name> (`$MOCK_ACCEL_SYSFS`) and /dev/<name> as an
alias of the host's /dev/null, both created by runc in an unmodified container.
"""

from harness import kube, nodes, realnode
from harness.kube import DRIVER, claim, request
from harness.wait import check, equal, until

from scenarios.framework import (Context, say, scenario, sysfs_name, wait_prepared, wait_unprepared)

NODE = realnode.NODE
POD_TIMEOUT = 90


def printing_pod(name: str, claim_name: str) -> dict:
    """A busybox pod on real1 that prints its environment, then stays up."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE},
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 0,
            "resourceClaims": [{"name": "accel", "resourceClaimName": claim_name}],
            "containers": [{
                "name": "main", "image": realnode.BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", "env | sort; echo ---; ls /dev; echo ---; "
                            "ls \"$MOCK_ACCEL_SYSFS_DIR\"; echo ---; cat \"$MOCK_ACCEL_SYSFS/uuid\"; "
                            "echo ---; echo READY; exec sleep 3600"],
                "resources": {"claims": [{"name": "accel"}]},
            }],
        },
    }


def logs(ctx: Context, pod: str) -> str:
    return ctx.k.run("logs", "-n", ctx.ns, pod, "-c", "main")


def printed_env(ctx: Context, pod: str) -> dict[str, str]:
    """The container's environment as it printed it, read through `kubectl logs` (apiserver →
    kubelet → containerd's log file)."""
    # The probe shows only the tail when it times out; the whole log is read once READY is in.
    until(f"pod {pod} to print its environment (kubectl logs)",
          lambda: ("READY" in (t := logs(ctx, pod)), t[-400:] if t else t), 60)
    text = logs(ctx, pod)
    env_part = text.split("---", 1)[0]
    ctx.save(f"{pod}.log", text)
    return dict(line.split("=", 1) for line in env_part.splitlines() if "=" in line)


def ensure_real_node(ctx: Context) -> None:
    check(NODE in ctx.cluster.info.get("real_nodes", {}),
          f"no real node {NODE} in this cluster; run these scenarios with `make e2e-node`")


def agent_status(ctx: Context) -> dict:
    return (ctx.mock_node(NODE).get("status") or {}).get("agent") or {}


@scenario("20a", "real node: kubelet and containerd Ready, node agent pod from the DaemonSet registered by the kubelet",
          real_node=True)
def real_node_agent(ctx: Context) -> None:
    ensure_real_node(ctx)
    n = ctx.k.get("node", NODE)
    info = n["status"]["nodeInfo"]
    check(info["containerRuntimeVersion"].startswith("containerd://"), "real1's runtime is not containerd", info)
    check(info["kubeletVersion"].startswith("v1.37."), "real1's kubelet is not v1.37", info)
    ready = kube.condition(n, "Ready") or {}
    equal(ready.get("status"), "True", "real1 Ready condition")
    pod = realnode.agent_pod(ctx.cluster, NODE)
    check(pod is not None, "no node agent pod on real1")
    owner = (pod["metadata"].get("ownerReferences") or [{}])[0]
    equal((owner.get("kind"), owner.get("name")), ("DaemonSet", "mock-accel-node-agent"), "agent pod owner")
    image = (pod.get("status") or {}).get("containerStatuses", [{}])[0].get("image", "")
    equal(image, ctx.cluster.info["real_nodes"][NODE]["driver_image"], "agent pod's image")
    until("real1's MockAccelNode to report the plugin registered by the kubelet",
          lambda: (agent_status(ctx).get("pluginRegistered") is True, agent_status(ctx)), 60)
    # The DaemonSet passes the pod's UID (downward API), so the name carries it, or a hash of
    # it where the harness's long registry path leaves no room for the UID itself.
    registry = realnode.RealNode(ctx.cluster).paths.registry_dir
    sock = registry / realnode.registration_socket_name(registry, DRIVER, pod["metadata"]["uid"])
    check(sock.is_socket(), f"no registration socket {sock} in the kubelet's plugins_registry",
          sorted(p.name for p in registry.iterdir()))
    slices = ctx.cluster.slices(NODE)
    check(sum(len(s["spec"].get("devices") or []) for s in slices) == nodes.CANONICAL_DEVICES,
          "real1's devices are not all published", [s["metadata"]["name"] for s in slices])
    say(f"{info['containerRuntimeVersion']}, kubelet {info['kubeletVersion']}; agent pod {pod['metadata']['name']} "
        f"({image}) registered; {nodes.CANONICAL_DEVICES} devices published")


def run_claim_pod(ctx: Context, pod: str, claim_name: str) -> tuple[dict, dict, str]:
    """Creates the claim and the printing pod, waits for it to run; returns (claim, device,
    sysfs name) after checking what the container printed against the allocation."""
    ctx.apply(claim(claim_name, [request("pf", "mock-accel-pf")]), printing_pod(pod, claim_name))
    ctx.wait_running(pod, POD_TIMEOUT)
    c = ctx.claim(claim_name)
    devs = ctx.allocated(c)
    equal(len(devs), 1, f"devices allocated to claim {claim_name}")
    d = devs[0]
    equal(d["node"], NODE, "node of the allocated device")
    name = sysfs_name(d)
    env = printed_env(ctx, pod)
    equal(env.get("MOCK_ACCEL_DEVICE"), name, "MOCK_ACCEL_DEVICE printed by the container")
    equal(env.get("MOCK_ACCEL_UUID"), kube.attr(d, "uuid"), "MOCK_ACCEL_UUID printed by the container")
    equal(env.get("MOCK_ACCEL_PCI"), kube.attr(d, "pciAddress"), "MOCK_ACCEL_PCI printed by the container")
    check(name in (env.get("MOCK_ACCEL_DEVICES") or "").split(","), "MOCK_ACCEL_DEVICES printed by the container",
          env.get("MOCK_ACCEL_DEVICES"))
    equal(env.get("MOCK_ACCEL_SYSFS"), f"/var/run/mock-accel/{name}", "MOCK_ACCEL_SYSFS printed by the container")
    text = logs(ctx, pod)
    dev_list, sys_list, uuid_text = text.split("---")[1:4]
    paths = realnode.RealNode(ctx.cluster).paths
    check(name in dev_list.split(), f"/dev/{name} is not in the container", dev_list)
    check(name in sys_list.split(), f"/var/run/mock-accel/{name} is not mounted in the container", sys_list)
    equal(uuid_text.strip(), nodes.read_attr(paths, name, "uuid"),
          f"uuid read by the container through $MOCK_ACCEL_SYSFS (the node's {name}/uuid)")
    equal(nodes.read_register(paths, name), 1, f"status register of real1/{name} while prepared")
    wait_prepared(ctx, NODE, c["metadata"]["uid"])
    return c, d, name


@scenario("20b", "real node: a claim's container prints its env (kubectl logs); prepare and unprepare", real_node=True)
def real_node_claim(ctx: Context) -> None:
    ensure_real_node(ctx)
    paths = realnode.RealNode(ctx.cluster).paths
    for name in nodes.sysfs_names(paths):
        nodes.write_register(paths, name, 0)
    c, d, name = run_claim_pod(ctx, "printer", "accel")
    uid = c["metadata"]["uid"]
    say(f"container printed MOCK_ACCEL_DEVICE={name} and the device's UUID and PCI address; /dev/{name} and "
        f"/var/run/mock-accel/{name} present, its uuid readable; register 1")
    ctx.delete_pod_and_wait("printer")
    wait_unprepared(ctx, NODE, uid)
    until(f"status register of real1/{name} back at 0",
          lambda: ((v := nodes.read_register(paths, name)) == 0, v), 30)
    say("pod deleted: the kubelet unprepared the claim (register 0, CDI spec removed)")


@scenario("20c", "real node: the node agent pod restarts while a claim is prepared", real_node=True)
def real_node_agent_restart(ctx: Context) -> None:
    ensure_real_node(ctx)
    paths = realnode.RealNode(ctx.cluster).paths
    for name in nodes.sysfs_names(paths):
        nodes.write_register(paths, name, 0)
    c, d, name = run_claim_pod(ctx, "holder", "held")
    uid = c["metadata"]["uid"]
    old = realnode.agent_pod(ctx.cluster, NODE)
    check(old is not None, "no node agent pod on real1")
    ctx.k.run("delete", "pod", "-n", "mock-device", old["metadata"]["name"], "--wait=true", "--timeout=60s")
    new = realnode.wait_agent_ready(ctx.cluster, NODE, timeout=90, not_uid=old["metadata"]["uid"])
    say(f"agent pod {old['metadata']['name']} deleted; DaemonSet started {new['metadata']['name']}")
    until("real1's plugin registered again by the kubelet",
          lambda: (agent_status(ctx).get("pluginRegistered") is True, agent_status(ctx)), 60)
    wait_prepared(ctx, NODE, uid)
    equal(nodes.read_register(paths, name), 1, f"status register of real1/{name} across the agent restart")
    equal(ctx.pod("holder")["status"].get("phase"), "Running", "claim pod phase across the agent restart")
    ctx.delete_pod_and_wait("holder")
    wait_unprepared(ctx, NODE, uid)
    until(f"status register of real1/{name} back at 0",
          lambda: ((v := nodes.read_register(paths, name)) == 0, v), 30)
    say("claim kept prepared across the restart; the new agent unprepared it when the pod went")
