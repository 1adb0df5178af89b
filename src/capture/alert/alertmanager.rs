//! Prometheus Alertmanager's webhook payload (`webhook_config`, payload version 4, what
//! Alertmanager 0.25 sends): `version`, `groupKey`, `status`, `receiver`, and `alerts[]`,
//! each with `status` (`firing` or `resolved`), `labels`, `annotations`, `startsAt`,
//! `endsAt`, `generatorURL` and `fingerprint`. Other top-level fields (`truncatedAlerts`,
//! `groupLabels`, `commonLabels`, `commonAnnotations`, `externalURL`) are ignored.
//!
//! The container comes from three labels whose names are configurable ([`TargetLabels`],
//! defaults `namespace`, `pod`, `container` as cAdvisor and kube-state-metrics name them).
//! An alert without them still parses (its [`Target`] fields are None); the receiver
//! answers it as naming no container.
//!
//! At most `max_alerts` alerts (`[alerts] max_alerts`, default 100) are taken from one
//! payload; a payload with more is refused whole, with the advice to set the same
//! `max_alerts` on the Alertmanager receiver: Alertmanager then truncates the batch on its
//! side (and says so in `truncatedAlerts`), which keeps the first alerts instead of losing
//! the whole group.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    Alert, AlertParseError, AlertSource, Capped, CappedMap, MAX_ALERTS_CEILING, NameRule, Target,
    from_json, shown, target_name, text, word,
};

/// The label names the container is read from (`[alerts] namespace_label`, `pod_label`,
/// `container_label`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLabels {
    /// The namespace's label (default `namespace`).
    pub namespace: String,
    /// The pod's label (default `pod`).
    pub pod: String,
    /// The container's label (default `container`).
    pub container: String,
}

impl Default for TargetLabels {
    fn default() -> Self {
        Self {
            namespace: "namespace".into(),
            pod: "pod".into(),
            container: "container".into(),
        }
    }
}

impl TargetLabels {
    /// The label names `[alerts]` configures.
    pub fn from_config(c: &crate::config::AlertsConfig) -> Self {
        Self {
            namespace: c.namespace_label.clone(),
            pod: c.pod_label.clone(),
            container: c.container_label.clone(),
        }
    }
}

/// One webhook notification: the group and its alerts, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertmanagerBatch {
    /// `groupKey` (escaped, cut), empty when absent.
    pub group_key: String,
    /// `receiver` (escaped, cut).
    pub receiver: Option<String>,
    /// The alerts, firing and resolved.
    pub alerts: Vec<Alert>,
}

#[derive(Deserialize)]
struct Payload {
    version: Option<String>,
    #[serde(rename = "groupKey")]
    group_key: Option<String>,
    status: Option<String>,
    receiver: Option<String>,
    #[serde(default)]
    alerts: Option<Capped<RawAlert, MAX_ALERTS_CEILING>>,
}

#[derive(Deserialize)]
struct RawAlert {
    status: Option<String>,
    #[serde(default)]
    labels: CappedMap<Option<String>>,
    #[serde(default)]
    annotations: CappedMap<Option<String>>,
    #[serde(rename = "startsAt")]
    starts_at: Option<String>,
    fingerprint: Option<String>,
}

/// Parses one Alertmanager webhook body; `max_alerts` is `[alerts] max_alerts` (at most
/// [`MAX_ALERTS_CEILING`] are ever kept).
pub fn parse(
    body: &[u8],
    labels: &TargetLabels,
    max_alerts: usize,
) -> Result<AlertmanagerBatch, AlertParseError> {
    let p: Payload = from_json(body)?;
    match p.version.as_deref() {
        Some("4") => {}
        Some(v) => return Err(AlertParseError::Version { found: shown(v) }),
        None => {
            return Err(AlertParseError::Missing {
                field: "version",
                hint: "an Alertmanager webhook payload has \"version\": \"4\"",
            });
        }
    }
    let Some(raw) = p.alerts else {
        return Err(AlertParseError::Missing {
            field: "alerts",
            hint: "an Alertmanager webhook payload has an \"alerts\" array",
        });
    };
    let max = max_alerts.min(MAX_ALERTS_CEILING);
    if raw.total > max {
        return Err(AlertParseError::TooManyAlerts {
            count: raw.total,
            max,
        });
    }
    let mut alerts = Vec::with_capacity(raw.items.len());
    for (index, a) in raw.items.into_iter().enumerate() {
        alerts.push(alert(index, a, p.status.as_deref(), labels)?);
    }
    Ok(AlertmanagerBatch {
        group_key: word(p.group_key).unwrap_or_default(),
        receiver: word(p.receiver),
        alerts,
    })
}

