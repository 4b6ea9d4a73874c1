#!/usr/bin/env python3
"""`make e2e`: every scenario on a fresh local cluster.

    e2e/run.py [--state DIR] [--keep] [-k PATTERN]... [--jobs N] [--control-plane-only] [--real-node] [--list]

Starts a cluster in a new temporary state directory, runs the scenarios in order, each in its
own namespace, and always tears the cluster down. The last line is `N passed, M failed`; the
exit code is non-zero when anything failed. The state directory (logs of every process, and
per failing scenario a dump of the cluster under `failures/<id>/`) is kept when something
failed, or with --keep, and its path is printed.

`--jobs N` (`make e2e` passes E2E_JOBS, default 2): N clusters side by side, each running a
share of the scenarios (harness/shards.py); the summary counts them all.

`--real-node` (`make e2e-node`): a cluster with only node `real1` (a real kubelet and
containerd, harness/realnode.py) and the scenarios marked for it (ids 20*); without it those
are left out.
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import nodes, procs, progress, shards  # noqa: E402
from harness.cluster import Cluster, install_signal_handlers  # noqa: E402
from harness.kube import KubectlError, namespace  # noqa: E402
from harness.wait import Failure  # noqa: E402

import scenarios  # noqa: E402,F401 - registers the scenarios
from scenarios.framework import Context, Scenario, ordered  # noqa: E402


def ns_name(s: Scenario) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", s.title.lower()).strip("-")
    return f"e2e-{s.id.lower()}-{slug}"[:50].rstrip("-")


def dump(cluster: Cluster, ns: str, dest: Path) -> None:
    """What a reader of a failed run needs: the namespace's objects and events, the driver's
    slices and MockAccelNodes, and each node's CDI directory listing."""
    dest.mkdir(parents=True, exist_ok=True)
    k = cluster.kubectl
    for name, args in {
        "namespace.yaml": ["get", "pods,resourceclaims,resourceclaimtemplates", "-n", ns, "-o", "yaml"],
        "events.txt": ["get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
        "resourceslices.yaml": ["get", "resourceslices", "-o", "yaml"],
        "mockaccelnodes.yaml": ["get", "mockaccelnodes", "-o", "yaml"],
        "nodes.txt": ["get", "nodes", "-o", "wide"],
        "leases.yaml": ["get", "leases", "-A", "-o", "yaml"],
    }.items():
        code, out, err = k.try_run(*args, timeout=30)
        (dest / name).write_text(out if code == 0 else f"kubectl {' '.join(args)} failed: {err}")
    listing = []
    for node in cluster.node_names():
        paths = cluster.node_paths(node)
        listing.append(f"{node} cdi: {sorted(nodes.cdi_specs(paths))}")
        listing.append(f"{node} containers: {sorted(p.name for p in paths.containers.glob('*.json'))}")
    (dest / "node-dirs.txt").write_text("\n".join(listing) + "\n")


def baseline(cluster: Cluster) -> None:
    """Before each driver scenario: every node's devices are published (a previous scenario
    must not leave the cluster broken for the next one)."""
    for node, info in cluster.info.get("nodes", {}).items():
        if info.get("topology") == "canonical":
            cluster.wait_published(node, nodes.CANONICAL_DEVICES, timeout=90)


def cleanup_namespace(cluster: Cluster, ns: str) -> str | None:
    k = cluster.kubectl
    code, _, err = k.try_run("delete", "namespace", ns, "--wait=true", "--timeout=90s", timeout=100)
    if code != 0:
        return f"namespace {ns} was not deleted within 90s: {err.strip()}"
    return None


def run_one(cluster: Cluster, s: Scenario, state: Path) -> tuple[bool, str]:
    ns = ns_name(s)
    artifacts = state / "failures" / s.id
    ctx = Context(cluster, ns, state / "artifacts" / s.id)
    start = time.monotonic()
    print(f"--- {s.label}", flush=True)
    ok, reason = True, ""
    try:
        if s.needs_driver:
            baseline(cluster)
        cluster.kubectl.apply(namespace(ns))
        s.fn(ctx)
    except Failure as e:
        ok, reason = False, str(e)
    except KubectlError as e:
        ok, reason = False, f"kubectl error: {e}"
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - a harness bug is a failure with a traceback
        ok, reason = False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    crashed = cluster.crashed()
    if crashed:
        ok = False
        reason += ("\n" if reason else "") + "processes died during the scenario:\n" + "\n".join(crashed)
    if not ok:
        try:
            dump(cluster, ns, artifacts)
        except Exception as e:  # noqa: BLE001
            reason += f"\n(dumping the cluster failed: {e})"
    if s.needs_driver:
        try:
            restarted = cluster.heal()
        except Exception as e:  # noqa: BLE001 - later scenarios will say what is missing
            restarted = [f"(restart failed: {e})"]
        if restarted:
            print(f"      restarted after the scenario: {', '.join(restarted)}", flush=True)
    problem = cleanup_namespace(cluster, ns)
    if problem and ok:
        ok, reason = False, problem
    took = f"{time.monotonic() - start:.1f}s"
    if ok:
        print(f"PASS {s.label} ({took})", flush=True)
    else:
        print(f"FAIL {s.label} ({took})", flush=True)
        for line in reason.splitlines():
            print(f"      {line}", flush=True)
        print(f"      cluster dump: {artifacts}", flush=True)
    return ok, reason


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state", help="state directory (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the state directory even when everything passed")
    ap.add_argument("-k", dest="patterns", action="append", default=[],
                    help="run only scenarios whose id or title contains this text (repeatable)")
    ap.add_argument("--control-plane-only", action="store_true",
                    help="no nodes and no driver; only the scenarios that need neither")
    ap.add_argument("--real-node", action="store_true",
                    help="only node real1 (real kubelet and containerd) and the scenarios for it")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("E2E_JOBS") or 1),
                    help="clusters side by side, each running a share of the scenarios (default: E2E_JOBS or 1)")
    # A shard's share (harness/shards.py): exactly these scenario ids.
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    args = ap.parse_args()

    only = set(args.ids.split(",")) if args.ids else None
    selected = [s for s in ordered()
                if (not args.patterns or any(p.lower() in f"{s.id} {s.title}".lower() for p in args.patterns))
                and (only is None or s.id in only)
                and (s.needs_driver is False or not args.control_plane_only)
                and s.real_node == args.real_node]
    if args.list:
        for s in ordered():
            print(s.label)
        return 0
    if not selected:
        print("no scenario matches")
        print("0 passed, 0 failed")
        return 1

    progress.set_prefix("e2e")
    install_signal_handlers()
    state = Path(args.state) if args.state else Path(tempfile.mkdtemp(prefix="mock-accel-e2e-"))
    if args.jobs > 1 and len(selected) > 1 and not args.real_node and not args.control_plane_only:
        return run_sharded(selected, args.jobs, state, args.keep)
    cluster = Cluster(state, die_with_parent=True)
    passed: list[str] = []
    failed: list[str] = []
    interrupted = False
    try:
        try:
            if args.real_node:
                cluster.up(node_names=(), real_node=True)
            else:
                cluster.up(with_driver=not args.control_plane_only)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - the whole suite fails, with the reason
            print(f"FAIL cluster start-up: {e}", flush=True)
            failed.append("cluster start-up")
        else:
            for s in selected:
                ok, _ = run_one(cluster, s, state)
                (passed if ok else failed).append(s.label)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted", flush=True)
    finally:
        progress.step("stopping the cluster")
        started = [(p.name, p.pid, p.argv) for p in cluster.sup.procs.values()]
        stopped = cluster.down()
        progress.step(f"stopped {len(stopped)} processes")
        leftovers = [f"{name} (pid {pid})" for name, pid, argv in started if procs.pid_runs(pid, argv)]
        if leftovers:
            print(f"WARNING: still running after teardown: {', '.join(leftovers)}", flush=True)

    if failed:
        print("failed: " + "; ".join(failed), flush=True)
    if failed or interrupted or args.keep:
        print(f"logs and state kept in {state} (process logs in {state / 'logs'})", flush=True)
    else:
        shutil.rmtree(state, ignore_errors=True)
    print(f"{len(passed)} passed, {len(failed)} failed", flush=True)
    return 0 if not failed and not interrupted else 1


def run_sharded(selected: list[Scenario], jobs: int, state: Path, keep: bool) -> int:
    started = time.monotonic()
    interrupted = False
    passed: list[str] = []
    failed: list[str] = []
    try:
        passed, failed = shards.run([(s.id, s.cost) for s in selected], jobs, state, Path(__file__).resolve(),
                                    keep, {s.id: s.label for s in selected})
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted", flush=True)
    progress.step(f"all shards done in {time.monotonic() - started:.0f}s")
    if failed:
        print("failed: " + "; ".join(failed), flush=True)
    if failed or interrupted or keep:
        print(f"logs and state kept in {state} (one directory per shard: shard-N/, process logs in shard-N/logs)",
              flush=True)
    else:
        shutil.rmtree(state, ignore_errors=True)
    print(f"{len(passed)} passed, {len(failed)} failed", flush=True)
    return 0 if not failed and not interrupted else 1


if __name__ == "__main__":
    sys.exit(main())
