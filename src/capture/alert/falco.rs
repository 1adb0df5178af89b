//! One Falco event, as Falco's `http_output` posts it with `json_output: true` (one event
//! per request): `uuid`, `output`, `priority`, `rule`, `time`, `output_fields`, `source`,
//! `tags`, `hostname`. `rule` and `priority` are required; the rest is optional, unknown
//! fields are ignored.
//!
//! The container comes from `output_fields`: `k8s.ns.name`, `k8s.pod.name`,
//! `container.name` and `container.id` (12 hex digits in Falco's short form, or 64;
//! `host` and null mean the event is not in a container). Every `output_fields` value
//! becomes a label as text: strings as they are, numbers and booleans as JSON writes them,
//! lists and objects as compact JSON; nulls (Falco's `<NA>`) are left out. A Falco event
//! is always firing; it has no fingerprint.

use serde::Deserialize;

use super::{
    Alert, AlertParseError, AlertSource, CappedMap, NameRule, Priority, Target, from_json, shown,
    target_name, text, word,
};

#[derive(Deserialize)]
struct RawEvent {
    output: Option<String>,
    priority: Option<String>,
    rule: Option<String>,
    time: Option<String>,
    #[serde(default)]
    output_fields: CappedMap<serde_json::Value>,
}

/// Parses one Falco event.
pub fn parse(body: &[u8]) -> Result<Alert, AlertParseError> {
    let e: RawEvent = from_json(body)?;
    let rule = e.rule.filter(|r| !r.is_empty());
    if rule.is_none() {
        return Err(AlertParseError::Missing {
            field: "rule",
            hint: "a Falco event names its rule (json_output: true in falco.yaml)",
        });
    }
    let priority = match e.priority.as_deref() {
        Some(p) if Priority::parse(p).is_some() => p.to_owned(),
        Some(p) => return Err(AlertParseError::Priority { found: shown(p) }),
        None => {
            return Err(AlertParseError::Missing {
                field: "priority",
                hint: "a Falco event has its rule's priority",
            });
        }
    };
    let fields = &e.output_fields.entries;
    let field = |name: &'static str| -> Result<Option<&str>, AlertParseError> {
        match fields.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(AlertParseError::BadTarget {
                field: format!("output_fields.{name}"),
                value: shown(&other.to_string()),
                rule: "string",
            }),
        }
    };
    let target = Target {
        namespace: target_name(
            "output_fields.k8s.ns.name",
            field("k8s.ns.name")?,
            NameRule::Label,
        )?,
        pod: target_name(
            "output_fields.k8s.pod.name",
            field("k8s.pod.name")?,
            NameRule::Subdomain,
        )?,
        container: target_name(
            "output_fields.container.name",
            field("container.name")?,
            NameRule::Label,
        )?,
        container_id: container_id(field("container.id")?)?,
    };
    let labels = e.output_fields.into_labels("output_fields", |v| match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })?;
    Ok(Alert {
        source: AlertSource::Falco,
        firing: true,
        target,
        name: word(rule),
        priority: word(Some(priority)),
        fingerprint: None,
        labels,
        summary: text(e.output),
        starts_at: word(e.time),
    })
}

