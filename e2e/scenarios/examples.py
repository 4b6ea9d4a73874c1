"""Scenario 11: every YAML file in docs/examples/ is applied and its declared outcome checked.
Scenario 12: every YAML under docs/ and config/ (files, and fenced ```yaml blocks in the
Markdown that hold whole objects) is accepted by the API server in a server-side dry run, as
are the kustomizations config/ and kustomize/default.

Convention for an example (comment lines anywhere in the file, usually at the top):

    # expect: allocated | pending | accepted | rejected          (exactly one; required)
    # expect-devices: N            every claim used by the file's pods gets N devices
    # expect-same: <attribute>     ...and all of a claim's devices share that attribute's value
    # expect-distinct: <attribute> ...and all of a claim's devices differ in that attribute

- allocated: every Pod in the file runs (scheduled, allocated, prepared by the driver, its
  container got MOCK_ACCEL_* env), then after deletion every device is released;
- pending: every Pod in the file stays unscheduled (the scheduler reports why);
- accepted: the API server accepts the objects (e.g. a DeviceClass); nothing to wait for;
- rejected: the API server refuses the file (for deliberately wrong examples; also how any
  YAML under docs/ marks itself as intentionally invalid for scenario 12).

Examples carry no `metadata.namespace`: the suite applies each into its own namespace.
Attributes are fully qualified (`resource.kubernetes.io/numaNode`, `mock-accel.example.com/physfn`).
"""

import json
import re
from pathlib import Path

from harness import kube
from harness.builds import REPO
from harness.kube import KubectlError
from harness.wait import Failure, check, equal, stays, until

from scenarios.framework import (Context, say, scenario, sysfs_name, wait_prepared, verify_released)

EXAMPLES = REPO / "docs" / "examples"
OUTCOMES = ("allocated", "pending", "accepted", "rejected")
_EXPECT = re.compile(r"^\s*#\s*expect(-[a-z]+)?\s*:\s*(.+?)\s*$")


