//! Capture: getting each checkpoint archive into the vault the moment it exists.
//!
//! * [`watch`]: watches the kubelet checkpoint directory (walkdir at start, inotify after),
//!   seals each complete `checkpoint-*.tar`, removes the plaintext and leaves a receipt.
//! * [`staging`]: the private staging directory for plaintext awaiting sealing, and its
//!   recovery at start (anything left there is sealed, never dropped).
//! * [`receipt`]: the small JSON left where the plaintext was.

pub mod receipt;
pub mod staging;
pub mod watch;
