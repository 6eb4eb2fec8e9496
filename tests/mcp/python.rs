//! Runs the real-client suite (`tests/mcp_py`, the official MCP Python SDK) against the
//! binary this build produced. One test, so the suite's guests boot one at a time.
//! Needs `pip install -r tests/requirements.txt`.

use std::process::Command;

#[test]
fn python_sdk_suite_passes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let probe = Command::new("python3").args(["-c", "import mcp, pytest"]).output().expect("run python3");
    assert!(
        probe.status.success(),
        "the MCP Python SDK is missing: pip install -r tests/requirements.txt\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let out = Command::new("python3")
        .args(["-m", "pytest", "tests/mcp_py", "-q", "-p", "no:cacheprovider"])
        .current_dir(root)
        .env("KVM_MCP_BIN", env!("CARGO_BIN_EXE_kvm-mcp"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run pytest");
    assert!(
        out.status.success(),
        "pytest tests/mcp_py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
