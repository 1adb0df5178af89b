//! Retention (`retention.toml`): which sealed records to delete, and why.
//!
//! ```toml
//! version = 1
//! [[rule]]
//! name = "forensics-short"
//! namespaces = ["forensics"]      # pods = [...], containers = [...] narrow it
//! keep_last = 2                   # newest N per container
//! max_age = "30d"
//! max_record_size = "8GiB"
//! max_total_bytes = "100GiB"      # per total_scope
//! total_scope = "namespace"       # container (default) | pod | namespace
//! min_keep = 1                    # newest N per container are never deleted by this rule
//! orphans = "keep"                # keep | delete (records whose pod the runtime no longer runs)
//! ```
//! Each record is governed by the most specific matching rule (container > pod >
//! namespace > default, then the longer literal pattern, then the first declared). A record
//! under legal hold is never deleted. [`RetentionPolicy::plan`] is a pure function; applying
//! deletes exactly what it plans, oldest first.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::PolicyError;
use super::selector::{Selector, SelectorShape, Target};
use crate::units::parse_size;

/// What `max_total_bytes` is counted over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Each container's records.
    #[default]
    Container,
    /// Each pod's records.
    Pod,
    /// Each namespace's records.
    Namespace,
}

/// One retention rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    /// Name shown in plans and the audit log.
    pub name: String,
    /// Which records it governs.
    pub selector: Selector,
    /// Keep only the newest N per container.
    pub keep_last: Option<u64>,
    /// Delete records sealed longer ago than this.
    pub max_age: Option<Duration>,
    /// Delete records whose sealed blob is bigger than this.
    pub max_record_size: Option<u64>,
    /// Delete oldest records while the scope holds more than this.
    pub max_total_bytes: Option<u64>,
    /// Scope of `max_total_bytes`.
    pub total_scope: Scope,
    /// The newest N per container are never deleted by this rule.
    pub min_keep: u64,
    /// Delete records whose pod no longer exists (only when the runtime is known).
    pub delete_orphans: bool,
}

/// A record as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordInfo {
    /// Record ID (sorts by time).
    pub id: String,
    /// Namespace.
    pub namespace: Option<String>,
    /// Pod.
    pub pod: Option<String>,
    /// Container.
    pub container: Option<String>,
    /// Seal time, Unix seconds.
    pub sealed_at: i64,
    /// Sealed size in bytes.
    pub size: u64,
    /// Under legal hold (by record or by selector).
    pub held: bool,
}

impl RecordInfo {
    fn target(&self) -> Target<'_> {
        Target {
            namespace: self.namespace.as_deref(),
            pod: self.pod.as_deref(),
            container: self.container.as_deref(),
        }
    }
}

/// One planned deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deletion {
    /// Record ID.
    pub id: String,
    /// Rule that caused it.
    pub rule: String,
    /// `keep_last`, `max_age`, `max_record_size`, `max_total_bytes` or `orphan`.
    pub reason: String,
    /// Age in seconds at planning time.
    pub age_secs: i64,
    /// Sealed size.
    pub size: u64,
}

/// The loaded retention rules.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    /// Rules in declaration order.
    pub rules: Vec<RetentionRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    version: Option<Spanned<u32>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleShape>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleShape {
    name: Spanned<String>,
    namespaces: Option<Spanned<Vec<Spanned<String>>>>,
    pods: Option<Spanned<Vec<Spanned<String>>>>,
    containers: Option<Spanned<Vec<Spanned<String>>>>,
    keep_last: Option<u64>,
    max_age: Option<Spanned<String>>,
    max_record_size: Option<Spanned<String>>,
    max_total_bytes: Option<Spanned<String>>,
    total_scope: Option<Spanned<String>>,
    #[serde(default)]
    min_keep: u64,
    orphans: Option<Spanned<String>>,
}

