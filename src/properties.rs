//! Property tests of every parser and encoder that sees outside input: sysfs attribute values,
//! PCI addresses, UUIDs, checkpoint decoding, claim UIDs turned into file names, CDI names, the
//! pod UID in socket names, and the claims of a gRPC request. No input may panic, and every
//! rejection must say what was wrong.
//!
//! `make test` runs each property for [`FAST_CASES`] generated inputs (a few seconds in all).
//! `make fuzz` sets `FUZZ_SECONDS`: the same properties then run for that long together (each
//! gets an equal share) and print how many cases each tried.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

use crate::{
    cdi,
    checkpoint::{self, Checkpoint, ClaimEntry, DecodeError, DeviceEntry, PrepareState},
    names,
    plugin::{ClaimRef, dra::check_claims, socket_names},
    sysfs::parse::{self, Bdf},
};

/// Cases per property in a plain test run.
const FAST_CASES: u32 = 256;
/// Properties in this file, which share `FUZZ_SECONDS` equally.
const PROPERTIES: u32 = 10;
const DRIVER: &str = crate::inventory::DEFAULT_DRIVER_NAME;

/// Runs `property` on inputs from `strategy`: [`FAST_CASES`] of them, or for this property's
/// share of `FUZZ_SECONDS`, printing the count. Panics with the shrunk failing input.
fn check<S: Strategy>(
    name: &str,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let budget = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| Duration::from_secs(s) / PROPERTIES);
    let config = |cases| Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let Some(budget) = budget else {
        let mut runner = TestRunner::new(config(FAST_CASES));
        if let Err(e) = runner.run(&strategy, &property) {
            panic!("property {name}: {e}");
        }
        return;
    };
    let start = Instant::now();
    let mut cases: u64 = 0;
    while start.elapsed() < budget {
        // Batches with fresh seeds: one long run would hold one seed's distribution.
        let mut runner = TestRunner::new(config(1000));
        if let Err(e) = runner.run(&strategy, &property) {
            panic!("property {name} after {cases} cases: {e}");
        }
        cases += 1000;
    }
    println!("fuzz: {name}: {cases} cases in {:.0?}", start.elapsed());
}

fn ensure(ok: bool, what: impl Into<String>) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what.into()))
    }
}

/// Text as sysfs or a user could hand it over: any Unicode, or near-misses of the valid form.
fn text(near: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), near, "[ \\n+xX0-9a-fA-F.:-]{0,24}"]
}

#[test]
fn kernel_numbers_parse_as_the_kernel_does_or_name_the_text() {
    check(
        "kernel numbers",
        (
            text("(\\+)?(0[xX])?[0-9a-fA-F]{1,20}\\n?"),
            any::<u64>(),
            0..3u8,
        ),
        |(t, n, form)| {
            for parsed in [
                parse::parse_kernel_u64(&t),
                parse::parse_kernel_u32(&t).map(u64::from),
                parse::parse_register(&t).map(u64::from),
            ] {
                if let Err(e) = parsed {
                    ensure(
                        e.contains(&format!("{:?}", t.trim())) || e.contains(&format!("{t:?}")),
                        format!("{e} does not name {t:?}"),
                    )?;
                }
            }
            let written = match form {
                0 => format!("{n}\n"),
                1 => format!("0x{n:x}"),
                _ => format!("0{n:o}"),
            };
            ensure(
                parse::parse_kernel_u64(&written) == Ok(n),
                format!("{written:?} does not read back as {n}"),
            )
        },
    );
}

#[test]
fn pci_addresses_round_trip_and_rejections_name_the_text() {
    check(
        "PCI addresses",
        (
            text("[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\\.[0-9a-f]"),
            any::<(u16, u8)>(),
            0..32u8,
            0..8u8,
        ),
        |(t, (domain, bus), slot, function)| {
            if let Err(e) = t.parse::<Bdf>() {
                ensure(
                    e.contains(&format!("{t:?}")),
                    format!("{e} does not name {t:?}"),
                )?;
            }
            let bdf = Bdf::new(domain, bus, slot, function);
            ensure(
                bdf.to_string().parse::<Bdf>() == Ok(bdf),
                format!("{bdf} does not read back"),
            )
        },
    );
}

