//! ckvault's integration tests, in one test binary (as ripgrep's tests/tests.rs): a module
//! per suite, the helpers they share in [`support`]. One binary links the AWS SDK, tonic
//! and axum once instead of once per suite.
//!
//! Run one suite with `cargo test --test it SUITE::` (e.g. `cargo test --test it
//! serve_api::`), one test with its path (`cargo test --test it
//! serve_api::fetch_downloads_resumes_verifies_and_opens_a_real_checkpoint`).
//!
//! The suites share one process and run in parallel: nothing here changes the process's
//! environment or working directory (children get theirs through `Command::env` and
//! `Command::current_dir`), and the one machine-wide resources (the real CRI runtime, the
//! cache of real checkpoints) are taken under file locks in [`support`].

mod support;

mod adopt;
mod alerts;
mod analyst_diff;
mod analyst_memsearch;
mod capture_node;
mod capture_watch;
mod cli_hostile_inputs;
mod containerd_harness;
mod crash_consistency;
mod crash_serve;
mod crash_upload;
mod cri_proxy;
mod cri_proxy_containerd;
mod cri_proxy_paths;
mod cri_real_runtime;
mod deploy;
mod doc_links;
mod fleet_capture;
mod harness_real_checkpoint;
mod inspect_deep_hostile;
mod inspect_fuzz_smoke;
mod inspect_hostile;
mod inspect_real;
mod log_hygiene;
mod multi_process;
mod policy_cli;
mod repo_hygiene;
mod retention_props;
mod s3_conformance;
mod s3_health;
mod s3_keys;
mod s3_moto;
mod s3_store;
mod seal_cli;
mod seal_stream;
mod serve_api;
mod serve_hostile;
mod serve_revoke;
