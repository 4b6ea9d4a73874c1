//! Hotplug through kernel uevents: the node agent's listener and discovery loop, fed a uevent
//! sent to the kernel's multicast group of a `NETLINK_KOBJECT_UEVENT` socket, rescan at once.
//!
//! The uevents are sent in a private network namespace, so nothing on the host sees them: the
//! test runs itself again under `unshare -n` (root only; skipped with a message where
//! `unshare -n` is not allowed). Inside, a userspace socket with CAP_NET_ADMIN sends a
//! kernel-format message to group 1, as the kernel would when a VF appears. The change the
//! rescan must find is an attribute write, which inotify does not report, and the periodic
//! rescan is an hour away: only the uevent can bring it.

use std::{process::Command, sync::Arc, time::Duration};

use mock_accel_dra::{
    agent::{discovery, uevents},
    sim::{self, TopologySpec},
    sysfs,
};
use rustix::net::{
    AddressFamily, SendFlags, SocketFlags, SocketType, bind,
    netlink::{self, SocketAddrNetlink},
    sendto, socket_with,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Set in the child that runs inside the private network namespace.
const IN_NETNS: &str = "MOCK_ACCEL_UEVENT_TEST_IN_NETNS";
const TEST: &str = "a_uevent_of_the_class_triggers_a_rescan";
const DEADLINE: Duration = Duration::from_secs(20);

fn unshare_allowed() -> bool {
    Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_uevent_of_the_class_triggers_a_rescan() {
    if std::env::var_os(IN_NETNS).is_some() {
        in_private_netns();
        return;
    }
    if !unshare_allowed() {
        eprintln!("skipped: `unshare -n` is not allowed here (needs root)");
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .output()
        .expect("unshare runs");
    assert!(
        out.status.success(),
        "the test failed in its network namespace:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `parts` (NUL-terminated each) to the kernel's uevent group, as the kernel does.
fn send_uevent(parts: &[&str]) {
    let fd = socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::KOBJECT_UEVENT),
    )
    .expect("a uevent socket");
    bind(&fd, &SocketAddrNetlink::new(0, 0)).expect("bind the sender");
    let mut msg = Vec::new();
    for p in parts {
        msg.extend_from_slice(p.as_bytes());
        msg.push(0);
    }
    sendto(
        &fd,
        &msg,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, uevents::KERNEL_GROUP),
    )
    .expect("send to group 1 (needs CAP_NET_ADMIN in the namespace)");
}

fn in_private_netns() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        sim::create(root, None, &TopologySpec::canonical(1)).unwrap();
        let first = discovery::scan_once(root).unwrap();
        let (inventory_tx, _inventory) = watch::channel(first.inventory.clone());
        let (tx, mut discovered) = watch::channel(first);
        let (kick, kicks) = mpsc::unbounded_channel();
        let (scan_tx, mut scans) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let socket = uevents::UeventSocket::open().expect("a uevent listener socket");
        let listener = uevents::spawn_listener(socket, kick, shutdown.clone()).unwrap();
        let task = tokio::spawn(discovery::run(
            root.to_path_buf(),
            Duration::from_secs(3600),
            tx,
            inventory_tx,
            move |ok| {
                let _ = scan_tx.send(ok);
            },
            kicks,
            shutdown.clone(),
        ));
        // The first tick scans at once; after it, nothing but a kick can cause a scan.
        tokio::time::timeout(DEADLINE, scans.recv())
            .await
            .expect("the first scan")
            .unwrap();
        discovered.borrow_and_update();

        sysfs::write_status(root, "mock2", 0).unwrap();
        // Another subsystem's uevent changes nothing; the class's uevent brings the rescan.
        send_uevent(&[
            "change@/devices/virtual/net/lo",
            "ACTION=change",
            "SUBSYSTEM=net",
        ]);
        send_uevent(&[
            "change@/devices/pci0000:10/0000:10:00.0/0000:11:00.2/mock-accel/mock2",
            "ACTION=change",
            "DEVPATH=/devices/pci0000:10/0000:10:00.0/0000:11:00.2/mock-accel/mock2",
            "SUBSYSTEM=mock-accel",
            "SEQNUM=1",
        ]);
        tokio::time::timeout(DEADLINE, discovered.changed())
            .await
            .expect("the uevent causes a rescan that finds the change")
            .unwrap();
        let found: Arc<_> = discovered.borrow().inventory.clone();
        assert_eq!(found.get("mock2").unwrap().status, 0);

        shutdown.cancel();
        task.await.unwrap();
        listener.join().unwrap();
    });
}