#[test]
fn uuids_numa_nodes_firmware_and_device_numbers_never_panic() {
    check(
        "UUID, numa_node, fw_version, dev",
        (
            text("[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
            text("-?[0-9]{1,12}"),
            text("[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{0,4}"),
        ),
        |(uuid, numa, fw)| {
            match parse::parse_uuid(&uuid) {
                Ok(u) => ensure(
                    u.len() == 36
                        && u == u.to_ascii_lowercase()
                        && u.eq_ignore_ascii_case(uuid.trim()),
                    format!("{uuid:?} read as {u:?}"),
                )?,
                Err(e) => ensure(e.contains("not a UUID"), e)?,
            }
            match parse::parse_numa(&numa) {
                Ok(Some(n)) => ensure(
                    numa.trim().parse::<i64>() == Ok(i64::from(n)),
                    format!("{numa:?} read as {n}"),
                )?,
                Ok(None) => ensure(
                    numa.trim().parse::<i64>() == Ok(-1),
                    format!("{numa:?} read as none"),
                )?,
                Err(e) => ensure(e.contains("NUMA node"), e)?,
            }
            if let Err(e) = parse::parse_fw_version(&fw) {
                ensure(e.contains("major.minor.patch"), e)?;
            }
            let _ = parse::parse_dev_numbers(&numa);
            Ok(())
        },
    );
}

fn entry() -> impl Strategy<Value = ClaimEntry> {
    (
        "[a-f0-9-]{1,36}",
        "[a-z0-9-]{1,20}",
        "[a-z0-9.-]{1,30}",
        any::<bool>(),
        proptest::collection::vec(
            (
                "mock[0-9]{1,2}(-vf[0-9])?",
                any::<Option<u32>>(),
                any::<bool>(),
            ),
            0..4,
        ),
    )
        .prop_map(|(uid, namespace, name, done, devices)| ClaimEntry {
            cdi_device_ids: devices
                .iter()
                .map(|(d, _, _)| cdi::qualified_device_id(DRIVER, &uid, d))
                .collect(),
            devices: devices
                .into_iter()
                .map(|(device, previous, admin)| DeviceEntry {
                    sysfs_name: device.replace('-', "_"),
                    pool: "node1/numa0".into(),
                    request_names: vec!["r".into()],
                    admin_access: admin,
                    share_id: None,
                    consumed_memory: None,
                    register_previous: previous,
                    device,
                })
                .collect(),
            uid,
            namespace,
            name,
            state: if done {
                PrepareState::PrepareCompleted
            } else {
                PrepareState::PrepareStarted
            },
            prepared_at: "2026-11-30T10:00:00Z".into(),
        })
}

fn checkpoints() -> impl Strategy<Value = Checkpoint> {
    proptest::collection::vec(entry(), 0..5).prop_map(|entries| Checkpoint {
        claims: entries.into_iter().map(|e| (e.uid.clone(), e)).collect(),
    })
}

#[test]
fn checkpoints_round_trip_and_any_damage_is_refused_with_the_reason() {
    check(
        "checkpoint decoding",
        (
            checkpoints(),
            any::<prop::sample::Index>(),
            0..8u8,
            any::<prop::sample::Index>(),
        ),
        |(cp, at, bit, cut)| {
            let bytes = checkpoint::encode(&cp);
            ensure(checkpoint::decode(&bytes) == Ok(cp.clone()), "round trip")?;
            // One flipped bit anywhere: refused, never a different checkpoint.
            let mut flipped = bytes.clone();
            let i = at.index(flipped.len());
            flipped[i] ^= 1 << bit;
            match checkpoint::decode(&flipped) {
                Err(DecodeError::Corrupt(why)) => ensure(!why.is_empty(), "empty reason")?,
                Err(DecodeError::UnsupportedVersion(v)) => {
                    ensure(v != checkpoint::CHECKPOINT_VERSION, "version")?
                }
                Ok(other) => ensure(
                    other == cp,
                    format!("bit {bit} of byte {i} flipped decodes to another checkpoint"),
                )?,
            }
            // Truncated anywhere before the end of the JSON: refused.
            let len = cut.index(bytes.len() - 1);
            ensure(
                matches!(
                    checkpoint::decode(&bytes[..len]),
                    Err(DecodeError::Corrupt(_))
                ),
                format!("truncated to {len} bytes is not refused as corrupt"),
            )
        },
    );
}

#[test]
fn other_checkpoint_versions_and_garbage_are_refused_by_name() {
    check(
        "checkpoint versions and garbage",
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..256)),
        |(version, garbage)| {
            let other = format!("{{\"version\":{version},\"checksum\":\"x\",\"payload\":{{}}}}");
            let decoded = checkpoint::decode(other.as_bytes());
            if version == checkpoint::CHECKPOINT_VERSION {
                ensure(
                    matches!(decoded, Err(DecodeError::Corrupt(ref why)) if why.contains("checksum")),
                    format!("{decoded:?}"),
                )?;
            } else {
                ensure(
                    decoded == Err(DecodeError::UnsupportedVersion(version)),
                    format!("{decoded:?}"),
                )?;
            }
            if let Err(DecodeError::Corrupt(why)) = checkpoint::decode(&garbage) {
                ensure(!why.is_empty(), "empty reason")?;
            }
            Ok(())
        },
    );
}

