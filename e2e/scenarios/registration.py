"""Scenario 13: the plugin registers through the kubelet's own register operation.

The kubelet's plugin manager dials a registration socket with the bare socket path as the gRPC
target, so grpc-go sends the percent-escaped path as the HTTP/2 `:authority`; an h2 server that
refuses such an authority registers on no real node. `fakelet register` runs the kubelet's
operation executor code (k8s.io/kubernetes/pkg/kubelet/pluginmanager/operationexecutor) against
each node's registration socket: dial, GetInfo, validate, NotifyRegistrationStatus. The fakelet
itself registers every plugin the same way, so every other scenario depends on it too.
"""

import json
import subprocess

from harness.kube import DRIVER
from harness.wait import Failure, check, equal

from scenarios.framework import Context, say, scenario


def _condition(node_obj: dict, ctype: str) -> dict:
    for c in (node_obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return {}


@scenario("13", "registration: the kubelet's own register operation (bare socket path) succeeds")
def kubelet_registration(ctx: Context) -> None:
    fakelet = ctx.cluster.binaries.fakelet
    for node in ctx.cluster.node_names():
        paths = ctx.node_paths(node)
        socket = paths.registry_dir / f"{DRIVER}-reg.sock"
        check(socket.is_socket(), f"{node}: no registration socket at {socket}")
        res = subprocess.run([str(fakelet), "register", f"--socket={socket}", f"--driver-name={DRIVER}"],
                             capture_output=True, text=True, timeout=60)
        try:
            out = json.loads(res.stdout)
        except ValueError:
            raise Failure(f"{node}: fakelet register printed no JSON (exit {res.returncode}): "
                          f"{res.stdout[:300]!r} {res.stderr[-500:]!r}") from None
        check(res.returncode == 0 and out.get("registered") is True,
              f"{node}: the kubelet's register operation failed on {socket}", out)
        equal(out["name"], DRIVER, f"{node}: GetInfo name")
        equal(out["type"], "DRAPlugin", f"{node}: GetInfo type")
        equal(out["endpoint"], str(paths.plugin_dir / "dra.sock"), f"{node}: GetInfo endpoint")
        equal(out["chosen_version"], "v1.DRAPlugin", f"{node}: DRA service chosen as the kubelet would")
        # NotifyRegistrationStatus(true) reached the agent: it reports the plugin registered.
        cond = _condition(ctx.mock_node(node), "PluginRegistered")
        equal(cond.get("status"), "True", f"{node}: MockAccelNode PluginRegistered condition")
        say(f"{node}: registered through the kubelet's code at {socket.name}; "
            f"versions {out['supported_versions']}")
