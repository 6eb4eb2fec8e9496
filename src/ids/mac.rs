//! `MacAddr`: validated unicast MAC addresses, and the stable per-NIC MACs
//! derived from a VM's UUID so a guest keeps its address across restarts.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::IdError;
use crate::error::quote;

/// The OUI QEMU uses for its own MACs; derived addresses start with it.
pub const QEMU_OUI: [u8; 3] = [0x52, 0x54, 0x00];

/// How many perturbed candidates [`MacAddr::pick_unique`] tries before giving up.
pub const MAC_CANDIDATES_MAX: u32 = 1024;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A unicast Ethernet MAC address.
///
/// Construction refuses multicast (and so broadcast) addresses and the
/// all-zero address: neither can be a NIC's own address. The QEMU prefix and
/// the locally-administered bit are not required, so users may override a
/// NIC's MAC with any real unicast address. Displays and serialises as
/// lower-case `52:54:00:aa:bb:cc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// Validates six octets as a NIC address.
    ///
    /// # Errors
    ///
    /// [`IdError::InvalidMac`] for multicast or all-zero addresses.
    pub fn new(octets: [u8; 6]) -> Result<Self, IdError> {
        let candidate = Self(octets);
        candidate.check().map_err(|reason| IdError::InvalidMac { input: quote(&candidate.to_string()), reason })?;
        Ok(candidate)
    }

    /// The six octets, most significant first.
    #[must_use]
    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Whether the address starts with QEMU's `52:54:00` prefix.
    #[must_use]
    pub fn has_qemu_prefix(self) -> bool {
        self.0[..3] == QEMU_OUI
    }

    /// The stable MAC for NIC `nic_index` of the VM `vm_uuid`.
    ///
    /// The address is `52:54:00` followed by 24 bits of a 64-bit FNV-1a hash
    /// over the 16 UUID bytes, the NIC index byte and a little-endian `u32`
    /// attempt counter (0 here), xor-folded to 24 bits (FNV's low bits alone
    /// mix poorly). FNV-1a is spelled out in this file rather than taken from
    /// `std::hash`, whose output may change between Rust releases; the input
    /// layout is part of the contract, since changing it would renumber every
    /// guest's NIC.
    #[must_use]
    pub fn derive(vm_uuid: &Uuid, nic_index: u8) -> Self {
        Self::candidate(vm_uuid, nic_index, 0)
    }

    /// The derived MAC for this NIC, or, if `in_use` holds it, the first of
    /// the deterministic perturbations (attempt 1, 2, ... in the hash input of
    /// [`MacAddr::derive`]) that is free.
    ///
    /// # Errors
    ///
    /// [`IdError::MacExhausted`] if [`MAC_CANDIDATES_MAX`] candidates are
    /// all taken, which only happens when `in_use` is absurdly large.
    pub fn pick_unique(vm_uuid: &Uuid, nic_index: u8, in_use: &HashSet<MacAddr>) -> Result<Self, IdError> {
        (0..MAC_CANDIDATES_MAX)
            .map(|attempt| Self::candidate(vm_uuid, nic_index, attempt))
            .find(|mac| !in_use.contains(mac))
            .ok_or(IdError::MacExhausted { nic_index, attempts: MAC_CANDIDATES_MAX })
    }

    fn candidate(vm_uuid: &Uuid, nic_index: u8, attempt: u32) -> Self {
        let hash = vm_uuid
            .as_bytes()
            .iter()
            .chain(std::iter::once(&nic_index))
            .chain(attempt.to_le_bytes().iter())
            .fold(FNV_OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME));
        let folded = (hash ^ (hash >> 24) ^ (hash >> 48)).to_be_bytes();
        // The QEMU OUI has the multicast bit clear, so the result is always valid.
        Self([QEMU_OUI[0], QEMU_OUI[1], QEMU_OUI[2], folded[5], folded[6], folded[7]])
    }

    fn check(self) -> Result<(), &'static str> {
        if self.0[0] & 0x01 != 0 {
            return Err("multicast bit set (first octet is odd)");
        }
        if self.0 == [0; 6] {
            return Err("all-zero address");
        }
        Ok(())
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [o0, o1, o2, o3, o4, o5] = self.0;
        write!(f, "{o0:02x}:{o1:02x}:{o2:02x}:{o3:02x}:{o4:02x}:{o5:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = IdError;

    /// Parses six colon-separated pairs of hex digits, in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| IdError::InvalidMac { input: quote(s), reason };
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(|| invalid("expected six octets"))?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid("each octet must be two hex digits"));
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| invalid("bad hex digit"))?;
        }
        if parts.next().is_some() {
            return Err(invalid("expected six octets"));
        }
        let mac = Self(octets);
        mac.check().map_err(invalid)?;
        Ok(mac)
    }
}

