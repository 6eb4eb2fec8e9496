//! Noticing VMs come and go: the set of defined VM names, and a watcher that tells
//! subscribers when it changes, whichever front end made the change. It polls the state
//! directory (one `readdir` and a `stat` per VM) and can be nudged to look at once after
//! a change made in this process.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast};

use super::{Ops, OpsError};

/// Watches the set of defined VMs; dropping it stops the watching task.
#[derive(Debug)]
pub struct VmSetWatcher {
    tx: broadcast::Sender<()>,
    nudge: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl VmSetWatcher {
    /// A receiver that gets `()` each time the set of VM names changes.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<()> {
        self.tx.subscribe()
    }

    /// Looks at the state directory now instead of at the next poll.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }
}

impl Drop for VmSetWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Ops {
    /// Names of the VMs whose definition is complete (what `list` shows as defined).
    ///
    /// # Errors
    /// The state directory exists but cannot be read.
    pub fn vm_names(&self) -> Result<BTreeSet<String>, OpsError> {
        let store = self.store();
        let names = store
            .names()
            .map_err(OpsError::io("cannot read state directory", self.cfg.state_dir.join(crate::layout::VMS_DIR)))?;
        Ok(names.into_iter().filter(|n| store.is_defined(n)).map(|n| n.to_string()).collect())
    }

    /// Starts a task (on the current runtime) that compares the VM name set every
    /// `interval`, or when nudged, and notifies subscribers when it changed.
    #[must_use]
    pub fn watch_vm_set(&self, interval: Duration) -> VmSetWatcher {
        let (tx, _) = broadcast::channel(4);
        let nudge = Arc::new(Notify::new());
        let ops = self.clone();
        let (task_tx, task_nudge) = (tx.clone(), nudge.clone());
        let task = tokio::spawn(async move {
            let mut last = ops.vm_names().unwrap_or_default();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = task_nudge.notified() => {}
                }
                let Ok(now) = ops.vm_names() else { continue };
                if now != last {
                    last = now;
                    // No subscriber is fine: nobody is listening yet.
                    let _ = task_tx.send(());
                }
            }
        });
        VmSetWatcher { tx, nudge, task }
    }
}
