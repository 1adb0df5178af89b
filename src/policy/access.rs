//! Access grants (`access.toml`): subjects (`user:NAME`, `group:NAME`) are granted actions
//! on namespaces (names or globs). Nothing is allowed unless a grant allows it.
//!
//! ```toml
//! version = 1
//! [[grant]]
//! subjects = ["group:responders", "user:alice"]
//! namespaces = ["forensics", "team-*"]
//! actions = ["list", "read-manifest", "download"]
//! ```

use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

use super::{PolicyError, glob};

/// Something a principal may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// See records in listings.
    List,
    /// Read a record's manifest.
    ReadManifest,
    /// Download the sealed blob.
    Download,
    /// Delete a record.
    Delete,
    /// Place or release a legal hold.
    Hold,
    /// Read audit events.
    ReadAudit,
    /// Trigger a checkpoint.
    Checkpoint,
}

impl Action {
    /// Every action, in documentation order.
    pub const ALL: [Action; 7] = [
        Action::List,
        Action::ReadManifest,
        Action::Download,
        Action::Delete,
        Action::Hold,
        Action::ReadAudit,
        Action::Checkpoint,
    ];

    /// The policy-file name of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::List => "list",
            Action::ReadManifest => "read-manifest",
            Action::Download => "download",
            Action::Delete => "delete",
            Action::Hold => "hold",
            Action::ReadAudit => "read-audit",
            Action::Checkpoint => "checkpoint",
        }
    }
}

/// A refusal of a granted action is recorded as that action (a refused release as `hold`,
/// the grant it needs).
impl From<Action> for crate::audit::Action {
    fn from(a: Action) -> Self {
        match a {
            Action::List => Self::List,
            Action::ReadManifest => Self::ReadManifest,
            Action::Download => Self::Download,
            Action::Delete => Self::Delete,
            Action::Hold => Self::Hold,
            Action::ReadAudit => Self::ReadAudit,
            Action::Checkpoint => Self::Checkpoint,
        }
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                format!("unknown action {s:?}; actions are {}", names.join(", "))
            })
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// User name (certificate CN or token name).
    pub user: String,
    /// Groups (certificate O values or token groups).
    pub groups: Vec<String>,
    /// How the caller authenticated: `mtls` or `token`.
    pub via: &'static str,
}

impl Principal {
    /// `user:NAME` as the audit log shows it.
    pub fn actor(&self) -> String {
        format!("user:{}", self.user)
    }

    fn is(&self, subject: &Subject) -> bool {
        match subject {
            Subject::User(u) => *u == self.user,
            Subject::Group(g) => self.groups.iter().any(|x| x == g),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    User(String),
    Group(String),
}

#[derive(Debug, Clone)]
struct Grant {
    subjects: Vec<Subject>,
    namespaces: Vec<String>,
    actions: Vec<Action>,
}

impl Grant {
    fn names(&self, who: &Principal) -> bool {
        self.subjects.iter().any(|s| who.is(s))
    }

    /// A record without a namespace is only covered by `*`.
    fn covers(&self, namespace: Option<&str>) -> bool {
        self.namespaces.iter().any(|p| match namespace {
            Some(ns) => glob::matches(p, ns),
            None => p == "*",
        })
    }
}

/// The loaded access policy.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    grants: Vec<Grant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    version: Option<Spanned<u32>>,
    #[serde(default)]
    grant: Vec<GrantShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantShape {
    subjects: Spanned<Vec<Spanned<String>>>,
    namespaces: Spanned<Vec<Spanned<String>>>,
    actions: Spanned<Vec<Spanned<String>>>,
}

impl AccessPolicy {
    /// The built-in policy used when no policy directory is configured: group
    /// `ckvault:admins` (the generated admin identity) may do everything everywhere.
    pub fn admin_only() -> Self {
        Self {
            grants: vec![Grant {
                subjects: vec![Subject::Group("ckvault:admins".into())],
                namespaces: vec!["*".into()],
                actions: Action::ALL.to_vec(),
            }],
        }
    }

    /// Loads `access.toml` from `dir` (other files are for other policies).
    pub fn load_dir(dir: &Path) -> Result<Self, Vec<PolicyError>> {
        let path = dir.join("access.toml");
        let text = crate::fsutil::read_regular_to_string(&path).map_err(|e| {
            vec![PolicyError {
                file: path.display().to_string(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }]
        })?;
        Self::parse(&path, &text)
    }

    /// Parses and validates one access file, returning every problem with its position.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Vec<PolicyError>> {
        let (shape, mut errors): (FileShape, _) =
            super::parse_versioned(path, text, |f: &FileShape| f.version.as_ref())?;
        let mut grants = Vec::new();
        for g in shape.grant {
            let mut subjects = Vec::new();
            for s in g.subjects.get_ref() {
                let value = s.get_ref();
                let parsed = if let Some(u) = value.strip_prefix("user:") {
                    Some(Subject::User(u.to_owned()))
                } else {
                    value
                        .strip_prefix("group:")
                        .map(|g| Subject::Group(g.to_owned()))
                };
                match parsed {
                    Some(Subject::User(n) | Subject::Group(n)) if n.is_empty() => errors.push(
                        PolicyError::at(path, text, s.span().start, "subject has an empty name"),
                    ),
                    Some(subject) => subjects.push(subject),
                    None => errors.push(PolicyError::at(
                        path,
                        text,
                        s.span().start,
                        format!("subject {value:?} must start with user: or group:"),
                    )),
                }
            }
            let mut actions = Vec::new();
            for a in g.actions.get_ref() {
                match a.get_ref().parse::<Action>() {
                    Ok(action) => actions.push(action),
                    Err(message) => {
                        errors.push(PolicyError::at(path, text, a.span().start, message))
                    }
                }
            }
            let mut namespaces = Vec::new();
            for n in g.namespaces.get_ref() {
                let value = n.get_ref();
                let valid = !value.is_empty()
                    && value.len() <= 253
                    && value.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || "-.*?".contains(c)
                    });
                if valid {
                    namespaces.push(value.clone());
                } else {
                    errors.push(PolicyError::at(
                        path,
                        text,
                        n.span().start,
                        format!("namespace pattern {value:?} is not a Kubernetes name or glob (a-z, 0-9, '-', '.', '*', '?')"),
                    ));
                }
            }
            for (list, what) in [
                (g.subjects.span(), subjects.is_empty()),
                (g.actions.span(), actions.is_empty()),
                (g.namespaces.span(), namespaces.is_empty()),
            ] {
                if what && errors.is_empty() {
                    errors.push(PolicyError::at(
                        path,
                        text,
                        list.start,
                        "empty list grants nothing; remove the grant or fill it",
                    ));
                }
            }
            grants.push(Grant {
                subjects,
                namespaces,
                actions,
            });
        }
        if errors.is_empty() {
            Ok(Self { grants })
        } else {
            Err(errors)
        }
    }

