//! Selectors shared by the recipient, retention and hold policies: namespace, pod and
//! container globs (each list empty = any). Precedence between matching rules is
//! container > pod > namespace > default, then the longer literal pattern.

use serde::Deserialize;
use toml::Spanned;

use super::{PolicyError, glob};

/// Which records a rule applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Namespace globs (empty: any).
    pub namespaces: Vec<String>,
    /// Pod globs (empty: any).
    pub pods: Vec<String>,
    /// Container globs (empty: any).
    pub containers: Vec<String>,
}

/// The identity a selector is matched against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Target<'a> {
    /// Namespace.
    pub namespace: Option<&'a str>,
    /// Pod.
    pub pod: Option<&'a str>,
    /// Container.
    pub container: Option<&'a str>,
}

fn any_match(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match value {
            Some(v) => glob::matches(p, v),
            None => p == "*",
        })
}

impl Selector {
    /// True if the record identified by `t` is selected.
    pub fn matches(&self, t: Target<'_>) -> bool {
        any_match(&self.namespaces, t.namespace)
            && any_match(&self.pods, t.pod)
            && any_match(&self.containers, t.container)
    }

    /// Precedence key: (level, literal characters); higher wins.
    pub fn specificity(&self) -> (u8, usize) {
        let lit = |v: &[String]| v.iter().map(|p| glob::specificity(p)).max().unwrap_or(0);
        let level = if !self.containers.is_empty() {
            3
        } else if !self.pods.is_empty() {
            2
        } else if self.namespaces.iter().any(|n| n != "*") {
            1
        } else {
            0
        };
        (
            level,
            lit(&self.containers) + lit(&self.pods) + lit(&self.namespaces),
        )
    }
}

/// The selector keys as they appear in policy files.
#[derive(Debug, Deserialize, Default)]
pub struct SelectorShape {
    /// Namespace globs.
    #[serde(default)]
    pub namespaces: Option<Spanned<Vec<Spanned<String>>>>,
    /// Pod globs.
    #[serde(default)]
    pub pods: Option<Spanned<Vec<Spanned<String>>>>,
    /// Container globs.
    #[serde(default)]
    pub containers: Option<Spanned<Vec<Spanned<String>>>>,
}

impl SelectorShape {
    /// Validates the globs (Kubernetes name characters plus `*` and `?`).
    pub fn build(
        self,
        file: &std::path::Path,
        text: &str,
        errors: &mut Vec<PolicyError>,
    ) -> Selector {
        let mut take = |list: Option<Spanned<Vec<Spanned<String>>>>| -> Vec<String> {
            let mut out = Vec::new();
            for item in list.map(Spanned::into_inner).unwrap_or_default() {
                let v = item.get_ref();
                let ok = !v.is_empty()
                    && v.len() <= 253
                    && v.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || "-.*?".contains(c)
                    });
                if ok {
                    out.push(v.clone());
                } else {
                    errors.push(PolicyError::at(
                        file,
                        text,
                        item.span().start,
                        format!(
                            "{v:?} is not a Kubernetes name or glob (a-z, 0-9, '-', '.', '*', '?')"
                        ),
                    ));
                }
            }
            out
        };
        Selector {
            namespaces: take(self.namespaces),
            pods: take(self.pods),
            containers: take(self.containers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(n: &[&str], p: &[&str], c: &[&str]) -> Selector {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        Selector {
            namespaces: v(n),
            pods: v(p),
            containers: v(c),
        }
    }

    #[test]
    fn matching_and_precedence() {
        let t = Target {
            namespace: Some("team-a"),
            pod: Some("api-0"),
            container: Some("app"),
        };
        assert!(sel(&[], &[], &[]).matches(t));
        assert!(sel(&["team-*"], &[], &[]).matches(t));
        assert!(!sel(&["forensics"], &[], &[]).matches(t));
        assert!(sel(&["team-*"], &["api-*"], &["app"]).matches(t));
        let default = sel(&[], &[], &[]).specificity();
        let ns = sel(&["team-*"], &[], &[]).specificity();
        let ns_exact = sel(&["team-a"], &[], &[]).specificity();
        let pod = sel(&[], &["api-0"], &[]).specificity();
        let ctr = sel(&[], &[], &["app"]).specificity();
        assert!(default < ns && ns < ns_exact && ns_exact < pod && pod < ctr);
    }
}
