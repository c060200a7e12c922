//! Pseudonymous holder identifiers.
//!
//! A holder is known to healthgate only by 16 random bytes chosen by the
//! issuer: no name, no ID-card number. Logs and API answers show a masked
//! hint of it ([`HolderId::masked`]) so that an inspector can match a phone
//! screen without the gateway printing full identifiers.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HolderId(pub [u8; 16]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("holder id must be 32 hex digits")]
pub struct ParseHolderError;

impl HolderId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// `a1b2…c3d4`: enough for a person to compare, too little to track.
    pub fn masked(&self) -> String {
        let b = &self.0;
        format!("{:02x}{:02x}…{:02x}{:02x}", b[0], b[1], b[14], b[15])
    }
}

impl FromStr for HolderId {
    type Err = ParseHolderError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        if s.len() != 32 {
            return Err(ParseHolderError);
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseHolderError)?;
        Ok(HolderId(out))
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HolderId({})", self.masked())
    }
}

impl Serialize for HolderId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for HolderId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_mask() {
        let h: HolderId = "00112233445566778899aabbccddeeff".parse().unwrap();
        assert_eq!(h.to_hex(), "00112233445566778899aabbccddeeff");
        assert_eq!(h.masked(), "0011…eeff");
        assert!("0011".parse::<HolderId>().is_err());
        assert!("zz112233445566778899aabbccddeeff".parse::<HolderId>().is_err());
    }
}
