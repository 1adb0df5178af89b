//! Alerts in: the parsers of the three alert receivers' bodies, each turning hostile JSON
//! into bounded [`Alert`]s, and the webhook's HMAC signature check.
//!
//! * [`alertmanager`]: Prometheus Alertmanager's webhook payload (version 4), a batch.
//! * [`falco`]: one Falco event as its `http_output` posts it.
//! * [`webhook`]: ckvault's own small JSON for any other tool, and its signature scheme
//!   (`X-Ckvault-Timestamp`, `X-Ckvault-Signature`, [`webhook::ReplayGuard`]).
//!
//! The formats are described for users in docs/alerts.md. Every parser holds the same rules
//! on what a sender controls (the caller caps the body's size first):
//!
//! * The body must be a JSON object, nested at most [`MAX_DEPTH`] deep: a byte scan refuses
//!   deeper nesting before serde sees the body, so no input can exhaust the stack.
//! * Unknown fields are ignored (Alertmanager adds top-level fields between versions).
//! * A label map (Alertmanager labels and annotations, Falco `output_fields`, the
//!   webhook's `labels`) holds at most [`MAX_LABELS`] entries, or the body is refused
//!   (cutting would silently drop a label a rule or the evidence needs); the parser keeps
//!   at most that many in memory whatever the body holds. A key longer than
//!   [`MAX_LABEL_KEY`] bytes refuses the body; a value is cut to [`MAX_LABEL_VALUE`] bytes
//!   (marked `...`). Free text (summaries, Falco's `output`) is cut to [`MAX_TEXT`] bytes,
//!   words (names, priorities, fingerprints, times) to [`MAX_WORD`].
//! * Control and bidirectional-override characters in every kept string are escaped
//!   ([`crate::inspect::escape_control`]) before cutting, so logs, audit events and
//!   manifests never carry them raw.
//! * The target (namespace, pod, container, Falco's container ID) is never escaped or cut:
//!   it is looked up exactly in the runtime, so a value that is not a valid Kubernetes name
//!   (or container ID) refuses the body. An empty value counts as absent.
//! * Errors ([`AlertParseError`]) say what was wrong and echo at most [`MAX_SHOWN`] bytes of
//!   input, escaped.

pub mod alertmanager;
pub mod falco;
pub mod webhook;

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

pub use crate::vocab::{AlertSource, Priority};

/// Deepest nesting of arrays and objects a body may have (an Alertmanager payload is 4
/// deep: body, `alerts`, an alert, its `labels`).
pub const MAX_DEPTH: usize = 32;
/// Most entries in one label map (labels, annotations, Falco `output_fields`).
pub const MAX_LABELS: usize = 64;
/// Longest label key, in bytes; a longer one refuses the body.
pub const MAX_LABEL_KEY: usize = 256;
/// Longest label value kept, in bytes (after escaping); longer ones are cut.
pub const MAX_LABEL_VALUE: usize = 1024;
/// Longest free text kept (a summary, Falco's `output`), in bytes.
pub const MAX_TEXT: usize = 4096;
/// Longest word kept (alert name, priority, fingerprint, time, group key), in bytes.
pub const MAX_WORD: usize = 256;
/// Most input bytes an error message echoes.
pub const MAX_SHOWN: usize = 128;
/// Most alerts the Alertmanager parser keeps in memory for one body, whatever
/// `[alerts] max_alerts` says (the configuration refuses a larger `max_alerts`).
pub const MAX_ALERTS_CEILING: usize = 1000;

/// One alert as a receiver understood it: bounded, escaped, its target not yet resolved
/// through the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// The receiver it came through.
    pub source: AlertSource,
    /// Firing (true) or resolved; Falco events and webhook calls are always firing. Only
    /// firing alerts capture.
    pub firing: bool,
    /// The container it names.
    pub target: Target,
    /// Alertmanager's `alertname` label, or the Falco rule. None for the webhook.
    pub name: Option<String>,
    /// Falco's priority, or Alertmanager's `severity` label, as written (see
    /// [`Alert::priority_level`]).
    pub priority: Option<String>,
    /// Alertmanager's fingerprint, or the webhook's; Falco has none.
    pub fingerprint: Option<String>,
    /// Alertmanager labels, Falco `output_fields` (as text, nulls left out), the webhook's
    /// `labels`.
    pub labels: BTreeMap<String, String>,
    /// Alertmanager's `summary` annotation (or `description`), Falco's `output`, the
    /// webhook's `reason`.
    pub summary: Option<String>,
    /// Alertmanager's `startsAt`, Falco's `time`.
    pub starts_at: Option<String>,
}

