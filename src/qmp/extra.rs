//! QMP commands defined here rather than taken from qapi-qmp: its schema is QEMU 9.1,
//! and some replies from QEMU 7.2 lack fields 9.1 made required (`query-blockstats`
//! fails on `failed_zone_append_operations`). These types send the same JSON and take
//! the reply as plain JSON or as lenient structs of our own.

use serde::{Deserialize, Serialize};

macro_rules! command {
    ($ty:ident, $name:literal, $ok:ty) => {
        impl qapi::Command for $ty {
            type Ok = $ok;
            const NAME: &'static str = $name;
            const ALLOW_OOB: bool = false;
        }
        impl qapi::qmp::QmpCommand for $ty {}
    };
}

/// `query-blockstats`, answered as one entry per attached block device.
#[derive(Debug, Clone, Serialize, Default)]
pub struct QueryBlockstats {}
command!(QueryBlockstats, "query-blockstats", Vec<BlockStatsEntry>);

/// One device of `query-blockstats` (only the fields we use; all optional).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct BlockStatsEntry {
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default, rename = "node-name")]
    pub node_name: Option<String>,
    #[serde(default)]
    pub qdev: Option<String>,
    #[serde(default)]
    pub stats: BlockCounters,
}

/// The counters of one device.
#[derive(Debug, Clone, Copy, Deserialize, Default)]
pub struct BlockCounters {
    #[serde(default)]
    pub rd_bytes: u64,
    #[serde(default)]
    pub wr_bytes: u64,
    #[serde(default)]
    pub rd_operations: u64,
    #[serde(default)]
    pub wr_operations: u64,
}

/// `query-balloon`; QEMU answers with an error when the VM has no balloon device.
#[derive(Debug, Clone, Serialize, Default)]
pub struct QueryBalloon {}
command!(QueryBalloon, "query-balloon", BalloonActual);

/// The reply of `query-balloon`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct BalloonActual {
    /// Bytes the guest currently has.
    pub actual: u64,
}

/// `change-vnc-password` (QEMU 7.2 still has it; `set_password` changed shape later).
#[derive(Debug, Clone, Serialize)]
pub struct ChangeVncPassword {
    pub password: String,
}
command!(ChangeVncPassword, "change-vnc-password", serde_json::Value);

/// `query-vnc`, kept as JSON (host, service, clients).
#[derive(Debug, Clone, Serialize, Default)]
pub struct QueryVnc {}
command!(QueryVnc, "query-vnc", serde_json::Value);

/// `screendump` to a file QEMU writes.
#[derive(Debug, Clone, Serialize)]
pub struct Screendump {
    pub filename: String,
    /// `png` (QEMU 7.1+) or `ppm`.
    pub format: &'static str,
}
command!(Screendump, "screendump", serde_json::Value);

/// One key of `send-key`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyValue {
    /// Always `qcode`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A QKeyCode name such as `ctrl` or `a`.
    pub data: String,
}

impl KeyValue {
    /// A key given by its QKeyCode name.
    #[must_use]
    pub fn qcode(name: &str) -> Self {
        Self { kind: "qcode", data: name.to_owned() }
    }
}

/// `send-key`: press the keys together, hold, release in reverse order.
#[derive(Debug, Clone, Serialize)]
pub struct SendKey {
    pub keys: Vec<KeyValue>,
    #[serde(rename = "hold-time", skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<u32>,
}
command!(SendKey, "send-key", serde_json::Value);

/// `query-chardev`: every character device with whether its guest side is open.
#[derive(Debug, Clone, Serialize, Default)]
pub struct QueryChardev {}
command!(QueryChardev, "query-chardev", Vec<ChardevEntry>);

/// One character device of `query-chardev`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ChardevEntry {
    /// The chardev's id (`qga0` for the guest agent's channel).
    pub label: String,
    /// Whether the guest holds the device open: for a virtio-serial port, whether a
    /// program in the guest (the guest agent) has it open.
    #[serde(default, rename = "frontend-open")]
    pub frontend_open: bool,
}