impl RetentionPolicy {
    /// Parses and validates a retention file, with every problem located.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Vec<PolicyError>> {
        let (shape, mut errors): (FileShape, _) =
            super::parse_versioned(path, text, |f: &FileShape| f.version.as_ref())?;
        let mut rules = Vec::new();
        let mut names = HashSet::new();
        for spanned in shape.rule {
            let start = spanned.span().start;
            let r = spanned.into_inner();
            if !names.insert(r.name.get_ref().clone()) {
                errors.push(PolicyError::at(
                    path,
                    text,
                    r.name.span().start,
                    format!("rule name {:?} is used twice", r.name.get_ref()),
                ));
            }
            let selector = SelectorShape {
                namespaces: r.namespaces,
                pods: r.pods,
                containers: r.containers,
            }
            .build(path, text, &mut errors);
            let mut size = |v: &Option<Spanned<String>>| {
                v.as_ref().and_then(|s| {
                    let parsed = parse_size(s.get_ref());
                    if parsed.is_none() {
                        errors.push(PolicyError::at(
                            path,
                            text,
                            s.span().start,
                            format!("{:?} is not a size (e.g. 512MiB, 8GiB)", s.get_ref()),
                        ));
                    }
                    parsed
                })
            };
            let max_record_size = size(&r.max_record_size);
            let max_total_bytes = size(&r.max_total_bytes);
            let max_age = r.max_age.as_ref().and_then(|s| {
                let parsed = crate::config::parse_duration(s.get_ref());
                if parsed.is_none() {
                    errors.push(PolicyError::at(
                        path,
                        text,
                        s.span().start,
                        format!("{:?} is not a duration (e.g. 12h, 30d)", s.get_ref()),
                    ));
                }
                parsed
            });
            let total_scope = match r
                .total_scope
                .as_ref()
                .map(|s| (s.get_ref().as_str(), s.span().start))
            {
                None | Some(("container", _)) => Scope::Container,
                Some(("pod", _)) => Scope::Pod,
                Some(("namespace", _)) => Scope::Namespace,
                Some((other, at)) => {
                    errors.push(PolicyError::at(
                        path,
                        text,
                        at,
                        format!("total_scope {other:?} must be container, pod or namespace"),
                    ));
                    Scope::Container
                }
            };
            let delete_orphans = match r
                .orphans
                .as_ref()
                .map(|s| (s.get_ref().as_str(), s.span().start))
            {
                None | Some(("keep", _)) => false,
                Some(("delete", _)) => true,
                Some((other, at)) => {
                    errors.push(PolicyError::at(
                        path,
                        text,
                        at,
                        format!("orphans {other:?} must be keep or delete"),
                    ));
                    false
                }
            };
            if r.keep_last.is_none()
                && max_age.is_none()
                && max_record_size.is_none()
                && max_total_bytes.is_none()
                && !delete_orphans
            {
                errors.push(PolicyError::at(path, text, start, "rule limits nothing: set keep_last, max_age, max_record_size, max_total_bytes or orphans = \"delete\""));
            }
            rules.push(RetentionRule {
                name: r.name.into_inner(),
                selector,
                keep_last: r.keep_last,
                max_age,
                max_record_size,
                max_total_bytes,
                total_scope,
                min_keep: r.min_keep,
                delete_orphans,
            });
        }
        if errors.is_empty() {
            Ok(Self { rules })
        } else {
            Err(errors)
        }
    }

    /// The rule governing a record: most specific match, first declared on ties.
    pub fn rule_for(&self, t: Target<'_>) -> Option<usize> {
        let mut best: Option<(usize, (u8, usize))> = None;
        for (i, r) in self.rules.iter().enumerate() {
            if r.selector.matches(t) {
                let s = r.selector.specificity();
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((i, s));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// Plans deletions, oldest first. `live_pods` (namespace, pod) enables orphan rules.
    pub fn plan(
        &self,
        records: &[RecordInfo],
        now: i64,
        live_pods: Option<&HashSet<(String, String)>>,
    ) -> Vec<Deletion> {
        // Group by governing rule and container, newest first.
        type Key<'a> = (usize, Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let mut groups: BTreeMap<Key<'_>, Vec<&RecordInfo>> = BTreeMap::new();
        for r in records {
            if let Some(rule) = self.rule_for(r.target()) {
                groups
                    .entry((
                        rule,
                        r.namespace.as_deref(),
                        r.pod.as_deref(),
                        r.container.as_deref(),
                    ))
                    .or_default()
                    .push(r);
            }
        }
        let mut deletions: BTreeMap<&str, Deletion> = BTreeMap::new();
        let mut protected: HashSet<&str> = HashSet::new();
        let mut survivors: Vec<(usize, &RecordInfo)> = Vec::new();
        let delete = |r: &RecordInfo, rule: &RetentionRule, reason: &str| Deletion {
            id: r.id.clone(),
            rule: rule.name.clone(),
            reason: reason.to_owned(),
            age_secs: now - r.sealed_at,
            size: r.size,
        };
        for ((rule_ix, ..), mut group) in groups {
            let Some(rule) = self.rules.get(rule_ix) else {
                continue;
            };
            group.sort_by(|a, b| (b.sealed_at, &b.id).cmp(&(a.sealed_at, &a.id)));
            for (rank, r) in group.iter().enumerate() {
                if r.held || (rank as u64) < rule.min_keep {
                    protected.insert(&r.id);
                    survivors.push((rule_ix, r));
                    continue;
                }
                let orphan = rule.delete_orphans
                    && live_pods.is_some_and(|live| {
                        !live.contains(&(
                            r.namespace.clone().unwrap_or_default(),
                            r.pod.clone().unwrap_or_default(),
                        ))
                    });
                let reason = if orphan {
                    Some("orphan")
                } else if rule.keep_last.is_some_and(|n| rank as u64 >= n) {
                    Some("keep_last")
                } else if rule
                    .max_age
                    .is_some_and(|max| now - r.sealed_at > max.as_secs() as i64)
                {
                    Some("max_age")
                } else if rule.max_record_size.is_some_and(|max| r.size > max) {
                    Some("max_record_size")
                } else {
                    None
                };
                match reason {
                    Some(why) => {
                        deletions.insert(&r.id, delete(r, rule, why));
                    }
                    None => survivors.push((rule_ix, r)),
                }
            }
        }
        // Size budgets over the survivors: delete the oldest unprotected ones until they fit.
        type ScopeKey<'a> = (usize, Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let mut scopes: BTreeMap<ScopeKey<'_>, Vec<&RecordInfo>> = BTreeMap::new();
        for (rule_ix, r) in survivors {
            let Some(rule) = self.rules.get(rule_ix) else {
                continue;
            };
            if rule.max_total_bytes.is_none() {
                continue;
            }
            let key = match rule.total_scope {
                Scope::Container => (
                    rule_ix,
                    r.namespace.as_deref(),
                    r.pod.as_deref(),
                    r.container.as_deref(),
                ),
                Scope::Pod => (rule_ix, r.namespace.as_deref(), r.pod.as_deref(), None),
                Scope::Namespace => (rule_ix, r.namespace.as_deref(), None, None),
            };
            scopes.entry(key).or_default().push(r);
        }
        for ((rule_ix, ..), mut members) in scopes {
            let Some(rule) = self.rules.get(rule_ix) else {
                continue;
            };
            let Some(max) = rule.max_total_bytes else {
                continue;
            };
            members.sort_by(|a, b| (a.sealed_at, &a.id).cmp(&(b.sealed_at, &b.id)));
            let mut total: u64 = members.iter().map(|r| r.size).sum();
            for r in members {
                if total <= max {
                    break;
                }
                if protected.contains(r.id.as_str()) {
                    continue;
                }
                total -= r.size;
                deletions.insert(&r.id, delete(r, rule, "max_total_bytes"));
            }
        }
        let mut out: Vec<Deletion> = deletions.into_values().collect();
        out.sort_by(|a, b| (b.age_secs, &a.id).cmp(&(a.age_secs, &b.id)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, pod: &str, held: bool) -> RecordInfo {
        RecordInfo {
            id: id.into(),
            namespace: Some("ns".into()),
            pod: Some(pod.into()),
            container: Some("c".into()),
            sealed_at: 100,
            size: 10,
            held,
        }
    }

    #[test]
    fn orphans_are_deleted_only_when_the_runtime_is_known_and_never_when_held() {
        let text = "version = 1\n[[rule]]\nname = \"gone\"\norphans = \"delete\"\n";
        let p = RetentionPolicy::parse(Path::new("r.toml"), text).unwrap();
        let records = [
            rec("a", "alive", false),
            rec("b", "dead", false),
            rec("c", "dead", true),
        ];
        assert!(
            p.plan(&records, 200, None).is_empty(),
            "no runtime: nothing is an orphan"
        );
        let live: HashSet<(String, String)> = [("ns".to_owned(), "alive".to_owned())].into();
        let plan = p.plan(&records, 200, Some(&live));
        let ids: Vec<&str> = plan.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["b"]);
        assert_eq!(plan[0].reason, "orphan");
    }
}
