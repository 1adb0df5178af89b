//! ckvault's own alert JSON (`POST /v1/alerts/webhook`) for any tool that is neither
//! Alertmanager nor Falco, and the HMAC-SHA256 signature a sender may use instead of a
//! bearer token or client certificate.
//!
//! The body is one JSON object:
//!
//! ```json
//! {
//!   "namespace": "payments",              // required
//!   "pod": "web-7d9f8b6c5-x2kqz",         // required
//!   "container": "web",                   // optional
//!   "reason": "EDR: reverse shell to 203.0.113.9:4444",   // optional, free text
//!   "labels": {"tool": "edr", "severity": "critical"},   // optional, at most 64
//!   "fingerprint": "edr-4411"             // optional: the sender's ID of the alert
//! }
//! ```
//!
//! Unknown fields are ignored. The alert is always firing and has no name or priority, so
//! a `[[trigger]]` rule with `alerts` or `min_priority` never matches it; match it with
//! `sources = ["webhook"]`, `labels` and `namespaces`.
//!
//! A signed request carries two headers:
//!
//! * `X-Ckvault-Timestamp: UNIX_SECONDS` (decimal), the time it was signed;
//! * `X-Ckvault-Signature: sha256=HEX`, HEX the lower- or upper-case hex HMAC-SHA256 of
//!   `{timestamp}.{body}` (the timestamp header's value, a full stop, the body's bytes)
//!   under the sender's shared secret (`[[alerts.sender]] secret_file`), the scheme Stripe
//!   and GitHub-style senders use.
//!
//! [`verify_signature`] checks the MAC (in constant time), then refuses a timestamp older
//! than `max_age` (`[alerts] signature_max_age`, default 5 minutes) or more than `max_age`
//! ahead; [`ReplayGuard`] refuses a signature already accepted within that window.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{
    Alert, AlertParseError, AlertSource, CappedMap, NameRule, Target, from_json, target_name, text,
    word,
};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Ckvault-Signature";
/// The timestamp header.
pub const TIMESTAMP_HEADER: &str = "X-Ckvault-Timestamp";
/// How old (or how far ahead) a signed timestamp may be by default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// Signatures a [`ReplayGuard`] remembers by default.
pub const DEFAULT_REPLAY_CAPACITY: usize = 10_000;
/// Largest secret file read, in bytes.
pub const MAX_SECRET_FILE: u64 = 4096;
/// Shortest secret accepted, in bytes (`openssl rand -hex 32` gives 64).
pub const MIN_SECRET: usize = 16;

#[derive(Deserialize)]
struct RawWebhook {
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    labels: CappedMap<Option<String>>,
    fingerprint: Option<String>,
}

/// Parses one webhook body.
pub fn parse(body: &[u8]) -> Result<Alert, AlertParseError> {
    let w: RawWebhook = from_json(body)?;
    let namespace = target_name("namespace", w.namespace.as_deref(), NameRule::Label)?;
    if namespace.is_none() {
        return Err(AlertParseError::Missing {
            field: "namespace",
            hint: "the webhook names the container's namespace, pod and (optionally) container",
        });
    }
    let pod = target_name("pod", w.pod.as_deref(), NameRule::Subdomain)?;
    if pod.is_none() {
        return Err(AlertParseError::Missing {
            field: "pod",
            hint: "the webhook names the container's namespace, pod and (optionally) container",
        });
    }
    let container = target_name("container", w.container.as_deref(), NameRule::Label)?;
    Ok(Alert {
        source: AlertSource::Webhook,
        firing: true,
        target: Target {
            namespace,
            pod,
            container,
            container_id: None,
        },
        name: None,
        priority: None,
        fingerprint: word(w.fingerprint),
        labels: w.labels.into_labels("labels", |v| v)?,
        summary: text(w.reason),
        starts_at: None,
    })
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature header is not `sha256=` and 64 hex digits.
    #[error("X-Ckvault-Signature must be \"sha256=\" followed by 64 hex digits")]
    Malformed,
    /// The timestamp header is not decimal UNIX seconds.
    #[error("X-Ckvault-Timestamp must be the UNIX time in seconds, in decimal")]
    Timestamp,
    /// The MAC does not match.
    #[error(
        "the signature does not match: the sender's secret is not this sender's secret_file, it signed something other than \"{{timestamp}}.{{body}}\", or the body changed on the way"
    )]
    Mismatch,
    /// Signed too long ago.
    #[error(
        "signed {age_secs}s ago, more than the {max_secs}s allowed: a replay, or the sender's clock is wrong"
    )]
    Stale {
        /// How long ago.
        age_secs: u64,
        /// The allowed age.
        max_secs: u64,
    },
    /// Signed in the future.
    #[error(
        "signed {ahead_secs}s in the future, more than the {max_secs}s allowed: the sender's clock is wrong"
    )]
    Future {
        /// How far ahead.
        ahead_secs: u64,
        /// The allowed skew.
        max_secs: u64,
    },
    /// The same signature was accepted before, within the window.
    #[error("this signature was already accepted: a replay (sign each request anew)")]
    Replayed,
}