    /// True if `who` may do `action` on `namespace` (a record without a namespace is only
    /// reachable through a `*` grant).
    pub fn allows(&self, who: &Principal, action: Action, namespace: Option<&str>) -> bool {
        self.grants
            .iter()
            .any(|g| g.actions.contains(&action) && g.names(who) && g.covers(namespace))
    }

    /// True if `who` may do `action` somewhere (in some namespace).
    pub fn grants_any(&self, who: &Principal, action: Action) -> bool {
        self.grants
            .iter()
            .any(|g| g.actions.contains(&action) && g.names(who))
    }

    /// True if `who` may do anything at all in `namespace`: such a caller may learn that a
    /// record exists there (a 403 rather than a 404).
    pub fn sees(&self, who: &Principal, namespace: Option<&str>) -> bool {
        self.grants
            .iter()
            .any(|g| g.names(who) && g.covers(namespace))
    }

    /// Number of grants.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// True when nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Principal {
        Principal {
            user: "alice".into(),
            groups: vec!["responders".into()],
            via: "token",
        }
    }

    #[test]
    fn grants_allow_only_what_they_name() {
        let text = r#"
version = 1
[[grant]]
subjects = ["group:responders"]
namespaces = ["forensics", "team-*"]
actions = ["list", "download"]
"#;
        let p = AccessPolicy::parse(Path::new("access.toml"), text).unwrap();
        assert!(p.allows(&alice(), Action::Download, Some("team-x")));
        assert!(p.allows(&alice(), Action::List, Some("forensics")));
        assert!(!p.allows(&alice(), Action::Delete, Some("forensics")));
        assert!(!p.allows(&alice(), Action::Download, Some("kube-system")));
        assert!(!p.allows(&alice(), Action::Download, None));
        let bob = Principal {
            user: "bob".into(),
            groups: vec![],
            via: "mtls",
        };
        assert!(!p.allows(&bob, Action::List, Some("forensics")));
    }

    #[test]
    fn errors_name_line_and_column() {
        let text = "version = 1\n[[grant]]\nsubjects = [\"alice\"]\nnamespaces = [\"Forensics\"]\nactions = [\"list\", \"nuke\"]\n";
        let errs = AccessPolicy::parse(Path::new("access.toml"), text).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{shown:?}");
        assert!(shown[0].starts_with("access.toml:3:13:"), "{shown:?}");
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("access.toml:5:20:") && s.contains("nuke")),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|s| s.starts_with("access.toml:4:15:")),
            "{shown:?}"
        );
        let errs =
            AccessPolicy::parse(Path::new("a.toml"), "[[grant]]\nsubject = []\n").unwrap_err();
        assert_eq!(errs[0].line, 2, "{errs:?}");
    }

    #[test]
    fn the_builtin_policy_grants_admins_only() {
        let p = AccessPolicy::admin_only();
        let admin = Principal {
            user: "admin".into(),
            groups: vec!["ckvault:admins".into()],
            via: "mtls",
        };
        assert!(p.allows(&admin, Action::Delete, Some("any")));
        assert!(p.allows(&admin, Action::List, None));
        assert!(!p.allows(&alice(), Action::List, Some("any")));
    }
}

#[cfg(test)]
mod committed_examples {
    use super::*;

    #[test]
    fn the_committed_policies_and_example_config_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let p = AccessPolicy::load_dir(&root.join("policies")).unwrap();
        assert!(p.len() >= 2);
        let c = crate::config::Config::load(&root.join("examples/ckvault.toml")).unwrap();
        assert_eq!(c.server.listen.port(), 8443);
    }
}
