#!/usr/bin/env python3
"""`make demo`: a PF for a pod on the local cluster, and everything it leaves behind.

    e2e/demo.py [--state .dev-cluster] [--keep]

Starts the local cluster unless it already runs; creates a ResourceClaim for one PF and a pod
using it; shows the allocation, the container's environment (as the fake kubelet resolved it
through CDI), the device's status register and the CDI spec; deletes the pod and shows the
register back at 0 and the spec gone. A cluster the demo started is stopped at the end unless
--keep (KEEP=1); a cluster that was already running is left running.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import nodes, progress  # noqa: E402
from harness.cluster import Cluster, install_signal_handlers  # noqa: E402
from harness.kube import DRIVER, claim, pod, request  # noqa: E402
from harness.wait import Failure, until  # noqa: E402

NS = "demo"


def banner(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def shell(cmd: str, output: str) -> None:
    print(f"$ {cmd}", flush=True)
    for line in output.rstrip("\n").splitlines():
        print(f"  {line}", flush=True)


def kubectl_show(c: Cluster, *args: str) -> str:
    out = c.kubectl.run(*args)
    shell("kubectl " + " ".join(args), out)
    return out


def run(c: Cluster) -> None:
    k = c.kubectl
    k.run("delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=60s", timeout=70)
    k.run("create", "namespace", NS)

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

    banner(f"The container's environment, resolved from the CDI spec on {node}")
    paths = c.node_paths(node)
    record = paths.containers / f"{NS}_demo_main.json"
    edits = until("the fake kubelet's container record", lambda: (record.is_file(), str(record)), 30)
    env = nodes.env_map(nodes.container_edits(paths, NS, "demo", "main") or {})
    shell(f"jq .env {os.path.relpath(edits)}",
          "\n".join(f"{k_}={v}" for k_, v in sorted(env.items()) if k_.startswith("MOCK_ACCEL")))
    shell(f"kubectl get pod demo -n {NS} -o jsonpath='{{.metadata.annotations.{DRIVER.replace('.', chr(92) + '.')}/container-edits}}'",
          p["metadata"].get("annotations", {}).get(f"{DRIVER}/container-edits", "(none)")[:400])
    sysfs = env.get("MOCK_ACCEL_DEVICE") or result["device"]

    banner("The device's status register reads 1 while the claim is prepared")
    status = paths.class_dir(sysfs) / "status"
    shell(f"cat {os.path.relpath(status)}", status.read_text())

    banner("The CDI spec the node agent wrote for the claim")
    specs = {f: t for f, t in nodes.cdi_specs(paths).items() if uid in f or uid in t}
    shell(f"ls {os.path.relpath(paths.cdi)}", "\n".join(sorted(nodes.cdi_specs(paths))) or "(empty)")
    for f, text in specs.items():
        shell(f"cat {os.path.relpath(paths.cdi / f)}", text)
    if not specs:
        raise Failure(f"no CDI spec for claim {uid} in {paths.cdi}")

    banner("Delete the pod: the claim is unprepared")
    k.run("delete", "pod", "demo", "-n", NS, "--wait=true", "--timeout=60s", timeout=70)
    print("$ kubectl delete pod demo -n demo", flush=True)
    until("the register back at 0", lambda: (nodes.read_register(paths, sysfs) == 0, status.read_text()), 30)
    shell(f"cat {os.path.relpath(status)}", status.read_text())
    until("the CDI spec removed",
          lambda: (not any(uid in f or uid in t for f, t in nodes.cdi_specs(paths).items()),
                   sorted(nodes.cdi_specs(paths))), 30)
    shell(f"ls {os.path.relpath(paths.cdi)}", "\n".join(sorted(nodes.cdi_specs(paths))) or "(empty)")
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
