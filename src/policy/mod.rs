//! Declarative policy read from a directory of TOML files. Today: who may do what on
//! which namespaces ([`access`]). Everything is deny by default.

pub mod access;
pub(crate) mod enforce;
pub(crate) mod glob;
pub mod holds;
pub mod recipients;
pub mod retention;
pub mod selector;

pub(crate) use access::{AccessPolicy, Action, Principal};

use std::path::Path;

/// Parses a policy file's TOML into `T` and checks its `version` (must be 1 when given).
/// A syntax error ends parsing; a version problem is returned with the shape so that the
/// caller can go on collecting every other problem of the file.
pub(crate) fn parse_versioned<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    version: impl Fn(&T) -> Option<&toml::Spanned<u32>>,
) -> Result<(T, Vec<PolicyError>), Vec<PolicyError>> {
    let shape: T = toml::from_str(text).map_err(|e| {
        // The message, then the offending line with a caret (as the config's errors).
        let located = crate::config::TomlError::new(path, text, &e);
        let offset = e.span().map_or(0, |s| s.start);
        let message = if located.snippet.is_empty() {
            located.message
        } else {
            format!("{}\n{}", located.message, located.snippet)
        };
        vec![PolicyError::at(path, text, offset, message)]
    })?;
    let mut errors = Vec::new();
    if let Some(v) = version(&shape)
        && *v.get_ref() != 1
    {
        errors.push(PolicyError::at(
            path,
            text,
            v.span().start,
            format!(
                "unsupported version {}; this ckvault reads version 1",
                v.get_ref()
            ),
        ));
    }
    Ok((shape, errors))
}

/// A policy problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PolicyError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl PolicyError {
    pub(crate) fn at(file: &Path, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Self {
            file: file.display().to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// Every policy of a directory. Each file is optional; a missing access.toml grants
/// nothing, a missing recipients.toml leaves the config's `[seal] recipients`.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// access.toml
    pub access: AccessPolicy,
    /// recipients.toml, if present.
    pub recipients: Option<recipients::RecipientsPolicy>,
    /// retention.toml
    pub retention: retention::RetentionPolicy,
    /// holds.toml
    pub holds: holds::HoldsPolicy,
}

fn read_optional(path: &Path) -> Result<Option<String>, PolicyError> {
    match crate::fsutil::read_regular_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PolicyError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }),
    }
}

impl PolicySet {
    /// True if the access policy lets `who` do `action` on `namespace`.
    pub fn allows(&self, who: &Principal, action: Action, namespace: Option<&str>) -> bool {
        self.access.allows(who, action, namespace)
    }

    /// Loads and validates every policy file in `dir`, returning all problems found.
    pub fn load_dir(dir: &Path) -> Result<Self, Vec<PolicyError>> {
        if !dir.is_dir() {
            return Err(vec![PolicyError {
                file: dir.display().to_string(),
                line: 0,
                column: 0,
                message: "not a directory".into(),
            }]);
        }
        let mut errors = Vec::new();
        let mut set = PolicySet::default();
        let mut load = |name: &str| -> Option<(std::path::PathBuf, String)> {
            let path = dir.join(name);
            match read_optional(&path) {
                Ok(Some(t)) => Some((path, t)),
                Ok(None) => None,
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        };
        let access = load("access.toml");
        let recipients = load("recipients.toml");
        let retention = load("retention.toml");
        let holds = load("holds.toml");
        if let Some((p, t)) = access {
            match AccessPolicy::parse(&p, &t) {
                Ok(a) => set.access = a,
                Err(e) => errors.extend(e),
            }
        }
        if let Some((p, t)) = recipients {
            match recipients::RecipientsPolicy::parse(&p, &t) {
                Ok(r) => set.recipients = Some(r),
                Err(e) => errors.extend(e),
            }
        }
        if let Some((p, t)) = retention {
            match retention::RetentionPolicy::parse(&p, &t) {
                Ok(r) => set.retention = r,
                Err(e) => errors.extend(e),
            }
        }
        if let Some((p, t)) = holds {
            match holds::HoldsPolicy::parse(&p, &t) {
                Ok(h) => set.holds = h,
                Err(e) => errors.extend(e),
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }
}

impl PolicySet {
    /// Loads `dir` if given, turning every problem into one readable message.
    pub fn load_optional(dir: Option<&Path>) -> Result<Option<Self>, String> {
        let Some(dir) = dir else { return Ok(None) };
        Self::load_dir(dir).map(Some).map_err(|errs| {
            format!(
                "invalid policy in {}:\n{}",
                dir.display(),
                errs.iter()
                    .map(|e| format!("  {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }

    /// Applies retention now if any rule is configured, reporting (not failing on) errors.
    pub fn enforce_after_seal(&self, store: &crate::store::LocalStore) {
        if self.retention.rules.is_empty() {
            return;
        }
        match enforce::apply(store, self, enforce::now_unix(), None, "system:retention") {
            Ok(done) => {
                for d in done {
                    tracing::info!(record = %d.id, rule = %d.rule, reason = %d.reason, "retention deleted a record");
                }
            }
            Err(e) => tracing::error!(error = %e, "retention failed"),
        }
    }
}

/// Loads and validates every policy file in `dir`, returning all problems found.
pub(crate) fn check_dir(dir: &Path) -> Result<PolicySet, Vec<PolicyError>> {
    PolicySet::load_dir(dir)
}
