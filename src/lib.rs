//! ckvault: seal, inspect, keep and serve Kubernetes container checkpoints.
//!
//! A container checkpoint archive holds every memory page of a container. ckvault takes
//! such an archive the moment it exists and turns it into a *sealed record*:
//!
//! * [`seal`]: one streaming pass: SHA-256 of the input, zstd, age encryption to the
//!   configured recipients, SHA-256 of the stored bytes; nothing buffered whole.
//! * [`inspect`]: reads the archive without unpacking it (identity, image, CRIU process
//!   tree, sizes), treating every byte as hostile.
//! * [`manifest`]: the versioned record schema, canonical JSON and its Ed25519 signature.
//! * [`store`]: where sealed records live (a private local directory today).
//!
//! Data flows capture -> seal -> store -> policy -> serve; each module uses only the
//! modules below it.
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
pub mod policy;
pub mod seal;
pub mod serve;
pub mod store;
