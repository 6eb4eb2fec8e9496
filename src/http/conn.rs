//! Limits below HTTP, per TCP connection, enforced before a request is parsed or
//! authenticated: at most `server.max_connections_per_peer` open connections from one
//! IP address (more are closed as soon as they are accepted), a connection must deliver
//! a request's complete headers within `server.header_timeout_s` (counted from the
//! accept, or from the first byte of a later request), and a kept-alive connection with
//! no request in progress is closed after `server.idle_timeout_s`.
//!
//! A request is in progress from the moment hyper hands it to the service until its
//! response body has ended, so an open SSE stream (`GET /mcp`) or a long tool call is
//! never idle. hyper's own `header_read_timeout` cannot tell an idle keep-alive from a
//! slow header (its timer starts when it waits for the next request), hence this
//! wrapper: [`ConnAcceptor`] wraps each accepted socket ([`Watched`]) and the service
//! that serves it ([`Tracked`]), and both share one [`ConnState`].

use std::collections::HashMap;
use std::future::{Future, Ready, ready};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Request, Response};
use futures::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// A peer over its cap is logged at most this often (with the count refused since).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// The resolved connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_per_peer: usize,
}

impl ConnLimits {
    /// The limits `server.*` asks for.
    #[must_use]
    pub fn from_settings(c: &crate::config::ConnectionLimits) -> Self {
        Self {
            header_timeout: Duration::from_secs(c.header_timeout_s),
            idle_timeout: Duration::from_secs(c.idle_timeout_s),
            max_per_peer: usize::try_from(c.max_connections_per_peer).unwrap_or(usize::MAX),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
struct PeerEntry {
    open: usize,
    /// Connections refused since the last log line about this peer.
    refused: u64,
    last_logged: Option<Instant>,
}

#[derive(Debug)]
struct Peers {
    limits: ConnLimits,
    open: Mutex<HashMap<IpAddr, PeerEntry>>,
}

impl Peers {
    /// A slot for one more connection from `ip`, or `None` when it is at its cap.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut map = lock(&self.open);
        let e = map.entry(ip).or_insert(PeerEntry { open: 0, refused: 0, last_logged: None });
        if e.open < self.limits.max_per_peer {
            e.open += 1;
            return Some(PeerSlot { peers: self.clone(), ip });
        }
        e.refused += 1;
        let now = Instant::now();
        if e.last_logged.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY) {
            tracing::warn!(
                peer = %ip,
                open = e.open,
                refused = e.refused,
                "refusing connections from a peer at server.max_connections_per_peer ({}); \
                 logged at most once a minute",
                self.limits.max_per_peer
            );
            e.last_logged = Some(now);
            e.refused = 0;
        }
        None
    }

    fn release(&self, ip: IpAddr) {
        let mut map = lock(&self.open);
        if let Some(e) = map.get_mut(&ip) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// One open connection counted against its peer; released on drop.
#[derive(Debug)]
struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.peers.release(self.ip);
    }
}

/// What a connection with no request in progress is waiting for, and until when.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// The rest of a request's headers (or the first request on a new connection).
    Header(Instant),
    /// The first byte of the next request on a kept-alive connection.
    Idle(Instant),
}

/// One connection's timing, shared by its socket and its service.
#[derive(Debug)]
pub struct ConnState {
    limits: ConnLimits,
    in_flight: AtomicUsize,
    wait: Mutex<Wait>,
    /// The socket's reader, woken when the last request ends so it arms the idle timer.
    reader: AtomicWaker,
}

impl ConnState {
    fn new(limits: ConnLimits) -> Self {
        Self {
            limits,
            in_flight: AtomicUsize::new(0),
            wait: Mutex::new(Wait::Header(Instant::now() + limits.header_timeout)),
            reader: AtomicWaker::new(),
        }
    }

    /// Bytes arrived: on an idle connection they start a request's headers.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let mut w = lock(&self.wait);
            if let Wait::Idle(_) = *w {
                *w = Wait::Header(Instant::now() + self.limits.header_timeout);
            }
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *lock(&self.wait) = Wait::Idle(Instant::now() + self.limits.idle_timeout);
            self.reader.wake();
        }
    }

    /// When the connection must be closed if nothing arrives, and why; `None` while a
    /// request is in progress.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(match *lock(&self.wait) {
            Wait::Header(t) => (t, "request headers not complete within server.header_timeout_s"),
            Wait::Idle(t) => (t, "connection idle for server.idle_timeout_s"),
        })
    }
}

