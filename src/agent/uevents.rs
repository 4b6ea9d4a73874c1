//! Hotplug on a node with the kernel module: sysfs raises no inotify events, but the kernel
//! announces every device it adds, removes or changes as a uevent on a
//! `NETLINK_KOBJECT_UEVENT` socket (multicast group 1). The listener here asks discovery for a
//! rescan on each uevent of the mock-accel class, so a VF created by anyone but the agent is
//! published at once instead of at the next periodic rescan, which stays as the safety net.
//!
//! A uevent only triggers a rescan; its contents are never trusted as data, so the listener
//! accepts a kernel-format message from any sender on the group (only a process with
//! CAP_NET_ADMIN in the socket's network namespace can send there, which is also how a test
//! injects uevents in a private network namespace). udevd's re-broadcasts (group 2, `libudev`
//! header) are not subscribed to. [`parse`] and [`concerns_mock_accel`] are pure; the socket
//! is a thin wrapper over rustix's safe netlink API, read on a thread of its own.

use std::{io, os::fd::OwnedFd, thread::JoinHandle, time::Duration};

use rustix::net::{
    AddressFamily, RecvFlags, SocketFlags, SocketType, bind,
    netlink::{self, SocketAddrNetlink},
    recv, socket_with,
    sockopt::{Timeout, set_socket_timeout},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::sysfs::CLASS_NAME;

/// The kernel's uevent multicast group.
pub const KERNEL_GROUP: u32 = 1;
/// How often the reading thread looks at the shutdown token while no uevent arrives.
const POLL: Duration = Duration::from_millis(500);
/// Larger than any uevent (the kernel caps the environment at 2 KiB, `UEVENT_BUFFER_SIZE`).
const BUFFER: usize = 8192;

/// One kernel uevent, as far as the listener needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    pub subsystem: Option<String>,
}

/// Parses a kernel-format uevent: `ACTION@DEVPATH\0` then `KEY=VALUE\0` pairs. `None` for
/// anything else (udevd's `libudev` messages, garbage).
pub fn parse(msg: &[u8]) -> Option<Uevent> {
    let mut parts = msg.split(|b| *b == 0).filter(|p| !p.is_empty());
    let header = std::str::from_utf8(parts.next()?).ok()?;
    let (action, devpath) = header.split_once('@')?;
    if action.is_empty() || !devpath.starts_with('/') {
        return None;
    }
    let mut subsystem = None;
    for p in parts {
        if let Some(v) = p.strip_prefix(b"SUBSYSTEM=") {
            subsystem = std::str::from_utf8(v).ok().map(str::to_string);
        }
    }
    Some(Uevent {
        action: action.to_string(),
        devpath: devpath.to_string(),
        subsystem,
    })
}

/// Whether the uevent is about a mock-accel class device (created, removed or changed with
/// its PCI function, VFs included).
pub fn concerns_mock_accel(ev: &Uevent) -> bool {
    ev.subsystem.as_deref() == Some(CLASS_NAME) || ev.devpath.contains(&format!("/{CLASS_NAME}/"))
}

/// A socket subscribed to the kernel's uevents of the current network namespace.
pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    pub fn open() -> io::Result<Self> {
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::KOBJECT_UEVENT),
        )?;
        // Port id 0: the kernel assigns one.
        bind(&fd, &SocketAddrNetlink::new(0, KERNEL_GROUP))?;
        set_socket_timeout(&fd, Timeout::Recv, Some(POLL))?;
        Ok(UeventSocket { fd })
    }

    /// The next message, `Ok(None)` when none came within the poll interval.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match recv(&self.fd, &mut *buf, RecvFlags::empty()) {
            Ok((got, _)) => Ok(Some(got)),
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Reads uevents on a thread of its own until `shutdown`, sending on `kick` for each one about
/// a mock-accel device. A full receive queue (ENOBUFS: uevents were dropped) also kicks, as
/// the missed ones may have been ours.
pub fn spawn_listener(
    socket: UeventSocket,
    kick: mpsc::UnboundedSender<()>,
    shutdown: CancellationToken,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("uevents".into())
        .spawn(move || {
            let mut buf = vec![0u8; BUFFER];
            while !shutdown.is_cancelled() {
                let relevant = match socket.recv(&mut buf) {
                    Ok(None) => continue,
                    Ok(Some(n)) => parse(&buf[..n]).is_some_and(|ev| {
                        let ours = concerns_mock_accel(&ev);
                        if ours {
                            tracing::debug!(action = %ev.action, devpath = %ev.devpath, "uevent");
                        }
                        ours
                    }),
                    Err(e)
                        if e.raw_os_error() == Some(rustix::io::Errno::NOBUFS.raw_os_error()) =>
                    {
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e,
                            "reading kernel uevents failed; hotplug waits for the periodic rescan");
                        return;
                    }
                };
                if relevant && kick.send(()).is_err() {
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(parts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(p.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn kernel_messages_parse_and_only_the_class_matters() {
        let add = msg(&[
            "add@/devices/pci0000:10/0000:10:00.0/0000:11:00.1/mock-accel/mock0_vf0",
            "ACTION=add",
            "DEVPATH=/devices/pci0000:10/0000:10:00.0/0000:11:00.1/mock-accel/mock0_vf0",
            "SUBSYSTEM=mock-accel",
            "MAJOR=240",
            "MINOR=2",
            "SEQNUM=4711",
        ]);
        let ev = parse(&add).unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.subsystem.as_deref(), Some("mock-accel"));
        assert!(concerns_mock_accel(&ev));

        let other = parse(&msg(&["change@/devices/virtual/net/lo", "SUBSYSTEM=net"])).unwrap();
        assert!(!concerns_mock_accel(&other));
        // A PCI function's own event, from a path below a mock-accel class device.
        let pci = parse(&msg(&[
            "remove@/devices/x/mock-accel/mock3",
            "SUBSYSTEM=pci",
        ]))
        .unwrap();
        assert!(concerns_mock_accel(&pci));
    }

    #[test]
    fn udev_messages_and_garbage_are_ignored() {
        let mut udev = b"libudev\0".to_vec();
        udev.extend_from_slice(&[0xfe, 0xed, 0xca, 0xfe]);
        assert_eq!(parse(&udev), None);
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"no-at-sign\0SUBSYSTEM=mock-accel\0"), None);
        assert_eq!(parse(b"add@relative\0"), None);
    }
}
