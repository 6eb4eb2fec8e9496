//! Tap devices made through `/dev/net/tun`, owned as a file descriptor.
//!
//! rtnetlink cannot create taps (the kernel answers `EOPNOTSUPP` to a `tun`
//! link), so this uses the TUNSETIFF ioctl. The tap is deliberately not
//! persistent: it exists exactly as long as some process holds its fd, so
//! once QEMU (which inherits the fd) exits and this process has dropped its
//! [`Tap`], the kernel removes the interface and nothing can leak.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use libc::c_char;

use super::error::NetworkError;
use crate::ids::IfName;

const TUN_DEVICE: &str = "/dev/net/tun";

// `ifr_flags` is a C short and IFF_TUN_EXCL is its sign bit, so the flags are
// kept as u16 bit patterns here; libc only has them as `c_int`.
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
const IFF_TUN_EXCL: u16 = 0x8000;
const _: () = assert!(
    IFF_TAP as i32 == libc::IFF_TAP
        && IFF_NO_PI as i32 == libc::IFF_NO_PI
        && IFF_VNET_HDR as i32 == libc::IFF_VNET_HDR
        && IFF_TUN_EXCL as i32 == libc::IFF_TUN_EXCL
);

/// `struct ifreq` as TUNSETIFF reads it: the name, the flags, and padding up
/// to the size of the union (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [c_char; libc::IFNAMSIZ],
    flags: u16,
    _pad: [u8; 22],
}

// The kernel reads at most `sizeof(struct ifreq)` bytes; ours must not be shorter.
const _: () = assert!(size_of::<IfReq>() >= size_of::<libc::ifreq>());

// TUNSETIFF is declared `_IOW('T', 202, int)` but really takes a
// `struct ifreq *`, hence a "bad" ioctl with the kernel's request number. It
// is read-write rather than write-only because the kernel copies the
// resulting name back into the struct.
nix::ioctl_readwrite_bad!(tun_set_iff, libc::TUNSETIFF, IfReq);

/// An open, non-persistent tap interface.
///
/// Dropping it closes the fd; if no other process holds a copy, the kernel
/// deletes the interface.
///
/// # Passing the fd to QEMU
///
/// The fd is opened with `O_CLOEXEC`, so it is not leaked into unrelated
/// children. To hand it to QEMU, clear `FD_CLOEXEC` in the child only, e.g.
/// in a `CommandExt::pre_exec` hook:
/// `libc::fcntl(raw, libc::F_SETFD, 0)` (async-signal-safe), then pass
/// `-netdev tap,id=..,fd=<raw>`. Do not add `vnet_hdr=`: QEMU 7.2 refuses it
/// together with `fd=` and instead reads `IFF_VNET_HDR` from the fd itself.
/// Once QEMU is spawned, drop the [`Tap`] so QEMU holds the only reference
/// and the tap goes with it.
#[derive(Debug)]
pub struct Tap {
    name: IfName,
    fd: OwnedFd,
    vnet_hdr: bool,
}

impl Tap {
    /// Creates the tap `name` with `IFF_TAP | IFF_NO_PI`, plus
    /// `IFF_VNET_HDR` when `vnet_hdr` is set (QEMU then offloads checksums
    /// and GSO to the tap; every frame read or written on the fd carries a
    /// 10-byte virtio-net header).
    ///
    /// The interface is created in the network namespace of the calling
    /// thread, is down, and is not attached to any bridge. `IFF_TUN_EXCL` is
    /// set, so an existing interface with this name is never adopted.
    ///
    /// # Errors
    ///
    /// [`NetworkError::OpenTunDevice`] when `/dev/net/tun` is missing or not
    /// accessible; [`NetworkError::CreateTap`] when the ioctl fails, e.g.
    /// `EBUSY` (kind `Conflict`) when the name is taken or `EPERM`
    /// (kind `Unavailable`) without `CAP_NET_ADMIN`.
    pub fn create(name: &IfName, vnet_hdr: bool) -> Result<Self, NetworkError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|source| NetworkError::OpenTunDevice { source })?;
        let fd = OwnedFd::from(file);

        let mut flags = IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL;
        if vnet_hdr {
            flags |= IFF_VNET_HDR;
        }
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags, _pad: [0; 22] };
        // IfName guarantees at most 15 ASCII bytes, so the name stays NUL-terminated.
        for (dst, src) in req.name.iter_mut().zip(name.as_str().bytes()) {
            *dst = c_char::from_ne_bytes([src]);
        }

        // SAFETY: `fd` is an open /dev/net/tun descriptor and `req` is a live,
        // exclusively borrowed `struct ifreq` at least as large as the
        // kernel's, which the kernel reads and writes only during the call.
        unsafe { tun_set_iff(fd.as_raw_fd(), &raw mut req) }
            .map_err(|errno| NetworkError::CreateTap { name: name.to_string(), source: io::Error::from(errno) })?;

        Ok(Self { name: name.clone(), fd, vnet_hdr })
    }

    /// The interface name.
    #[must_use]
    pub fn name(&self) -> &IfName {
        &self.name
    }

    /// Whether frames on this fd carry a virtio-net header.
    #[must_use]
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Gives up the [`Tap`] wrapper and returns the owned fd.
    #[must_use]
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Tap {
    /// The raw fd, for building QEMU's `fd=` option; see the type docs for
    /// how to make it survive `exec`.
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
