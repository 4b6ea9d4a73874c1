"""End-to-end harness for the mock-accel DRA driver on a real Kubernetes control plane.

Modules: `procs` (child processes by pid), `pki` (throwaway certificates and kubeconfigs),
`kube` (kubectl wrapper and object builders), `wait` (bounded polling and assertions),
`builds` (binaries the harness needs), `nodes` (simulated nodes), `cluster` (the whole local
cluster, importable and a command line).
"""
