//! ckvault: seal, inspect, keep and serve Kubernetes container checkpoints.
//!
//! A container checkpoint archive holds every memory page of a container. ckvault takes
//! such an archive the moment it exists and turns it into a *sealed record*. The modules,
//! from the top floor down; each uses only modules on the floors below it (no import
//! circles):
//!
//! * [`cli`]: the `ckvault` commands, thin adapters over the layers below.
//! * [`serve`]: the HTTPS API (own TLS accept loop, connection limits, every request
//!   authenticated, authorized and audited before anything is served) and the
//!   kubelet-compatible trigger API.
//! * [`wiring`]: builds a node's parts from its configuration, in one place (the store
//!   with its audit log and staging, the uploader, policies, recipients, the intake).
//! * [`capture`]: the CRI proxy, the checkpoint call, the directory watcher, private
//!   staging.
//! * [`vault`]: the use-case layer: custody (hold, release, delete with every kind of
//!   hold, audited first), the intake every capture seals through, analysis of sealed
//!   records; shared by the CLI and the API.
//! * [`seal`]: one streaming pass: SHA-256 of the input, zstd, age encryption to the
//!   recipients policy names, SHA-256 of the stored bytes, a signed manifest, the audit
//!   event; and `open`, the verified reverse.
//! * [`policy`]: access grants, per-namespace recipients, retention (plan, then apply, over
//!   either store), legal holds by selector.
//! * [`store`]: where sealed records live: a local directory ([`store::LocalStore`]) or an
//!   S3 bucket with a local spool, its uploader and the shipping of audit segments.
//! * [`audit`]: the append-only, hash-chained, fail-closed audit log and its verifier.
//! * [`client`]: `ckvault fetch`'s HTTPS client.
//! * [`manifest`], [`config`], [`recipient`], [`node`]: the record schema and its
//!   signature, the configuration file, age/SSH recipients, the clock and node names.
//! * [`inspect`], [`units`], [`fsutil`], [`vocab`]: the ground floor: the hostile-input
//!   archive reader, byte sizes, careful file-system primitives (private files, atomic
//!   writes, owner locks for files shared between processes), the closed sets of words
//!   records and events are written with.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod capture;
pub mod cli;
pub mod client;
pub mod config;
pub mod fsutil;
pub mod inspect;
pub mod manifest;
pub mod node;
pub mod policy;
pub mod recipient;
pub mod seal;
pub mod serve;
pub mod store;
pub mod units;
pub mod vault;
pub mod vocab;
pub mod wiring;

#[cfg(test)]
mod compat_tests;
