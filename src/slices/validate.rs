//! The API server's validation rules for a published device (names, attribute and capacity
//! counts, value kinds and lengths, versions), checked before publishing so that one bad
//! device is left out with a reason instead of failing its whole slice.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::Device as ApiDevice;

use super::{MAX_ATTRIBUTE_VALUE_LEN, MAX_ATTRIBUTES_AND_CAPACITIES, SliceError};
use crate::names::{is_dns_label, is_qualified_name};

/// Checks a device against the API's rules for ResourceSlice devices: DNS-label name, at most
/// [`MAX_ATTRIBUTES_AND_CAPACITIES`] attributes and capacities, qualified names, exactly one
/// value per attribute, string and version values of at most [`MAX_ATTRIBUTE_VALUE_LEN`]
/// characters, versions in semver 2.0.0 form.
pub fn validate_device(device: &ApiDevice) -> Result<(), SliceError> {
    let name = || device.name.clone();
    if !is_dns_label(&device.name) {
        return Err(SliceError::DeviceName { device: name() });
    }
    let attrs = device.attributes.as_ref();
    let caps = device.capacity.as_ref();
    let count = attrs.map_or(0, BTreeMap::len) + caps.map_or(0, BTreeMap::len);
    if count > MAX_ATTRIBUTES_AND_CAPACITIES {
        return Err(SliceError::TooManyAttributes {
            device: name(),
            count,
        });
    }
    let keys = attrs
        .into_iter()
        .flat_map(BTreeMap::keys)
        .chain(caps.into_iter().flat_map(BTreeMap::keys));
    for key in keys {
        if !is_qualified_name(key) {
            return Err(SliceError::AttributeName {
                device: name(),
                name: key.clone(),
            });
        }
    }
    for (key, attr) in attrs.into_iter().flatten() {
        let bad = |reason: String| SliceError::AttributeValue {
            device: name(),
            name: key.clone(),
            reason,
        };
        let set = [
            attr.bool.is_some(),
            attr.int.is_some(),
            attr.string.is_some(),
            attr.version.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(bad(format!("must have exactly one value, has {set}")));
        }
        for v in attr.string.iter().chain(&attr.version) {
            if v.chars().count() > MAX_ATTRIBUTE_VALUE_LEN {
                return Err(bad(format!(
                    "value {v:?} is longer than {MAX_ATTRIBUTE_VALUE_LEN} characters"
                )));
            }
        }
        if let Some(v) = attr.version.as_deref().filter(|v| !is_semver(v)) {
            return Err(bad(format!("value {v:?} is not a semantic version")));
        }
    }
    Ok(())
}

/// Semantic Versioning 2.0.0, as the API validates `version` attributes: `MAJOR.MINOR.PATCH`
/// without leading zeros, optional `-prerelease` and `+build` identifiers.
pub fn is_semver(s: &str) -> bool {
    semver::Version::parse(s).is_ok()
}
