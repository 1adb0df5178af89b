//! Property tests of the retention planner over random record sets and rules: no held
//! record is ever deleted; the survivors satisfy every rule except where a hold or min_keep
//! protects them; every deletion names the rule that governs its record (precedence); the
//! plan is deterministic.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use ckvault::internal::policy::retention::{RecordInfo, RetentionPolicy, RetentionRule, Scope};
use ckvault::internal::policy::selector::{Selector, Target};
use proptest::prelude::*;

const NOW: i64 = 1_800_000_000;

type ScopeKey<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);

fn arb_record() -> impl Strategy<Value = RecordInfo> {
    (
        0..3usize,
        0..3usize,
        0..2usize,
        0..100_000i64,
        1..5_000u64,
        prop::bool::weighted(0.15),
        any::<u32>(),
    )
        .prop_map(|(ns, pod, ctr, age, size, held, salt)| RecordInfo {
            id: format!("{:012}{salt:010}", NOW - age),
            namespace: Some(["forensics", "team-a", "team-b"][ns].to_owned()),
            pod: Some(format!("pod-{pod}")),
            container: Some(format!("c{ctr}")),
            sealed_at: NOW - age,
            size,
            held,
        })
}

fn arb_selector() -> impl Strategy<Value = Selector> {
    (0..4usize, 0..3usize, 0..2usize).prop_map(|(n, p, c)| Selector {
        namespaces: match n {
            0 => vec![],
            1 => vec!["forensics".into()],
            2 => vec!["team-*".into()],
            _ => vec!["*".into()],
        },
        pods: match p {
            0 => vec![],
            1 => vec!["pod-1".into()],
            _ => vec!["pod-*".into()],
        },
        containers: if c == 0 { vec![] } else { vec!["c0".into()] },
    })
}

fn arb_rule(i: usize) -> impl Strategy<Value = RetentionRule> {
    (
        arb_selector(),
        prop::option::of(0..4u64),
        prop::option::of(1_000..90_000u64),
        prop::option::of(500..5_000u64),
        prop::option::of(1_000..20_000u64),
        0..3usize,
        0..2u64,
    )
        .prop_map(
            move |(
                selector,
                keep_last,
                max_age,
                max_record_size,
                max_total_bytes,
                scope,
                min_keep,
            )| RetentionRule {
                name: format!("rule-{i}"),
                selector,
                keep_last,
                max_age: max_age.map(Duration::from_secs),
                max_record_size,
                max_total_bytes,
                total_scope: [Scope::Container, Scope::Pod, Scope::Namespace][scope],
                min_keep,
                delete_orphans: false,
            },
        )
}

fn arb_policy() -> impl Strategy<Value = RetentionPolicy> {
    (1..4usize)
        .prop_flat_map(|n| (0..n).map(arb_rule).collect::<Vec<_>>())
        .prop_map(|rules| RetentionPolicy { rules })
}