impl Alert {
    /// The priority as a [`Priority`], when it names one (Falco's always do; of
    /// Alertmanager severities, `critical`, `warning`, `info` and `error` do).
    pub fn priority_level(&self) -> Option<Priority> {
        self.priority.as_deref().and_then(Priority::parse)
    }
}

/// The container an alert names, as the alert says it (checked to be valid names, not yet
/// looked up).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Kubernetes namespace.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Container name.
    pub container: Option<String>,
    /// Falco's `container.id`: the runtime's ID, 12 hex digits (Falco's short form) or 64.
    pub container_id: Option<String>,
}

/// Why an alert body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertParseError {
    /// Nothing but whitespace.
    #[error("the body is empty: send one JSON object")]
    Empty,
    /// Valid or not, the body is not a JSON object.
    #[error("the body is {found}, not a JSON object")]
    NotAnObject {
        /// What it starts with.
        found: &'static str,
    },
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    #[error("the body nests arrays and objects more than {max} deep; no alert format does")]
    TooDeep {
        /// [`MAX_DEPTH`].
        max: usize,
    },
    /// Not valid JSON, or a field of the wrong type.
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Json {
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's message, escaped and cut.
        message: String,
    },
    /// A field the format requires is missing (or null).
    #[error("{field} is missing: {hint}")]
    Missing {
        /// The field.
        field: &'static str,
        /// What it should be.
        hint: &'static str,
    },
    /// An Alertmanager payload of another version than 4.
    #[error(
        "Alertmanager payload version {found:?} is not supported: ckvault reads version \"4\" (Alertmanager 0.x webhook_config)"
    )]
    Version {
        /// The version sent, escaped and cut.
        found: String,
    },
    /// An alert status other than `firing` or `resolved`.
    #[error("alert {index}: status {found:?} is neither \"firing\" nor \"resolved\"")]
    Status {
        /// Index of the alert in `alerts`.
        index: usize,
        /// The status sent, escaped and cut.
        found: String,
    },
    /// More alerts than `[alerts] max_alerts`.
    #[error(
        "{count} alerts in one payload, more than max_alerts = {max}: set max_alerts: {max} (or less) on the Alertmanager webhook receiver so it truncates instead"
    )]
    TooManyAlerts {
        /// Alerts in the body.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A label map with more than [`MAX_LABELS`] entries.
    #[error("{map} has {count} entries, more than {max}")]
    TooManyLabels {
        /// Which map (`alerts[3].labels`, `output_fields`, ...).
        map: String,
        /// Entries in the body.
        count: usize,
        /// [`MAX_LABELS`].
        max: usize,
    },
    /// A label key longer than [`MAX_LABEL_KEY`].
    #[error("{map} has a key of {len} bytes, more than {max}: {shown:?}...")]
    LabelKeyTooLong {
        /// Which map.
        map: String,
        /// The key's length.
        len: usize,
        /// [`MAX_LABEL_KEY`].
        max: usize,
        /// Its start, escaped.
        shown: String,
    },
    /// A namespace, pod or container that is not a valid Kubernetes name.
    #[error(
        "{field} {value:?} is not a {rule}: the container is looked up by its exact name, so no container can have this one"
    )]
    BadTarget {
        /// The field or label it came from.
        field: String,
        /// The value, escaped and cut.
        value: String,
        /// What a valid one is.
        rule: &'static str,
    },
    /// A Falco priority that is not one of Falco's.
    #[error(
        "priority {found:?} is not a Falco priority (emergency, alert, critical, error, warning, notice, informational, debug)"
    )]
    Priority {
        /// The priority sent, escaped and cut.
        found: String,
    },
}

