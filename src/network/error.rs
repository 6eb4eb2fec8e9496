//! Errors of the network module: one enum whose variants name the failing
//! operation and carry the interface involved, plus a coarse [`ErrorKind`]
//! that front ends map to HTTP statuses or tool errors without downcasting.

use std::io;
use std::net::IpAddr;

pub use crate::error::ErrorKind;

/// Everything that can fail in the network module.
///
/// Messages never repeat the `#[source]`; print the chain joined with ": ".
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A name, MAC or forward failed validation.
    #[error(transparent)]
    Id(#[from] crate::ids::IdError),

    /// The host socket of a port forward cannot be bound.
    #[error("host port {forward} cannot be used; pick another host port")]
    HostPortInUse {
        /// The host side, `tcp:127.0.0.1:2222`.
        forward: String,
        /// The bind(2) error.
        #[source]
        source: io::Error,
    },

    /// An address/prefix pair given to `add_address` is not valid.
    #[error("invalid prefix length /{prefix_len} for address {address}")]
    InvalidPrefix {
        /// The address.
        address: IpAddr,
        /// The rejected prefix length.
        prefix_len: u8,
    },

    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun")]
    OpenTunDevice {
        /// The open(2) error.
        #[source]
        source: io::Error,
    },

    /// The TUNSETIFF ioctl that creates the tap failed.
    #[error("cannot create tap {name}")]
    CreateTap {
        /// The tap name.
        name: String,
        /// The ioctl error.
        #[source]
        source: io::Error,
    },

    /// The rtnetlink socket could not be opened.
    #[error("cannot open an rtnetlink socket")]
    Connect {
        /// The socket error.
        #[source]
        source: io::Error,
    },

    /// Looking up a link by name failed for a reason other than absence.
    #[error("cannot look up link {name}")]
    LookupLink {
        /// The link name.
        name: String,
        /// The netlink error.
        #[source]
        source: io::Error,
    },

    /// A link the operation needs does not exist.
    #[error("link {name} does not exist")]
    LinkMissing {
        /// The link name.
        name: String,
    },

    /// The configured bridge does not exist and may not be created.
    #[error(
        "bridge {name} does not exist: create it (ip link add {name} type bridge) \
         or set network.create_bridge = true"
    )]
    BridgeMissing {
        /// The bridge name.
        name: String,
    },

    /// A link with the bridge's name exists but is not a bridge.
    #[error("link {name} exists but is not a bridge")]
    NotABridge {
        /// The link name.
        name: String,
    },

    /// Creating a bridge failed.
    #[error("cannot create bridge {name}")]
    CreateBridge {
        /// The bridge name.
        name: String,
        /// The netlink error.
        #[source]
        source: io::Error,
    },

    /// Enslaving a link to a bridge and bringing it up failed.
    #[error("cannot attach {link} to bridge {bridge}")]
    AttachLink {
        /// The link being attached (usually a tap).
        link: String,
        /// The bridge.
        bridge: String,
        /// The netlink error.
        #[source]
        source: io::Error,
    },

    /// Setting a link administratively up failed.
    #[error("cannot bring link {name} up")]
    SetUp {
        /// The link name.
        name: String,
        /// The netlink error.
        #[source]
        source: io::Error,
    },

    /// Deleting a link failed.
    #[error("cannot delete link {name}")]
    DeleteLink {
        /// The link name.
        name: String,
        /// The netlink error.
        #[source]
        source: io::Error,
    },

    /// Reading a link's counters failed.
    #[error("cannot read statistics of link {name}")]
    ReadStats {
        /// The link name.
        name: String,
        /// The netlink error.
        #[source]
        source: io::Error,
    },

    /// The kernel answered without 64-bit statistics for a link.
    #[error("link {name} reported no 64-bit statistics")]
    StatsMissing {
        /// The link name.
        name: String,
    },

    /// Adding an IP address to a link failed.
    #[error("cannot add address {address}/{prefix_len} to link {name}")]
    AddAddress {
        /// The link name.
        name: String,
        /// The address.
        address: IpAddr,
        /// The prefix length.
        prefix_len: u8,
        /// The netlink error.
        #[source]
        source: io::Error,
    },

    /// Dumping the neighbour table failed.
    #[error("cannot list neighbours of {bridge}")]
    ListNeighbours {
        /// The bridge whose neighbours were listed.
        bridge: String,
        /// The netlink error.
        #[source]
        source: io::Error,
    },
}

impl NetworkError {
    /// Classifies the error for front ends.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Id(e) => e.kind(),
            Self::InvalidPrefix { .. } => ErrorKind::InvalidInput,
            Self::NotABridge { .. } => ErrorKind::Conflict,
            Self::LinkMissing { .. } | Self::BridgeMissing { .. } => ErrorKind::NotFound,
            Self::StatsMissing { .. } => ErrorKind::Internal,
            Self::OpenTunDevice { source } | Self::Connect { source } => {
                kind_of_io(source).unwrap_or(ErrorKind::Unavailable)
            }
            Self::CreateTap { source, .. }
            | Self::HostPortInUse { source, .. }
            | Self::LookupLink { source, .. }
            | Self::CreateBridge { source, .. }
            | Self::AttachLink { source, .. }
            | Self::SetUp { source, .. }
            | Self::DeleteLink { source, .. }
            | Self::ReadStats { source, .. }
            | Self::AddAddress { source, .. }
            | Self::ListNeighbours { source, .. } => kind_of_io(source).unwrap_or(ErrorKind::Internal),
        }
    }
}

/// Maps the errno values the kernel uses for interface operations.
fn kind_of_io(err: &io::Error) -> Option<ErrorKind> {
    match err.raw_os_error()? {
        libc::ENODEV | libc::ENOENT | libc::ENXIO => Some(ErrorKind::NotFound),
        libc::EEXIST | libc::EBUSY | libc::EADDRINUSE => Some(ErrorKind::Conflict),
        libc::EINVAL | libc::ERANGE | libc::ENAMETOOLONG => Some(ErrorKind::InvalidInput),
        libc::EPERM | libc::EACCES | libc::EOPNOTSUPP | libc::EAFNOSUPPORT => Some(ErrorKind::Unavailable),
        _ => None,
    }
}

/// Turns an rtnetlink error into an `io::Error`, keeping the kernel's errno
/// when there is one so [`NetworkError::kind`] can classify it.
pub(crate) fn netlink_io(err: rtnetlink::Error) -> io::Error {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other),
    }
}

/// The errno carried by an rtnetlink error, if the kernel sent one.
pub(crate) fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

/// Result alias for the network module.
pub type Result<T, E = NetworkError> = std::result::Result<T, E>;
