#![no_main]
//! See `kvm_mcp::fuzzing::qcow2`. The images go to a directory in /dev/shm (tmpfs) when
//! there is one, so the run is not bound by the disk.

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static SCRATCH: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    tempfile::Builder::new().prefix("kvm-mcp-fuzz-qcow2.").tempdir_in(parent).expect("a scratch directory")
});

fuzz_target!(|data: &[u8]| kvm_mcp::fuzzing::qcow2(data, SCRATCH.path()));