fn alert(
    index: usize,
    a: RawAlert,
    group_status: Option<&str>,
    names: &TargetLabels,
) -> Result<Alert, AlertParseError> {
    let firing = match a.status.as_deref().or(group_status) {
        Some("firing") => true,
        Some("resolved") => false,
        Some(other) => {
            return Err(AlertParseError::Status {
                index,
                found: shown(other),
            });
        }
        None => {
            return Err(AlertParseError::Missing {
                field: "status",
                hint: "each alert is \"firing\" or \"resolved\"",
            });
        }
    };
    let raw_label =
        |name: &str| -> Option<&str> { a.labels.entries.get(name).and_then(|v| v.as_deref()) };
    let label_field = |name: &str| format!("alerts[{index}].labels.{name}");
    let target = Target {
        namespace: target_name(
            &label_field(&names.namespace),
            raw_label(&names.namespace),
            NameRule::Label,
        )?,
        pod: target_name(
            &label_field(&names.pod),
            raw_label(&names.pod),
            NameRule::Subdomain,
        )?,
        container: target_name(
            &label_field(&names.container),
            raw_label(&names.container),
            NameRule::Label,
        )?,
        container_id: None,
    };
    let name = word(raw_label("alertname").map(str::to_owned));
    let priority = word(raw_label("severity").map(str::to_owned));
    let annotations: BTreeMap<String, String> = a
        .annotations
        .into_labels(&format!("alerts[{index}].annotations"), |v| v)?;
    let summary = text(
        annotations
            .get("summary")
            .or_else(|| annotations.get("description"))
            .cloned(),
    );
    let labels = a
        .labels
        .into_labels(&format!("alerts[{index}].labels"), |v| v)?;
    Ok(Alert {
        source: AlertSource::Alertmanager,
        firing,
        target,
        name,
        priority,
        fingerprint: word(a.fingerprint),
        labels,
        summary,
        starts_at: word(a.starts_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::alert::{MAX_DEPTH, MAX_LABEL_VALUE, MAX_LABELS, Priority};

    /// What Alertmanager 0.25 posts for a group of two alerts (one firing, one resolved),
    /// as its webhook notifier marshals it.
    pub(crate) const TWO_ALERTS: &str =
        include_str!("../../../fuzz/corpus/alert_alertmanager/alertmanager-0.25-two-alerts.json");

    fn parse_str(s: &str) -> Result<AlertmanagerBatch, AlertParseError> {
        parse(s.as_bytes(), &TargetLabels::default(), 100)
    }

    #[test]
    fn a_real_payload_with_two_alerts() {
        let b = parse_str(TWO_ALERTS).unwrap();
        assert_eq!(
            b.group_key,
            "{}/{severity=~\"critical|warning\"}:{alertname=\"CryptoMinerDetected\"}"
        );
        assert_eq!(b.receiver.as_deref(), Some("ckvault"));
        assert_eq!(b.alerts.len(), 2);
        let a = &b.alerts[0];
        assert_eq!(a.source, AlertSource::Alertmanager);
        assert!(a.firing);
        assert_eq!(
            a.target,
            Target {
                namespace: Some("payments".into()),
                pod: Some("web-7d9f8b6c5-x2kqz".into()),
                container: Some("web".into()),
                container_id: None,
            }
        );
        assert_eq!(a.name.as_deref(), Some("CryptoMinerDetected"));
        assert_eq!(a.priority_level(), Some(Priority::Critical));
        assert_eq!(a.fingerprint.as_deref(), Some("5f2a9c1e0b7d4e3a"));
        assert_eq!(a.labels.get("team").map(String::as_str), Some("payments"));
        assert_eq!(a.labels.len(), 6);
        assert_eq!(
            a.summary.as_deref(),
            Some("Possible crypto miner in payments/web")
        );
        assert_eq!(a.starts_at.as_deref(), Some("2026-12-07T01:59:30.123Z"));
        let r = &b.alerts[1];
        assert!(!r.firing);
        assert_eq!(r.priority_level(), Some(Priority::Warning));
        assert_eq!(r.target.pod.as_deref(), Some("worker-0"));
    }

    #[test]
    fn label_names_are_configurable_and_missing_targets_parse_as_none() {
        let names = TargetLabels {
            namespace: "kubernetes_namespace".into(),
            pod: "kubernetes_pod_name".into(),
            container: "container_name".into(),
        };
        let body = r#"{"version":"4","alerts":[{"status":"firing","labels":{"alertname":"X","kubernetes_namespace":"ns1","kubernetes_pod_name":"p","container_name":"c","namespace":"other"}},{"status":"firing","labels":{"alertname":"NodeDown","instance":"node-a"}}]}"#;
        let b = parse(body.as_bytes(), &names, 100).unwrap();
        assert_eq!(b.group_key, "");
        assert_eq!(b.alerts[0].target.namespace.as_deref(), Some("ns1"));
        assert_eq!(b.alerts[0].target.pod.as_deref(), Some("p"));
        assert_eq!(b.alerts[0].target.container.as_deref(), Some("c"));
        assert_eq!(b.alerts[1].target, Target::default());
        // An empty label is absent, as in Prometheus; the description stands in for a
        // missing summary.
        let b = parse_str(r#"{"version":"4","alerts":[{"status":"firing","labels":{"namespace":"","pod":"p"},"annotations":{"description":"d"}}]}"#).unwrap();
        assert_eq!(b.alerts[0].target.namespace, None);
        assert_eq!(b.alerts[0].summary.as_deref(), Some("d"));
        assert_eq!(b.alerts[0].name, None);
    }

    #[test]
    fn wrong_or_missing_version_and_status_are_refused() {
        let e =
            parse_str(&TWO_ALERTS.replace("\"version\": \"4\"", "\"version\": \"5\"")).unwrap_err();
        assert_eq!(e, AlertParseError::Version { found: "5".into() });
        assert!(e.to_string().contains("ckvault reads version \"4\""), "{e}");
        assert!(matches!(
            parse_str(r#"{"alerts":[]}"#),
            Err(AlertParseError::Missing {
                field: "version",
                ..
            })
        ));
        assert!(matches!(
            parse_str(r#"{"version":4,"alerts":[]}"#),
            Err(AlertParseError::Json { .. })
        ));
        assert!(matches!(
            parse_str(r#"{"version":"4"}"#),
            Err(AlertParseError::Missing {
                field: "alerts",
                ..
            })
        ));
        let e = parse_str(r#"{"version":"4","alerts":[{"status":"pending"}]}"#).unwrap_err();
        assert!(matches!(e, AlertParseError::Status { index: 0, .. }), "{e}");
        // An alert without a status takes the group's.
        let b = parse_str(r#"{"version":"4","status":"resolved","alerts":[{}]}"#).unwrap();
        assert!(!b.alerts[0].firing);
    }

    #[test]
    fn more_alerts_than_max_alerts_refuse_the_payload() {
        let one = r#"{"status":"firing","labels":{"namespace":"a","pod":"b"}}"#;
        let body = |n: usize| format!(r#"{{"version":"4","alerts":[{}]}}"#, vec![one; n].join(","));
        assert_eq!(parse_str(&body(100)).unwrap().alerts.len(), 100);
        let e = parse_str(&body(101)).unwrap_err();
        assert_eq!(
            e,
            AlertParseError::TooManyAlerts {
                count: 101,
                max: 100
            }
        );
        assert!(e.to_string().contains("max_alerts"), "{e}");
        // Far past the ceiling: counted without being kept.
        let e = parse(body(5000).as_bytes(), &TargetLabels::default(), 1_000_000).unwrap_err();
        assert_eq!(
            e,
            AlertParseError::TooManyAlerts {
                count: 5000,
                max: MAX_ALERTS_CEILING
            }
        );
    }

    #[test]
    fn hostile_bodies_are_refused_cleanly() {
        // 100,000 nested arrays: refused by the byte scan, no stack overflow.
        let deep = format!(
            r#"{{"version":"4","alerts":[{}{}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            parse_str(&deep),
            Err(AlertParseError::TooDeep { max: MAX_DEPTH })
        );
        // Also as an unknown field.
        let deep = format!(
            r#"{{"version":"4","x":{}1{},"alerts":[]}}"#,
            "{\"a\":".repeat(100_000),
            "}".repeat(100_000)
        );
        assert!(matches!(
            parse_str(&deep),
            Err(AlertParseError::TooDeep { .. })
        ));
        // Not an object.
        assert!(matches!(
            parse_str(r#"[{"version":"4"}]"#),
            Err(AlertParseError::NotAnObject { found: "an array" })
        ));
        // Too many labels: refused, naming the map.
        let labels: Vec<String> = (0..=MAX_LABELS)
            .map(|i| format!("\"l{i}\":\"v\""))
            .collect();
        let body = format!(
            r#"{{"version":"4","alerts":[{{"status":"firing","labels":{{{}}}}}]}}"#,
            labels.join(",")
        );
        let e = parse_str(&body).unwrap_err();
        assert_eq!(
            e,
            AlertParseError::TooManyLabels {
                map: "alerts[0].labels".into(),
                count: MAX_LABELS + 1,
                max: MAX_LABELS
            }
        );
        // A long key refuses; a long value is cut, marked.
        let body = format!(
            r#"{{"version":"4","alerts":[{{"status":"firing","labels":{{"{}":"v"}}}}]}}"#,
            "k".repeat(300)
        );
        assert!(matches!(
            parse_str(&body),
            Err(AlertParseError::LabelKeyTooLong { len: 300, .. })
        ));
        let body = format!(
            r#"{{"version":"4","alerts":[{{"status":"firing","labels":{{"k":"{}"}},"annotations":{{"summary":"{}"}}}}]}}"#,
            "v".repeat(5000),
            "s".repeat(100_000)
        );
        let b = parse_str(&body).unwrap();
        let v = &b.alerts[0].labels["k"];
        assert!(
            v.len() <= MAX_LABEL_VALUE + 3 && v.ends_with("..."),
            "{}",
            v.len()
        );
        assert!(b.alerts[0].summary.as_ref().unwrap().len() <= super::super::MAX_TEXT + 3);
        // Control characters are escaped in what is kept.
        let body = r#"{"version":"4","groupKey":"g\u001b]0;x\u0007","alerts":[{"status":"firing","labels":{"alertname":"A\u001b[2J","k\n":"v\u202e"},"annotations":{"summary":"s\r\n"},"fingerprint":"f\u0000"}]}"#;
        let b = parse_str(body).unwrap();
        let a = &b.alerts[0];
        let all = format!("{b:?}");
        for c in ['\u{1b}', '\u{7}', '\n', '\r', '\u{0}', '\u{202e}'] {
            assert!(!all.contains(c), "{c:?} kept raw in {all}");
        }
        assert_eq!(a.name.as_deref(), Some("A\\u{1b}[2J"));
        assert_eq!(
            a.labels.get("k\\u{a}").map(String::as_str),
            Some("v\\u{202e}")
        );
        // A control character in a target label refuses the body (it is looked up exactly).
        let e = parse_str(r#"{"version":"4","alerts":[{"status":"firing","labels":{"namespace":"a\u001b[2J","pod":"p"}}]}"#).unwrap_err();
        assert!(
            matches!(&e, AlertParseError::BadTarget { field, .. } if field == "alerts[0].labels.namespace"),
            "{e}"
        );
        assert!(!e.to_string().contains('\u{1b}'));
        // Unknown fields anywhere are tolerated; a label of the wrong type is not.
        let b = parse_str(r#"{"version":"4","future":{"a":[1,2,{"b":null}]},"alerts":[{"status":"firing","new":true,"labels":{"pod":"p"}}]}"#).unwrap();
        assert_eq!(b.alerts[0].target.pod.as_deref(), Some("p"));
        let e =
            parse_str(r#"{"version":"4","alerts":[{"status":"firing","labels":{"pod":["p"]}}]}"#)
                .unwrap_err();
        assert!(matches!(e, AlertParseError::Json { .. }), "{e}");
        // An error echoing a huge wrong-typed value stays bounded and escaped.
        let body = format!(
            r#"{{"version":"4","alerts":[{{"status":"firing","labels":"{}\u001b"}}]}}"#,
            "z".repeat(100_000)
        );
        let e = parse_str(&body).unwrap_err().to_string();
        assert!(
            e.len() < 400 && !e.contains('\u{1b}') && e.contains("zzzz"),
            "{e}"
        );
        // Trailing garbage and truncated JSON.
        assert!(matches!(
            parse_str(r#"{"version":"4","alerts":[]} x"#),
            Err(AlertParseError::Json { .. })
        ));
        assert!(matches!(
            parse_str(r#"{"version":"4","alerts":["#),
            Err(AlertParseError::Json { .. })
        ));
    }
}
