//! A QEMU child for tests: its own process group, killed on drop, with a
//! QMP monitor on its stdin/stdout.

use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long any single QMP answer may take under TCG on a loaded machine.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running QEMU whose process group gets `SIGKILL` if the test ends early.
pub struct Qemu {
    child: Child,
    pgid: Pid,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    reaped: bool,
}

impl Qemu {
    /// Spawns `cmd` (which must use `-qmp stdio`) in a new process group,
    /// reads the greeting and negotiates capabilities.
    pub async fn spawn(mut cmd: Command) -> Qemu {
        cmd.process_group(0).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn qemu-system-x86_64");
        let pid = child.id().expect("qemu pid");
        let mut qemu = Qemu {
            pgid: Pid::from_raw(i32::try_from(pid).expect("pid fits i32")),
            stdin: child.stdin.take().expect("piped stdin"),
            stdout: BufReader::new(child.stdout.take().expect("piped stdout")).lines(),
            child,
            reaped: false,
        };
        let greeting = qemu.next_message().await;
        assert!(greeting.get("QMP").is_some(), "no QMP greeting: {greeting}");
        qemu.execute("qmp_capabilities").await;
        qemu
    }

    /// Runs a QMP command without arguments and returns its `return` value.
    pub async fn execute(&mut self, command: &str) -> Value {
        let request = format!("{{\"execute\":\"{command}\"}}\n");
        self.stdin.write_all(request.as_bytes()).await.expect("write QMP request");
        loop {
            let message = self.next_message().await;
            if message.get("event").is_none() {
                return message.get("return").cloned().unwrap_or_else(|| panic!("QMP {command} failed: {message}"));
            }
        }
    }

    /// Kills the whole process group and waits for QEMU to be reaped.
    pub async fn kill_and_wait(mut self) {
        killpg(self.pgid, Signal::SIGKILL).expect("kill qemu process group");
        tokio::time::timeout(QMP_TIMEOUT, self.child.wait())
            .await
            .expect("qemu exits after SIGKILL")
            .expect("wait for qemu");
        self.reaped = true;
    }

    async fn next_message(&mut self) -> Value {
        let line = tokio::time::timeout(QMP_TIMEOUT, self.stdout.next_line())
            .await
            .expect("QMP answer in time")
            .expect("read QMP stdout")
            .expect("QEMU closed its QMP stdout");
        serde_json::from_str(&line).expect("QMP line is JSON")
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if !self.reaped {
            // Backstop for a failed test: tokio reaps the orphan later.
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}