/// The 32-byte MAC a signature header carries.
fn signature_bytes(header_value: &str) -> Result<[u8; 32], SignatureError> {
    let hex_part = header_value
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let mut out = [0u8; 32];
    if hex_part.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| SignatureError::Malformed)?;
    Ok(out)
}

fn timestamp(timestamp_header: &str) -> Result<u64, SignatureError> {
    let t = timestamp_header.trim();
    if t.is_empty() || t.len() > 19 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::Timestamp);
    }
    t.parse().map_err(|_| SignatureError::Timestamp)
}

fn unix_secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn check_fresh(ts: u64, now: SystemTime, max_age: Duration) -> Result<(), SignatureError> {
    let now = unix_secs(now);
    let max_secs = max_age.as_secs();
    if ts <= now {
        let age_secs = now - ts;
        if age_secs > max_secs {
            return Err(SignatureError::Stale { age_secs, max_secs });
        }
    } else {
        let ahead_secs = ts - now;
        if ahead_secs > max_secs {
            return Err(SignatureError::Future {
                ahead_secs,
                max_secs,
            });
        }
    }
    Ok(())
}

/// Checks a signed request: `header_value` is the `X-Ckvault-Signature` header,
/// `timestamp_header` the `X-Ckvault-Timestamp` one, `body` the body as received. The MAC
/// is checked first (in constant time), then the timestamp's age against `max_age` both
/// ways. Pair it with a [`ReplayGuard`].
pub fn verify_signature(
    secret: &[u8],
    header_value: &str,
    timestamp_header: &str,
    body: &[u8],
    now: SystemTime,
    max_age: Duration,
) -> Result<(), SignatureError> {
    let sig = signature_bytes(header_value)?;
    let ts = timestamp(timestamp_header)?;
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(timestamp_header.trim().as_bytes());
    mac.update(b".");
    mac.update(body);
    // `verify_slice` compares in constant time (subtle).
    mac.verify_slice(&sig)
        .map_err(|_| SignatureError::Mismatch)?;
    check_fresh(ts, now, max_age)
}

/// The signature header a sender sends for `body` signed at `timestamp` (for tests and
/// for senders written in Rust).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Remembers the signatures accepted within the signature window and refuses a repeat.
///
/// Bounded: it holds at most `capacity` signatures; when full, the oldest one is forgotten
/// (a request signed that long ago could then be replayed until its timestamp goes stale).
/// Give it a capacity above the senders' request rate times `max_age`. The memory is
/// per process: replicas behind one address each keep their own.
pub struct ReplayGuard {
    max_age: Duration,
    capacity: usize,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    set: HashSet<[u8; 32]>,
    /// In order of acceptance: the signature and the UNIX second it goes stale.
    order: VecDeque<([u8; 32], u64)>,
}

