//! What captures: the `[[trigger]]` rules of the configuration. Each is of one [`Kind`]:
//! an alert rule, matched against a parsed [`Alert`] ([`matching`]), or one of the node's
//! own (before a stop, a schedule, a threshold), which select running containers by their
//! namespace, pod labels and name ([`selecting`]). Alert matching skips the node's rules and
//! the node's triggers skip alert rules.
//!
//! For alert rules:
//!
//! The rules are tried in the order the configuration lists them and the first that
//! matches decides (its name, limits and `hold` apply); later rules are not consulted. A
//! rule matches a firing alert when every condition it sets holds; an empty list (or an
//! absent key) holds for any alert:
//!
//! * `sources`: the receiver the alert came through.
//! * `alerts`: the alert's name (Alertmanager's `alertname`, the Falco rule), exactly. A
//!   webhook alert has no name, so a rule with `alerts` never matches one.
//! * `min_priority`: the alert's priority is at least this (Falco's priority; for
//!   Alertmanager the `severity` label when it is a priority word: `critical`, `warning`,
//!   `info`, `error` are). An alert without one (a webhook alert, a `severity` like
//!   `page`) does not match a rule that sets it.
//! * `labels`: each label present with exactly this value (for Falco, `output_fields` as
//!   text, e.g. `"proc.name" = "bash"`).
//! * `namespaces`: the namespace matches one of the globs (`*` any run, `?` one
//!   character); the caller passes the namespace it resolved through the runtime.
//!
//! A resolved alert matches no rule. With no rules configured, no alert captures: each
//! is answered "no rule matched".

use std::collections::HashMap;
use std::time::Duration;

use super::alert::Alert;
pub use crate::config::TriggerRule;

/// What a rule reacts to (the configuration checks that a rule is of one kind).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// An alert through a receiver.
    Alert,
    /// The kubelet stopping the container (`on_stop = true`).
    BeforeStop,
    /// An interval (`every`).
    Schedule(Duration),
    /// Memory held above a size or a share of the limit (`memory_above`, `memory_share`)
    /// for `sustained` (`None`: one poll is enough).
    Threshold {
        /// `memory_above`, in bytes.
        above: Option<u64>,
        /// `memory_share`.
        share: Option<f64>,
        /// `sustained`.
        sustained: Option<Duration>,
    },
}

impl Kind {
    /// The kind of `rule`.
    pub fn of(rule: &TriggerRule) -> Self {
        if rule.on_stop {
            Self::BeforeStop
        } else if let Some(every) = rule.every {
            Self::Schedule(every)
        } else if rule.memory_above.is_some() || rule.memory_share.is_some() {
            Self::Threshold {
                above: rule.memory_above.map(|b| b.bytes()),
                share: rule.memory_share,
                sustained: rule.sustained,
            }
        } else {
            Self::Alert
        }
    }
}

/// A running container as the node's rules see it (from the runtime, never a request).
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Its namespace (kubelet's label).
    pub namespace: &'a str,
    /// Its container name (kubelet's label).
    pub container: &'a str,
    /// Its pod sandbox's labels.
    pub pod_labels: &'a HashMap<String, String>,
}

/// Whether node rule `rule` selects `subject`: its namespace globs, pod labels and
/// container globs all hold.
pub fn selects(rule: &TriggerRule, subject: &Subject<'_>) -> bool {
    let glob = |globs: &[String], v: &str| {
        globs.is_empty() || globs.iter().any(|g| crate::policy::glob::matches(g, v))
    };
    glob(&rule.namespaces, subject.namespace)
        && glob(&rule.containers, subject.container)
        && rule
            .pod_labels
            .iter()
            .all(|(k, v)| subject.pod_labels.get(k) == Some(v))
}

/// The first rule of `rules` for which `kind` holds that selects `subject`.
pub fn selecting<'a>(
    rules: &'a [TriggerRule],
    kind: impl Fn(Kind) -> bool,
    subject: &Subject<'_>,
) -> Option<&'a TriggerRule> {
    rules
        .iter()
        .find(|r| kind(Kind::of(r)) && selects(r, subject))
}

