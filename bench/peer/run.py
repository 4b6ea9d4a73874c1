#!/usr/bin/env python3
"""`make bench-peer`: this driver's kubelet plugin against the Kubernetes DRA test driver.

Builds (or reuses) the peer and the bench driver (bench/peer/build.sh), starts a local control
plane with the e2e harness (etcd, kube-apiserver, kube-controller-manager, kube-scheduler at
K8S_VERSION), installs the MockAccelNode CRD and creates the Node both plugins serve, then runs
the bench driver (bench/peer/driver), which starts both plugins and measures them. Prints a
Markdown section for BENCHMARKS.md (machine, Kubernetes version, date, command, table) and
writes it, with the raw numbers as JSON, into the state directory.

    bench/peer/run.py --ours target/release/mock-accel-dra [--state .bench-peer] [--cycles 10000]

The node agent runs from `mock-accel-node-agent` beside `--ours` when there is one (the binary
the DaemonSet runs), else from `--ours` itself; `--ours-agent` names another. It runs with the
literal environment variables of the DaemonSet in config/ (the table's command row lists them).

Python 3 standard library only, like the harness it uses.
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "e2e"))

from harness import builds, manifests, progress  # noqa: E402
from harness.cluster import Cluster  # noqa: E402
from harness.kube import KubectlError  # noqa: E402

NODE = "bench1"


class BenchError(RuntimeError):
    pass


def build(what: str) -> Path:
    """bench/peer/build.sh <what>: the binary path is its last line of output."""
    lines = builds._stream(["bash", str(REPO / "bench/peer/build.sh"), what], f"bench-peer {what}")
    if not lines or not Path(lines[-1]).is_file():
        raise BenchError(f"bench/peer/build.sh {what} printed no binary path (got {lines[-1:]!r})")
    return Path(lines[-1])


def machine() -> list[str]:
    """Rows of the machine table: CPU, memory, kernel, load."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError) as e:
        raise BenchError(f"cannot read the machine's CPU and memory from /proc: {e}") from e
    return [
        f"| CPU | {os.cpu_count()} cores, {model} |",
        f"| memory | {mem_kib / 1024 / 1024:.0f} GiB |",
        f"| kernel | Linux {platform.release()} |",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ours", required=True, type=Path,
                    help="the optimised mock-accel-dra binary (makes the simulated tree)")
    ap.add_argument("--ours-agent", type=Path,
                    help="the binary that runs the node agent (default: mock-accel-node-agent "
                         "beside --ours if it exists, else --ours)")
    ap.add_argument("--state", default=REPO / ".bench-peer", type=Path,
                    help="state directory: control plane, plugin directories, logs, results")
    ap.add_argument("--cycles", default="10000", help="sequential cycles per plugin")
    ap.add_argument("--mark", default="1000", help="memory is read after this many cycles too")
    ap.add_argument("--starts", default="5", help="start-ups per plugin")
    ap.add_argument("--per-block", default="250", help="throughput: cycles per block (4 blocks)")
    args = ap.parse_args(argv)
    progress.set_prefix("bench-peer")
    state = args.state.resolve()

    # The cargo target directory is shared: another build may replace the binary meanwhile.
    if not args.ours.is_file():
        raise BenchError(f"{args.ours} does not exist: build it first (make bench-peer does)")
    own = builds.copy_driver(args.ours, state / "bin")
    if args.ours_agent:
        if not args.ours_agent.is_file():
            raise BenchError(f"{args.ours_agent} does not exist: build it first")
        own_agent = own.with_name(f"agent-{args.ours_agent.name}")
        shutil.copy2(args.ours_agent, own_agent)
    else:
        own_agent = builds.node_agent_beside(own) or own
    peer = build("peer")
    driver = build("driver")

    cluster = Cluster(state)
    cdi_root = Path(tempfile.mkdtemp(prefix="mock-accel-peerbench-", dir="/dev/shm")) \
        if os.access("/dev/shm", os.W_OK) else state / "cdi"
    try:
        cluster.up(node_names=(), with_driver=False)
        kubectl = cluster.kubectl
        kubectl.run("apply", "--server-side", "-k", str(REPO / "crds"))
        kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/mockaccelnodes.mock-accel.example.com")
        kubectl.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
        # Our node agent runs with the literal environment its DaemonSet sets (config/), as the
        # local e2e nodes do: the bench measures the agent as deployed.
        agent_env = manifests.workloads(kubectl)[0].env
        version = subprocess.run([str(cluster.binaries.k("kube-apiserver")), "--version"],
                                 capture_output=True, text=True, timeout=30).stdout.split()[-1]
        load_before = os.getloadavg()
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        work = state / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        json_out = state / "result.json"
        argv_bench = [
            str(driver), f"--kubeconfig={cluster.kubeconfig}", f"--ours={own}",
            f"--ours-agent={own_agent}", f"--peer={peer}",
            f"--work={work}", f"--cdi-root={cdi_root}", f"--node-root={cdi_root / 'ours-node'}",
            f"--node={NODE}", f"--json={json_out}", f"--trace={state / 'cycles.csv'}",
            f"--cycles={args.cycles}", f"--mark={args.mark}", f"--starts={args.starts}",
            f"--per-block={args.per_block}",
            *(f"--ours-env={k}={v}" for k, v in sorted(agent_env.items())),
        ]
        progress.step("running the bench driver (plugin logs in " + str(work) + ")")
        res = subprocess.run(argv_bench, stdout=subprocess.PIPE, text=True)
        if res.returncode != 0:
            raise BenchError(f"the bench driver failed (exit {res.returncode}); plugin logs in {work}")
        load_after = os.getloadavg()
    finally:
        cluster.down()
        if cdi_root.parent == Path("/dev/shm"):
            shutil.rmtree(cdi_root, ignore_errors=True)

    section = "\n".join([
        "| | |", "|---|---|", *machine(),
        f"| load average (1 min) | {load_before[0]:.1f} before, {load_after[0]:.1f} after |",
        f"| Kubernetes | {version} (control plane and the peer, from the Go modules) |",
        f"| date | {started} |",
        f"| command | `make bench-peer` (cycles {args.cycles}, starts {args.starts}, "
        f"throughput 4 × {args.per_block} cycles per plugin and concurrency; "
        f"node agent: `{(args.ours_agent or own_agent).name} node-agent`"
        + "".join(f", `{k}={v}`" for k, v in sorted(agent_env.items()))
        + " from its DaemonSet) |",
        "",
        res.stdout.rstrip(),
        "",
    ])
    (state / "result.md").write_text(section)
    print(section)
    progress.step(f"written to {state / 'result.md'} and {json_out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, builds.BuildError, KubectlError) as e:
        progress.step(f"FAILED: {e}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
