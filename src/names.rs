//! Every naming rule of the driver in one place: how the names it derives are built (DRA
//! device names from sysfs names, pool names, slice object names, label values) and the
//! Kubernetes and CDI rules a name must pass (DNS labels and subdomains, label values,
//! qualified attribute names, CDI vendors and device names). Pure string functions; the node
//! agent, the controller and the CDI writer all call these, so their names always agree.

use sha2::{Digest, Sha256};

/// Longest DNS label Kubernetes accepts (device names, pool path segments).
pub const DNS_LABEL_MAX: usize = 63;

/// Label on every slice we publish; the controller watches and lists slices by it.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "mock-accel-controller";
/// Label naming the node a slice belongs to; value from [`node_label_value`].
pub const LABEL_NODE: &str = "mock-accel.example.com/node";
/// Label naming the pool within the node: `numa<N>` or `numa-none`.
pub const LABEL_POOL: &str = "mock-accel.example.com/pool";
/// Node label by which an administrator publishes a node's PFs in shares (value `shared`, see
/// [`crate::slices::sharing`]); any other value or none: PFs are handed out whole.
pub const LABEL_PF_SHARING: &str = "mock-accel.example.com/pf-sharing";
/// Node label by which an administrator makes a node's devices wait for attachment before a
/// pod binds (value `fabric`, see [`crate::slices::binding`]).
pub const LABEL_ATTACHMENT: &str = "mock-accel.example.com/attachment";

pub const MAX_NAME_LEN: usize = 253;
/// Longest label value.
const MAX_LABEL_VALUE_LEN: usize = 63;
pub const MAX_DRIVER_LEN: usize = 63;
const MAX_ID_LEN: usize = 32;
/// Hex digits of SHA-256 kept when a name must be shortened: 40 bits, enough to keep the
/// handful of names per node apart.
const HASH_LEN: usize = 10;

/// Why a name cannot be used as a DRA device name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name {name:?} is empty after mapping to a DNS label")]
    Empty { name: String },
    #[error("name {name:?} maps to {label:?}, longer than {DNS_LABEL_MAX} characters")]
    TooLong { name: String, label: String },
    #[error(
        "name {name:?} maps to {label:?}, which is not a DNS label (lowercase letters, digits and '-', alphanumeric at both ends)"
    )]
    Invalid { name: String, label: String },
}

/// Maps a sysfs class name to a DRA device name: lowercase, `_` and `.` become `-`.
/// Anything else outside `[a-z0-9-]` is rejected rather than silently dropped, so two sysfs
/// names can never collapse onto one device name by accident.
pub fn dra_device_name(sysfs_name: &str) -> Result<String, NameError> {
    let label: String = sysfs_name
        .chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if label.is_empty() {
        return Err(NameError::Empty {
            name: sysfs_name.to_string(),
        });
    }
    if label.len() > DNS_LABEL_MAX {
        return Err(NameError::TooLong {
            name: sysfs_name.to_string(),
            label,
        });
    }
    if !is_dns_label(&label) {
        return Err(NameError::Invalid {
            name: sysfs_name.to_string(),
            label,
        });
    }
    Ok(label)
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS_LABEL_MAX
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Pool name, unique cluster-wide: `<node>/numa<N>`, or `<node>/numa-none` for devices whose
/// `numa_node` is -1.
pub fn pool_name(node: &str, numa_node: Option<u32>) -> String {
    format!("{node}/{}", pool_suffix(numa_node))
}

/// `numa<N>` or `numa-none`: the pool name after `<node>/`, used in slice names and labels.
pub fn pool_suffix(numa: Option<u32>) -> String {
    match numa {
        Some(n) => format!("numa{n}"),
        None => "numa-none".to_string(),
    }
}

/// Value of the [`LABEL_NODE`] label for `node`: the node name itself when it is a valid label
/// value, otherwise a shortened form ending in a hash of the full name (node names may be up
/// to 253 characters, label values only 63). List slices by this value, not by the raw name.
pub fn node_label_value(node: &str) -> String {
    if is_label_value(node) {
        return node.to_string();
    }
    let hash = short_hash(node);
    let keep = MAX_LABEL_VALUE_LEN - HASH_LEN - 1;
    let head: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(keep)
        .collect();
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() || !head.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        hash
    } else {
        format!("{head}-{hash}")
    }
}

/// Label selector matching every slice this controller publishes for `node`, for lists and
/// watches: `app.kubernetes.io/managed-by=mock-accel-controller,mock-accel.example.com/node=<value>`.
pub fn node_label_selector(node: &str) -> String {
    format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_NODE}={}",
        node_label_value(node)
    )
}

