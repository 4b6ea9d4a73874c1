//! Shared counters of partitionable devices (KEP-4815): a PF and its own VFs are one physical
//! card, so each card gets one counter set that its PF consumes whole and each of its VFs in
//! part. The scheduler then never hands out a PF while one of its VFs is allocated, or the other
//! way round, within one claim or across claims; the driver needs no check of its own.
//!
//! Shapes follow `resource.k8s.io/v1` of Kubernetes 1.35 and later: counter sets live in slices
//! of their own (a slice carries `devices` or `sharedCounters`, never both), at most
//! [`MAX_COUNTER_SETS_PER_SLICE`] per slice, and a slice whose devices consume counters holds at
//! most [`MAX_DEVICES_PER_SLICE_WITH_COUNTERS`] devices. Each device consumes from one set (the
//! API allows two).

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{Counter, CounterSet, DeviceCounterConsumption};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::desired::memory_quantity;
use crate::inventory::{Device, DeviceType};

/// API limit on counter sets in one slice.
pub const MAX_COUNTER_SETS_PER_SLICE: usize = 8;
/// API limit on devices in a slice once any of them consumes counters.
pub const MAX_DEVICES_PER_SLICE_WITH_COUNTERS: usize = 64;
/// Counter of a card's memory in bytes: the PF takes all of it, a VF its own memory.
pub const COUNTER_MEMORY: &str = "memory";
/// Counter of a card's functions: one per function present, the PF takes all of them.
pub const COUNTER_FUNCTIONS: &str = "functions";

/// The counter sets of one pool and what each device consumes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolCounters {
    /// One set per PF of the pool, named after the PF, in PF name order.
    pub sets: Vec<CounterSet>,
    /// Device name → its one consumption entry. Devices not listed consume nothing (a VF whose
    /// PF is not published in the same pool: the API only resolves sets within a pool).
    pub consumption: BTreeMap<String, DeviceCounterConsumption>,
}

/// Counter sets and consumption for the devices published in one pool.
///
/// A card's `memory` counter holds the larger of the PF's memory and the sum of its VFs'
/// memory (so that all VFs together always fit), `functions` holds 1 + its VFs; the PF consumes
/// both whole, each VF its own memory and one function. Any PF + own-VF pair thus exceeds
/// `functions`, whatever the memory values are (a 16 GiB PF may read as 0 bytes).
pub fn pool_counters(devices: &[&Device]) -> PoolCounters {
    let mut vfs: BTreeMap<&str, Vec<&Device>> = BTreeMap::new();
    for d in devices.iter().filter(|d| d.device_type == DeviceType::Vf) {
        if let Some(parent) = d.physfn.as_deref() {
            vfs.entry(parent).or_default().push(d);
        }
    }
    let mut out = PoolCounters::default();
    let mut pfs: Vec<&Device> = devices
        .iter()
        .copied()
        .filter(|d| d.device_type == DeviceType::Pf)
        .collect();
    pfs.sort_by(|a, b| a.name.cmp(&b.name));
    for pf in pfs {
        let children = vfs.get(pf.name.as_str()).map_or(&[][..], Vec::as_slice);
        let vf_memory = children
            .iter()
            .fold(0u64, |sum, vf| sum.saturating_add(vf.memory));
        let memory = pf.memory.max(vf_memory);
        let functions = u64::try_from(children.len())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let whole = counters(memory, functions);
        out.sets.push(CounterSet {
            name: pf.name.clone(),
            counters: whole.clone(),
        });
        out.consumption.insert(
            pf.name.clone(),
            DeviceCounterConsumption {
                counter_set: pf.name.clone(),
                counters: whole,
            },
        );
        for vf in children {
            out.consumption.insert(
                vf.name.clone(),
                DeviceCounterConsumption {
                    counter_set: pf.name.clone(),
                    counters: counters(vf.memory, 1),
                },
            );
        }
    }
    out
}

fn counters(memory: u64, functions: u64) -> BTreeMap<String, Counter> {
    BTreeMap::from([
        (
            COUNTER_FUNCTIONS.to_string(),
            Counter {
                value: Quantity(functions.to_string()),
            },
        ),
        (
            COUNTER_MEMORY.to_string(),
            Counter {
                value: memory_quantity(memory),
            },
        ),
    ])
}
