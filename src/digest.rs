//! Content digests: `sha256:<64 lowercase hex>`, parsed once at the edge.
//!
//! A [`Digest`] is always well formed, so code that joins it into a path
//! (`blobs/sha256/<hex>`) cannot be steered outside the store.

use std::fmt;
use std::str::FromStr;

/// The only algorithm assetd stores today.
const PREFIX: &str = "sha256:";
/// Bytes in a SHA-256 digest.
const LEN: usize = 32;

/// A SHA-256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; LEN]);

/// Why a digest string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed digest {value:?}: {reason}")]
pub struct DigestError {
    /// The refused input, as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Digest {
    /// Wraps raw digest bytes, such as a hasher's output.
    pub fn from_bytes(bytes: [u8; LEN]) -> Self {
        Digest(bytes)
    }

    /// The raw digest bytes.
    pub fn bytes(&self) -> [u8; LEN] {
        self.0
    }

    /// The 64 lowercase hex digits, without the algorithm prefix.
    pub fn hex(&self) -> String {
        String::from(self.hex_str(&mut [0; 2 * LEN]))
    }

    /// The hex digits written into `buf`: no allocation (a hit formats the
    /// digest twice, and `hex::encode`'s char iterator showed in profiles).
    fn hex_str<'b>(&self, buf: &'b mut [u8; 2 * LEN]) -> &'b str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (pair, byte) in buf.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        // Only ASCII digits were written.
        std::str::from_utf8(buf).unwrap_or_default()
    }

    /// Parses the bare 64-hex form used as a file name in `blobs/sha256/`.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        let refuse = |reason| DigestError {
            value: hex.to_owned(),
            reason,
        };
        if hex.len() != 2 * LEN {
            return Err(refuse("want 64 hex digits after \"sha256:\""));
        }
        // Uppercase would make two names for one asset: refuse it.
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(refuse("want lowercase hex digits 0-9a-f"));
        }
        let mut bytes = [0u8; LEN];
        hex::decode_to_slice(hex, &mut bytes).map_err(|_| refuse("not hex"))?;
        Ok(Digest(bytes))
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(hex) = s.strip_prefix(PREFIX) else {
            return Err(DigestError {
                value: s.to_owned(),
                reason: "want \"sha256:\" followed by 64 lowercase hex digits",
            });
        };
        Digest::from_hex(hex).map_err(|e| DigestError {
            value: s.to_owned(),
            reason: e.reason,
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        f.write_str(self.hex_str(&mut [0; 2 * LEN]))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_round_trip() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::from_hex(&d.hex()).unwrap(), d);
        let other = Digest::from_bytes(std::array::from_fn(|i| (i * 37) as u8));
        assert_eq!(other.hex(), hex::encode(other.bytes()));
    }

    #[test]
    fn refuses_malformed_digests_naming_the_value() {
        for bad in [
            "",
            "sha256:",
            "md5:e3b0c44298fc1c149afbf4c8996fb924",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
            "sha256:../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "sha256:é3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
        ] {
            let err = bad.parse::<Digest>().unwrap_err();
            assert_eq!(err.value, bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
