//! The serial console: its log, waiting for patterns, rotation, and `vm console`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kvm_mcp::error::chain;
use kvm_mcp::ops::{ConsoleQuery, StopOptions, no_progress};
use tokio_util::sync::CancellationToken;

use crate::common::vm::{GUEST_DEADLINE, TestEnv};

/// Types a line on the serial shell and stays connected until the shell has echoed it:
/// QEMU drops unread input when the client hangs up at once.
pub fn serial_type(env: &TestEnv, name: &str, line: &str) {
    let sock = env.dir.path().join("run").join(name).join("serial.sock");
    let mut s = UnixStream::connect(sock).expect("connect to serial.sock");
    s.set_read_timeout(Some(Duration::from_millis(500))).expect("read timeout");
    s.write_all(line.as_bytes()).expect("write to the serial console");
    let want = line.trim_end();
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(want) {
        assert!(
            start.elapsed() < GUEST_DEADLINE,
            "the shell never echoed {want:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        if let Ok(n) = s.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
        }
    }
}

/// Waits for a console pattern through the operation under test.
pub async fn wait_for(env: &TestEnv, name: &str, pattern: &str) -> kvm_mcp::console::log::ConsoleMatch {
    env.ops
        .wait_for_console(name, pattern, GUEST_DEADLINE, None, &no_progress, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{pattern}: {}", chain(&e)))
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_for_console_returns_the_ready_line_and_the_log_holds_the_boot() {
    let env = TestEnv::new();
    env.start_disk_vm("con").await;
    let m = wait_for(&env, "con", r"FIXTURE-READY uptime=\S+").await;
    let from_match = env
        .ops
        .get_console_log("con", ConsoleQuery { since_offset: Some(m.line_offset), ..ConsoleQuery::default() })
        .unwrap();
    let tail = env.ops.get_console_log("con", ConsoleQuery { lines: Some(500), ..ConsoleQuery::default() }).unwrap();
    assert!(m.line.starts_with("FIXTURE-READY uptime="), "{m:?}");
    assert!(from_match.text.starts_with(&m.line), "{:?}", from_match.text);
    assert!(tail.text.contains("FIXTURE-BOOTED"), "{}", tail.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_on_a_vm_that_is_off_fails_at_once() {
    let env = TestEnv::new();
    env.ops.create(env.disk_vm("off")).await.unwrap();
    let started = Instant::now();
    let err = env
        .ops
        .wait_for_console("off", "anything", Duration::from_secs(60), None, &no_progress, &CancellationToken::new())
        .await
        .unwrap_err();
    let err = chain(&err);
    assert!(err.contains("stopped before pattern") && started.elapsed() < Duration::from_secs(5), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pattern_that_never_appears_times_out_with_the_last_lines() {
    let env = TestEnv::new();
    env.start_disk_vm("never").await;
    let err = env
        .ops
        .wait_for_console(
            "never",
            "NO-SUCH-MARKER",
            Duration::from_secs(2),
            None,
            &no_progress,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(chain(&err).contains("did not appear on the console within 2 s"), "{}", chain(&err));
}

#[tokio::test(flavor = "multi_thread")]
async fn console_log_is_kept_after_stop() {
    let env = TestEnv::new();
    env.start_disk_vm("kept").await;
    wait_for(&env, "kept", "FIXTURE-READY").await;
    env.ops.stop("kept", StopOptions { force: true, timeout: None }, &no_progress).await.unwrap();
    let log = env.ops.get_console_log("kept", ConsoleQuery::default()).unwrap();
    assert!(log.text.contains("FIXTURE-READY"), "{}", log.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn serial_log_rotates_while_running_and_offsets_keep_counting() {
    let env = TestEnv::with_config(serde_json::json!({ "console": { "log_max_bytes": 4096, "log_keep": 2 } }));
    env.start_disk_vm("rot").await;
    wait_for(&env, "rot", "FIXTURE-READY").await;
    serial_type(&env, "rot", "seq 100000 102000\n");
    let last = wait_for(&env, "rot", "^102000$").await;
    // The boot alone may have rotated the log once already: wait for a rotation after
    // the output above (the supervisor rotates on its own round).
    let rotated = env.dir.path().join("state/vms/rot/serial.log.1");
    let log = env.dir.path().join("state/vms/rot/serial.log");
    let start = Instant::now();
    let current = loop {
        let current = std::fs::metadata(&log).unwrap().len();
        if rotated.exists() && current < 14_000 {
            break current;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "serial.log was not rotated: {current} bytes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(last.next_offset > 14_000, "offset {} current {current}", last.next_offset);
}

#[test]
fn vm_console_attaches_runs_a_command_and_detaches_on_escape() {
    let env = TestEnv::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        env.start_disk_vm("tty").await;
        wait_for(&env, "tty", "FIXTURE-READY").await;
    });
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kvm-mcp"))
        .arg("--config")
        .arg(&env.config_path)
        .args(["vm", "console", "tty"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Read until EOF on a thread: closing the pipe early would make the CLI's next
    // write fail.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    stdin.write_all(b"echo ATTACHED-$((6*7))\n").unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("ATTACHED-42") {
        match rx.recv_timeout(GUEST_DEADLINE) {
            Ok(chunk) => seen.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    let seen = String::from_utf8_lossy(&seen).into_owned();
    stdin.write_all(&[0x1d]).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(seen.contains("ATTACHED-42"), "{seen}");
    assert_eq!(status.map(|s| s.success()), Some(true));
}