impl TryFrom<String> for MacAddr {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> Self {
        mac.to_string()
    }
}

impl schemars::JsonSchema for MacAddr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MacAddr".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A MAC address such as 52:54:00:12:34:56",
            "pattern": "^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::ErrorKind;

    const VM: Uuid = Uuid::from_u128(0x6f1d_2a40_3b7e_4c55_9a0e_1234_5678_9abc);

    #[test]
    fn upper_case_input_displays_lower_case() {
        let mac: MacAddr = "52:54:00:AA:bB:cc".parse().unwrap();

        assert_eq!(mac.to_string(), "52:54:00:aa:bb:cc");
    }

    #[test]
    fn multicast_mac_is_invalid_input() {
        let err = "01:00:5e:00:00:01".parse::<MacAddr>().unwrap_err();

        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn broadcast_mac_is_refused() {
        assert!("ff:ff:ff:ff:ff:ff".parse::<MacAddr>().is_err());
    }

    #[test]
    fn all_zero_mac_is_refused() {
        assert!(MacAddr::new([0; 6]).is_err());
    }

    #[test]
    fn five_octets_are_refused() {
        assert!("52:54:00:aa:bb".parse::<MacAddr>().is_err());
    }

    #[test]
    fn seven_octets_are_refused() {
        assert!("52:54:00:aa:bb:cc:dd".parse::<MacAddr>().is_err());
    }

    #[test]
    fn single_digit_octet_is_refused() {
        assert!("52:54:0:aa:bb:cc".parse::<MacAddr>().is_err());
    }

    #[test]
    fn non_qemu_unicast_override_is_accepted() {
        let mac: MacAddr = "00:1b:21:3c:4d:5e".parse().unwrap();

        assert!(!mac.has_qemu_prefix());
    }

    #[test]
    fn serde_round_trips_as_string() {
        let mac: MacAddr = "52:54:00:0a:0b:0c".parse().unwrap();

        let json = serde_json::to_string(&mac).unwrap();

        assert_eq!(json, "\"52:54:00:0a:0b:0c\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
    }

    #[test]
    fn deserialising_multicast_fails() {
        assert!(serde_json::from_str::<MacAddr>("\"33:33:00:00:00:01\"").is_err());
    }

    #[test]
    fn derived_mac_is_pinned() {
        // Computed independently (Python FNV-1a). If this changes, every
        // existing guest gets a new MAC.
        assert_eq!(MacAddr::derive(&VM, 0).to_string(), "52:54:00:fd:6e:32");
    }

    #[test]
    fn derived_mac_has_qemu_prefix() {
        assert!(MacAddr::derive(&VM, 3).has_qemu_prefix());
    }

    #[test]
    fn derived_macs_differ_per_nic() {
        assert_ne!(MacAddr::derive(&VM, 0), MacAddr::derive(&VM, 1));
    }

    #[test]
    fn derived_macs_differ_per_vm() {
        let other = Uuid::from_u128(0x6f1d_2a40_3b7e_4c55_9a0e_1234_5678_9abd);

        assert_ne!(MacAddr::derive(&VM, 0), MacAddr::derive(&other, 0));
    }

    #[test]
    fn pick_unique_returns_derived_mac_when_free() {
        let picked = MacAddr::pick_unique(&VM, 0, &HashSet::new()).unwrap();

        assert_eq!(picked, MacAddr::derive(&VM, 0));
    }

    #[test]
    fn pick_unique_perturbs_deterministically_on_collision() {
        let in_use = HashSet::from([MacAddr::derive(&VM, 0)]);

        let picked = MacAddr::pick_unique(&VM, 0, &in_use).unwrap();

        assert_eq!(picked, MacAddr::candidate(&VM, 0, 1));
        assert_ne!(picked, MacAddr::derive(&VM, 0));
    }

    #[test]
    fn pick_unique_skips_every_taken_candidate() {
        let in_use: HashSet<_> = (0..3).map(|a| MacAddr::candidate(&VM, 0, a)).collect();

        let picked = MacAddr::pick_unique(&VM, 0, &in_use).unwrap();

        assert_eq!(picked, MacAddr::candidate(&VM, 0, 3));
    }

    #[test]
    fn pick_unique_with_all_candidates_taken_is_conflict() {
        let in_use: HashSet<_> = (0..MAC_CANDIDATES_MAX).map(|a| MacAddr::candidate(&VM, 0, a)).collect();

        let err = MacAddr::pick_unique(&VM, 0, &in_use).unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Conflict);
    }
}
