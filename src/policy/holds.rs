//! Legal holds by selector (`holds.toml`): every record matching a hold is kept, whatever
//! retention or DELETE says, until the entry is removed. Per-record holds live in the store
//! (`ckvault hold ID`); both count.
//!
//! ```toml
//! version = 1
//! [[hold]]
//! name = "case-4711"
//! reason = "incident 4711: preserve all forensics evidence"
//! namespaces = ["forensics"]
//! ```

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::PolicyError;
use super::selector::{Selector, SelectorShape, Target};

/// One hold by selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorHold {
    /// Name.
    pub name: String,
    /// Why (case number).
    pub reason: String,
    /// What it holds.
    pub selector: Selector,
}

/// The loaded holds.
#[derive(Debug, Clone, Default)]
pub struct HoldsPolicy {
    /// Holds in declaration order.
    pub holds: Vec<SelectorHold>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    version: Option<Spanned<u32>>,
    #[serde(default)]
    hold: Vec<Spanned<HoldShape>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldShape {
    name: String,
    reason: Spanned<String>,
    namespaces: Option<Spanned<Vec<Spanned<String>>>>,
    pods: Option<Spanned<Vec<Spanned<String>>>>,
    containers: Option<Spanned<Vec<Spanned<String>>>>,
}

impl HoldsPolicy {
    /// Parses and validates a holds file.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Vec<PolicyError>> {
        let (shape, mut errors): (FileShape, _) =
            super::parse_versioned(path, text, |f: &FileShape| f.version.as_ref())?;
        let mut holds = Vec::new();
        for h in shape.hold {
            let h = h.into_inner();
            if h.reason.get_ref().trim().is_empty() {
                errors.push(PolicyError::at(
                    path,
                    text,
                    h.reason.span().start,
                    "a hold needs a reason",
                ));
            }
            let selector = SelectorShape {
                namespaces: h.namespaces,
                pods: h.pods,
                containers: h.containers,
            }
            .build(path, text, &mut errors);
            holds.push(SelectorHold {
                name: h.name,
                reason: h.reason.into_inner(),
                selector,
            });
        }
        if errors.is_empty() {
            Ok(Self { holds })
        } else {
            Err(errors)
        }
    }

    /// The first hold covering a record.
    pub fn holding(&self, t: Target<'_>) -> Option<&SelectorHold> {
        self.holds.iter().find(|h| h.selector.matches(t))
    }
}
