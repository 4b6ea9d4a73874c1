#!/usr/bin/env python3
"""`make demo`: a PF for a pod on the local cluster, and everything it leaves behind.

    e2e/demo.py [--state .dev-cluster] [--keep]

Starts the local cluster unless it already runs; shows the MockAccelNodes and one node's
ResourceSlices; creates a ResourceClaim for one PF and a pod using it; shows the allocation, the
MockAccelNodes again (one prepared claim), the container's environment (as the fake kubelet
resolved it through CDI), the device's status register and the CDI spec; deletes the pod and
shows the register back at 0 and the spec gone. A cluster the demo started is stopped at the end unless
--keep (KEEP=1); a cluster that was already running is left running.
"""

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import nodes, progress  # noqa: E402
from harness.cluster import Cluster, install_signal_handlers  # noqa: E402
from harness.kube import DRIVER, claim, pod, request  # noqa: E402
from harness.wait import Failure, until  # noqa: E402

NS = "demo"


# One line per published device: name, type, NUMA node, PCIe root, memory.
DEVICE_COLUMNS = ('{range .items[*].spec.devices[*]}{.name}{"\\t"}'
                  '{.attributes.mock-accel\\.example\\.com/deviceType.string}{"\\t"}'
                  'numa={.attributes.resource\\.kubernetes\\.io/numaNode.int}{"\\t"}'
                  '{.attributes.resource\\.kubernetes\\.io/pcieRoot.string}{"\\t"}'
                  '{.capacity.mock-accel\\.example\\.com/memory.value}{"\\n"}{end}')


def banner(text: str) -> None:
    progress.plain(f"\n==> {text}")


def shell(cmd: str, output: str) -> None:
    """A command a reader can paste (after `eval "$(make -s dev-cluster-env)"`), and what it printed."""
    lines = [f"$ {cmd}"] + [f"  {line}" for line in output.rstrip("\n").splitlines()]
    progress.plain("\n".join(lines))


def kubectl_show(c: Cluster, *args: str, timeout: float = 60) -> str:
    out = c.kubectl.run(*args, timeout=timeout)
    shell(shlex.join(["kubectl", *args]), out)
    return out


