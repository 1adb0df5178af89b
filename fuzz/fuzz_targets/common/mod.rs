//! What every alert parser promises of what it keeps (shared by the alert_* targets).
#![allow(dead_code)]

use ckvault::internal::capture::alert::{
    Alert, MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS, MAX_TEXT, MAX_WORD,
};

/// No raw control character, at most `max` bytes plus the `...` cut marker.
pub fn check_text(s: &str, max: usize) {
    assert!(
        s.len() <= max + 3,
        "{} bytes kept, more than {max}",
        s.len()
    );
    assert!(
        !s.chars().any(char::is_control),
        "raw control character in {s:?}"
    );
}

fn check_name(s: &Option<String>, max: usize) {
    if let Some(s) = s {
        assert!(!s.is_empty() && s.len() <= max, "{s:?}");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
            "{s:?}"
        );
    }
}

pub fn check_alert(a: &Alert) {
    check_name(&a.target.namespace, 63);
    check_name(&a.target.pod, 253);
    check_name(&a.target.container, 63);
    if let Some(id) = &a.target.container_id {
        assert!(id.len() == 12 || id.len() == 64, "{id:?}");
    }
    for w in [&a.name, &a.priority, &a.fingerprint, &a.starts_at]
        .into_iter()
        .flatten()
    {
        check_text(w, MAX_WORD);
    }
    if let Some(s) = &a.summary {
        check_text(s, MAX_TEXT);
    }
    assert!(a.labels.len() <= MAX_LABELS);
    for (k, v) in &a.labels {
        // Keys are escaped but not cut (a key over the limit refuses the body): escaping
        // at most grows a character to `\u{10ffff}`.
        assert!(k.len() <= MAX_LABEL_KEY * 10);
        assert!(!k.chars().any(char::is_control), "{k:?}");
        check_text(v, MAX_LABEL_VALUE);
    }
}

/// Errors are bounded and escaped.
pub fn check_error(e: &str) {
    assert!(e.len() < 1024, "{} bytes of error", e.len());
    assert!(
        !e.chars().any(char::is_control),
        "raw control character in {e:?}"
    );
}
