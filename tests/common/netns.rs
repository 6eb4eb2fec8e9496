//! Running a test body inside a private, throw-away network namespace.

use std::future::Future;

use nix::sched::{CloneFlags, unshare};
use rtnetlink::packet_route::link::LinkMessage;

/// Runs `body` on a fresh thread that first moves itself into a new network
/// namespace, on a current-thread tokio runtime of its own.
///
/// Only that thread changes namespace, so netlink sockets, taps and child
/// processes created from it live in the new namespace, and everything in
/// it disappears once the thread and its children are gone: there is nothing
/// to clean up on the host. Panics in `body` are re-raised here.
pub fn in_netns<F, Fut, T>(body: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let worker = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) needs root");
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("build a current-thread runtime");
        runtime.block_on(body())
    });
    worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A raw rtnetlink handle in the current thread's namespace, for setting up
/// and checking state independently of the code under test.
pub fn rtnl() -> rtnetlink::Handle {
    let (connection, handle, _) = rtnetlink::new_connection().expect("open rtnetlink socket");
    tokio::spawn(connection);
    handle
}

/// The kernel's description of link `name`.
pub async fn link_message(handle: &rtnetlink::Handle, name: &str) -> LinkMessage {
    use futures::TryStreamExt;

    handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .expect("link lookup")
        .expect("link exists")
}

/// The IPv4 addresses of link `index`, read straight from the kernel.
pub async fn ipv4_addresses(index: u32) -> Vec<std::net::IpAddr> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::address::AddressAttribute;

    rtnl()
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .expect("address dump")
        .into_iter()
        .flat_map(|msg| msg.attributes)
        .filter_map(|attr| match attr {
            AddressAttribute::Address(ip) if ip.is_ipv4() => Some(ip),
            _ => None,
        })
        .collect()
}
