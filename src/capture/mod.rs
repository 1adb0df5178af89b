//! Capture: getting each checkpoint archive into the vault the moment it exists.
//!
//! * [`proxy`]: a CRI proxy between kubelet and the runtime that forwards every call
//!   untouched except CheckpointContainer, which [`checkpoint`] turns into a sealed record.
//! * [`watch`]: watches the kubelet checkpoint directory (walkdir at start, inotify after),
//!   seals each complete `checkpoint-*.tar`, removes the plaintext and leaves a receipt.
//! * [`h2fix`]: repairs the `:authority` some stock gRPC clients send over unix sockets,
//!   so the proxy accepts every request the runtime accepts.
//! * [`staging`]: the private staging directory for plaintext awaiting sealing, and its
//!   recovery at start (anything left there is sealed, never dropped).
//! * [`receipt`]: the small JSON left where the plaintext was.

pub mod checkpoint;
pub mod cri;
pub mod h2fix;
pub mod proxy;
pub mod receipt;
pub mod staging;
pub mod watch;
