//! A real QEMU (TCG) accepts the tap fd, and the tap lives exactly as long
//! as QEMU holds it.

use std::os::fd::AsRawFd;

use kvm_mcp::network::{Netlink, Tap};
use serde_json::json;
use tokio::process::Command;

use super::ifname;
use crate::common::netns::in_netns;
use crate::common::qemu::Qemu;

#[test]
fn qemu_accepts_tap_fd_and_the_tap_goes_with_it() {
    let (status, while_running, after_exit) = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        let tap = Tap::create(&ifname("kmtapq"), true).expect("tap");
        let fd = tap.as_raw_fd();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-machine", "pc", "-m", "64", "-nodefaults"])
            .args(["-display", "none", "-S", "-qmp", "stdio"])
            .arg("-netdev")
            .arg(format!("tap,id=n0,fd={fd}"))
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="]);
        // SAFETY: the hook runs in the forked child before exec and only
        // calls fcntl, which is async-signal-safe; it clears FD_CLOEXEC on
        // the child's copy of the tap fd so QEMU inherits it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut qemu = Qemu::spawn(cmd).await;
        // QEMU now holds the only reference to the tap.
        drop(tap);
        let status = qemu.execute("query-status").await;
        let while_running = nl.link_index(&ifname("kmtapq")).await.expect("lookup");
        qemu.kill_and_wait().await;
        let after_exit = nl.link_index(&ifname("kmtapq")).await.expect("lookup");
        (status, while_running, after_exit)
    });

    assert_eq!(status["status"], json!("prelaunch"));
    assert!(while_running.is_some());
    assert_eq!(after_exit, None);
}
