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
//!   staging, the alert receivers' parsers and the `[[trigger]]` rules.
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
#![deny(unreachable_pub)]

mod audit;
mod capture;
mod cli;
mod client;
pub mod config;
pub mod fsutil;
pub mod inspect;
pub mod manifest;
mod node;
mod policy;
mod recipient;
pub mod seal;
mod serve;
mod store;
pub mod units;
mod vault;
mod vocab;
mod wiring;

#[cfg(test)]
mod compat_tests;

pub use cli::{Cli, error_text, run};

/// What the `ckvault` binary's callers outside the library use of it: the integration
/// tests (`tests/it`), the fuzz targets (`fuzz/`) and the examples. Not a stable API (as
/// rustls's `internal`): each item is here because one of them needs it, and the rest of
/// the library stays `pub(crate)` (`#![deny(unreachable_pub)]` holds that).
pub mod internal {
    /// The audit log and its verifier.
    pub mod audit {
        pub use crate::audit::{
            Action, Actor, AuditLog, EventInput, MAX_EVENT_BYTES, Outcome, read_events,
        };
        /// The verifier.
        pub mod verify {
            pub use crate::audit::verify::verify;
        }
    }
    /// The CRI client, the gRPC method classifier, HPACK, the proxy's gRPC answers, the
    /// alert parsers and trigger rules (fuzz targets).
    pub mod capture {
        pub use crate::capture::{alert, cri, hpack, method, proxy, rules};
    }
    /// The policy files (fuzz targets) and retention plans and selectors (property tests).
    pub mod policy {
        pub use crate::policy::{access, holds, recipients, retention, selector};
    }
    /// Range decisions and client-certificate principals (fuzz targets).
    pub mod serve {
        pub use crate::serve::{range, tls};
    }
    /// The local store and the S3 client (test servers and crash tests).
    pub mod store {
        pub use crate::store::{LocalStore, StoreError, s3};
    }
}