impl ReplayGuard {
    /// A guard for signatures valid `max_age` either way, remembering at most `capacity`
    /// (at least 1).
    pub fn new(max_age: Duration, capacity: usize) -> Self {
        Self {
            max_age,
            capacity: capacity.max(1),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Admits a request whose signature [`verify_signature`] accepted: refuses it as
    /// [`SignatureError::Replayed`] if the same signature was admitted before and is not
    /// yet stale, else remembers it.
    pub fn admit(
        &self,
        header_value: &str,
        timestamp_header: &str,
        now: SystemTime,
    ) -> Result<(), SignatureError> {
        let sig = signature_bytes(header_value)?;
        let ts = timestamp(timestamp_header)?;
        let expires = ts.saturating_add(self.max_age.as_secs());
        let now = unix_secs(now);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Forget what has gone stale (in acceptance order; close enough, and bounded).
        while let Some(&(old, exp)) = seen.order.front() {
            if exp >= now {
                break;
            }
            seen.order.pop_front();
            seen.set.remove(&old);
        }
        if seen.set.contains(&sig) {
            return Err(SignatureError::Replayed);
        }
        while seen.order.len() >= self.capacity {
            if let Some((old, _)) = seen.order.pop_front() {
                seen.set.remove(&old);
            }
        }
        seen.set.insert(sig);
        seen.order.push_back((sig, expires));
        Ok(())
    }

    /// Signatures remembered now.
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .order
            .len()
    }

    /// True when none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a sender's secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Unreadable (or not a regular file).
    #[error("cannot read secret_file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Other users may read or write it.
    #[error(
        "secret_file {path} has mode {mode:o}: other users may read or change it; chmod o-rwx it (0600 or 0640), or mount the Kubernetes Secret with defaultMode 0400"
    )]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Larger than [`MAX_SECRET_FILE`].
    #[error("secret_file {path} is larger than {max} bytes: it should hold one secret")]
    TooLarge {
        /// The file.
        path: String,
        /// [`MAX_SECRET_FILE`].
        max: u64,
    },
    /// Empty, or shorter than [`MIN_SECRET`] (after trailing whitespace).
    #[error(
        "secret_file {path} holds {len} bytes, fewer than {min}: write a random secret into it (openssl rand -hex 32)"
    )]
    TooShort {
        /// The file.
        path: String,
        /// Its length without trailing whitespace.
        len: usize,
        /// [`MIN_SECRET`].
        min: usize,
    },
}

