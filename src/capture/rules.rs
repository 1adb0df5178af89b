//! Which alerts capture: the `[[trigger]]` rules of the configuration, matched against a
//! parsed [`Alert`].
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

use super::alert::Alert;
pub use crate::config::TriggerRule;

/// The first rule in `rules` that `alert`, in namespace `namespace`, matches.
pub fn matching<'a>(
    rules: &'a [TriggerRule],
    alert: &Alert,
    namespace: &str,
) -> Option<&'a TriggerRule> {
    if !alert.firing {
        return None;
    }
    rules.iter().find(|r| matches(r, alert, namespace))
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
