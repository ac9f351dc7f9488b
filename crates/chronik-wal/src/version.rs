//! The on-disk format version, shared by every file kind (segment, frame, index, checkpoint): a reader
//! parses it through `TryFrom<u8>` and refuses versions it does not know rather than guessing a layout.

use crate::error::CorruptionKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatVersion {
    V1 = 1,
}

impl FormatVersion {
    /// The version this build writes.
    pub const CURRENT: FormatVersion = FormatVersion::V1;
}

impl TryFrom<u8> for FormatVersion {
    type Error = CorruptionKind;
    fn try_from(v: u8) -> Result<Self, CorruptionKind> {
        match v {
            1 => Ok(FormatVersion::V1),
            found => Err(CorruptionKind::UnsupportedVersion { found }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_versions_are_refused() {
        assert_eq!(FormatVersion::try_from(1), Ok(FormatVersion::V1));
        for v in [0u8, 2, 255] {
            assert_eq!(
                FormatVersion::try_from(v),
                Err(CorruptionKind::UnsupportedVersion { found: v })
            );
        }
    }
}
