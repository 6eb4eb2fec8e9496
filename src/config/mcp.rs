//! `mcp.*`: how the MCP front end treats destructive calls.

use serde::{Deserialize, Serialize};

/// When a destructive tool call (`delete_vm`, `revert_snapshot`, `reset_vm_disk`,
/// `delete_snapshot`, a forced `stop_vm`) asks the user first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmDestructive {
    /// Ask when the client can (it declared elicitation); otherwise go ahead.
    #[default]
    WhenSupported,
    /// Ask; refuse the call when the client cannot ask.
    Always,
    /// Never ask.
    Never,
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMcp {
    pub(super) confirm_destructive: Option<ConfirmDestructive>,
}

/// `mcp.*`.
#[derive(Debug, Clone, Serialize)]
pub struct McpSettings {
    pub confirm_destructive: ConfirmDestructive,
}

impl RawMcp {
    pub(super) fn resolve(self) -> McpSettings {
        McpSettings { confirm_destructive: self.confirm_destructive.unwrap_or_default() }
    }
}
