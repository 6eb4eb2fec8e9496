//! Entry points of the fuzz targets in `fuzz/` (run with `cargo +nightly fuzz run
//! <target>`), shared with the test that replays their corpora on the stable
//! toolchain (`tests/fuzz_replay.rs`). Each takes untrusted bytes through the same
//! functions the program uses on them, and panics only on a broken invariant:
//! any panic here is a bug, in the entry point or in the code under it.

use std::fs;
use std::path::Path;
use std::sync::LazyLock;

use crate::config::{Config, ConfigSource};
use crate::console::log::{Chunk, Matcher, clean, compile_pattern};
use crate::layout::VmPaths;
use crate::qemu::accel::Accel;
use crate::qemu::cmdline::{self, FdPlan, HostInputs};
use crate::qemu::profile::Profiles;
use crate::spec::{NetworkMode, VmSpec};
use crate::storage::{self, AllowedDirs, ImageFormat, MAX_CHAIN_LEN};
use crate::store::{self, Record};

/// The fuzz targets, by name (the file names under `fuzz/fuzz_targets/` and the
/// directories under `fuzz/corpus/`).
pub const TARGETS: [&str; 5] = ["qcow2", "config", "spec", "mcp_args", "console"];

/// Separates the images of one `qcow2` input.
pub const IMAGE_SEPARATOR: &[u8] = b"--next--";
/// Most images one `qcow2` input is split into (the rest is ignored).
pub const MAX_IMAGES: usize = 4;

/// Runs the entry point of `target` on `data`; `scratch` is an empty directory the
/// `qcow2` target writes its images into (tmpfs makes it fast).
///
/// # Panics
/// On an unknown target, and wherever the target's entry point panics.
pub fn run(target: &str, data: &[u8], scratch: &Path) {
    match target {
        "qcow2" => qcow2(data, scratch),
        "config" => config(data),
        "spec" => spec(data),
        "mcp_args" => mcp_args(data),
        "console" => console(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

fn split<'a>(mut data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    while let Some(at) = data.windows(sep.len()).position(|w| w == sep) {
        parts.push(&data[..at]);
        data = &data[at + sep.len()..];
    }
    parts.push(data);
    parts
}

/// The qcow2 reader: `data` is up to [`MAX_IMAGES`] image files separated by
/// [`IMAGE_SEPARATOR`], written to `scratch` as `img0`, `img1`, … (so a backing
/// name `img1` in `img0` names the second). `img0` is inspected (probed and as
/// qcow2), its snapshot table listed, its backing chain resolved under the host path
/// rule with `scratch` the only allowed directory, and it is grown offline.
///
/// # Panics
/// If `scratch` cannot be written, or a resolved chain breaks the rule.
pub fn qcow2(data: &[u8], scratch: &Path) {
    let dir = fs::canonicalize(scratch).expect("the scratch directory exists");
    for i in 0..MAX_IMAGES {
        let _ = fs::remove_file(dir.join(format!("img{i}")));
    }
    let images = split(data, IMAGE_SEPARATOR);
    let images = &images[..images.len().min(MAX_IMAGES)];
    for (i, image) in images.iter().enumerate() {
        fs::write(dir.join(format!("img{i}")), image).expect("the scratch directory is writable");
    }
    let top = dir.join("img0");
    let _ = storage::inspect(&top).map_err(|e| e.to_string());
    let _ = storage::inspect_as(&top, ImageFormat::Qcow2).map_err(|e| e.to_string());
    let _ = storage::snapshots(&top).map_err(|e| e.to_string());
    let allowed = AllowedDirs::new(std::slice::from_ref(&dir)).expect("the scratch directory resolves");
    match storage::resolve_chain(&top, ImageFormat::Qcow2, &allowed) {
        Ok(chain) => {
            assert!(
                chain.len() <= images.len().min(MAX_CHAIN_LEN),
                "a chain of {} images from {}",
                chain.len(),
                images.len()
            );
            assert_eq!(chain[0].path, top, "the chain starts at its top image");
            for info in &chain {
                assert!(allowed.contains(&info.path), "{} is outside {}", info.path.display(), dir.display());
            }
        }
        Err(e) => drop(e.to_string()),
    }
    // Last, as it rewrites the file: growing it offline, as `resize_disk` does for a
    // stopped VM, by at least a GiB so that the L1 table usually has to grow.
    if let Ok(info) = storage::inspect_as(&top, ImageFormat::Qcow2) {
        let size = info.virtual_size_bytes;
        let new_size = size.saturating_mul(2).max(size.saturating_add(1 << 30)) & !511;
        let _ = storage::resize_offline_as(&top, ImageFormat::Qcow2, new_size).map_err(|e| e.to_string());
    }
}

/// `config.json` to a resolved [`Config`]: `data` is the file text, optionally
/// followed by a NUL and `NAME=value` lines for the environment overrides.
///
/// # Panics
/// If a resolved config does not serialise (`host info` shows it).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (file, env) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned());
    match Config::from_parts(ConfigSource::Flag("/etc/kvm-mcp/config.json".into()), Some(file), &lookup) {
        Ok(c) => drop(serde_json::to_string(&c).expect("a resolved config serialises")),
        Err(e) => drop(e.to_string()),
    }
}