/// `s` escaped (control characters) and cut to `max` bytes, marked `...` when cut.
pub(crate) fn bounded(s: &str, max: usize) -> String {
    let mut out = crate::inspect::escape_control(s).into_owned();
    crate::vocab::cut_to(&mut out, max);
    out
}

/// `s` for an error message: escaped, at most [`MAX_SHOWN`] bytes.
pub(crate) fn shown(s: &str) -> String {
    bounded(s, MAX_SHOWN)
}

/// Refuses a body that is not an object, or nests deeper than [`MAX_DEPTH`], with one
/// pass over its bytes (strings skipped, escapes honoured).
pub(crate) fn check_shape(body: &[u8]) -> Result<(), AlertParseError> {
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    match first {
        None => return Err(AlertParseError::Empty),
        Some(b'{') => {}
        Some(b) => {
            let found = match b {
                b'[' => "an array",
                b'"' => "a string",
                b'-' | b'0'..=b'9' => "a number",
                b't' | b'f' => "a boolean",
                b'n' => "null",
                _ => "not JSON",
            };
            return Err(AlertParseError::NotAnObject { found });
        }
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
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
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(AlertParseError::TooDeep { max: MAX_DEPTH });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// [`check_shape`], then serde into `T`.
pub(crate) fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, AlertParseError> {
    check_shape(body)?;
    serde_json::from_slice(body).map_err(|e| AlertParseError::Json {
        line: e.line(),
        column: e.column(),
        message: bounded(&e.to_string(), 2 * MAX_SHOWN),
    })
}

/// A JSON array of which at most `N` elements are kept (the rest are read past without
/// being stored), and how many it had.
#[derive(Debug)]
pub(crate) struct Capped<T, const N: usize> {
    pub(crate) items: Vec<T>,
    pub(crate) total: usize,
}

impl<T, const N: usize> Default for Capped<T, N> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            total: 0,
        }
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Capped<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
            type Value = Capped<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Capped::<T, N>::default();
                loop {
                    if out.items.len() < N {
                        match seq.next_element::<T>()? {
                            Some(item) => out.items.push(item),
                            None => break,
                        }
                    } else if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                    out.total += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V::<T, N>(PhantomData))
    }
}

/// A JSON object of which at most [`MAX_LABELS`] entries are kept, and how many it had
/// (duplicate keys count each time).
#[derive(Debug)]
pub(crate) struct CappedMap<V> {
    pub(crate) entries: BTreeMap<String, V>,
    pub(crate) total: usize,
}

impl<V> Default for CappedMap<V> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            total: 0,
        }
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for CappedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = CappedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = CappedMap::<V>::default();
                while let Some(key) = map.next_key::<String>()? {
                    if out.entries.len() < MAX_LABELS {
                        let value = map.next_value::<V>()?;
                        out.entries.insert(key, value);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                    out.total += 1;
                }
                Ok(out)
            }
            // `"labels": null` reads as no labels.
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(CappedMap::default())
            }
        }
        d.deserialize_any(Vis::<V>(PhantomData))
    }
}

impl<V> CappedMap<V> {
    /// The entries with bounded, escaped keys, each value turned into kept text by
    /// `value` (None leaves the entry out); refuses too many entries or a long key.
    pub(crate) fn into_labels(
        self,
        map: &str,
        value: impl Fn(V) -> Option<String>,
    ) -> Result<BTreeMap<String, String>, AlertParseError> {
        if self.total > MAX_LABELS {
            return Err(AlertParseError::TooManyLabels {
                map: map.to_owned(),
                count: self.total,
                max: MAX_LABELS,
            });
        }
        let mut out = BTreeMap::new();
        for (k, v) in self.entries {
            if k.len() > MAX_LABEL_KEY {
                return Err(AlertParseError::LabelKeyTooLong {
                    map: map.to_owned(),
                    len: k.len(),
                    max: MAX_LABEL_KEY,
                    shown: shown(&k),
                });
            }
            if let Some(v) = value(v) {
                let key = crate::inspect::escape_control(&k).into_owned();
                out.insert(key, bounded(&v, MAX_LABEL_VALUE));
            }
        }
        Ok(out)
    }
}