/// The first alert rule in `rules` that `alert`, in namespace `namespace`, matches.
pub fn matching<'a>(
    rules: &'a [TriggerRule],
    alert: &Alert,
    namespace: &str,
) -> Option<&'a TriggerRule> {
    if !alert.firing {
        return None;
    }
    rules
        .iter()
        .find(|r| Kind::of(r) == Kind::Alert && matches(r, alert, namespace))
}

fn matches(rule: &TriggerRule, alert: &Alert, namespace: &str) -> bool {
    if !rule.sources.is_empty() && !rule.sources.contains(&alert.source) {
        return false;
    }
    if !rule.alerts.is_empty()
        && !alert
            .name
            .as_ref()
            .is_some_and(|n| rule.alerts.iter().any(|a| a == n))
    {
        return false;
    }
    if let Some(min) = rule.min_priority
        && alert.priority_level().is_none_or(|p| p < min)
    {
        return false;
    }
    if !rule
        .labels
        .iter()
        .all(|(k, v)| alert.labels.get(k) == Some(v))
    {
        return false;
    }
    rule.namespaces.is_empty()
        || rule
            .namespaces
            .iter()
            .any(|g| crate::policy::glob::matches(g, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::alert::{AlertSource, Priority, Target};
    use std::collections::BTreeMap;

    fn alert(source: AlertSource, name: Option<&str>, priority: Option<&str>) -> Alert {
        Alert {
            source,
            firing: true,
            target: Target::default(),
            name: name.map(str::to_owned),
            priority: priority.map(str::to_owned),
            fingerprint: None,
            labels: BTreeMap::from([
                ("team".to_owned(), "payments".to_owned()),
                ("proc.name".to_owned(), "bash".to_owned()),
            ]),
            summary: None,
            starts_at: None,
        }
    }

    fn rule(name: &str) -> TriggerRule {
        TriggerRule {
            name: name.into(),
            ..TriggerRule::default()
        }
    }

    #[test]
    fn no_rules_capture_nothing_and_an_empty_rule_everything_firing() {
        let a = alert(AlertSource::Falco, Some("R"), Some("Notice"));
        assert!(matching(&[], &a, "payments").is_none());
        let all = [rule("all")];
        assert_eq!(matching(&all, &a, "payments").unwrap().name, "all");
        let mut resolved = a.clone();
        resolved.firing = false;
        assert!(matching(&all, &resolved, "payments").is_none());
    }

    #[test]
    fn priority_thresholds() {
        let r = [TriggerRule {
            min_priority: Some(Priority::Warning),
            ..rule("warn+")
        }];
        for (p, want) in [
            ("Emergency", true),
            ("Critical", true),
            ("Warning", true),
            ("warning", true),
            ("Notice", false),
            ("Informational", false),
            ("info", false),
            ("Debug", false),
            ("page", false),
        ] {
            let a = alert(AlertSource::Falco, Some("R"), Some(p));
            assert_eq!(matching(&r, &a, "n").is_some(), want, "{p}");
        }
        // Alertmanager severities compare when they are priority words.
        let am = |sev| alert(AlertSource::Alertmanager, Some("A"), Some(sev));
        assert!(matching(&r, &am("critical"), "n").is_some());
        assert!(matching(&r, &am("info"), "n").is_none());
        assert!(matching(&r, &am("none"), "n").is_none());
        // No priority at all (a webhook alert) never meets a threshold.
        assert!(matching(&r, &alert(AlertSource::Webhook, None, None), "n").is_none());
    }

    #[test]
    fn sources_names_labels_and_namespace_globs() {
        let falco_only = TriggerRule {
            sources: vec![AlertSource::Falco],
            ..rule("f")
        };
        let named = TriggerRule {
            alerts: vec!["Terminal shell in container".into()],
            ..rule("n")
        };
        let labelled = TriggerRule {
            labels: BTreeMap::from([("team".into(), "payments".into())]),
            ..rule("l")
        };
        let wrong_label = TriggerRule {
            labels: BTreeMap::from([
                ("team".into(), "payments".into()),
                ("proc.name".into(), "sh".into()),
            ]),
            ..rule("wl")
        };
        let globbed = TriggerRule {
            namespaces: vec!["prod-*".into(), "pay?ents".into()],
            ..rule("g")
        };
        let falco = alert(
            AlertSource::Falco,
            Some("Terminal shell in container"),
            Some("Notice"),
        );
        let am = alert(AlertSource::Alertmanager, Some("CryptoMiner"), None);
        let hook = alert(AlertSource::Webhook, None, None);
        let one = |r: &TriggerRule, a: &Alert, ns: &str| {
            matching(std::slice::from_ref(r), a, ns).is_some()
        };
        assert!(one(&falco_only, &falco, "x"));
        assert!(!one(&falco_only, &am, "x"));
        assert!(one(&named, &falco, "x"));
        assert!(!one(&named, &am, "x"));
        assert!(!one(&named, &hook, "x"), "a webhook alert has no name");
        assert!(one(&labelled, &hook, "x"));
        assert!(!one(&wrong_label, &falco, "x"), "every matcher must hold");
        assert!(one(&globbed, &am, "prod-eu"));
        assert!(one(&globbed, &am, "payments"));
        assert!(!one(&globbed, &am, "staging"));
        assert!(!one(&globbed, &am, "prod"));
    }

    #[test]
    fn node_rules_never_match_alerts_and_select_by_namespace_labels_and_name() {
        let stop = TriggerRule {
            on_stop: true,
            namespaces: vec!["shop".into()],
            pod_labels: BTreeMap::from([("app".into(), "api".into())]),
            containers: vec!["api*".into()],
            ..rule("stop")
        };
        let every = TriggerRule {
            every: Some(Duration::from_secs(60)),
            ..rule("every")
        };
        let a = alert(AlertSource::Falco, Some("R"), Some("Notice"));
        assert!(matching(&[stop.clone(), every.clone()], &a, "shop").is_none());
        let labels = HashMap::from([("app".to_owned(), "api".to_owned())]);
        let other = HashMap::new();
        let subject = |namespace, container, pod_labels| Subject {
            namespace,
            container,
            pod_labels,
        };
        let rules = [every.clone(), stop.clone()];
        let before_stop = |k| k == Kind::BeforeStop;
        assert_eq!(
            selecting(&rules, before_stop, &subject("shop", "api-1", &labels))
                .unwrap()
                .name,
            "stop"
        );
        for s in [
            subject("other", "api-1", &labels),
            subject("shop", "sidecar", &labels),
            subject("shop", "api-1", &other),
        ] {
            assert!(selecting(&rules, before_stop, &s).is_none(), "{s:?}");
        }
        assert_eq!(Kind::of(&every), Kind::Schedule(Duration::from_secs(60)));
        assert_eq!(
            selecting(
                &rules,
                |k| matches!(k, Kind::Schedule(_)),
                &subject("x", "y", &other)
            )
            .unwrap()
            .name,
            "every"
        );
    }

    #[test]
    fn the_first_match_wins() {
        let rules = [
            TriggerRule {
                sources: vec![AlertSource::Alertmanager],
                ..rule("am")
            },
            TriggerRule {
                namespaces: vec!["pay*".into()],
                hold: true,
                ..rule("payments")
            },
            rule("catch-all"),
        ];
        let falco = alert(AlertSource::Falco, Some("R"), Some("Notice"));
        let am = alert(AlertSource::Alertmanager, Some("A"), None);
        assert_eq!(matching(&rules, &am, "payments").unwrap().name, "am");
        let m = matching(&rules, &falco, "payments").unwrap();
        assert_eq!((m.name.as_str(), m.hold), ("payments", true));
        assert_eq!(matching(&rules, &falco, "other").unwrap().name, "catch-all");
    }
}
