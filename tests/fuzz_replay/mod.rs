//! The fuzz corpora (`fuzz/corpus/<target>/`) replayed through the fuzz targets' entry
//! points on the stable toolchain, without libFuzzer: every input that ever found a bug
//! stays in its corpus, so this keeps the fixes fixed.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use kvm_mcp::fuzzing;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let files = corpus(target);
    assert!(files.len() >= 5, "fuzz/corpus/{target} has only {} inputs", files.len());
    let scratch = tempfile::tempdir().unwrap();
    let failed: Vec<String> = files
        .iter()
        .filter(|f| {
            let data = fs::read(f).unwrap();
            catch_unwind(AssertUnwindSafe(|| fuzzing::run(target, &data, scratch.path()))).is_err()
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: {} of {} inputs panic: {failed:?}", failed.len(), files.len());
}

#[test]
fn qcow2_corpus_replays() {
    replay("qcow2");
}

#[test]
fn config_corpus_replays() {
    replay("config");
}

#[test]
fn spec_corpus_replays() {
    replay("spec");
}

#[test]
fn mcp_args_corpus_replays() {
    replay("mcp_args");
}

#[test]
fn console_corpus_replays() {
    replay("console");
}

#[test]
fn every_target_has_a_corpus_and_a_fuzz_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for target in fuzzing::TARGETS {
        assert!(root.join("fuzz_targets").join(format!("{target}.rs")).is_file(), "no fuzz target {target}");
        assert!(!corpus(target).is_empty(), "no corpus for {target}");
    }
}

/// The `mcp_args` target decodes the arguments of every tool the server has.
#[test]
fn mcp_args_knows_every_tool() {
    let args = serde_json::Map::new();
    let unknown: Vec<String> = kvm_mcp::mcp::KvmMcp::router()
        .list_all()
        .into_iter()
        .map(|t| t.name.into_owned())
        .filter(|n| kvm_mcp::mcp::decode_tool_arguments(n, &args).is_none())
        .collect();
    assert!(unknown.is_empty(), "tools the decoder does not know: {unknown:?}");
}

/// Every tool named in the corpus exists, and each tool has at least one input.
#[test]
fn mcp_args_corpus_covers_every_tool() {
    let named: Vec<String> = corpus("mcp_args")
        .iter()
        .filter_map(|f| serde_json::from_slice::<serde_json::Value>(&fs::read(f).unwrap()).ok())
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<String> = kvm_mcp::mcp::KvmMcp::router()
        .list_all()
        .into_iter()
        .map(|t| t.name.into_owned())
        .filter(|n| !named.contains(n))
        .collect();
    assert!(missing.is_empty(), "no mcp_args corpus input for {missing:?}");
}
