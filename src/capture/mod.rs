//! Capture: getting each checkpoint archive into the vault the moment it exists.
//!
//! * [`proxy`]: a CRI proxy between kubelet and the runtime that forwards every call
//!   untouched except CheckpointContainer, which [`checkpoint`] turns into a sealed record;
//!   [`relay`] is its wire (HTTP/2 frames relayed, not terminated), [`hpack`] decodes the
//!   client header blocks it must follow, and [`method`] decides from a block's `:path`
//!   whether a call is a checkpoint, is relayed, or is refused as non-canonical;
//!   [`cri_metrics`] counts what it relays, intercepts, seals and refuses.
//! * [`watch`]: watches the kubelet checkpoint directory (walkdir at start, inotify after),
//!   seals each complete `checkpoint-*.tar`, removes the plaintext and leaves a receipt.
//! * [`staging`]: the private staging directory for plaintext awaiting sealing, and its
//!   recovery at start (anything left there is sealed, never dropped).
//! * [`receipt`]: the small JSON left where the plaintext was.
//! * [`resolve`]: which running container a request names, asked of the runtime.
//! * [`notify`]: notices to webhooks after a triggered capture.
//! * [`incident`]: capture on an alert: rule, resolution, authorization, the gate, the
//!   checkpoint in the background, its state for `GET /v1/captures/ID`.
//! * [`fleet`]: capture across a fleet through the bucket: alerts for containers another
//!   node runs become requests for it; a node agent publishes its pods, claims the
//!   requests for them once and writes their outcomes.
//! * [`node`]: the node's own triggers beside the proxy: a capture before the kubelet's
//!   stop, on a schedule, on a memory threshold.
//! * [`gate`]: what every automatic capture passes (deduplication, budgets, concurrency,
//!   free disk) so an alert storm cannot hurt the node or the evidence.
//! * [`alert`]: the alert receivers' payload parsers (Alertmanager, Falco, ckvault's
//!   webhook) and the webhook's HMAC signature; [`rules`]: which alerts capture
//!   (`[[trigger]]`).

pub mod alert;
pub(crate) mod checkpoint;
pub mod cri;
pub(crate) mod cri_metrics;
pub(crate) mod fleet;
pub(crate) mod gate;
pub mod hpack;
pub(crate) mod incident;
pub mod method;
pub(crate) mod node;
pub(crate) mod notify;
pub mod proxy;
pub(crate) mod receipt;
pub(crate) mod relay;
pub(crate) mod resolve;
pub mod rules;
pub(crate) mod staging;
pub(crate) mod watch;
