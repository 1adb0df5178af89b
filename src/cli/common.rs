//! Setup shared by the commands that seal (`seal`, `watch`, `proxy`): recipients from the
//! config, `-r` and `--recipients-file`, and the policy directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::policy::PolicySet;
use crate::policy::recipients::RecipientsPolicy;
use crate::seal::{Recipient, SealError};

/// Who records are sealed to, and the policies that apply after sealing.
pub struct SealSetup {
    /// Fixed recipients (config `[seal] recipients`, `-r`, `--recipients-file`).
    pub recipients: Vec<Recipient>,
    /// The policy directory's policies, if one is configured.
    pub policies: Option<Arc<PolicySet>>,
    /// recipients.toml, which decides instead of `recipients` when present.
    pub recipient_policy: Option<Arc<RecipientsPolicy>>,
}

/// Loads a policy directory, every problem in one readable error.
pub fn load_policies(dir: &Path) -> anyhow::Result<PolicySet> {
    PolicySet::load_optional(Some(dir))
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("no policy directory"))
}

/// Gathers recipients and policies; refuses when nobody could open what is sealed.
pub fn seal_setup(
    configured: &[String],
    flags: &[String],
    files: &[PathBuf],
    policy_dir: Option<&Path>,
) -> anyhow::Result<SealSetup> {
    let mut recipients = Vec::new();
    for r in configured.iter().chain(flags) {
        recipients.push(r.parse::<Recipient>()?);
    }
    for f in files {
        recipients.extend(Recipient::read_file(f)?);
    }
    let policies = match policy_dir {
        Some(dir) => Some(Arc::new(load_policies(dir)?)),
        None => None,
    };
    let recipient_policy = policies
        .as_ref()
        .and_then(|p| p.recipients.clone())
        .map(Arc::new);
    if recipients.is_empty() && recipient_policy.is_none() {
        return Err(SealError::NoRecipients.into());
    }
    Ok(SealSetup {
        recipients,
        policies,
        recipient_policy,
    })
}
