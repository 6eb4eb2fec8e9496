//! `kvm-mcp serve` on stdio, the real binary: a request without handshake (the
//! predecessor's one-shot), lines that are not JSON, batches, and a line over the
//! limit all get an answer, and serving goes on after each.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::vm::TestEnv;

/// A `serve` process and the lines it writes.
struct Served {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

/// Generous: nothing here waits on a guest.
const DEADLINE: Duration = Duration::from_secs(60);

impl Served {
    fn start(env: &TestEnv) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvm-mcp"))
            .arg("--config")
            .arg(&env.config_path)
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

    fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write stdin");
        stdin.flush().expect("flush stdin");
    }

    fn send(&mut self, message: &Value) {
        self.send_raw(format!("{message}\n").as_bytes());
    }

    fn next(&self) -> Value {
        let line = self.lines.recv_timeout(DEADLINE).expect("a line from the server");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The next message that is not a notification.
    fn answer(&self) -> Value {
        loop {
            let m = self.next();
            if m.get("method").is_none() {
                return m;
            }
        }
    }

    fn handshake(&mut self) {
        self.send(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"test","version":"0"}}}));
        assert_eq!(self.answer()["result"]["protocolVersion"], "2025-11-25");
        self.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
    }

    fn ping(&mut self, id: u64) {
        self.send(&json!({"jsonrpc":"2.0","id":id,"method":"ping"}));
        assert_eq!(self.answer(), json!({"jsonrpc":"2.0","id":id,"result":{}}));
    }

    /// Closes stdin; the exit code and whatever else was written.
    fn finish(mut self) -> (Option<i32>, Vec<String>) {
        drop(self.stdin.take());
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(DEADLINE) {
            rest.push(line);
        }
        let status = self.child.wait().expect("wait");
        (status.code(), rest)
    }
}

#[test]
fn the_predecessors_one_shot_prints_the_answer_and_exits_0() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    s.send_raw(
        br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"list_vms","arguments":{"no_cache":true}},"id":1}"#,
    );
    s.send_raw(b"\n");
    let (code, lines) = s.finish();
    assert_eq!(code, Some(0), "{lines:?}");
    // Only the answer: the handshake played for it is not written.
    let answers: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .filter(|m| m.get("id").is_some())
        .collect();
    assert_eq!(answers.len(), 1, "{lines:?}");
    assert_eq!(answers[0]["id"], 1);
    assert_eq!(answers[0]["result"]["structuredContent"], json!({ "vms": [] }), "{}", answers[0]);
}

#[test]
fn a_line_that_is_not_json_gets_a_parse_error_and_serving_goes_on() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    s.handshake();
    s.send_raw(b"{\"jsonrpc\": \"2.0\", \"id\": 3, \"method\": \n");
    let e = s.answer();
    assert_eq!((e["id"].clone(), e["error"]["code"].clone()), (Value::Null, json!(-32700)), "{e}");
    assert!(e.as_object().expect("object").contains_key("id"), "\"id\": null must be there: {e}");
    s.send_raw(b"[{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"ping\"}]\n");
    let e = s.answer();
    assert_eq!((e["id"].clone(), e["error"]["code"].clone()), (Value::Null, json!(-32600)), "{e}");
    s.send(&json!({"jsonrpc":"2.0","id":5,"method":"tools/call"}));
    let e = s.answer();
    assert_eq!((e["id"].clone(), e["error"]["code"].clone()), (json!(5), json!(-32602)), "{e}");
    s.ping(6);
    let (code, _) = s.finish();
    assert_eq!(code, Some(0));
}

#[test]
fn an_over_long_line_gets_an_error_with_its_id_and_serving_goes_on() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    s.handshake();
    let limit = kvm_mcp::mcp::MAX_LINE;
    let head = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"create_vm","arguments":{"name":""#;
    let mut line = head.as_bytes().to_vec();
    line.resize(limit + 1024, b'a');
    line.extend_from_slice(b"\"}}}\n");
    // Written from another thread: the pipe is smaller than the line.
    let mut stdin = s.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        stdin.write_all(&line).expect("write the long line");
        stdin
    });
    let e = s.answer();
    s.stdin = Some(writer.join().expect("writer"));
    assert_eq!((e["id"].clone(), e["error"]["code"].clone()), (json!(7), json!(-32600)), "{e}");
    assert!(e["error"]["message"].as_str().expect("message").contains("over the limit"), "{e}");
    s.ping(8);
    let (code, _) = s.finish();
    assert_eq!(code, Some(0));
}

#[test]
fn every_request_read_before_the_end_of_input_is_answered() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    s.handshake();
    for id in 10..13 {
        s.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"list_vms","arguments":{"no_cache":true}}}));
    }
    let (code, lines) = s.finish();
    let mut ids: Vec<i64> =
        lines.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter_map(|m| m["id"].as_i64()).collect();
    ids.sort_unstable();
    assert_eq!((code, ids), (Some(0), vec![10, 11, 12]));
}
