//! Links over rtnetlink: the [`Netlink`] handle and the bridge, attach,
//! address, delete and statistics operations the VM launcher needs.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{LinkBridge, LinkUnspec};
use serde::Serialize;

use super::error::{NetworkError, Result, netlink_errno, netlink_io};
use crate::ids::IfName;

/// Counters of one link, from the kernel's 64-bit statistics.
///
/// For a VM's tap the directions are the host's view: frames the guest sends
/// are the tap's `rx_*`, frames delivered to the guest are its `tx_*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct LinkStats {
    /// Bytes received by the interface.
    pub rx_bytes: u64,
    /// Packets received by the interface.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent by the interface.
    pub tx_bytes: u64,
    /// Packets sent by the interface.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets dropped on transmit.
    pub tx_dropped: u64,
}

/// An rtnetlink connection.
///
/// The socket belongs to the network namespace of the thread that called
/// [`Netlink::connect`], whatever thread later runs the requests. The
/// connection task runs on the current tokio runtime and ends by itself
/// once the `Netlink` (and so every request handle) is dropped.
#[derive(Debug)]
pub struct Netlink {
    pub(super) handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens an rtnetlink socket and spawns its connection task.
    ///
    /// # Errors
    ///
    /// [`NetworkError::Connect`] if the socket cannot be opened or there is
    /// no tokio runtime on this thread.
    pub fn connect() -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| NetworkError::Connect { source: std::io::Error::other(e) })?;
        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(|source| NetworkError::Connect { source })?;
        runtime.spawn(connection);
        Ok(Self { handle })
    }

    /// The index of link `name`, or `None` if there is no such link.
    ///
    /// # Errors
    ///
    /// [`NetworkError::LookupLink`] if the kernel refuses the lookup.
    pub async fn link_index(&self, name: &IfName) -> Result<Option<u32>> {
        Ok(self.link(name).await?.map(|msg| msg.header.index))
    }

    /// Makes sure the bridge `name` exists and returns its index, creating it
    /// (up, with kernel defaults) when it is missing and `create` is set. An
    /// existing bridge is used as it is, in whatever state it is in.
    ///
    /// # Errors
    ///
    /// [`NetworkError::BridgeMissing`] when it is missing and `create` is
    /// false; [`NetworkError::NotABridge`] when a link of that name has
    /// another type; otherwise the errors of [`Netlink::create_bridge`].
    pub async fn ensure_bridge(&self, name: &IfName, create: bool) -> Result<u32> {
        match self.link(name).await? {
            Some(msg) => bridge_index(name, &msg),
            None if !create => Err(NetworkError::BridgeMissing { name: name.to_string() }),
            None => match self.create_bridge(name).await {
                // Someone created it between the lookup and ours: use theirs.
                Err(NetworkError::CreateBridge { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
                    let msg = self.require_link(name).await?;
                    bridge_index(name, &msg)
                }
                other => other,
            },
        }
    }

    /// Creates the bridge `name`, administratively up, and returns its index.
    ///
    /// # Errors
    ///
    /// [`NetworkError::CreateBridge`] (kind `Conflict` when the name is
    /// taken); [`NetworkError::LinkMissing`] if it vanished straight away.
    pub async fn create_bridge(&self, name: &IfName) -> Result<u32> {
        self.handle
            .link()
            .add(LinkBridge::new(name.as_str()).build())
            .execute()
            .await
            .map_err(|e| NetworkError::CreateBridge { name: name.to_string(), source: netlink_io(e) })?;
        Ok(self.require_link(name).await?.header.index)
    }

    /// Enslaves link `link` (usually a tap) to `bridge` and sets it up.
    ///
    /// # Errors
    ///
    /// [`NetworkError::LinkMissing`] if either link is missing,
    /// [`NetworkError::AttachLink`] if the kernel refuses.
    pub async fn attach_and_up(&self, link: &IfName, bridge: &IfName) -> Result<()> {
        let link_index = self.require_link(link).await?.header.index;
        let bridge_index = self.require_link(bridge).await?.header.index;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link_index).controller(bridge_index).up().build())
            .execute()
            .await
            .map_err(|e| NetworkError::AttachLink {
                link: link.to_string(),
                bridge: bridge.to_string(),
                source: netlink_io(e),
            })
    }

    /// Sets link `name` administratively up.
    ///
    /// # Errors
    ///
    /// [`NetworkError::LinkMissing`] or [`NetworkError::SetUp`].
    pub async fn set_up(&self, name: &IfName) -> Result<()> {
        let index = self.require_link(name).await?.header.index;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetworkError::SetUp { name: name.to_string(), source: netlink_io(e) })
    }

    /// Deletes link `name`. Returns `false` if there was no such link, so
    /// cleanup can call it unconditionally.
    ///
    /// # Errors
    ///
    /// [`NetworkError::DeleteLink`] if the kernel refuses.
    pub async fn delete_link(&self, name: &IfName) -> Result<bool> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(NetworkError::DeleteLink { name: name.to_string(), source: netlink_io(e) }),
        }
    }

    /// The 64-bit counters of link `name`.
    ///
    /// # Errors
    ///
    /// [`NetworkError::LinkMissing`], [`NetworkError::ReadStats`], or
    /// [`NetworkError::StatsMissing`] if the kernel sent no `IFLA_STATS64`.
    pub async fn link_stats(&self, name: &IfName) -> Result<LinkStats> {
        let msg = self
            .link(name)
            .await
            .map_err(|e| match e {
                NetworkError::LookupLink { name, source } => NetworkError::ReadStats { name, source },
                other => other,
            })?
            .ok_or_else(|| NetworkError::LinkMissing { name: name.to_string() })?;
        msg.attributes
            .iter()
            .find_map(|attr| match attr {
                LinkAttribute::Stats64(s) => Some(LinkStats {
                    rx_bytes: s.rx_bytes,
                    rx_packets: s.rx_packets,
                    rx_errors: s.rx_errors,
                    rx_dropped: s.rx_dropped,
                    tx_bytes: s.tx_bytes,
                    tx_packets: s.tx_packets,
                    tx_errors: s.tx_errors,
                    tx_dropped: s.tx_dropped,
                }),
                _ => None,
            })
            .ok_or_else(|| NetworkError::StatsMissing { name: name.to_string() })
    }

    /// Adds `address/prefix_len` to link `name` (for bridges this program
    /// manages). Adding an address the link already has succeeds.
    ///
    /// # Errors
    ///
    /// [`NetworkError::InvalidPrefix`] if the prefix is longer than the
    /// address, [`NetworkError::LinkMissing`], or [`NetworkError::AddAddress`].
    pub async fn add_address(&self, name: &IfName, address: IpAddr, prefix_len: u8) -> Result<()> {
        let max_prefix = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > max_prefix {
            return Err(NetworkError::InvalidPrefix { address, prefix_len });
        }
        let index = self.require_link(name).await?.header.index;
        match self.handle.address().add(index, address, prefix_len).execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => {
                Err(NetworkError::AddAddress { name: name.to_string(), address, prefix_len, source: netlink_io(e) })
            }
        }
    }

    /// The link message for `name`, `None` when the kernel says `ENODEV`.
    async fn link(&self, name: &IfName) -> Result<Option<LinkMessage>> {
        let mut replies = self.handle.link().get().match_name(name.as_str()).execute();
        match replies.try_next().await {
            Ok(msg) => Ok(msg),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(NetworkError::LookupLink { name: name.to_string(), source: netlink_io(e) }),
        }
    }

    /// Like [`Netlink::link`], but a missing link is an error.
    pub(super) async fn require_link(&self, name: &IfName) -> Result<LinkMessage> {
        self.link(name).await?.ok_or_else(|| NetworkError::LinkMissing { name: name.to_string() })
    }
}

/// The index of `msg` if it describes a bridge.
fn bridge_index(name: &IfName, msg: &LinkMessage) -> Result<u32> {
    let is_bridge = msg.attributes.iter().any(|attr| {
        matches!(attr, LinkAttribute::LinkInfo(infos)
            if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))))
    });
    if is_bridge { Ok(msg.header.index) } else { Err(NetworkError::NotABridge { name: name.to_string() }) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::ErrorKind;

    #[test]
    fn connect_without_a_runtime_is_unavailable() {
        let err = Netlink::connect().unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }
}
