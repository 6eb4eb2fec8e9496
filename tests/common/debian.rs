//! The Debian cloud image fixture (`fixtures/build-debian.sh`) for the tests that need a
//! real init system: the image, built or found up to date once per test process; a test
//! environment whose image directory is the fixture directory (VMs get overlays, the
//! image itself is never written); a throw-away SSH key; `ssh` through a port forward;
//! and an MCP client that keeps the progress notifications it receives.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_mcp::ops::Ops;
use rmcp::model::{
    CallToolRequest, CallToolResult, ClientConfig, ClientRequest, ProgressNotificationParam, ProgressToken,
    ProtocolVersion, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::{ClientHandler, RoleClient};
use serde_json::Value;

use super::mcp::{params, succeeded, text};
use super::vm::TestEnv;

/// Deadline for a Debian guest's first boot (cloud-init included) and anything else it
/// does: about 1.5 minutes on an idle 2-core host under TCG, several times that under load.
pub const DEBIAN_DEADLINE: Duration = Duration::from_secs(900);

/// The Debian image (`debian.qcow2` in the fixture directory), built or found up to date
/// once per test process.
pub fn debian_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(repo.join("fixtures/build-debian.sh"))
            .output()
            .expect("run fixtures/build-debian.sh");
        assert!(
            out.status.success(),
            "fixtures/build-debian.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = std::env::var_os("FIXTURE_DIR").map_or_else(|| repo.join("fixtures/cache"), PathBuf::from);
        std::fs::canonicalize(dir.join("debian.qcow2")).expect("debian.qcow2 exists after the build")
    })
}

/// A test environment whose image directory is the one holding the Debian image, so
/// `disk_source: {type: master, image: <debian_image()>}` is allowed.
pub fn debian_env() -> TestEnv {
    let images = debian_image().parent().expect("image directory");
    TestEnv::with_config(serde_json::json!({ "storage": { "image_dirs": [images] } }))
}

/// A throw-away SSH key pair.
pub struct SshKey {
    /// The private key file.
    pub private: PathBuf,
    /// The public key line.
    pub public: String,
    /// Host keys seen by `ssh` (its known_hosts file).
    pub known_hosts: PathBuf,
}

/// Generates an ed25519 key pair without passphrase in `dir`.
pub fn ssh_key(dir: &Path) -> SshKey {
    let private = dir.join("id_ed25519");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kvm-mcp-test", "-f"])
        .arg(&private)
        .output()
        .expect("run ssh-keygen (Debian package openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    let public = std::fs::read_to_string(private.with_extension("pub")).expect("public key").trim().to_owned();
    SshKey { private, public, known_hosts: dir.join("known_hosts") }
}

/// Runs `command` as `user` on 127.0.0.1:`port` with `key`, retrying until it succeeds
/// (sshd may still be starting) or [`DEBIAN_DEADLINE`] passes; its standard output.
pub async fn ssh(key: &SshKey, user: &str, port: u16, command: &str) -> String {
    let start = Instant::now();
    loop {
        let attempt = tokio::process::Command::new("ssh")
            .arg("-i")
            .arg(&key.private)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", key.known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30"])
            .args(["-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-p", &port.to_string()])
            .arg(format!("{user}@127.0.0.1"))
            .arg(command)
            .kill_on_drop(true)
            .output();
        let last = match tokio::time::timeout(Duration::from_secs(120), attempt).await {
            Ok(Ok(out)) if out.status.success() => return String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(Ok(out)) => format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
            Ok(Err(e)) => panic!("cannot run ssh (Debian package openssh-client): {e}"),
            Err(_) => "timed out after 120 s".to_owned(),
        };
        assert!(
            start.elapsed() < DEBIAN_DEADLINE,
            "ssh {user}@127.0.0.1:{port} {command:?} did not succeed within {DEBIAN_DEADLINE:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// An MCP client that keeps every `notifications/progress` it receives.
#[derive(Clone, Default)]
pub struct Recorder {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Recorder {
    async fn on_progress(&self, params: ProgressNotificationParam, _ctx: NotificationContext<RoleClient>) {
        self.progress.lock().expect("progress list").push(params);
    }

    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.protocol_version = ProtocolVersion::V_2025_11_25;
        info
    }
}

impl Recorder {
    /// The progress messages for `token` received so far, in the order of their
    /// `progress` values (rmcp hands each notification to its own task).
    pub fn messages(&self, token: &ProgressToken) -> Vec<String> {
        let mut v: Vec<_> = self
            .progress
            .lock()
            .expect("progress list")
            .iter()
            .filter(|p| &p.progress_token == token)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.progress.total_cmp(&b.progress));
        v.into_iter().filter_map(|p| p.message).collect()
    }

    /// Waits until a progress message for `token` contains `needle` (they may trail the
    /// tool's result by a little); all of that token's messages.
    pub async fn wait_for(&self, token: &ProgressToken, needle: &str) -> Vec<String> {
        let start = Instant::now();
        loop {
            let got = self.messages(token);
            if got.iter().any(|m| m.contains(needle)) {
                return got;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no progress message with {needle:?}; got {got:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An MCP client and server over one `Ops`, joined in process like `kvm-mcp serve` on
/// stdio; requests may take up to [`DEBIAN_DEADLINE`].
pub struct Mcp {
    client: RunningService<RoleClient, Recorder>,
    /// The progress notifications received.
    pub seen: Recorder,
}

impl Mcp {
    /// Connects a new client to a server over `ops`.
    pub async fn connect(ops: Ops) -> Self {
        let seen = Recorder::default();
        let client = super::mcp::serve_in_process(ops, seen.clone()).await;
        Self { client, seen }
    }

    /// `tools/call` with the progress token rmcp put on the request.
    pub async fn call(&self, name: &'static str, args: Value) -> (CallToolResult, ProgressToken) {
        let req = ClientRequest::CallToolRequest(CallToolRequest::new(params(name, args)));
        let timeout = DEBIAN_DEADLINE + Duration::from_secs(60);
        let handle = self
            .client
            .peer()
            .send_request_with_option(req, PeerRequestOptions::with_timeout(timeout))
            .await
            .expect("send tools/call");
        let token = handle.progress_token.clone();
        match handle.await_response().await {
            Ok(ServerResult::CallToolResult(r)) => (r, token),
            other => panic!("{name}: unexpected answer {other:?}"),
        }
    }

    /// Calls a tool that must succeed; its structured content and text summary.
    pub async fn ok(&self, name: &'static str, args: Value) -> (Value, String) {
        let (r, _) = self.call(name, args).await;
        let summary = text(&r);
        (succeeded(name, r), summary)
    }
}