static PROFILES: LazyLock<Profiles> = LazyLock::new(|| Profiles::load(None).expect("the built-in profiles load"));

/// `spec.json` to a [`VmSpec`] as the store reads it; a spec that parses must read
/// back as written, and goes on to the QEMU command line built from it.
///
/// # Panics
/// If a parsed spec does not survive writing and reading back.
pub fn spec(data: &[u8]) {
    let path = Path::new("/var/lib/kvm-mcp/vms/fuzz/spec.json");
    let spec = match store::parse_record::<VmSpec>(path, data) {
        Record::Present(spec) => spec,
        Record::Damaged(reason) => return drop(reason),
        Record::Missing => unreachable!("parsing never reports a missing file"),
    };
    let written = serde_json::to_vec(&spec).expect("a spec serialises");
    assert_eq!(store::parse_record(path, &written), Record::Present(spec.clone()), "a spec reads back as written");
    let paths = VmPaths::new(Path::new("/var/lib/kvm-mcp"), Path::new("/run/kvm-mcp"), &spec.name);
    let _ = store::owned_disks(&spec, &paths);
    for i in 0..spec.nics.len() {
        let _ = spec.tap_name(i);
    }
    if let Ok(profile) = PROFILES.get(&spec.os_variant) {
        let taps = spec.nics.iter().filter(|n| matches!(n.mode, NetworkMode::Bridge { .. })).count();
        let _ = cmdline::build(
            &spec,
            profile,
            Accel::Tcg,
            &paths,
            &FdPlan::standard(taps),
            &HostInputs::single_nodes(&spec),
        );
    }
}

/// An MCP `tools/call`: `data` is its `params` object (`{"name": …, "arguments":
/// {…}}`), decoded as the server decodes it, then the named tool's arguments as that
/// tool decodes and checks them ([`crate::mcp::decode_tool_arguments`]).
pub fn mcp_args(data: &[u8]) {
    let Ok(call) = serde_json::from_slice::<rmcp::model::CallToolRequestParams>(data) else { return };
    let args = call.arguments.unwrap_or_default();
    let _ = crate::mcp::decode_tool_arguments(&call.name, &args);
}

/// The console pattern search: `data` is a pattern, a NUL, then console bytes. The
/// pattern is compiled under its limits as `wait_for_console` compiles it and the
/// bytes are fed to the line [`Matcher`] in chunks; the chunk sizes come from the
/// first byte, so a line can straddle chunks as it does when QEMU writes slowly.
///
/// # Panics
/// If a match reports offsets outside the bytes fed.
pub fn console(data: &[u8]) {
    let Some(nul) = data.iter().position(|&b| b == 0) else { return };
    let Ok(pattern) = std::str::from_utf8(&data[..nul]) else { return };
    let log = &data[nul + 1..];
    let _ = clean(log);
    let Ok(re) = compile_pattern(pattern) else { return };
    let step = usize::from(log.first().copied().unwrap_or(0) % 64) + 1;
    let start = 1000;
    let mut m = Matcher::new(re, start);
    let mut at = 0;
    while at < log.len() {
        let end = (at + step).min(log.len());
        let chunk = Chunk { start: start + at as u64, bytes: log[at..end].to_vec(), skipped: false };
        if let Some((_, line, next)) = m.feed(&chunk) {
            assert!(start <= line && line < next && next <= start + end as u64, "match {line}..{next} outside the log");
            // `wait_for_console` stops at the first match.
            break;
        }
        at = end;
    }
}
