//! Blocking file work off the async runtime, under a deadline. A request that has to
//! inspect images or walk backing chains runs that work on tokio's blocking pool and
//! gives up waiting after the deadline, so one file that never answers (a hung
//! network mount, say) costs that one call, never the server's ability to answer
//! others: the stdio server runs on a single-threaded runtime.

use std::time::Duration;

use super::error::StorageError;

/// How long file inspection on a request path may take before the call gives up.
pub const FILE_WORK_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `work` on the blocking pool and waits at most `limit` for it. The work is
/// not cancelled after the deadline (a blocked system call cannot be), only no
/// longer waited for.
///
/// # Errors
/// `Deadline` naming `what` when it takes longer; `Internal`-kind `Read` should the
/// work panic.
pub async fn with_deadline<T, F>(what: &'static str, limit: Duration, work: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(join)) => Err(StorageError::Read {
            path: what.into(),
            source: std::io::Error::other(format!("the work panicked: {join}")),
        }),
        Err(_) => Err(StorageError::Deadline { what, limit }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn work_within_deadline_returns_its_value() {
        let got = with_deadline("adding", Duration::from_secs(30), || 2 + 2).await.unwrap();

        assert_eq!(got, 4);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stuck_work_gives_deadline_error_and_runtime_keeps_answering() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = tokio::spawn(async { 7 });

        let err =
            with_deadline("reading a stuck file", Duration::from_millis(200), move || rx.recv()).await.unwrap_err();

        assert_eq!(err.kind(), crate::error::ErrorKind::Unavailable);
        assert_eq!(err.to_string(), "reading a stuck file did not finish within 200ms (a file that does not answer?)");
        assert_eq!(other.await.unwrap(), 7);
        drop(tx);
    }
}
