//! The JSON guard: every JSON document taken from an archive passes a size check and a
//! byte-level nesting-depth scan before serde_json sees it, and maps are read with
//! duplicate keys refused ([`StrictMap`]), since JSON parsers disagree on which copy wins.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeOwned, MapAccess, Visitor};

use super::Limits;
use super::error::InspectError;

/// Returns the byte offset where nesting first exceeds `max_depth`, if it does. Brackets
/// inside strings (with escapes) do not count. Malformed JSON is left to serde_json.
pub(crate) fn depth_exceeded(bytes: &[u8], max_depth: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth = depth.saturating_add(1);
                if depth > max_depth {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Checks size and depth, then deserialises. `member` names the document in errors.
pub(crate) fn parse_guarded<T: DeserializeOwned>(
    member: &str,
    bytes: &[u8],
    limits: &Limits,
) -> Result<T, InspectError> {
    let size = bytes.len() as u64;
    if size > limits.max_json_bytes {
        return Err(InspectError::JsonTooLarge {
            member: member.to_owned(),
            size,
            limit: limits.max_json_bytes,
        });
    }
    if let Some(at) = depth_exceeded(bytes, limits.max_json_depth) {
        return Err(InspectError::JsonTooDeep {
            member: member.to_owned(),
            limit: limits.max_json_depth,
            at,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| InspectError::JsonInvalid {
        member: member.to_owned(),
        reason: e.to_string(),
    })
}

/// A JSON object of strings with duplicate keys refused.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct StrictMap(pub BTreeMap<String, String>);

impl StrictMap {
    /// The value of `key`, if present.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

impl<'de> Deserialize<'de> for StrictMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string values without duplicate keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictMap, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    out.insert(k, v);
                }
                Ok(StrictMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scan_ignores_strings() {
        assert_eq!(depth_exceeded(br#"{"a":"[[[[[[\"[[["}"#, 1), None);
        assert_eq!(depth_exceeded(b"[[[]]]", 3), None);
        assert_eq!(depth_exceeded(b"[[[[]]]]", 3), Some(3));
    }

    #[test]
    fn strict_map_refuses_duplicates() {
        let ok: StrictMap = serde_json::from_str(r#"{"a":"1","b":"2"}"#).unwrap();
        assert_eq!(ok.get("b"), Some("2"));
        assert!(serde_json::from_str::<StrictMap>(r#"{"a":"1","a":"2"}"#).is_err());
        assert!(serde_json::from_str::<StrictMap>(r#"{"a":1}"#).is_err());
    }
}