#[test]
fn claim_uids_never_escape_the_cdi_directory() {
    check(
        "claim UIDs as CDI file and device names",
        (any::<String>(), "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"),
        |(uid, device)| {
            let dir = Path::new("/var/run/cdi");
            let path = cdi::spec_path(dir, DRIVER, &uid);
            ensure(
                path.parent() == Some(dir),
                format!("{uid:?} puts the spec at {path:?}"),
            )?;
            let file = cdi::spec_file_name(DRIVER, &uid);
            let back = cdi::claim_uid_of_spec_file(DRIVER, &file);
            if !uid.is_empty() && !uid.contains('/') {
                ensure(
                    back.as_deref() == Some(uid.as_str()),
                    format!("{uid:?} -> {file:?} -> {back:?}"),
                )?;
            }
            // The device name of a claim: accepted exactly when it follows the CDI rule.
            if let Err(why) = names::check_cdi_device_name(&cdi::device_name(&uid, &device)) {
                ensure(!why.is_empty(), "empty reason")?;
            }
            Ok(())
        },
    );
}

#[test]
fn sysfs_names_become_dns_labels_or_are_refused_by_name() {
    check(
        "sysfs names as DRA device names",
        text("[a-zA-Z0-9_.]{1,70}"),
        |name| match names::dra_device_name(&name) {
            Ok(label) => ensure(
                names::is_dns_label(&label),
                format!("{name:?} -> {label:?}"),
            ),
            Err(e) => ensure(
                e.to_string().contains(&format!("{name:?}")),
                format!("{e} does not name {name:?}"),
            ),
        },
    );
}

#[test]
fn cdi_vendors_and_device_names_never_panic() {
    check("CDI vendor and device names", any::<String>(), |s| {
        if let Err(why) = names::check_cdi_vendor(&s) {
            ensure(!why.is_empty(), "empty reason")?;
        }
        if names::check_cdi_device_name(&s).is_ok() {
            ensure(!s.contains('/') && !s.is_empty(), format!("{s:?} accepted"))?;
        }
        Ok(())
    });
}

#[test]
fn pod_uids_become_socket_names_that_fit_or_are_refused_by_name() {
    check(
        "pod UIDs in socket names",
        (text("[0-9a-f-]{36}"), "/[a-z/]{1,90}"),
        |(uid, dir)| match socket_names::check_pod_uid(&uid) {
            Ok(()) => {
                let dir = Path::new(&dir);
                for name in [
                    socket_names::registration_socket_file(dir, DRIVER, Some(&uid)),
                    socket_names::dra_socket_file(dir, Some(&uid)),
                ] {
                    ensure(!name.contains('/'), format!("{name:?}"))?;
                }
                Ok(())
            }
            Err(e) => ensure(e.to_string().contains("--pod-uid"), e.to_string()),
        },
    );
}

fn claim_refs() -> impl Strategy<Value = Vec<ClaimRef>> {
    // A small alphabet, so that repeats, conflicts and empty fields are frequent.
    let field = prop_oneof![Just(String::new()), "[ab]", any::<String>()];
    proptest::collection::vec(
        (field.clone(), field.clone(), field).prop_map(|(uid, namespace, name)| ClaimRef {
            uid,
            namespace,
            name,
        }),
        0..40,
    )
}

#[test]
fn every_claim_of_a_request_gets_exactly_one_answer() {
    check("gRPC request claims", claim_refs(), |claims| {
        let mut uids: Vec<String> = claims.iter().map(|c| c.uid.clone()).collect();
        uids.sort();
        uids.dedup();
        let checked = check_claims(claims.clone());
        let mut answered: Vec<String> = checked
            .valid
            .iter()
            .map(|c| c.uid.clone())
            .chain(checked.rejected.iter().map(|(u, _)| u.clone()))
            .collect();
        answered.sort();
        ensure(
            answered == uids,
            format!("answered {answered:?} for {uids:?}"),
        )?;
        for c in &checked.valid {
            ensure(
                !c.uid.is_empty() && !c.namespace.is_empty() && !c.name.is_empty(),
                format!("{c:?} passed"),
            )?;
        }
        for (uid, why) in &checked.rejected {
            ensure(
                why.contains("empty") || why.contains("used twice"),
                format!("{uid:?}: {why}"),
            )?;
        }
        Ok(())
    });
}
