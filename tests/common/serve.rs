//! `kvm-mcp serve` on stdio as a real process: its stdin, and its stdout read line by
//! line on a thread, so a test can wait for a line with a deadline.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

/// A `serve` process and the lines it writes; killed on drop.
pub struct ServeProcess {
    pub child: Child,
    /// `None` once closed (the end of the client's input).
    pub stdin: Option<ChildStdin>,
    pub lines: mpsc::Receiver<String>,
}

impl ServeProcess {
    /// Starts `kvm-mcp --config CONFIG serve`, its stderr discarded.
    pub fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvm-mcp"))
            .arg("--config")
            .arg(config)
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run kvm-mcp serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self { child, stdin, lines }
    }

    /// Writes `bytes` to the server's stdin.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write stdin");
        stdin.flush().expect("flush stdin");
    }

    /// Writes one message as a line.
    pub fn send(&mut self, message: &serde_json::Value) {
        self.send_raw(format!("{message}\n").as_bytes());
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
