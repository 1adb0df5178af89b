//! Record IDs: ULIDs (26 Crockford base32 characters, time-sortable, unique). IDs arrive
//! from users and URLs, so parsing is strict: an ID can never carry a path separator.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A record ID (ULID text form, upper case).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(String);

impl RecordId {
    /// A fresh ID for the current time.
    pub fn generate() -> Self {
        Self(ulid::Ulid::generate().to_string())
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Milliseconds since the Unix epoch encoded in the ID.
    pub fn timestamp_ms(&self) -> u64 {
        ulid::Ulid::from_string(&self.0)
            .map(|u| u.timestamp_ms())
            .unwrap_or(0)
    }
}

/// Why a string is not a record ID.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a record ID (expected 26 characters of Crockford base32, as `ckvault ls` prints)"
)]
pub struct BadRecordId(String);

impl FromStr for RecordId {
    type Err = BadRecordId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s.len() == 26
            && s.bytes().all(|b| {
                b.is_ascii_digit()
                    || (b.is_ascii_uppercase() && !matches!(b, b'I' | b'L' | b'O' | b'U'))
            })
            && ulid::Ulid::from_string(s).is_ok();
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadRecordId(s.chars().take(64).collect()))
        }
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RecordId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_refuse_paths() {
        let a = RecordId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = RecordId::generate();
        assert!(a < b);
        assert!(a.as_str().parse::<RecordId>().is_ok());
        for bad in [
            "../../etc/passwd",
            "",
            "01ARZ3NDEKTSV4RRFFQ69G5FA/",
            "01arz3ndektsv4rrffq69g5fav",
        ] {
            assert!(bad.parse::<RecordId>().is_err(), "{bad}");
        }
    }
}