def expectations(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = _EXPECT.match(line)
        if m:
            out.setdefault((m.group(1) or "-outcome")[1:], []).append(m.group(2))
    return out


def _objects(output: str) -> list[dict]:
    doc = json.loads(output)
    return doc["items"] if doc.get("kind") == "List" else [doc]


def run_example(ctx: Context, path: Path) -> str:
    text = path.read_text()
    exp = expectations(text)
    outcomes = exp.get("outcome", [])
    check(len(outcomes) == 1 and outcomes[0] in OUTCOMES,
          f"{path.name}: needs exactly one '# expect: <{'|'.join(OUTCOMES)}>' line", outcomes)
    outcome = outcomes[0]
    if outcome == "rejected":
        code, _, err = ctx.k.try_run("apply", "-n", ctx.ns, "--dry-run=server", "-f", str(path))
        check(code != 0, f"{path.name}: expected the API server to reject it, but it was accepted")
        return f"rejected as expected ({err.strip().splitlines()[-1][:120] if err.strip() else 'no message'})"

    try:
        planned = _objects(ctx.k.run("apply", "-n", ctx.ns, "--dry-run=server", "-f", str(path), "-o", "json"))
        # Cluster-scoped objects the example creates are deleted afterwards; ones that already
        # existed (say, a shipped DeviceClass it repeats) are left alone.
        cluster_scoped = [(o["kind"], o["metadata"]["name"]) for o in planned if not o["metadata"].get("namespace")
                          and ctx.k.get_or_none(o["kind"], o["metadata"]["name"]) is None]
        objs = _objects(ctx.k.run("apply", "-n", ctx.ns, "-f", str(path), "-o", "json"))
    except KubectlError as e:
        raise Failure(f"{path.name}: not accepted by the API server: {e.stderr}") from None
    pods = [o["metadata"]["name"] for o in objs if o["kind"] == "Pod"]
    try:
        if outcome == "accepted":
            return f"accepted ({len(objs)} objects)"
        check(bool(pods), f"{path.name}: expects '{outcome}' but defines no Pod")
        if outcome == "pending":
            for name in pods:
                until(f"{path.name}: pod {name} reported unschedulable",
                      lambda name=name: ((c := kube.condition(ctx.pod(name), "PodScheduled") or {}).get("status") == "False", c), 60)
                stays(f"{path.name}: pod {name} unscheduled",
                      lambda name=name: (not (n := ctx.pod(name)["spec"].get("nodeName")), n), 3)
            return f"{len(pods)} pods pending as expected"
        used = []
        for name in pods:
            p = ctx.wait_running(name)
            node = p["spec"]["nodeName"]
            for pc in p["spec"].get("resourceClaims") or []:
                c = ctx.pod_claim(p, pc["name"])
                devs = ctx.allocated(c)
                check_claim(path, c, devs, exp)
                for d in devs:
                    equal(ctx.register(node, sysfs_name(d)), 1, f"{path.name}: register of {node}/{sysfs_name(d)}")
                wait_prepared(ctx, node, c["metadata"]["uid"])
                used.append((node, c, devs))
            for ctr in p["spec"]["containers"]:
                if ctr.get("resources", {}).get("claims"):
                    env = ctx.env(node, name, ctr["name"])
                    check("MOCK_ACCEL_UUID" in env, f"{path.name}: container {name}/{ctr['name']} got no MOCK_ACCEL_UUID", env)
        for name in pods:
            ctx.delete_pod_and_wait(name)
        for node, c, devs in used:
            verify_released(ctx, node, c["metadata"]["uid"], devs)
        return f"{len(pods)} pods ran with {sum(len(d) for _, _, d in used)} devices, all released"
    finally:
        for kind, name in cluster_scoped:
            ctx.k.delete(kind, name)


def check_claim(path: Path, c: dict, devs: list[dict], exp: dict[str, list[str]]) -> None:
    name = c["metadata"]["name"]
    for n in exp.get("devices", []):
        equal(len(devs), int(n), f"{path.name}: devices of claim {name}")
    for a in exp.get("same", []):
        values = {json.dumps(kube.attr(d, a)) for d in devs}
        check(len(values) == 1 and "null" not in values, f"{path.name}: claim {name}'s devices differ in {a}", values)
    for a in exp.get("distinct", []):
        values = [json.dumps(kube.attr(d, a)) for d in devs]
        check(len(set(values)) == len(values) and "null" not in values,
              f"{path.name}: claim {name}'s devices share values of {a}", values)


@scenario("11", "docs/examples: every example applied, its declared outcome checked")
def examples(ctx: Context) -> None:
    files = sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yml"))
    check(bool(files), f"no examples in {EXAMPLES}")
    failures = []
    for f in files:
        try:
            say(f"{f.name}: {run_example(ctx, f)}")
        except (Failure, KubectlError) as e:
            failures.append(f"{f.name}: {e}")
            say(f"{f.name}: FAILED")
    check(not failures, f"{len(failures)} of {len(files)} examples failed:\n" + "\n".join(failures))


def yaml_documents() -> list[tuple[str, str]]:
    """(label, YAML text) for every YAML file under docs/ and config/ (not kustomizations) and
    every fenced yaml block in docs/ Markdown and README.md that holds a whole object."""
    out = []
    for root in (REPO / "docs", REPO / "config"):
        for f in sorted(list(root.rglob("*.yaml")) + list(root.rglob("*.yml"))):
            if f.name != "kustomization.yaml":
                out.append((str(f.relative_to(REPO)), f.read_text()))
    md = sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]
    fence = re.compile(r"^```ya?ml[^\n]*\n(.*?)^```", re.S | re.M)
    for f in md:
        if not f.is_file():
            continue
        text = f.read_text()
        for i, m in enumerate(fence.finditer(text), start=1):
            block = m.group(1)
            if re.search(r"^apiVersion:", block, re.M) and re.search(r"^kind:", block, re.M):
                line = text[: m.start()].count("\n") + 1
                out.append((f"{f.relative_to(REPO)}:{line} (yaml block {i})", block))
    return out


@scenario("12", "docs/ and config/: every YAML accepted by the API server (server-side dry run)")
def dry_run(ctx: Context) -> None:
    docs = yaml_documents()
    check(bool(docs), "no YAML found under docs/ and config/")
    failures, rejected_ok = [], 0
    for label, text in docs:
        want_rejected = "rejected" in expectations(text).get("outcome", [])
        code, _, err = ctx.k.try_run("apply", "--dry-run=server", "--server-side", "--force-conflicts",
                                     "--field-manager=e2e-dry-run", "-f", "-", input=text)
        if want_rejected:
            if code == 0:
                failures.append(f"{label}: marked '# expect: rejected' but the API server accepted it")
            else:
                rejected_ok += 1
        elif code != 0:
            failures.append(f"{label}: {err.strip()}")
    for kdir in ("config", "kustomize/default", "kustomize/local"):
        if (REPO / kdir / "kustomization.yaml").is_file():
            code, _, err = ctx.k.try_run("apply", "--dry-run=server", "--server-side", "--force-conflicts",
                                         "--field-manager=e2e-dry-run", "-k", str(REPO / kdir), timeout=120)
            if code != 0:
                failures.append(f"{kdir} (kustomization): {err.strip()}")
    say(f"{len(docs)} YAML documents checked ({rejected_ok} deliberately invalid, rejected as marked)")
    check(not failures, f"{len(failures)} YAML documents were not accepted:\n" + "\n".join(failures))