/// Reads a sender's shared secret (`[[alerts.sender]] secret_file`): a regular file that
/// other users cannot read or write, at most [`MAX_SECRET_FILE`] bytes, its trailing
/// whitespace (a newline from `echo`) dropped, at least [`MIN_SECRET`] bytes left.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let read = |source| SecretError::Read {
        path: shown.clone(),
        source,
    };
    let file = crate::fsutil::open_regular(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(SecretError::Exposed {
            path: shown.clone(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(SecretError::TooLarge {
            path: shown,
            max: MAX_SECRET_FILE,
        });
    }
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    if bytes.len() < MIN_SECRET {
        return Err(SecretError::TooShort {
            path: shown,
            len: bytes.len(),
            min: MIN_SECRET,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::alert::MAX_DEPTH;

    pub(crate) const EXAMPLE: &str =
        include_str!("../../../fuzz/corpus/alert_webhook/webhook-documented.json");

    #[test]
    fn the_documented_body() {
        let a = parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(a.source, AlertSource::Webhook);
        assert!(a.firing);
        assert_eq!(a.target.namespace.as_deref(), Some("payments"));
        assert_eq!(a.target.pod.as_deref(), Some("web-7d9f8b6c5-x2kqz"));
        assert_eq!(a.target.container.as_deref(), Some("web"));
        assert_eq!(
            a.summary.as_deref(),
            Some("EDR: reverse shell to 203.0.113.9:4444")
        );
        assert_eq!(a.labels["tool"], "edr");
        assert_eq!(a.fingerprint.as_deref(), Some("edr-4411"));
        assert_eq!((a.name, a.priority), (None, None));
        // The least: namespace and pod.
        let a = parse(br#"{"namespace":"a","pod":"b","extra":[1,{"x":null}]}"#).unwrap();
        assert_eq!(a.target.container, None);
        assert!(a.labels.is_empty());
    }

    #[test]
    fn missing_targets_and_hostile_bodies_are_refused() {
        assert!(matches!(
            parse(br#"{"pod":"b"}"#),
            Err(AlertParseError::Missing {
                field: "namespace",
                ..
            })
        ));
        assert!(matches!(
            parse(br#"{"namespace":"a","pod":""}"#),
            Err(AlertParseError::Missing { field: "pod", .. })
        ));
        assert!(matches!(
            parse(br#"{"namespace":"a","pod":"b","container":"../etc"}"#),
            Err(AlertParseError::BadTarget { .. })
        ));
        assert!(matches!(
            parse(b"\"payments\""),
            Err(AlertParseError::NotAnObject { .. })
        ));
        let deep = format!(
            r#"{{"namespace":"a","pod":"b","labels":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            parse(deep.as_bytes()),
            Err(AlertParseError::TooDeep { max: MAX_DEPTH })
        );
        let many: Vec<String> = (0..65).map(|i| format!("\"k{i}\":\"v\"")).collect();
        let body = format!(
            r#"{{"namespace":"a","pod":"b","labels":{{{}}}}}"#,
            many.join(",")
        );
        assert!(matches!(
            parse(body.as_bytes()),
            Err(AlertParseError::TooManyLabels { count: 65, .. })
        ));
        let a = parse(
            br#"{"namespace":"a","pod":"b","reason":"r\u001b[2J\u202e","labels":{"k":"v\u0007"}}"#,
        )
        .unwrap();
        assert_eq!(a.summary.as_deref(), Some("r\\u{1b}[2J\\u{202e}"));
        assert_eq!(a.labels["k"], "v\\u{7}");
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn signatures_good_bad_stale_future() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let body = EXAMPLE.as_bytes();
        let t = 1_796_608_771u64;
        let sig = sign(secret, t, body);
        let ts = t.to_string();
        let max = DEFAULT_MAX_AGE;
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert_eq!(
            verify_signature(secret, &sig, &ts, body, at(t), max),
            Ok(())
        );
        assert_eq!(
            verify_signature(
                secret,
                &sig.to_uppercase().replace("SHA256=", "sha256="),
                &ts,
                body,
                at(t + 300),
                max
            ),
            Ok(())
        );
        assert_eq!(
            verify_signature(secret, &sig, &ts, body, at(t - 300), max),
            Ok(())
        );
        assert_eq!(
            verify_signature(secret, &sig, &ts, body, at(t + 301), max),
            Err(SignatureError::Stale {
                age_secs: 301,
                max_secs: 300
            })
        );
        assert_eq!(
            verify_signature(secret, &sig, &ts, body, at(t - 301), max),
            Err(SignatureError::Future {
                ahead_secs: 301,
                max_secs: 300
            })
        );
        // Another secret, another body, another timestamp: mismatch (before freshness).
        assert_eq!(
            verify_signature(
                b"another secret, 32 bytes long...",
                &sig,
                &ts,
                body,
                at(t),
                max
            ),
            Err(SignatureError::Mismatch)
        );
        let mut changed = body.to_vec();
        changed[2] ^= 1;
        assert_eq!(
            verify_signature(secret, &sig, &ts, &changed, at(t), max),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(secret, &sig, &(t + 1).to_string(), body, at(t), max),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(secret, &sig, &ts, body, at(t + 10_000), max).unwrap_err(),
            SignatureError::Stale {
                age_secs: 10_000,
                max_secs: 300
            }
        );
        // Malformed headers.
        for bad in [
            "",
            "sha256=",
            "sha1=00",
            &sig[7..],
            &format!("{sig}00"),
            &format!("sha256={}", "zz".repeat(32)),
        ] {
            assert_eq!(
                verify_signature(secret, bad, &ts, body, at(t), max),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
        for bad in ["", "-1", "1e9", "99999999999999999999999", "12 34", "0x10"] {
            assert_eq!(
                verify_signature(secret, &sig, bad, body, at(t), max),
                Err(SignatureError::Timestamp),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_signature_matches_openssl() {
        // An independent implementation: `openssl dgst -sha256 -hmac SECRET` of the same
        // bytes, when openssl is installed (it is on the CI image).
        let Ok(out) = std::process::Command::new("sh")
            .arg("-c")
            .arg("printf '%s' '1796608771.{\"namespace\":\"a\",\"pod\":\"b\"}' | openssl dgst -sha256 -hmac 's3cr3t-s3cr3t-s3cr3t' -r")
            .output()
        else {
            return;
        };
        if !out.status.success() {
            return;
        }
        let hex = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned();
        assert_eq!(
            sign(
                b"s3cr3t-s3cr3t-s3cr3t",
                1_796_608_771,
                br#"{"namespace":"a","pod":"b"}"#
            ),
            format!("sha256={hex}")
        );
    }

    #[test]
    fn replays_are_refused_and_the_guard_stays_bounded() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let t = 1_796_608_771u64;
        let guard = ReplayGuard::new(DEFAULT_MAX_AGE, 3);
        let sig = |n: u64| sign(secret, t, format!("{{\"n\":{n}}}").as_bytes());
        assert_eq!(guard.admit(&sig(0), &t.to_string(), at(t)), Ok(()));
        assert_eq!(
            guard.admit(&sig(0), &t.to_string(), at(t + 1)),
            Err(SignatureError::Replayed)
        );
        assert_eq!(
            guard.admit(
                &sig(0).to_uppercase().replace("SHA256=", "sha256="),
                &t.to_string(),
                at(t + 1)
            ),
            Err(SignatureError::Replayed)
        );
        for n in 1..10 {
            assert_eq!(guard.admit(&sig(n), &t.to_string(), at(t)), Ok(()));
            assert!(guard.len() <= 3);
        }
        // The oldest were forgotten; the newest are still refused.
        assert_eq!(
            guard.admit(&sig(9), &t.to_string(), at(t)),
            Err(SignatureError::Replayed)
        );
        // Once stale, entries are dropped (and verify_signature refuses the stale ones).
        assert_eq!(
            guard.admit(
                &sign(secret, t + 1000, b"x"),
                &(t + 1000).to_string(),
                at(t + 1000)
            ),
            Ok(())
        );
        assert_eq!(guard.len(), 1);
        assert!(!guard.is_empty());
    }

    #[test]
    fn secret_files_must_be_private_bounded_and_not_empty() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let write = |bytes: &[u8], mode: u32| {
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(b"0123456789abcdef0123456789abcdef\n", 0o600);
        assert_eq!(
            read_secret(&p).unwrap(),
            b"0123456789abcdef0123456789abcdef"
        );
        write(b"0123456789abcdef0123456789abcdef\n", 0o644);
        assert!(matches!(
            read_secret(&p),
            Err(SecretError::Exposed { mode: 0o644, .. })
        ));
        write(b"\n", 0o600);
        let e = read_secret(&p).unwrap_err();
        assert!(matches!(e, SecretError::TooShort { len: 0, .. }), "{e}");
        write(&[b'a'; 5000], 0o400);
        assert!(matches!(read_secret(&p), Err(SecretError::TooLarge { .. })));
        assert!(matches!(
            read_secret(&dir.path().join("none")),
            Err(SecretError::Read { .. })
        ));
    }
}