/// What a target field must be.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NameRule {
    /// A DNS-1123 label (namespaces, containers): at most 63 of `a-z0-9-`, alphanumeric at
    /// both ends.
    Label,
    /// A DNS-1123 subdomain (pods): at most 253, labels joined by `.`.
    Subdomain,
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(|c| *c != b'-')
        && b.last().is_some_and(|c| *c != b'-')
}

/// A target field: None when absent or empty, refused when not a valid name.
pub(crate) fn target_name(
    field: &str,
    value: Option<&str>,
    rule: NameRule,
) -> Result<Option<String>, AlertParseError> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let (ok, what) = match rule {
        NameRule::Label => (
            is_dns_label(v),
            "Kubernetes name (at most 63 of a-z, 0-9 and '-', alphanumeric at both ends)",
        ),
        NameRule::Subdomain => (
            v.len() <= 253 && v.split('.').all(is_dns_label),
            "Kubernetes pod name (at most 253 of a-z, 0-9, '-' and '.')",
        ),
    };
    if ok {
        Ok(Some(v.to_owned()))
    } else {
        Err(AlertParseError::BadTarget {
            field: shown(field),
            value: shown(v),
            rule: what,
        })
    }
}

/// A kept word: escaped and cut to [`MAX_WORD`]; empty is absent.
pub(crate) fn word(v: Option<String>) -> Option<String> {
    v.filter(|v| !v.is_empty()).map(|v| bounded(&v, MAX_WORD))
}

/// Kept free text: escaped and cut to [`MAX_TEXT`]; empty is absent.
pub(crate) fn text(v: Option<String>) -> Option<String> {
    v.filter(|v| !v.is_empty()).map(|v| bounded(&v, MAX_TEXT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_scan_refuses_non_objects_and_deep_nesting_without_recursing() {
        assert_eq!(check_shape(b"  \n"), Err(AlertParseError::Empty));
        for (body, found) in [
            (&b"[]"[..], "an array"),
            (b"\"x\"", "a string"),
            (b"-1", "a number"),
            (b"true", "a boolean"),
            (b"null", "null"),
            (b"<html>", "not JSON"),
        ] {
            assert_eq!(
                check_shape(body),
                Err(AlertParseError::NotAnObject { found })
            );
        }
        // Brackets inside strings (and escaped quotes) do not count.
        let inside = format!("{{\"a\":\"\\\"{}\"}}", "[".repeat(10_000));
        assert_eq!(check_shape(inside.as_bytes()), Ok(()));
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(31), "]".repeat(31));
        assert_eq!(check_shape(ok.as_bytes()), Ok(()));
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(32), "]".repeat(32));
        assert_eq!(
            check_shape(deep.as_bytes()),
            Err(AlertParseError::TooDeep { max: MAX_DEPTH })
        );
    }

    #[test]
    fn target_names_must_be_kubernetes_names() {
        assert_eq!(
            target_name("pod", Some("web-7d9f.x-1"), NameRule::Subdomain),
            Ok(Some("web-7d9f.x-1".into()))
        );
        assert_eq!(target_name("pod", Some(""), NameRule::Subdomain), Ok(None));
        assert_eq!(target_name("pod", None, NameRule::Subdomain), Ok(None));
        for bad in [
            "Web",
            "-a",
            "a-",
            "a_b",
            "a\u{1b}[2J",
            "a..b",
            &"a".repeat(64),
        ] {
            assert!(
                target_name("namespace", Some(bad), NameRule::Label).is_err(),
                "{bad:?}"
            );
        }
        let e = target_name("pod", Some("x\u{7}\u{202e}y"), NameRule::Subdomain)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\u{7}') && !e.contains('\u{202e}'), "{e}");
        assert!(target_name("pod", Some(&"a".repeat(254)), NameRule::Subdomain).is_err());
    }
}