/// Object name of slice `index` of the pool `suffix` (`numa0`, `numa-none`) on `node`:
/// `<node>-<suffix>-<index, 3 digits>-<driver>`, a DNS subdomain. The index is zero-padded so
/// that name order is index order (the scheduler walks slices in name order). When the name
/// would exceed 253 characters, the node part is shortened and a hash of the full name keeps
/// it unique.
pub fn slice_name(node: &str, suffix: &str, index: usize, driver: &str) -> String {
    let tail = format!("-{suffix}-{index:03}-{driver}");
    let full = format!("{node}{tail}");
    if full.len() <= MAX_NAME_LEN {
        return full;
    }
    let hash = short_hash(&full);
    let room = MAX_NAME_LEN.saturating_sub(tail.len() + HASH_LEN + 1);
    let head: String = node.chars().take(room).collect();
    let head = head.trim_end_matches(['-', '.']);
    if head.is_empty() {
        format!("{hash}{tail}")
    } else {
        format!("{head}-{hash}{tail}")
    }
}

/// The first [`HASH_LEN`] hex digits of the SHA-256 of `s`: keeps shortened names unique.
fn short_hash(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(HASH_LEN)
        .collect()
}

/// RFC 1123 subdomain as Kubernetes checks it: dot-separated parts of lowercase letters, digits
/// and '-', each alphanumeric at both ends; at most `max` characters in all.
pub fn is_dns_subdomain(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// Pool name rule: at most 253 characters, DNS subdomains joined by '/'.
pub fn is_pool_name(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN && s.split('/').all(|seg| is_dns_subdomain(seg, MAX_NAME_LEN))
}

/// Label value rule: at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() <= MAX_LABEL_VALUE_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_none_or(u8::is_ascii_alphanumeric)
        && b.last().is_none_or(u8::is_ascii_alphanumeric)
}

/// Attribute and capacity names: a C identifier of at most 32 characters, optionally preceded
/// by a DNS subdomain of at most 63 characters and '/'.
pub fn is_qualified_name(s: &str) -> bool {
    let (domain, id) = match s.split_once('/') {
        Some((d, i)) => (Some(d), i),
        None => (None, s),
    };
    let id_ok = id.len() <= MAX_ID_LEN
        && id.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    id_ok && domain.is_none_or(|d| is_dns_subdomain(d, MAX_DRIVER_LEN))
}

/// The CDI vendor rule: a letter first, an alphanumeric last, letters, digits, `-`, `_`, `.`
/// in between.
pub fn check_cdi_vendor(vendor: &str) -> Result<(), &'static str> {
    let invalid = |reason| reason;
    let first = vendor
        .chars()
        .next()
        .ok_or_else(|| invalid("it is empty"))?;
    if !first.is_ascii_alphabetic() {
        return Err(invalid("it must start with a letter"));
    }
    if !vendor.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("it must end with a letter or digit"));
    }
    if !vendor
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            "only letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    Ok(())
}

/// The CDI device name rule: letters, digits, `_`, `.`, `:`, `-`, alphanumeric at both ends.
/// It also keeps the claim UID from escaping the CDI directory through the file name.
pub fn check_cdi_device_name(name: &str) -> Result<(), &'static str> {
    let invalid = |reason| reason;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
    {
        return Err(invalid(
            "only letters, digits, '_', '.', ':' and '-' are allowed",
        ));
    }
    let alnum_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !alnum_ends {
        return Err(invalid("it must start and end with a letter or digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vf_names_become_dns_labels() {
        assert_eq!(dra_device_name("mock0_vf0").unwrap(), "mock0-vf0");
        assert_eq!(dra_device_name("mock12").unwrap(), "mock12");
        assert_eq!(dra_device_name("Mock3").unwrap(), "mock3");
    }

    #[test]
    fn bad_names_are_rejected_with_the_name() {
        let err = dra_device_name("../etc").unwrap_err();
        assert!(err.to_string().contains("../etc"), "{err}");
        assert!(matches!(dra_device_name(""), Err(NameError::Empty { .. })));
        assert!(matches!(
            dra_device_name("_mock"),
            Err(NameError::Invalid { .. })
        ));
        assert!(matches!(
            dra_device_name(&"a".repeat(64)),
            Err(NameError::TooLong { .. })
        ));
        assert!(matches!(
            dra_device_name("mock/0"),
            Err(NameError::Invalid { .. })
        ));
    }

    #[test]
    fn pools_carry_the_node_name() {
        assert_eq!(pool_name("node1", Some(0)), "node1/numa0");
        assert_eq!(pool_name("node1", None), "node1/numa-none");
    }
}