fn target(r: &RecordInfo) -> Target<'_> {
    Target {
        namespace: r.namespace.as_deref(),
        pod: r.pod.as_deref(),
        container: r.container.as_deref(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn retention_invariants(policy in arb_policy(), mut records in prop::collection::vec(arb_record(), 0..40)) {
        records.sort_by(|a, b| a.id.cmp(&b.id));
        records.dedup_by(|a, b| a.id == b.id);
        let plan = policy.plan(&records, NOW, None);
        prop_assert_eq!(&plan, &policy.plan(&records, NOW, None), "plan is not deterministic");
        let deleted: HashSet<&str> = plan.iter().map(|d| d.id.as_str()).collect();
        prop_assert_eq!(deleted.len(), plan.len(), "a record planned twice");
        let by_id: BTreeMap<&str, &RecordInfo> = records.iter().map(|r| (r.id.as_str(), r)).collect();

        for d in &plan {
            let r = by_id[d.id.as_str()];
            // 1. holds win
            prop_assert!(!r.held, "held record {} planned for deletion", r.id);
            // 2. precedence: the deleting rule is the governing rule
            let governing = policy.rule_for(target(r)).map(|i| policy.rules[i].name.clone());
            prop_assert_eq!(Some(d.rule.clone()), governing);
        }
        // 3. survivors satisfy their rule unless protected
        let mut groups: BTreeMap<(usize, &str, &str, &str), Vec<&RecordInfo>> = BTreeMap::new();
        for r in &records {
            if let Some(ix) = policy.rule_for(target(r)) {
                groups.entry((ix, r.namespace.as_deref().unwrap(), r.pod.as_deref().unwrap(), r.container.as_deref().unwrap())).or_default().push(r);
            }
        }
        let mut protected: HashSet<&str> = HashSet::new();
        for ((ix, ..), mut g) in groups {
            let rule = &policy.rules[ix];
            g.sort_by(|a, b| (b.sealed_at, &b.id).cmp(&(a.sealed_at, &a.id)));
            for (rank, r) in g.iter().enumerate() {
                let is_protected = r.held || (rank as u64) < rule.min_keep;
                if is_protected {
                    protected.insert(&r.id);
                }
                if deleted.contains(r.id.as_str()) || is_protected {
                    continue;
                }
                if let Some(n) = rule.keep_last {
                    prop_assert!((rank as u64) < n, "{} survives beyond keep_last {}", r.id, n);
                }
                if let Some(max) = rule.max_age {
                    prop_assert!(NOW - r.sealed_at <= max.as_secs() as i64, "{} survives past max_age", r.id);
                }
                if let Some(max) = rule.max_record_size {
                    prop_assert!(r.size <= max, "{} survives over max_record_size", r.id);
                }
            }
        }
        // 4. size budgets: over budget only if every survivor in the scope is protected
        for (ix, rule) in policy.rules.iter().enumerate() {
            let Some(max) = rule.max_total_bytes else { continue };
            let mut scopes: BTreeMap<ScopeKey<'_>, Vec<&RecordInfo>> = BTreeMap::new();
            for r in records.iter().filter(|r| policy.rule_for(target(r)) == Some(ix) && !deleted.contains(r.id.as_str())) {
                let key = match rule.total_scope {
                    Scope::Container => (r.namespace.as_deref(), r.pod.as_deref(), r.container.as_deref()),
                    Scope::Pod => (r.namespace.as_deref(), r.pod.as_deref(), None),
                    Scope::Namespace => (r.namespace.as_deref(), None, None),
                };
                scopes.entry(key).or_default().push(r);
            }
            for members in scopes.values() {
                let total: u64 = members.iter().map(|r| r.size).sum();
                if total > max {
                    prop_assert!(members.iter().all(|r| protected.contains(r.id.as_str())), "scope over budget with deletable survivors");
                }
            }
            // ... and no more than oldest-first needs: when each budget deletion happened,
            // the scope (survivors plus the not-yet-deleted newer ones) was over budget.
            let key_of = |r: &RecordInfo| match rule.total_scope {
                Scope::Container => (r.namespace.clone(), r.pod.clone(), r.container.clone()),
                Scope::Pod => (r.namespace.clone(), r.pod.clone(), None),
                Scope::Namespace => (r.namespace.clone(), None, None),
            };
            let budget_deleted: Vec<&RecordInfo> = plan
                .iter()
                .filter(|d| d.reason == "max_total_bytes" && d.rule == rule.name)
                .map(|d| by_id[d.id.as_str()])
                .collect();
            for r in &budget_deleted {
                let key = key_of(r);
                let survivors: u64 = scopes
                    .get(&(key.0.as_deref(), key.1.as_deref(), key.2.as_deref()))
                    .map(|m| m.iter().map(|r| r.size).sum())
                    .unwrap_or(0);
                let pending: u64 = budget_deleted
                    .iter()
                    .filter(|o| key_of(o) == key && (o.sealed_at, &o.id) >= (r.sealed_at, &r.id))
                    .map(|o| o.size)
                    .sum();
                prop_assert!(survivors + pending > max, "{} deleted although its scope was within budget", r.id);
            }
        }
        // 5. nothing ungoverned is deleted
        for d in &plan {
            prop_assert!(policy.rule_for(target(by_id[d.id.as_str()])).is_some());
        }
    }
}

#[test]
fn the_most_specific_rule_wins() {
    let rule = |name: &str, selector: Selector, keep_last| RetentionRule {
        name: name.into(),
        selector,
        keep_last: Some(keep_last),
        max_age: None,
        max_record_size: None,
        max_total_bytes: None,
        total_scope: Scope::Container,
        min_keep: 0,
        delete_orphans: false,
    };
    let policy = RetentionPolicy {
        rules: vec![
            rule("default", Selector::default(), 0),
            rule(
                "ns",
                Selector {
                    namespaces: vec!["forensics".into()],
                    ..Default::default()
                },
                1,
            ),
            rule(
                "pod",
                Selector {
                    pods: vec!["web".into()],
                    ..Default::default()
                },
                2,
            ),
            rule(
                "ctr",
                Selector {
                    containers: vec!["app".into()],
                    ..Default::default()
                },
                3,
            ),
        ],
    };
    let t = |ns, pod, ctr| Target {
        namespace: Some(ns),
        pod: Some(pod),
        container: Some(ctr),
    };
    let name = |t| policy.rule_for(t).map(|i| policy.rules[i].name.as_str());
    assert_eq!(name(t("forensics", "web", "app")), Some("ctr"));
    assert_eq!(name(t("forensics", "web", "sidecar")), Some("pod"));
    assert_eq!(name(t("forensics", "db", "sidecar")), Some("ns"));
    assert_eq!(name(t("other", "db", "sidecar")), Some("default"));
}
