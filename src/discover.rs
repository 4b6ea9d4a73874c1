//! `mock-accel-dra discover`: prints the devices found under a sysfs root, as a table or as
//! JSON. Only the result goes to stdout; every warning goes to stderr as
//! `warning: <file>: <problem>`, and only an unusable root is an error.

use std::io::Write;

use serde::Serialize;

use crate::{
    cli::{DiscoverArgs, OutputFormat},
    inventory::{Device, DeviceType, Inventory},
    sysfs::{self, SysfsError},
};

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot scan the sysfs root: {0}")]
    Scan(#[from] SysfsError),
    #[error("writing the result to stdout: {0}")]
    Output(#[source] std::io::Error),
    #[error("encoding the result as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn run(args: &DiscoverArgs) -> Result<(), DiscoverError> {
    let scan = sysfs::scan(&args.sysfs_root)?;
    {
        let mut err = std::io::stderr().lock();
        for w in &scan.warnings {
            // stderr going away must not hide the result.
            let _ = writeln!(err, "warning: {w}");
        }
    }
    let text = match args.output {
        OutputFormat::Table => render_table(&scan.inventory),
        OutputFormat::Json => render_json(&scan.inventory)?,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(DiscoverError::Output)
}

/// One device as `--output json` prints it: exactly these keys, numbers as numbers, `null`
/// for no NUMA node and no parent.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonDevice<'a> {
    name: &'a str,
    sysfs_name: &'a str,
    device_type: DeviceType,
    uuid: &'a str,
    memory: u64,
    pci_address: &'a str,
    pcie_root: Option<&'a str>,
    numa_node: Option<u32>,
    physfn: Option<&'a str>,
    capabilities: u32,
    status: u32,
}

impl<'a> From<&'a Device> for JsonDevice<'a> {
    fn from(d: &'a Device) -> Self {
        JsonDevice {
            name: &d.name,
            sysfs_name: &d.sysfs_name,
            device_type: d.device_type,
            uuid: &d.uuid,
            memory: d.memory,
            pci_address: &d.pci_address,
            pcie_root: d.pcie_root.as_deref(),
            numa_node: d.numa_node,
            physfn: d.physfn.as_deref(),
            capabilities: d.capabilities,
            status: d.status,
        }
    }
}

/// A JSON array, pretty-printed, with a trailing newline.
pub fn render_json(inv: &Inventory) -> Result<String, serde_json::Error> {
    let rows: Vec<JsonDevice<'_>> = inv.devices.iter().map(JsonDevice::from).collect();
    let mut s = serde_json::to_string_pretty(&rows)?;
    s.push('\n');
    Ok(s)
}

/// Bytes in the largest binary unit that divides them exactly (`16Gi`, `1536Mi`, `0`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    if bytes == 0 {
        return "0".into();
    }
    for (unit, shift) in UNITS {
        if bytes.trailing_zeros() >= shift {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Aligned columns: NAME SYSFS TYPE NUMA PCI ROOT MEMORY PARENT UUID STATUS; `-` for nothing.
pub fn render_table(inv: &Inventory) -> String {
    const HEADER: [&str; 10] = [
        "NAME", "SYSFS", "TYPE", "NUMA", "PCI", "ROOT", "MEMORY", "PARENT", "UUID", "STATUS",
    ];
    let rows: Vec<[String; 10]> = inv
        .devices
        .iter()
        .map(|d| {
            [
                d.name.clone(),
                d.sysfs_name.clone(),
                d.device_type.to_string(),
                d.numa_node.map_or("-".into(), |n| n.to_string()),
                d.pci_address.clone(),
                d.pcie_root.clone().unwrap_or_else(|| "-".into()),
                human_bytes(d.memory),
                d.physfn.clone().unwrap_or_else(|| "-".into()),
                d.uuid.clone(),
                format!("0x{:08x}", d.status),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(&format!("{cell:<w$}"));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut HEADER.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::devices;

    fn dev(
        name: &str,
        sysfs: &str,
        t: DeviceType,
        numa: Option<u32>,
        parent: Option<&str>,
    ) -> Device {
        let memory = if t == DeviceType::Pf {
            16 << 30
        } else {
            2 << 30
        };
        devices::pf(sysfs)
            .name(name)
            .device_type(t)
            .memory(memory)
            .numa(numa)
            .physfn(parent)
            .status(0x1234)
            .fw_version(Some("1.0.0"))
            .build()
    }

    #[test]
    fn human_bytes_uses_exact_binary_units() {
        assert_eq!(human_bytes(17_179_869_184), "16Gi");
        assert_eq!(human_bytes(2_147_483_648), "2Gi");
        assert_eq!(human_bytes(1536 << 20), "1536Mi");
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(1000), "1000");
        assert_eq!(human_bytes(4096), "4Ki");
    }

    #[test]
    fn json_has_exactly_the_documented_keys_and_types() {
        let inv = Inventory::new(vec![
            dev("mock0", "mock0", DeviceType::Pf, None, None),
            dev(
                "mock0-vf0",
                "mock0_vf0",
                DeviceType::Vf,
                Some(1),
                Some("mock0"),
            ),
        ]);
        let v: serde_json::Value = serde_json::from_str(&render_json(&inv).unwrap()).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        let keys: Vec<&str> = arr[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = [
            "name",
            "sysfsName",
            "deviceType",
            "uuid",
            "memory",
            "pciAddress",
            "pcieRoot",
            "numaNode",
            "physfn",
            "capabilities",
            "status",
        ];
        expected.sort();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort();
        assert_eq!(keys_sorted, expected);
        assert_eq!(arr[0]["numaNode"], serde_json::Value::Null);
        assert_eq!(arr[0]["physfn"], serde_json::Value::Null);
        assert_eq!(arr[0]["memory"], 17_179_869_184u64);
        assert_eq!(arr[0]["status"], 0x1234);
        assert_eq!(arr[0]["deviceType"], "pf");
        assert_eq!(arr[1]["physfn"], "mock0");
        assert_eq!(arr[1]["numaNode"], 1);
        assert_eq!(arr[1]["sysfsName"], "mock0_vf0");
    }

    #[test]
    fn table_aligns_columns_and_marks_missing_values() {
        let inv = Inventory::new(vec![
            dev("mock0", "mock0", DeviceType::Pf, Some(0), None),
            dev(
                "mock0-vf0",
                "mock0_vf0",
                DeviceType::Vf,
                None,
                Some("mock0"),
            ),
        ]);
        let t = render_table(&inv);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        let cols: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "NAME", "SYSFS", "TYPE", "NUMA", "PCI", "ROOT", "MEMORY", "PARENT", "UUID",
                "STATUS"
            ]
        );
        let pf: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            pf[..8],
            [
                "mock0",
                "mock0",
                "pf",
                "0",
                "0000:11:00.0",
                "pci0000:10",
                "16Gi",
                "-"
            ]
        );
        assert_eq!(pf[9], "0x00001234");
        let vf: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            vf[..8],
            [
                "mock0-vf0",
                "mock0_vf0",
                "vf",
                "-",
                "0000:11:00.0",
                "pci0000:10",
                "2Gi",
                "mock0"
            ]
        );
        // Columns line up: every row's SYSFS column starts where the header's does.
        let at = lines[0].find("SYSFS").unwrap();
        assert_eq!(&lines[2][at..at + 9], "mock0_vf0");
    }
}
