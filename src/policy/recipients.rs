//! Recipients (`recipients.toml`): which age/SSH public keys the records of a namespace
//! (or pod/container) are sealed to. The most specific matching entry wins; an entry with
//! no selector is the default. A record no entry covers is refused, loudly.
//!
//! ```toml
//! version = 1
//! [[recipients]]
//! namespaces = ["forensics", "team-*"]
//! keys = ["age1...", "ssh-ed25519 AAAA... responder@example"]
//! [[recipients]]                 # default: no selector
//! keys = ["age1..."]
//! ```

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::PolicyError;
use super::selector::{Selector, SelectorShape, Target};
use crate::recipient::Recipient;

/// The loaded recipient rules.
#[derive(Debug, Clone, Default)]
pub struct RecipientsPolicy {
    entries: Vec<(Selector, Vec<Recipient>)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    version: Option<Spanned<u32>>,
    #[serde(default)]
    recipients: Vec<Spanned<EntryShape>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryShape {
    namespaces: Option<Spanned<Vec<Spanned<String>>>>,
    pods: Option<Spanned<Vec<Spanned<String>>>>,
    containers: Option<Spanned<Vec<Spanned<String>>>>,
    keys: Vec<Spanned<String>>,
}

/// No recipients cover a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no recipients are configured for namespace {} (pod {}, container {}): refusing to seal what nobody could open; add an entry to recipients.toml",
    shown(namespace),
    shown(pod),
    shown(container)
)]
pub struct NoRecipients {
    /// Namespace.
    pub namespace: Option<String>,
    /// Pod.
    pub pod: Option<String>,
    /// Container.
    pub container: Option<String>,
}

fn shown(v: &Option<String>) -> String {
    v.as_deref()
        .map_or_else(|| "(unknown)".to_owned(), |s| format!("{s:?}"))
}

impl RecipientsPolicy {
    /// Parses and validates a recipients file.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Vec<PolicyError>> {
        let (shape, mut errors): (FileShape, _) =
            super::parse_versioned(path, text, |f: &FileShape| f.version.as_ref())?;
        let mut entries = Vec::new();
        for spanned in shape.recipients {
            let start = spanned.span().start;
            let e = spanned.into_inner();
            let selector = SelectorShape {
                namespaces: e.namespaces,
                pods: e.pods,
                containers: e.containers,
            }
            .build(path, text, &mut errors);
            let mut keys = Vec::new();
            for k in &e.keys {
                match k.get_ref().parse::<Recipient>() {
                    Ok(r) => keys.push(r),
                    Err(err) => {
                        errors.push(PolicyError::at(path, text, k.span().start, err.to_string()))
                    }
                }
            }
            if e.keys.is_empty() {
                errors.push(PolicyError::at(
                    path,
                    text,
                    start,
                    "an entry without keys would seal records nobody can open",
                ));
            }
            entries.push((selector, keys));
        }
        if errors.is_empty() {
            Ok(Self { entries })
        } else {
            Err(errors)
        }
    }

    /// A policy sealing everything to `keys` (the `[seal] recipients` of the config).
    pub fn fixed(keys: Vec<Recipient>) -> Self {
        Self {
            entries: if keys.is_empty() {
                vec![]
            } else {
                vec![(Selector::default(), keys)]
            },
        }
    }

    /// The recipients for a record.
    pub fn for_target(&self, t: Target<'_>) -> Result<&[Recipient], NoRecipients> {
        self.entries
            .iter()
            .filter(|(s, _)| s.matches(t))
            .max_by_key(|(s, _)| s.specificity())
            .map(|(_, k)| k.as_slice())
            .ok_or_else(|| NoRecipients {
                namespace: t.namespace.map(str::to_owned),
                pod: t.pod.map(str::to_owned),
                container: t.container.map(str::to_owned),
            })
    }
}
