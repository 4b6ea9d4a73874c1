"""The end-to-end scenarios (issue 4), one module per theme; importing this package registers
them all in `framework.REGISTRY`, in the order they run."""

from scenarios import (  # noqa: F401 - imported for their @scenario registrations
    controlplane,
    discovery,
    deviceclasses,
    allocation,
    claimstatus,
    topology,
    metadriver,
    sriov,
    resilience,
    rbac,
    examples,
    registration,
    partitionable,
    consumable,
    binding,
    outages,
    kubelet,
    realnode,
    fixture,
    simulation,
    reliability,
    faults,
    health,
    fleet,
)
