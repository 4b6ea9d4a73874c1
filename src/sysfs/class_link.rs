//! What a class entry's symlink target says about its device, read without following it.
//!
//! The kernel places a class device's directory under its parent device's directory, in a
//! directory named after the class (`<PCI function>/mock-accel/<name>`), and links
//! `class/mock-accel/<name>` to it by a relative path from the class directory:
//! `../../devices/pci0000:10/0000:10:00.0/0000:11:00.0/mock-accel/mock0`. The PCI function's
//! directory is therefore the class directory's grandparent, which is also where the class
//! directory's `device` link points (`../../../0000:11:00.0`) and the directory that
//! `bus/pci/devices/<BDF>` names (`../../../devices/pci0000:10/0000:10:00.0/0000:11:00.0`). So
//! this one target gives the PCI address (its basename is the `device` link's basename) and the
//! pcieRoot (the first component after `devices/`, as in the bus link), and the scan reads
//! neither of those two links.

use super::{Bdf, CLASS_NAME};

/// The target of `class/mock-accel/<name>`, split into what the scan needs. Every part borrows
/// from the target (no allocation per device).
#[derive(Debug, PartialEq, Eq)]
pub struct ClassLink<'a> {
    /// The directory that holds the PCI function's directory, relative to the sysfs root
    /// (`devices/pci0000:10/0000:10:00.0`): devices that share it share one handle in a scan.
    pub function_parent: &'a str,
    /// The class device's directory relative to [`ClassLink::function_parent`]
    /// (`0000:11:00.0/mock-accel/mock0`).
    pub below_parent: &'a str,
    /// The PCI function: the component before `mock-accel/`.
    pub bdf: Bdf,
    /// `pci<domain>:<bus>`, the first component after `devices/`, when it has that form.
    pub pcie_root: Option<&'a str>,
}

/// Splits a class entry's link target of the kernel's form
/// `../../devices/<path>/<BDF>/mock-accel/<name>`. Anything else (another prefix, `.` or `..`
/// inside, a last-but-one component other than `mock-accel`, no PCI address before it) is an
/// error that says which form was expected, since the scan reads the device's files through
/// this path.
pub fn parse_class_link(target: &str) -> Result<ClassLink<'_>, String> {
    let bad = |what: &str| {
        format!(
            "class link target {target:?} {what}; expected ../../devices/<path>/<PCI address>/{CLASS_NAME}/<name>, the layout the kernel creates"
        )
    };
    let below_root = target
        .strip_prefix("../../")
        .filter(|rest| rest.starts_with("devices/"))
        .ok_or_else(|| bad("does not start with ../../devices/"))?;
    if below_root
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("has an empty, . or .. component"));
    }
    // From the end: <name>, mock-accel, <BDF>, then at least `devices` before them.
    let mut tail = below_root.rsplitn(4, '/');
    let (_name, class, bdf) = (tail.next(), tail.next(), tail.next());
    let function_parent = tail.next().ok_or_else(|| bad("is too short"))?;
    if class != Some(CLASS_NAME) {
        return Err(bad(&format!("does not end in {CLASS_NAME}/<name>")));
    }
    let bdf_text = bdf.ok_or_else(|| bad("is too short"))?;
    let bdf = bdf_text.parse::<Bdf>().map_err(|reason| {
        bad(&format!(
            "has no PCI address before {CLASS_NAME}/: {reason}"
        ))
    })?;
    let below_parent = &below_root[function_parent.len() + 1..];
    let pcie_root = function_parent
        .split('/')
        .nth(1)
        .filter(|c| c.starts_with("pci"));
    Ok(ClassLink {
        function_parent,
        below_parent,
        bdf,
        pcie_root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_directory_is_named_after_the_class() {
        assert_eq!(super::super::CLASS_DIR, format!("class/{CLASS_NAME}"));
    }

    #[test]
    fn the_kernel_layout_gives_function_pcie_root_and_handle_path() {
        let link = parse_class_link(
            "../../devices/pci0000:10/0000:10:00.0/0000:11:0c.4/mock-accel/mock100",
        )
        .unwrap();
        assert_eq!(
            link,
            ClassLink {
                function_parent: "devices/pci0000:10/0000:10:00.0",
                below_parent: "0000:11:0c.4/mock-accel/mock100",
                bdf: Bdf::new(0, 0x11, 0x0c, 4),
                pcie_root: Some("pci0000:10"),
            }
        );
        // A function directly on the root bus, and a real SR-IOV VF's name.
        let link =
            parse_class_link("../../devices/pci0000:20/0000:20:00.1/mock-accel/mock0_vf0").unwrap();
        assert_eq!(link.function_parent, "devices/pci0000:20");
        assert_eq!(link.below_parent, "0000:20:00.1/mock-accel/mock0_vf0");
        assert_eq!(link.bdf, Bdf::new(0, 0x20, 0, 1));
        assert_eq!(link.pcie_root, Some("pci0000:20"));
    }

    #[test]
    fn a_function_outside_a_pci_root_has_no_pcie_root_but_is_read() {
        let link =
            parse_class_link("../../devices/platform/0000:11:00.0/mock-accel/mock0").unwrap();
        assert_eq!(link.pcie_root, None);
        assert_eq!(link.bdf, Bdf::new(0, 0x11, 0, 0));
        assert_eq!(link.function_parent, "devices/platform");
        let link = parse_class_link("../../devices/0000:11:00.0/mock-accel/mock0").unwrap();
        assert_eq!((link.function_parent, link.pcie_root), ("devices", None));
    }

    #[test]
    fn other_shapes_are_refused_with_the_target_and_the_expected_form() {
        for (target, problem) in [
            (
                "/sys/devices/pci0000:10/0000:11:00.0/mock-accel/mock0",
                "does not start with",
            ),
            (
                "../devices/pci0000:10/0000:11:00.0/mock-accel/mock0",
                "does not start with",
            ),
            (
                "../../bus/pci0000:10/0000:11:00.0/mock-accel/mock0",
                "does not start with",
            ),
            (
                "../../devices/gone/mock-accel/mock1",
                "no PCI address before mock-accel/",
            ),
            (
                "../../devices/pci0000:10/0000:11:00.0/mock0",
                "does not end in mock-accel/<name>",
            ),
            (
                "../../devices/pci0000:10/0000:11:00.0/other/mock0",
                "does not end in mock-accel/<name>",
            ),
            ("../../devices/mock-accel/mock0", "is too short"),
            (
                "../../devices/pci0000:10/../0000:11:00.0/mock-accel/mock0",
                ". or .. component",
            ),
            (
                "../../devices/pci0000:10//0000:11:00.0/mock-accel/mock0",
                ". or .. component",
            ),
            (
                "../../devices/pci0000:10/0000:11:00.0/mock-accel/",
                ". or .. component",
            ),
            ("", "does not start with"),
        ] {
            let err = parse_class_link(target).unwrap_err();
            assert!(err.contains(problem), "{target}: {err}");
            assert!(err.contains(&format!("{target:?}")), "{target}: {err}");
            assert!(
                err.contains("expected ../../devices/<path>/<PCI address>/mock-accel/<name>"),
                "{err}"
            );
        }
    }
}