def run(c: Cluster) -> None:
    k = c.kubectl
    k.run("delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=60s", timeout=70)
    k.run("create", "namespace", NS)
    first = c.node_names()[0]
    one_node = f"spec.driver={DRIVER},spec.nodeName={first}"

    banner("Each node's MockAccelNode: what its node agent found, and whether its slices are published")
    kubectl_show(c, "get", "mockaccelnodes")

    banner(f"The ResourceSlices of {first}: one pool per NUMA node, and the devices in them")
    kubectl_show(c, "get", "resourceslices", "--field-selector", one_node)
    kubectl_show(c, "get", "resourceslices", "--field-selector", one_node, "-o", f"jsonpath={DEVICE_COLUMNS}")

    banner("A ResourceClaim for one PF (DeviceClass mock-accel-pf) and a pod that uses it")
    k.apply([claim("demo-pf", [request("accel", "mock-accel-pf")]),
             pod("demo", claims={"accel": "demo-pf"})], namespace=NS)
    kubectl_show(c, "get", "deviceclass", "mock-accel-pf", "-o", "jsonpath={.spec.selectors[*].cel.expression}{\"\\n\"}")

    def running():
        p = k.get("pod", "demo", NS)
        return p["status"].get("phase") == "Running", p["status"]
    until("pod demo to run", running, 60)
    p = k.get("pod", "demo", NS)
    node = p["spec"]["nodeName"]
    kubectl_show(c, "get", "pod", "demo", "-n", NS, "-o", "wide")

    banner("The scheduler allocated a device from a ResourceSlice")
    kubectl_show(c, "get", "resourceclaim", "demo-pf", "-n", NS, "-o",
                 "jsonpath={range .status.allocation.devices.results[*]}{.driver} {.pool} {.device}{\"\\n\"}{end}")
    result = k.get("resourceclaim", "demo-pf", NS)["status"]["allocation"]["devices"]["results"][0]
    uid = k.get("resourceclaim", "demo-pf", NS)["metadata"]["uid"]

    banner(f"The node agent prepared it: {node}'s MockAccelNode counts one prepared claim")
    until(f"{node}'s MockAccelNode to list the claim",
          lambda: (any(pc.get("uid") == uid for pc in
                       (k.get("mockaccelnode", node).get("status") or {}).get("preparedClaims") or []), uid), 30)
    kubectl_show(c, "get", "mockaccelnodes")

    banner(f"The container's environment, as the fake kubelet resolved it from the CDI spec on {node}")
    paths = c.node_paths(node)
    record = paths.containers / f"{NS}_demo_main.json"
    until("the fake kubelet's container record", lambda: (record.is_file(), str(record)), 30)
    edits = nodes.container_edits(paths, NS, "demo", "main") or {}
    shell(f"jq -r '.env[]' {os.path.relpath(record)}", "\n".join(str(e) for e in edits.get("env") or []))
    env = nodes.env_map(edits)
    sysfs = env.get("MOCK_ACCEL_DEVICE") or result["device"]

    banner("The device's status register reads 1 while the claim is prepared")
    status = paths.class_dir(sysfs) / "status"
    shell(f"cat {os.path.relpath(status)}", status.read_text())

    banner("The CDI spec the node agent wrote for the claim")
    specs = {f: t for f, t in nodes.cdi_specs(paths).items() if uid in f or uid in t}
    shell(f"ls {os.path.relpath(paths.cdi)}", "\n".join(sorted(nodes.cdi_specs(paths))))
    for f, text in specs.items():
        shell(f"cat {os.path.relpath(paths.cdi / f)}", text)
    if not specs:
        raise Failure(f"no CDI spec for claim {uid} in {paths.cdi}")

    banner("Delete the pod: the claim is unprepared")
    kubectl_show(c, "delete", "pod", "demo", "-n", NS, "--wait=true", "--timeout=60s", timeout=70)
    until("the register back at 0", lambda: (nodes.read_register(paths, sysfs) == 0, status.read_text()), 30)
    shell(f"cat {os.path.relpath(status)}", status.read_text())
    until("the CDI spec removed",
          lambda: (not any(uid in f or uid in t for f, t in nodes.cdi_specs(paths).items()),
                   sorted(nodes.cdi_specs(paths))), 30)
    shell(f"ls {os.path.relpath(paths.cdi)}", "\n".join(sorted(nodes.cdi_specs(paths))))
    k.run("delete", "namespace", NS, "--wait=false")
    banner("Done: allocation, CDI injection and release all went through the driver")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state", default=".dev-cluster")
    ap.add_argument("--keep", action="store_true", help="leave a cluster the demo started running")
    args = ap.parse_args()
    progress.set_prefix("demo")
    install_signal_handlers()
    c = Cluster(Path(args.state), die_with_parent=False)
    started_here = not c.running()
    code = 0
    try:
        if started_here:
            progress.step("no local cluster runs: starting one (make dev-cluster)")
            c.up()
        else:
            progress.step(f"using the local cluster running from {args.state}")
        t = time.monotonic()
        run(c)
        progress.step(f"demo finished in {time.monotonic() - t:.0f}s")
    except KeyboardInterrupt:
        code = 130
    except Exception as e:  # noqa: BLE001 - reported with where to look
        progress.step(f"FAILED: {e}")
        progress.step(f"logs: {c.state / 'logs'}")
        code = 1
    finally:
        if started_here and not args.keep:
            progress.step("stopping the cluster the demo started (KEEP=1 keeps it)")
            c.down()
        elif started_here:
            print(c.usage())
    return code


if __name__ == "__main__":
    sys.exit(main())
