//! Declarative policy read from a directory of TOML files. Today: who may do what on
//! which namespaces ([`access`]). Everything is deny by default.

pub mod access;
pub mod glob;

pub use access::{AccessPolicy, Action, Principal};

use std::path::Path;

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

/// Loads and validates every policy file in `dir`, returning all problems found.
pub fn check_dir(dir: &Path) -> Result<AccessPolicy, Vec<PolicyError>> {
    AccessPolicy::load_dir(dir)
}
