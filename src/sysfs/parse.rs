//! The pure parsers of the values the kernel module prints in sysfs, each accepting exactly what
//! the kernel prints or accepts (and naming the problem otherwise). No file access here.

use std::{fmt, str::FromStr};

/// A PCI function address `DDDD:BB:SS.F` (domain, bus, slot 0-31, function 0-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf {
    pub domain: u16,
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
}

impl Bdf {
    pub fn new(domain: u16, bus: u8, slot: u8, function: u8) -> Self {
        Bdf {
            domain,
            bus,
            slot,
            function,
        }
    }

    /// The same bus and slot, another function.
    pub fn with_function(self, function: u8) -> Self {
        Bdf { function, ..self }
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.slot, self.function
        )
    }
}

impl FromStr for Bdf {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a PCI address DDDD:BB:SS.F");
        let b = s.as_bytes();
        if b.len() != 12 || b[4] != b':' || b[7] != b':' || b[10] != b'.' {
            return Err(bad());
        }
        let hex = |r: std::ops::Range<usize>| -> Result<u32, String> {
            let part = &s[r];
            if part.bytes().all(|c| c.is_ascii_hexdigit()) {
                u32::from_str_radix(part, 16).map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        let domain = hex(0..4)?;
        let bus = hex(5..7)?;
        let slot = hex(8..10)?;
        let function = hex(11..12)?;
        if slot > 31 || function > 7 {
            return Err(format!("{s:?}: slot must be 00-1f and function 0-7"));
        }
        Ok(Bdf::new(
            domain as u16,
            bus as u8,
            slot as u8,
            function as u8,
        ))
    }
}

/// Parses an integer as the kernel's `kstrtoull(.., 0, ..)` does: decimal, `0x` hex or
/// leading-`0` octal, an optional leading `+`, at most one trailing newline, nothing else.
pub fn parse_kernel_u64(text: &str) -> Result<u64, String> {
    let t = text.strip_suffix('\n').unwrap_or(text);
    let t = t.strip_prefix('+').unwrap_or(t);
    let (digits, radix) = match t.as_bytes() {
        [b'0', b'x' | b'X', c, ..] if c.is_ascii_hexdigit() => (&t[2..], 16),
        [b'0', _, ..] => (&t[1..], 8),
        _ => (t, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(format!(
            "{text:?} is not a number (decimal, 0x hex or 0 octal); the kernel answers EINVAL"
        ));
    }
    u64::from_str_radix(digits, radix)
        .map_err(|_| format!("{text:?} does not fit in 64 bits; the kernel answers ERANGE"))
}

/// Parses a 32-bit value as `kstrtou32(.., 0, ..)` does (see [`parse_kernel_u64`]).
pub fn parse_kernel_u32(text: &str) -> Result<u32, String> {
    let v = parse_kernel_u64(text)?;
    u32::try_from(v)
        .map_err(|_| format!("{text:?} does not fit in 32 bits; the kernel answers ERANGE"))
}

/// Parses a register value read from sysfs: what [`parse_kernel_u32`] accepts, with
/// surrounding whitespace tolerated (the kernel prints `0x%08x`; simulated files may hold
/// whatever was last written, e.g. a decimal `1`).
pub fn parse_register(text: &str) -> Result<u32, String> {
    parse_kernel_u32(text.trim())
}

/// Parses `major:minor` with an optional trailing newline.
pub fn parse_dev_numbers(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim_end_matches('\n').split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// `%pUb`: 8-4-4-4-12 hex digits. Returned lowercase as the kernel prints it.
pub fn parse_uuid(text: &str) -> Result<String, String> {
    let t = text.trim();
    let ok = t.len() == 36
        && t.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(t.to_ascii_lowercase())
    } else {
        Err("not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)".to_string())
    }
}

/// `%d` of the PCI device's node; `-1` means no NUMA information.
pub fn parse_numa(text: &str) -> Result<Option<u32>, String> {
    match text.trim().parse::<i32>() {
        Ok(-1) => Ok(None),
        Ok(n) if n >= 0 => Ok(Some(n as u32)),
        Ok(n) => Err(format!("NUMA node {n} is neither -1 nor a node number")),
        Err(e) => Err(format!("not a NUMA node number: {e}")),
    }
}

/// `%u.%u.%u`.
pub fn parse_fw_version(text: &str) -> Result<String, String> {
    let t = text.trim();
    let parts: Vec<&str> = t.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
    {
        Ok(t.to_string())
    } else {
        Err("not a firmware version major.minor.patch".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_integer_parsing_follows_kstrtou32_base_0() {
        assert_eq!(parse_kernel_u32("4660"), Ok(4660));
        assert_eq!(parse_kernel_u32("4660\n"), Ok(4660));
        assert_eq!(parse_kernel_u32("0x00001234\n"), Ok(0x1234));
        assert_eq!(parse_kernel_u32("0X1f"), Ok(31));
        assert_eq!(parse_kernel_u32("010"), Ok(8));
        assert_eq!(parse_kernel_u32("0"), Ok(0));
        assert_eq!(parse_kernel_u32("+7"), Ok(7));
        assert_eq!(parse_kernel_u32("4294967295"), Ok(u32::MAX));
        for bad in [
            "", "\n", "0x", "0x\n", "abc", " 1", "1 ", "1\n\n", "-1", "08", "0xg",
        ] {
            assert!(
                parse_kernel_u32(bad).unwrap_err().contains("EINVAL"),
                "{bad:?}"
            );
        }
        assert!(
            parse_kernel_u32("4294967296")
                .unwrap_err()
                .contains("ERANGE")
        );
        // Reads tolerate surrounding whitespace.
        assert_eq!(parse_register(" 0x00000001 \n"), Ok(1));
    }

    #[test]
    fn bdfs_parse_and_print() {
        let b: Bdf = "0000:11:00.2".parse().unwrap();
        assert_eq!(b, Bdf::new(0, 0x11, 0, 2));
        assert_eq!(b.to_string(), "0000:11:00.2");
        assert_eq!(
            "0001:ab:1f.7".parse::<Bdf>().unwrap().to_string(),
            "0001:ab:1f.7"
        );
        for bad in [
            "0000:11:00",
            "0000:11:20.0",
            "0000:11:00.8",
            "000g:11:00.0",
            "mock0",
            "",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad}");
        }
    }

    #[test]
    fn attribute_parsers_accept_the_kernel_formats() {
        assert_eq!(
            parse_uuid("4E4F4445-312d-4e55-4d41-302d50460000\n").unwrap(),
            "4e4f4445-312d-4e55-4d41-302d50460000"
        );
        assert!(parse_uuid("NODE1-NUMA0-PF").is_err());
        assert!(parse_uuid("4e4f4445312d4e554d41302d50460000").is_err());
        assert_eq!(parse_numa("-1\n"), Ok(None));
        assert_eq!(parse_numa("1\n"), Ok(Some(1)));
        assert!(parse_numa("-2").is_err());
        assert!(parse_numa("zero").is_err());
        assert_eq!(parse_fw_version("1.0.0\n").unwrap(), "1.0.0");
        assert!(parse_fw_version("1.0").is_err());
        assert_eq!(parse_dev_numbers("240:3\n"), Some((240, 3)));
        assert_eq!(parse_dev_numbers("240"), None);
    }
}
