//! VNC, screenshots and keyboard input against the fixture guest's VGA console.

use std::io::{Read, Write};
use std::net::TcpStream;

use kvm_mcp::display::png_size;

use super::console::wait_for;
use crate::common::vm::TestEnv;

#[tokio::test(flavor = "multi_thread")]
async fn screenshot_is_a_png_of_the_vga_text_console() {
    let env = TestEnv::new();
    env.start_disk_vm("shot").await;
    wait_for(&env, "shot", "FIXTURE-READY").await;
    let shot = env.ops.screenshot("shot").await.unwrap();
    assert_eq!((png_size(&shot.png).unwrap(), shot.width, shot.height), ((720, 400), 720, 400));
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_screenshot_writes_a_png_file() {
    let env = TestEnv::new();
    env.start_disk_vm("shotcli").await;
    let file = env.dir.path().join("screen.png");
    let out = env.cli(&["vm", "screenshot", "shotcli", "-o", file.to_str().unwrap()]);
    let png = std::fs::read(&file).unwrap_or_default();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(png_size(&png).is_ok(), "not a PNG: {} bytes", png.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_text_runs_in_the_shell_on_the_vga_console() {
    let env = TestEnv::new();
    env.start_disk_vm("typer").await;
    wait_for(&env, "typer", "FIXTURE-READY").await;
    // The keyboard drives tty1; the command writes its result to the serial console.
    env.ops.type_text("typer", "echo TYPED-$((6*7)) >/dev/ttyS0\n", None).await.unwrap();
    let m = wait_for(&env, "typer", "TYPED-42").await;
    assert!(m.line.ends_with("TYPED-42"), "{m:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_alt_delete_reboots_the_guest() {
    let env = TestEnv::new();
    env.start_disk_vm("cad").await;
    wait_for(&env, "cad", "FIXTURE-READY").await;
    env.ops.send_keys("cad", &["ctrl-alt-delete".to_owned()], None).await.unwrap();
    env.wait_console("cad", "FIXTURE-BOOTED", 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vnc_listens_on_loopback_and_demands_a_password() {
    let env = TestEnv::new();
    env.start_disk_vm("vnc").await;
    let ports = env.ops.get_vnc_ports().unwrap();
    let info = env.ops.get_vnc_info("vnc").await.unwrap();
    // RFB handshake: server version, our version, then the security types offered.
    let mut s = TcpStream::connect((info.host, info.port)).unwrap();
    let mut version = [0u8; 12];
    s.read_exact(&mut version).unwrap();
    s.write_all(b"RFB 003.008\n").unwrap();
    let mut count = [0u8; 1];
    s.read_exact(&mut count).unwrap();
    let mut types = vec![0u8; usize::from(count[0])];
    s.read_exact(&mut types).unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!((ports[0].port, info.host.is_loopback(), info.password.len()), (info.port, true, 8));
    assert_eq!((&version[..4], types), (&b"RFB "[..], vec![2u8]), "only VNC authentication (2) is offered");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_vms_get_different_vnc_displays() {
    let env = TestEnv::new();
    env.start_disk_vm("vnca").await;
    env.start_disk_vm("vncb").await;
    let ports: Vec<u16> = env.ops.get_vnc_ports().unwrap().iter().map(|p| p.port).collect();
    assert!(ports.len() == 2 && ports[0] != ports[1], "{ports:?}");
}
