//! QMP block commands on a running VM, sent as raw JSON: CD-ROM media changes and
//! live disk growth. Raw command types keep clear of qapi-qmp's deprecated fields and
//! of reply types QEMU 7.2 does not fill in completely.

use serde::Serialize;
use serde_json::{Value, json};

use crate::qmp::{DEFAULT_TIMEOUT, Qmp, QmpError};

macro_rules! raw_command {
    ($ty:ident, $name:literal, $ok:ty) => {
        #[derive(Serialize)]
        #[serde(transparent)]
        pub(crate) struct $ty(pub Value);
        impl qapi::Command for $ty {
            type Ok = $ok;
            const NAME: &'static str = $name;
            const ALLOW_OOB: bool = false;
        }
        impl qapi::qmp::QmpCommand for $ty {}
    };
}

raw_command!(BlockdevAdd, "blockdev-add", qapi::Empty);
raw_command!(BlockdevDel, "blockdev-del", qapi::Empty);
raw_command!(OpenTray, "blockdev-open-tray", qapi::Empty);
raw_command!(CloseTray, "blockdev-close-tray", qapi::Empty);
raw_command!(RemoveMedium, "blockdev-remove-medium", qapi::Empty);
raw_command!(InsertMedium, "blockdev-insert-medium", qapi::Empty);
raw_command!(QueryBlock, "query-block", Vec<Value>);
raw_command!(BlockResize, "block_resize", qapi::Empty);

/// The node name of the medium in drive `qdev_id`, if any.
async fn current_node(q: &Qmp, qdev_id: &str) -> Result<Option<String>, QmpError> {
    let blocks = q.execute(QueryBlock(json!({})), DEFAULT_TIMEOUT).await?;
    Ok(blocks
        .iter()
        .find(|b| b["qdev"].as_str().is_some_and(|s| s == qdev_id || s.ends_with(&format!("/{qdev_id}"))))
        .and_then(|b| b["inserted"]["node-name"].as_str().map(String::from)))
}

/// Opens the tray (overriding a guest lock) and takes the medium out; the old node
/// is deleted so QEMU lets go of the file.
async fn take_out(q: &Qmp, qdev_id: &str) -> Result<(), QmpError> {
    let old = current_node(q, qdev_id).await?;
    q.execute(OpenTray(json!({ "id": qdev_id, "force": true })), DEFAULT_TIMEOUT).await?;
    q.execute(RemoveMedium(json!({ "id": qdev_id })), DEFAULT_TIMEOUT).await?;
    if let Some(node) = old
        && let Err(e) = q.execute(BlockdevDel(json!({ "node-name": node })), DEFAULT_TIMEOUT).await
    {
        tracing::warn!(error = %e, "cannot delete the old medium's block node");
    }
    Ok(())
}

/// Leaves drive `qdev_id` empty, tray closed.
pub(crate) async fn eject(q: &Qmp, qdev_id: &str) -> Result<(), QmpError> {
    take_out(q, qdev_id).await?;
    q.execute(CloseTray(json!({ "id": qdev_id })), DEFAULT_TIMEOUT).await?;
    Ok(())
}

/// Puts the ISO at `path` into drive `qdev_id` as node `node`.
pub(crate) async fn change_medium(q: &Qmp, qdev_id: &str, node: &str, path: &str) -> Result<(), QmpError> {
    let add = json!({
        "driver": "raw", "node-name": node, "read-only": true,
        "file": { "driver": "file", "filename": path, "read-only": true },
    });
    q.execute(BlockdevAdd(add), DEFAULT_TIMEOUT).await?;
    let res = async {
        take_out(q, qdev_id).await?;
        q.execute(InsertMedium(json!({ "id": qdev_id, "node-name": node })), DEFAULT_TIMEOUT).await?;
        q.execute(CloseTray(json!({ "id": qdev_id })), DEFAULT_TIMEOUT).await
    }
    .await;
    if res.is_err() {
        let _ = q.execute(BlockdevDel(json!({ "node-name": node })), DEFAULT_TIMEOUT).await;
    }
    res.map(|_| ())
}

/// Grows the disk node `node` to `size_bytes`.
pub(crate) async fn resize(q: &Qmp, node: &str, size_bytes: u64) -> Result<(), QmpError> {
    q.execute(BlockResize(json!({ "node-name": node, "size": size_bytes })), DEFAULT_TIMEOUT).await?;
    Ok(())
}