/// Counts connections per peer and wraps each in [`Watched`] and [`Tracked`].
#[derive(Debug, Clone)]
pub struct ConnAcceptor {
    peers: Arc<Peers>,
}

impl ConnAcceptor {
    #[must_use]
    pub fn new(limits: ConnLimits) -> Self {
        Self { peers: Arc::new(Peers { limits, open: Mutex::new(HashMap::new()) }) }
    }
}

impl<S> axum_server::accept::Accept<TcpStream, S> for ConnAcceptor {
    type Stream = Watched<TcpStream>;
    type Service = Tracked<S>;
    type Future = Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let ip = match stream.peer_addr() {
            Ok(a) => a.ip().to_canonical(),
            Err(e) => return ready(Err(e)),
        };
        // Refused: axum-server drops the stream, which closes it at once.
        let Some(slot) = self.peers.take(ip) else {
            return ready(Err(io::Error::new(io::ErrorKind::ConnectionRefused, "too many connections from this peer")));
        };
        // Small writes (an SSE event, a response head) go out at once instead of
        // waiting up to 40 ms for the peer's delayed ACK.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %ip, "cannot set TCP_NODELAY: {e}");
        }
        let conn = Arc::new(ConnState::new(self.peers.limits));
        let sleep = Box::pin(tokio::time::sleep_until(Instant::now() + self.peers.limits.header_timeout));
        ready(Ok((Watched { io: stream, conn: conn.clone(), sleep, slot }, Tracked { inner: service, conn })))
    }
}

/// An accepted socket that fails its reads once its deadline passes.
#[derive(Debug)]
pub struct Watched<T> {
    io: T,
    conn: Arc<ConnState>,
    sleep: Pin<Box<Sleep>>,
    slot: PeerSlot,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.conn.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.conn.reader.register(cx.waker());
                let Some((deadline, why)) = this.conn.deadline() else { return Poll::Pending };
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::debug!(peer = %this.slot.ip, "closing a connection: {why}");
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request in progress; ends when dropped.
#[derive(Debug)]
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(conn: Arc<ConnState>) -> Self {
        conn.request_started();
        Self(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The connection's service: marks each request in progress until its body ends.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    conn: Arc<ConnState>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, B> tower_service::Service<Request<ReqBody>> for Tracked<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: HttpBody + Unpin,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let guard = InFlight::start(self.conn.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            Ok(response.map(|inner| TrackedBody { inner, guard: Some(guard) }))
        })
    }
}

/// A response body that ends its request's [`InFlight`] when it ends or is dropped.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    guard: Option<InFlight>,
}

impl<B: HttpBody + Unpin> HttpBody for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_per_peer: usize) -> ConnLimits {
        ConnLimits { header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60), max_per_peer }
    }

    fn peers(max: usize) -> Arc<Peers> {
        Arc::new(Peers { limits: limits(max), open: Mutex::new(HashMap::new()) })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn peer_over_its_cap_is_refused() {
        let p = peers(2);
        let held = [p.take(A), p.take(A)];
        assert!(held.iter().all(Option::is_some) && p.take(A).is_none());
    }

    #[test]
    fn other_peer_is_not_affected() {
        let p = peers(1);
        let _held = p.take(A);
        assert!(p.take(B).is_some());
    }

    #[test]
    fn closed_connection_frees_its_slot() {
        let p = peers(1);
        drop(p.take(A));
        assert!(p.take(A).is_some());
    }

    #[test]
    fn closing_every_connection_forgets_the_peer() {
        let p = peers(4);
        drop([p.take(A), p.take(A)]);
        assert!(lock(&p.open).is_empty());
    }

    #[tokio::test]
    async fn request_in_progress_has_no_deadline() {
        let c = Arc::new(ConnState::new(limits(1)));
        let _req = InFlight::start(c.clone());
        assert!(c.deadline().is_none());
    }

    #[tokio::test]
    async fn ended_request_leaves_the_idle_deadline() {
        let c = Arc::new(ConnState::new(limits(1)));
        drop(InFlight::start(c.clone()));
        assert!(matches!(*lock(&c.wait), Wait::Idle(_)));
    }

    #[tokio::test]
    async fn bytes_on_an_idle_connection_start_the_header_deadline() {
        let c = Arc::new(ConnState::new(limits(1)));
        drop(InFlight::start(c.clone()));
        c.bytes_read();
        assert!(matches!(*lock(&c.wait), Wait::Header(_)));
    }
}