/// Falco's `container.id`: 12 or 64 lower-case hex digits; `host` (an event on the host)
/// and empty are absent.
fn container_id(v: Option<&str>) -> Result<Option<String>, AlertParseError> {
    match v {
        None | Some("") | Some("host") => Ok(None),
        Some(id)
            if (id.len() == 12 || id.len() == 64)
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(Some(id.to_owned()))
        }
        Some(other) => Err(AlertParseError::BadTarget {
            field: "output_fields.container.id".into(),
            value: shown(other),
            rule: "container ID (12 or 64 lower-case hex digits, or \"host\")",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::alert::{MAX_DEPTH, MAX_LABELS};

    /// The event Falco 0.38's http_output posts for the default rule "Terminal shell in
    /// container" (falco_rules.yaml), with the Kubernetes metadata fields.
    pub(crate) const TERMINAL_SHELL: &str =
        include_str!("../../../fuzz/corpus/alert_falco/falco-terminal-shell.json");

    #[test]
    fn a_terminal_shell_event() {
        let a = parse(TERMINAL_SHELL.as_bytes()).unwrap();
        assert_eq!(a.source, AlertSource::Falco);
        assert!(a.firing);
        assert_eq!(
            a.target,
            Target {
                namespace: Some("payments".into()),
                pod: Some("web-7d9f8b6c5-x2kqz".into()),
                container: Some("web".into()),
                container_id: Some("3ad7b26ded6d".into()),
            }
        );
        assert_eq!(a.name.as_deref(), Some("Terminal shell in container"));
        assert_eq!(a.priority.as_deref(), Some("Notice"));
        assert_eq!(a.priority_level(), Some(Priority::Notice));
        assert_eq!(a.fingerprint, None);
        assert_eq!(
            a.starts_at.as_deref(),
            Some("2026-12-07T01:59:31.512345678Z")
        );
        assert!(
            a.summary
                .as_deref()
                .unwrap()
                .contains("A shell was spawned")
        );
        // Scalars as text, nulls left out.
        assert_eq!(a.labels["proc.tty"], "34816");
        assert_eq!(a.labels["user.loginuid"], "-1");
        assert_eq!(a.labels["proc.is_exe_writable"], "true");
        assert_eq!(a.labels["evt.time"], "1796608771512345678");
        assert_eq!(a.labels["proc.name"], "bash");
        assert!(!a.labels.contains_key("k8s.pod.labels"));
    }

    #[test]
    fn container_ids_host_events_and_priorities() {
        let ev = |fields: &str, priority: &str| {
            format!(r#"{{"rule":"R","priority":"{priority}","output_fields":{{{fields}}}}}"#)
        };
        let full = "a".repeat(64);
        let a = parse(ev(&format!(r#""container.id":"{full}""#), "Critical").as_bytes()).unwrap();
        assert_eq!(a.target.container_id.as_deref(), Some(full.as_str()));
        assert_eq!(a.priority_level(), Some(Priority::Critical));
        let a =
            parse(ev(r#""container.id":"host","k8s.ns.name":null"#, "debug").as_bytes()).unwrap();
        assert_eq!(a.target, Target::default());
        // Without output_fields at all: no target.
        let a = parse(br#"{"rule":"R","priority":"Emergency"}"#).unwrap();
        assert_eq!(a.target, Target::default());
        for bad in [
            r#""container.id":"3AD7B26DED6D""#,
            r#""container.id":"3ad7b26ded6""#,
            r#""container.id":"../../x""#,
            r#""container.id":12"#,
        ] {
            assert!(
                matches!(
                    parse(ev(bad, "Notice").as_bytes()),
                    Err(AlertParseError::BadTarget { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse(ev("", "Severe").as_bytes()),
            Err(AlertParseError::Priority { .. })
        ));
        assert!(matches!(
            parse(br#"{"rule":"R"}"#),
            Err(AlertParseError::Missing {
                field: "priority",
                ..
            })
        ));
        assert!(matches!(
            parse(br#"{"priority":"Notice","output":"x"}"#),
            Err(AlertParseError::Missing { field: "rule", .. })
        ));
    }

    #[test]
    fn hostile_events_are_refused_cleanly() {
        let deep = format!(
            r#"{{"rule":"R","priority":"Notice","output_fields":{{"x":{}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            parse(deep.as_bytes()),
            Err(AlertParseError::TooDeep { max: MAX_DEPTH })
        );
        assert!(matches!(
            parse(b"[]"),
            Err(AlertParseError::NotAnObject { .. })
        ));
        let many: Vec<String> = (0..1000).map(|i| format!("\"f.{i}\":{i}")).collect();
        let body = format!(
            r#"{{"rule":"R","priority":"Notice","output_fields":{{{}}}}}"#,
            many.join(",")
        );
        assert_eq!(
            parse(body.as_bytes()),
            Err(AlertParseError::TooManyLabels {
                map: "output_fields".into(),
                count: 1000,
                max: MAX_LABELS
            })
        );
        // Control characters in the output, the rule and the fields are escaped; in the
        // namespace the event names, they refuse it.
        let body = r#"{"rule":"R\u001b[31m","priority":"Notice","output":"x\u001b]0;pwned\u0007\n","output_fields":{"proc.cmdline":"sh -c 'a\rb'","fd.name":["/tmp/\u0000"]}}"#;
        let a = parse(body.as_bytes()).unwrap();
        let all = format!("{a:?}");
        for c in ['\u{1b}', '\u{7}', '\n', '\r', '\u{0}'] {
            assert!(!all.contains(c), "{c:?} kept raw in {all}");
        }
        assert_eq!(a.labels["fd.name"], "[\"/tmp/\\\\u0000\"]");
        let body = r#"{"rule":"R","priority":"Notice","output_fields":{"k8s.ns.name":"kube-system\u0000"}}"#;
        assert!(matches!(
            parse(body.as_bytes()),
            Err(AlertParseError::BadTarget { .. })
        ));
        // Unknown fields, in any form, are tolerated.
        let body =
            r#"{"rule":"R","priority":"Notice","new":{"a":[1,{"b":2}]},"tags":"not a list"}"#;
        assert!(parse(body.as_bytes()).is_ok());
    }
}
