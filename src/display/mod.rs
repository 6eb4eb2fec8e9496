//! The VM's screen and keyboard: VNC allocation and passwords (`vnc`), key names and
//! text to QMP key lists (`keys`), and PNG checks for screenshots taken with QMP
//! `screendump`.

pub mod keys;
pub mod vnc;

/// Display failures.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("VM {name:?} has no graphics device (profile {profile:?}); use the serial console instead")]
    NoDisplay { name: String, profile: String },
    #[error("VM {name:?} has no VNC server (display.vnc is off or the VM started without one)")]
    NoVnc { name: String },
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error("QEMU wrote a screenshot that is not a PNG ({reason})")]
    BadPng { reason: &'static str },
}

impl DisplayError {
    /// The kind front ends present.
    #[must_use]
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            DisplayError::NoDisplay { .. } | DisplayError::NoVnc { .. } => ErrorKind::Conflict,
            DisplayError::Keys(_) => ErrorKind::InvalidInput,
            DisplayError::BadPng { .. } => ErrorKind::Internal,
        }
    }
}

/// The PNG signature.
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Width and height from a PNG's IHDR chunk.
///
/// # Errors
/// [`DisplayError::BadPng`] when the bytes do not start like a PNG.
pub fn png_size(png: &[u8]) -> Result<(u32, u32), DisplayError> {
    if png.len() < 24 || png[..8] != PNG_SIGNATURE {
        return Err(DisplayError::BadPng { reason: "missing PNG signature" });
    }
    if &png[12..16] != b"IHDR" {
        return Err(DisplayError::BadPng { reason: "first chunk is not IHDR" });
    }
    let be = |i: usize| u32::from_be_bytes([png[i], png[i + 1], png[i + 2], png[i + 3]]);
    Ok((be(16), be(20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_size_reads_ihdr() {
        let mut png = PNG_SIGNATURE.to_vec();
        png.extend_from_slice(&[0, 0, 0, 13]);
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&720u32.to_be_bytes());
        png.extend_from_slice(&400u32.to_be_bytes());
        assert_eq!(png_size(&png).unwrap(), (720, 400));
    }

    #[test]
    fn ppm_is_not_a_png() {
        assert!(png_size(b"P6\n720 400\n255\n................").is_err());
    }
}
