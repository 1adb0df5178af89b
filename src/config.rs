//! The service configuration file (TOML). Every key is optional; missing ones take the
//! embedded defaults, so `ckvault serve` with no file starts a working vault in
//! `./ckvault-data`. Relative paths are resolved against the directory of the config file
//! (or the current directory when there is none). [`TomlError`] locates a TOML error of
//! any file ckvault reads (this one, token files, policies): file, line, column and the
//! offending line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::ByteSize;
use crate::vocab::{AlertSource, Priority};

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where records live.
    pub store: StoreConfig,
    /// The HTTPS listener and its credentials.
    pub server: ServerConfig,
    /// Sealing defaults.
    pub seal: SealConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// Access rules.
    pub policy: PolicyConfig,
    /// The CRI proxy, and the runtime the trigger API talks to.
    pub cri: CriConfig,
    /// The checkpoint-directory watcher.
    pub watch: WatchConfig,
    /// This node.
    pub node: NodeConfig,
    /// The gate every automatic capture passes (alerts, and later the node's own triggers).
    pub capture: CaptureConfig,
    /// The alert receivers (`/v1/alerts/...`) and their signed senders.
    pub alerts: AlertsConfig,
    /// Which alerts capture (`[[trigger]]`), first match wins. None: no alert captures.
    pub trigger: Vec<TriggerRule>,
    /// Where notices of triggered captures go (`[[notify]]`).
    pub notify: Vec<NotifyConfig>,
    /// Capture across a fleet through the bucket (`[fleet]`, docs/fleet-capture.md).
    pub fleet: FleetConfig,
}

/// `[fleet]`: capture requests through the bucket, between the process that receives an
/// alert and the node agent whose runtime runs the container (docs/fleet-capture.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Take part (`ckvault serve` on a bucket store): with `[alerts]`, turn alerts for
    /// containers this process does not run into requests; with `[cri] upstream`, publish
    /// the pods it runs and take the requests for them.
    pub enabled: bool,
    /// How often a node agent lists its runtime and publishes what changed.
    #[serde(with = "duration")]
    pub publish_interval: Duration,
    /// How often a node agent reads its inbox.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// How long a request waits for its node; then it is answered `unclaimed`.
    #[serde(with = "duration")]
    pub request_ttl: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            publish_interval: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            request_ttl: Duration::from_secs(300),
        }
    }
}

/// `[capture]`: the gate every automatic capture passes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// A second capture of the same container (by alert key) within this is deduplicated.
    #[serde(with = "duration")]
    pub cooldown: Duration,
    /// Checkpoints running at once on this node.
    pub max_concurrent: usize,
    /// Records one namespace may get from automatic captures per day.
    pub namespace_records_per_day: u32,
    /// Bytes of checkpoints one namespace may get from automatic captures per day.
    pub namespace_bytes_per_day: ByteSize,
    /// Free space left over in staging and spool after a checkpoint of the container's
    /// working set, or it is refused before the runtime is asked.
    pub disk_margin: ByteSize,
    /// The longest one automatic capture (checkpoint and seal) may take.
    #[serde(with = "duration")]
    pub capture_timeout: Duration,
    /// Capture statuses kept for `GET /v1/captures/ID` (the oldest are forgotten).
    pub history: usize,
    /// How often the node agent (`ckvault proxy`) lists its running containers and reads
    /// their memory for the `every` and `memory_*` rules of `[[trigger]]`.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// The time a capture before a stop may take when the stop call carries no deadline of
    /// its own (`grpc-timeout`); with one, its deadline less the grace period less
    /// `stop_margin`.
    #[serde(with = "duration")]
    pub stop_budget: Duration,
    /// Kept free of a capture before a stop, beyond the grace period the stop still needs.
    #[serde(with = "duration")]
    pub stop_margin: Duration,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            cooldown: Duration::from_secs(600),
            max_concurrent: 1,
            namespace_records_per_day: 20,
            namespace_bytes_per_day: ByteSize(20 << 30),
            disk_margin: ByteSize(1 << 30),
            capture_timeout: Duration::from_secs(300),
            history: 10_000,
            poll_interval: Duration::from_secs(10),
            stop_budget: Duration::from_secs(30),
            stop_margin: Duration::from_secs(2),
        }
    }
}

/// `[alerts]`: the alert receivers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Serve `/v1/alerts/alertmanager`, `/v1/alerts/falco`, `/v1/alerts/webhook`.
    pub enabled: bool,
    /// Largest alert body read; a larger one is refused (413) unread.
    pub max_body: ByteSize,
    /// Most alerts in one Alertmanager payload (at most 1000); set the same `max_alerts`
    /// on the Alertmanager receiver so it truncates instead.
    pub max_alerts: usize,
    /// The Alertmanager label naming the namespace.
    pub namespace_label: String,
    /// The Alertmanager label naming the pod.
    pub pod_label: String,
    /// The Alertmanager label naming the container.
    pub container_label: String,
    /// How old (or far ahead) a signed webhook's timestamp may be.
    #[serde(with = "duration")]
    pub signature_max_age: Duration,
    /// Webhook senders that sign with a shared secret instead of a token.
    pub sender: Vec<AlertSender>,
}

/// Largest `[alerts] max_body` accepted.
pub const MAX_ALERT_BODY: u64 = 64 << 20;

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_body: ByteSize(1 << 20),
            max_alerts: 100,
            namespace_label: "namespace".into(),
            pod_label: "pod".into(),
            container_label: "container".into(),
            signature_max_age: Duration::from_secs(300),
            sender: Vec::new(),
        }
    }
}

/// `[[alerts.sender]]`: a webhook sender that signs its requests (HMAC-SHA256).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSender {
    /// Its name (unique; in audit events).
    pub name: String,
    /// The shared secret (read at start: at most 4 KiB, at least 16 bytes, not readable
    /// by other users).
    pub secret_file: PathBuf,
    /// The user its requests act as, for the access policy.
    pub user: String,
    /// The groups its requests act as.
    pub groups: Vec<String>,
}

/// `[[trigger]]`: one rule deciding what captures. Every condition set must hold; an empty
/// list (or an absent key) holds for anything. A rule is of exactly one kind: an alert rule
/// (`sources`, `alerts`, `min_priority`, `labels`, or none of the kind keys below), a capture
/// before a stop (`on_stop = true`), a schedule (`every`) or a threshold (`memory_above` or
/// `memory_share`, with `sustained`); the last three are the node agent's own and select
/// containers with `namespaces`, `pod_labels` and `containers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TriggerRule {
    /// Its name (unique; in audit events and the manifest's trigger).
    pub name: String,
    /// The receivers: `alertmanager`, `falco`, `webhook`.
    pub sources: Vec<AlertSource>,
    /// Alert names: Alertmanager's `alertname`, the Falco rule.
    pub alerts: Vec<String>,
    /// The lowest priority: Falco's, or Alertmanager's `severity` label when it is a
    /// priority word (`critical`, `warning`, `info`...).
    pub min_priority: Option<Priority>,
    /// Labels that must be present with exactly these values (Falco: `output_fields`).
    pub labels: BTreeMap<String, String>,
    /// Namespace globs (`*` any run, `?` one character).
    pub namespaces: Vec<String>,
    /// This rule's own cooldown, instead of `[capture] cooldown`.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
    /// Captures this rule may make per day.
    pub max_per_day: Option<u32>,
    /// Put a hold on each record this rule captures (retention never deletes it).
    pub hold: bool,
    /// Node rules: labels the pod sandbox must carry with exactly these values (as the
    /// runtime reports them: the kubelet copies the pod's labels onto its sandbox).
    pub pod_labels: BTreeMap<String, String>,
    /// Node rules: container-name globs (`*` any run, `?` one character).
    pub containers: Vec<String>,
    /// Capture the selected containers before the kubelet's StopContainer /
    /// StopPodSandbox goes on (the CRI proxy, `ckvault proxy`).
    pub on_stop: bool,
    /// Capture the selected running containers at this interval (the node agent).
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub every: Option<Duration>,
    /// Capture a selected container whose memory working set (CRI ContainerStats) stays
    /// above this size for `sustained`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_above: Option<ByteSize>,
    /// Capture a selected container whose working set stays above this share (0 to 1) of
    /// its memory limit for `sustained` (a container without a limit is not selected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_share: Option<f64>,
    /// How long a threshold must hold before it captures (default: one poll).
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub sustained: Option<Duration>,
}

/// `[[notify]]`: a webhook told of each triggered capture.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where the notice is POSTed: https, or http to a loopback address only.
    pub url: String,
    /// A bearer token for it (file).
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) for its TLS, instead of the system's (Debian's bundle).
    pub ca: Option<PathBuf>,
    /// The longest one attempt may take.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Attempts after the first, with backoff.
    pub retries: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            token_file: None,
            ca: None,
            timeout: Duration::from_secs(10),
            retries: 5,
        }
    }
}

/// What the CRI proxy leaves at the location the kubelet asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeletLocation {
    /// A JSON receipt (0600): record ID, digests, download path.
    #[default]
    Receipt,
    /// Nothing.
    None,
}

/// `[cri]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriConfig {
    /// The socket the kubelet talks to (`ckvault proxy`).
    pub listen: PathBuf,
    /// The real runtime's socket (containerd: /run/containerd/containerd.sock; CRI-O:
    /// /var/run/crio/crio.sock). Also what the trigger API uses; without it the trigger
    /// API answers 500, as the kubelet does without runtime support.
    pub upstream: Option<PathBuf>,
    /// What to leave at the kubelet's requested location: `receipt` or `none`.
    pub kubelet_location: KubeletLocation,
    /// The private staging directory the runtime writes checkpoints into (0700, created if
    /// missing; default `<store>/staging`). On a node it must be on the filesystem the
    /// runtime writes to and visible at the same path in the runtime's mount namespace.
    pub staging: Option<PathBuf>,
    /// `file` (default): the runtime writes the archive into a private file in staging,
    /// sealed once the call returns. `fifo`: it writes into a private named pipe and
    /// ckvault seals while it writes, so no plaintext reaches ckvault's disk (a runtime
    /// that cannot write to a pipe gets files again, with a warning).
    pub staging_mode: StagingMode,
    /// CheckpointContainer calls the proxy holds at once, over all connections: request
    /// bodies still arriving and calls being answered (default 64). More are answered
    /// RESOURCE_EXHAUSTED at once.
    pub max_intercepted: usize,
    /// CheckpointContainer requests one connection may have arriving at once (default 8).
    pub max_pending_per_connection: usize,
    /// Where `ckvault proxy` serves its counters at `/metrics` (plain HTTP, counts only;
    /// default none).
    pub metrics_listen: Option<SocketAddr>,
}

/// `[cri] staging_mode`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StagingMode {
    /// A private file, sealed after the runtime's call returns.
    #[default]
    File,
    /// A private named pipe, sealed while the runtime writes.
    Fifo,
}

impl Default for CriConfig {
    fn default() -> Self {
        Self {
            listen: PathBuf::from("/run/ckvault/cri.sock"),
            upstream: None,
            kubelet_location: KubeletLocation::Receipt,
            staging: None,
            staging_mode: StagingMode::File,
            // A kubelet checkpoints one container at a time and each call holds at most a
            // 1 MiB request: 64 is far above a node's real load and bounds the proxy's
            // request buffers at 64 MiB however many connections a local client opens.
            max_intercepted: 64,
            // The kubelet sends a checkpoint request whole; 8 unfinished ones on one
            // connection is already a client that is not the kubelet.
            max_pending_per_connection: 8,
            metrics_listen: None,
        }
    }
}

/// `[watch]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// The kubelet checkpoint directory.
    pub dir: PathBuf,
    /// Quiet time after the last write before a file is captured (`2s`, `500ms`, `1m`).
    #[serde(with = "duration")]
    pub settle: std::time::Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/kubelet/checkpoints"),
            settle: Duration::from_secs(2),
        }
    }
}

/// A `[[trigger]]` rule is of exactly one kind, and its keys belong to it.
fn check_rule_kind(r: &TriggerRule) -> Result<(), String> {
    let alert_keys = !r.sources.is_empty()
        || !r.alerts.is_empty()
        || r.min_priority.is_some()
        || !r.labels.is_empty();
    let threshold = r.memory_above.is_some() || r.memory_share.is_some();
    let kinds: Vec<&str> = [
        (
            alert_keys,
            "an alert rule (sources, alerts, min_priority, labels)",
        ),
        (r.on_stop, "on_stop"),
        (r.every.is_some(), "every"),
        (threshold, "memory_above / memory_share"),
    ]
    .into_iter()
    .filter_map(|(set, what)| set.then_some(what))
    .collect();
    if kinds.len() > 1 {
        return Err(format!(
            "a rule is of one kind; this one mixes {}: split it into one rule per kind",
            kinds.join(" and ")
        ));
    }
    let node = r.on_stop || r.every.is_some() || threshold;
    if !node && (!r.pod_labels.is_empty() || !r.containers.is_empty()) {
        return Err(
            "pod_labels and containers select containers for the node's own rules (on_stop, every, memory_above, memory_share); an alert names its container"
                .into(),
        );
    }
    if r.pod_labels.keys().any(String::is_empty) || r.containers.iter().any(String::is_empty) {
        return Err("an empty pod label name or container glob".into());
    }
    if r.memory_above.is_some() && r.memory_share.is_some() {
        return Err("give memory_above or memory_share, not both".into());
    }
    if let Some(share) = r.memory_share
        && !(share > 0.0 && share <= 1.0)
    {
        return Err(format!(
            "memory_share = {share} is not a share of the limit (more than 0, at most 1)"
        ));
    }
    if r.memory_above.is_some_and(|b| b.bytes() == 0) {
        return Err("memory_above = 0 holds for every container; give a size".into());
    }
    if r.sustained.is_some() && !threshold {
        return Err("sustained goes with memory_above or memory_share".into());
    }
    if r.every.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err("every must be at least 1s".into());
    }
    Ok(())
}

/// Parses `500ms`, `2s`, `5m`, `1h`, `30d`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = |k: u64| n.checked_mul(k).map(std::time::Duration::from_secs);
    match unit {
        "ms" => Some(std::time::Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

/// The longest duration a configuration key accepts (a year): beyond it a setting is a
/// mistake, and timers derived from it must stay representable.
pub const MAX_CONFIG_DURATION: std::time::Duration =
    std::time::Duration::from_secs(366 * 24 * 3600);

/// The longest `[watch] settle` / `--settle` accepted: an archive quiet for an hour after
/// its writer closed it is done.
pub const MAX_WATCH_SETTLE: std::time::Duration = std::time::Duration::from_secs(3600);

/// `[section] key = "2s"`: durations as text, at most [`MAX_CONFIG_DURATION`].
mod duration {
    use super::{MAX_CONFIG_DURATION, parse_duration};
    use serde::Deserialize;
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        let shown = s.chars().take(32).collect::<String>();
        match parse_duration(&s) {
            Some(v) if v <= MAX_CONFIG_DURATION => Ok(v),
            Some(_) => Err(serde::de::Error::custom(format!(
                "{shown:?} is longer than a year, the longest duration a setting takes"
            ))),
            None => Err(serde::de::Error::custom(format!(
                "{shown:?} is not a duration (use e.g. 500ms, 2s, 5m, 1h, 30d)"
            ))),
        }
    }

    /// In the largest unit that holds it exactly (`60s` as `1m`, `500ms`).
    pub(super) fn serialize<S: serde::Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let ms = v.as_millis();
        let text = if !ms.is_multiple_of(1000) {
            format!("{ms}ms")
        } else {
            let secs = v.as_secs();
            match [(86_400, "d"), (3600, "h"), (60, "m")]
                .into_iter()
                .find(|(k, _)| secs != 0 && secs.is_multiple_of(*k))
            {
                Some((k, unit)) => format!("{}{unit}", secs / k),
                None => format!("{secs}s"),
            }
        };
        s.serialize_str(&text)
    }
}

/// `key = "2s"` or absent: an optional [`duration`].
mod opt_duration {
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }

    pub(super) fn serialize<S: serde::Serializer>(
        v: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::duration::serialize(v, s),
            None => s.serialize_none(),
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `local` (the default: a private directory on this machine) or `s3` (an S3-compatible
    /// bucket shared by many nodes).
    pub kind: StoreKind,
    /// Local store directory (default `ckvault-data`); `kind = "local"` only.
    pub path: PathBuf,
    /// S3 endpoint URL (`http://127.0.0.1:8333`); empty or absent for AWS.
    pub endpoint: Option<String>,
    /// S3 region (default `us-east-1`).
    pub region: String,
    /// The bucket (must exist; create it with Object Lock enabled to use `object_lock`).
    pub bucket: Option<String>,
    /// Key prefix inside the bucket, e.g. `prod/` (default empty).
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most non-AWS stores.
    pub path_style: bool,
    /// Local directory for this process's own state with `kind = "s3"`: sealed records
    /// waiting for upload (never plaintext), staging, the node key and audit log.
    pub spool: PathBuf,
    /// Most bytes of sealed records the spool may hold while the bucket is unreachable;
    /// beyond it capture refuses new checkpoints rather than lose any (default `20GiB`).
    pub spool_max: ByteSize,
    /// An AWS-style credentials file (`[default]` with `aws_access_key_id`,
    /// `aws_secret_access_key`); otherwise `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
    /// (and `AWS_SESSION_TOKEN`) from the environment.
    pub credentials_file: Option<PathBuf>,
    /// The profile to read from `credentials_file` (default `default`).
    pub profile: Option<String>,
    /// Extra CA certificates (PEM) to trust for an `https://` endpoint, on top of the
    /// system roots (an on-premises Ceph or MinIO with a private CA).
    pub ca_file: Option<PathBuf>,
    /// Object Lock retention applied to every uploaded object: `governance` or
    /// `compliance`, for `lock_days`. Absent: no retention lock (legal holds still map to
    /// Object Lock legal hold when the bucket has Object Lock enabled).
    pub object_lock: Option<LockMode>,
    /// Days of Object Lock retention (default 30) when `object_lock` is set.
    pub lock_days: u32,
    /// How long one request to the store may take before it is abandoned and retried
    /// (default `60s`; one request carries at most a 16 MiB part): a frozen store then
    /// reads as unreachable instead of hanging the uploader.
    #[serde(with = "duration")]
    pub timeout: std::time::Duration,
    /// How often a server re-reads the bucket's manifests into its index (default `15s`).
    #[serde(with = "duration")]
    pub index_refresh: std::time::Duration,
    /// Pinned node keys, one directory per node name: `DIR/NODE/*.pem` are trusted for
    /// NODE only (the flat `DIR/*.pem` of old is refused with how to migrate). Absent: a
    /// name's first key in the bucket's `keys/NODE/`, and the keys its signed rotations
    /// introduce (`store::s3::keys`).
    pub trusted_keys: Option<PathBuf>,
}

/// `[store] kind`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A private directory on this machine.
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3,
}

/// S3 Object Lock retention modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` can still remove objects early.
    Governance,
    /// Nobody, not even the root account, can remove objects before the date.
    Compliance,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Local,
            path: PathBuf::from("ckvault-data"),
            endpoint: None,
            region: "us-east-1".into(),
            bucket: None,
            prefix: String::new(),
            path_style: false,
            spool: PathBuf::from("ckvault-spool"),
            spool_max: ByteSize(20 << 30),
            credentials_file: None,
            profile: None,
            ca_file: None,
            object_lock: None,
            lock_days: 30,
            index_refresh: Duration::from_secs(15),
            // One request carries at most a 16 MiB part: a minute is slow for that, and a
            // frozen store then reads as unreachable instead of hanging the uploader.
            timeout: Duration::from_secs(60),
            trusted_keys: None,
        }
    }
}

impl StoreConfig {
    /// The directory holding this process's local state: the store itself for `local`,
    /// the spool for `s3`.
    pub fn local_dir(&self) -> &Path {
        match self.kind {
            StoreKind::Local => &self.path,
            StoreKind::S3 => &self.spool,
        }
    }
}

/// `[node]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name in manifests and audit segments (default: the host name).
    pub name: Option<String>,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on (default `127.0.0.1:8443`).
    pub listen: SocketAddr,
    /// Server certificate chain (PEM). Without cert and key, a CA and certificates are
    /// generated under `<store>/tls/` on first start.
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub key: Option<PathBuf>,
    /// CA bundle (PEM) for client certificates; enables mTLS (user = CN, groups = O).
    pub client_ca: Option<PathBuf>,
    /// Token file (hashed bearer tokens, see `ckvault token add`).
    pub tokens: Option<PathBuf>,
    /// Certificate revocation lists (PEM, or one DER CRL) of the client CAs: a listed
    /// client certificate is refused. Re-read, like the token file, when it changes.
    pub crl: Option<PathBuf>,
    /// Also accept TLS 1.2 (default: TLS 1.3 only).
    pub allow_tls12: bool,
    /// Time for the TLS handshake (default 10s).
    #[serde(with = "duration")]
    pub handshake_timeout: std::time::Duration,
    /// Time for an HTTP/1.1 request head (default 10s).
    #[serde(with = "duration")]
    pub header_timeout: std::time::Duration,
    /// Idle connections are closed after this (default 60s).
    #[serde(with = "duration")]
    pub idle_timeout: std::time::Duration,
    /// Connections open at once (default 512).
    pub max_connections: usize,
    /// Threads serving connections, each connection on one of them for its whole life
    /// (default 0: one per core; at most [`MAX_SERVER_THREADS`]).
    pub threads: usize,
    /// Connections open at once from one client address (default 64).
    pub max_connections_per_address: usize,
    /// Requests in progress at once for one authenticated identity (default 32).
    pub max_requests_per_identity: usize,
    /// Downloads streaming at once for one identity (default 4).
    pub max_downloads_per_identity: usize,
    /// Downloads streaming at once in all (default 64).
    pub max_downloads: usize,
    /// A download that hands the connection no byte for this long is cut off, with its
    /// connection, whatever else the client sends (default 30s).
    #[serde(with = "duration")]
    pub stall_timeout: std::time::Duration,
    /// Concurrent HTTP/2 streams a client may open on one connection (default 32).
    pub http2_max_streams: u32,
    /// Bytes a connection may queue in the kernel beyond what TCP has sent
    /// (`TCP_NOTSENT_LOWAT`; default 64KiB, "0" leaves the kernel's default, no bound).
    pub tcp_notsent_lowat: ByteSize,
    /// Failed authentications are audited one per source per interval and the rest as a
    /// count at its end (default 60s).
    #[serde(with = "duration")]
    pub auth_failure_interval: std::time::Duration,
    /// Failed authentications from one address per interval before 429 (default 30).
    pub max_auth_failures_per_source: u64,
    /// Failed authentications from all addresses per interval before 429 (default 300).
    pub max_auth_failures: u64,
}

impl ServerConfig {
    /// The connection limits this section sets.
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            handshake_timeout: self.handshake_timeout,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            threads: self.threads,
            max_connections_per_address: self.max_connections_per_address,
            max_requests_per_identity: self.max_requests_per_identity,
            max_downloads_per_identity: self.max_downloads_per_identity,
            max_downloads: self.max_downloads,
            stall_timeout: self.stall_timeout,
            http2_max_streams: self.http2_max_streams,
            // Refused above the bound when the configuration loads; held to it here too.
            tcp_notsent_lowat: u32::try_from(
                self.tcp_notsent_lowat
                    .bytes()
                    .min(u64::from(MAX_TCP_NOTSENT_LOWAT)),
            )
            .unwrap_or(MAX_TCP_NOTSENT_LOWAT),
            auth_failure_interval: self.auth_failure_interval,
            max_auth_failures_per_source: self.max_auth_failures_per_source,
            max_auth_failures: self.max_auth_failures,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            cert: None,
            key: None,
            client_ca: None,
            tokens: None,
            crl: None,
            allow_tls12: false,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            threads: 0,
            // An eighth of `max_connections`: a browser opens at most 6 connections to a host
            // over HTTP/1.1 and one over HTTP/2, so 64 still serves ten or more responders
            // behind one NAT or proxy address, while one address alone can never hold more
            // than an eighth of the server's slots.
            max_connections_per_address: 64,
            // Far above what a person or a script with a few workers has in flight; a stuck
            // or runaway client is held to it instead of taking every thread's time.
            max_requests_per_identity: 32,
            // A responder downloading a handful of records in parallel, each at disk or
            // network speed; more only splits the same bandwidth and holds files and
            // buffers (two 256 KiB chunks each).
            max_downloads_per_identity: 4,
            // 64 downloads of two 256 KiB chunks each are 32 MiB of buffers and 64 open
            // blobs: well inside a 1,024-file limit with every connection slot taken too.
            max_downloads: 64,
            // Twice TCP's longest usual retransmission backoff before giving up on a peer: a
            // real client on a bad network makes progress within it; one that reads nothing
            // does not.
            stall_timeout: Duration::from_secs(30),
            // Enough for a page's requests and parallel downloads on one connection; hyper's
            // default (200) lets one connection hold hundreds of streams' buffers.
            http2_max_streams: 32,
            // A download's socket is writable again once what TCP has not sent yet drops
            // under this, instead of queueing the whole send buffer (megabytes) unsent. The
            // pace stays (what is in flight is not bounded, only what waits behind it), the
            // kernel memory of 64 downloads stays small, a small response on an HTTP/2
            // connection waits behind at most this much of a download, and segments leave
            // from the server's own write rather than from the client's ACK processing
            // (docs/performance.md: 1.06x-1.17x nginx on loopback, where 512KiB gains
            // nothing and 16KiB costs the server 50% more CPU).
            tcp_notsent_lowat: ByteSize(64 << 10),
            // A flood costs at most a few events a minute per source, and a summary reaches
            // the log while an incident is still being looked at.
            auth_failure_interval: Duration::from_secs(60),
            // A person retrying a mistyped token, or a script with a stale one retrying every
            // few seconds, stays under it; a guesser does not.
            max_auth_failures_per_source: 30,
            // Ten times one source: a flood spread over many addresses is held too.
            max_auth_failures: 300,
        }
    }
}

/// How long a connection may take, how many may be open, and how many threads serve them
/// (`[server]` keys `handshake_timeout`, `header_timeout`, `idle_timeout`,
/// `max_connections`, `threads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time for the TLS handshake.
    pub handshake_timeout: std::time::Duration,
    /// Time for an HTTP/1.1 request head, from the connection's start or the end of the
    /// previous response.
    pub header_timeout: std::time::Duration,
    /// A connection with no request in progress and no bytes moving is closed after this;
    /// it covers an HTTP/2 connection that never sends its preface.
    pub idle_timeout: std::time::Duration,
    /// Connections open at once; more are closed at once and counted.
    pub max_connections: usize,
    /// Threads serving connections (0: one per core).
    pub threads: usize,
    /// Connections open at once from one client address; more are closed at once.
    pub max_connections_per_address: usize,
    /// Requests in progress at once per authenticated identity; more get 429.
    pub max_requests_per_identity: usize,
    /// Downloads streaming at once per identity; more get 429.
    pub max_downloads_per_identity: usize,
    /// Downloads streaming at once in all; more get 429.
    pub max_downloads: usize,
    /// A download that hands its connection no byte for this long is cut off.
    pub stall_timeout: std::time::Duration,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    pub http2_max_streams: u32,
    /// `TCP_NOTSENT_LOWAT` of each accepted connection, in bytes (0: not set).
    pub tcp_notsent_lowat: u32,
    /// The interval failed authentications are folded over.
    pub auth_failure_interval: std::time::Duration,
    /// Failed authentications per address per interval before 429.
    pub max_auth_failures_per_source: u64,
    /// Failed authentications in all per interval before 429.
    pub max_auth_failures: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ServerConfig::default().limits()
    }
}

/// The most `[server] threads` accepted.
pub const MAX_SERVER_THREADS: usize = 256;

/// The largest `[server] tcp_notsent_lowat` accepted: four times Linux's largest default
/// send buffer (`tcp_wmem`, 4 MiB), past which it bounds nothing.
pub const MAX_TCP_NOTSENT_LOWAT: u32 = 16 << 20;

/// `[seal]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SealConfig {
    /// Default recipients (`age1...`, `ssh-ed25519 ...`, `ssh-rsa ...`).
    pub recipients: Vec<String>,
}

/// `[audit]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit log path (default `<store>/audit.log`, the log the CLI writes too).
    pub path: Option<PathBuf>,
}

/// `[policy]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of policy files (`access.toml`, ...). Without it, only the generated admin
    /// identity (group `ckvault:admins`) is granted anything.
    pub dir: Option<PathBuf>,
}

/// A TOML file that does not parse (or has keys its reader does not know), located:
/// `FILE:LINE:COLUMN: message`, then the offending line with a caret under the column.
/// Used for every TOML file ckvault reads (the config, token files, policies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlError {
    /// The file.
    pub file: String,
    /// 1-based line (0 when the parser gave no position).
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The parser's message, without its own rendering of the position.
    pub message: String,
    /// `  LINE | text` and `       |   ^` (empty without a position); the text is cut at
    /// [`TomlError::MAX_LINE`] characters and control characters are escaped.
    pub snippet: String,
}

impl std::fmt::Display for TomlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.file, self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}\n{}",
            self.file, self.line, self.column, self.message, self.snippet
        )
    }
}

impl std::error::Error for TomlError {}

impl TomlError {
    /// Longest part of the offending line shown.
    pub const MAX_LINE: usize = 200;

    /// Locates `e`, an error from parsing `text` (the contents of `file`).
    pub fn new(file: &Path, text: &str, e: &toml::de::Error) -> Self {
        let message = e.message().trim_end().to_owned();
        let Some(span) = e.span() else {
            return Self {
                file: file.display().to_string(),
                line: 0,
                column: 0,
                message,
                snippet: String::new(),
            };
        };
        let offset = span.start.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
        let rest = text.get(line_start..).unwrap_or_default();
        let full = rest
            .split('\n')
            .next()
            .unwrap_or_default()
            .trim_end_matches('\r');
        let shown: String = full.chars().take(Self::MAX_LINE).collect();
        let shown = crate::inspect::escape_control(&shown);
        let caret_at = column.saturating_sub(1).min(Self::MAX_LINE);
        let number = line.to_string();
        let pad = " ".repeat(number.len());
        let snippet = format!("  {number} | {shown}\n  {pad} | {}^", " ".repeat(caret_at));
        Self {
            file: file.display().to_string(),
            line,
            column,
            message,
            snippet,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error(
        "config {path} does not exist: give the path of a ckvault.toml (examples/ckvault.toml shows every key), or leave out --config (and CKVAULT_CONFIG) to use the embedded defaults"
    )]
    Missing {
        /// The file.
        path: String,
    },
    /// Unreadable file.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Invalid TOML or unknown keys: where, and the offending line.
    #[error(
        "config {0}\nfix that line (examples/ckvault.toml shows every key and its format) and run again"
    )]
    Parse(#[source] TomlError),
    /// Inconsistent settings.
    #[error("config {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads `path`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::fsutil::read_regular_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::Missing {
                    path: path.display().to_string(),
                }
            } else {
                ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                }
            }
        })?;
        let mut config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse(TomlError::new(path, &text, &e)))?;
        if config.server.cert.is_some() != config.server.key.is_some() {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                message: "[server] cert and key go together: set both or neither".into(),
            });
        }
        if config.server.threads > MAX_SERVER_THREADS {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                message: format!(
                    "[server] threads = {} is more than {MAX_SERVER_THREADS}; 0 means one per core",
                    config.server.threads
                ),
            });
        }
        if config.server.tcp_notsent_lowat.bytes() > u64::from(MAX_TCP_NOTSENT_LOWAT) {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                message: format!(
                    "[server] tcp_notsent_lowat = \"{}\" is more than 16MiB; \"0\" leaves the kernel's default",
                    config.server.tcp_notsent_lowat
                ),
            });
        }
        let server = &config.server;
        for (key, value) in [
            ("max_connections", server.max_connections),
            (
                "max_connections_per_address",
                server.max_connections_per_address,
            ),
            (
                "max_requests_per_identity",
                server.max_requests_per_identity,
            ),
            (
                "max_downloads_per_identity",
                server.max_downloads_per_identity,
            ),
            ("max_downloads", server.max_downloads),
            ("http2_max_streams", server.http2_max_streams as usize),
            ("[cri] max_intercepted", config.cri.max_intercepted),
            (
                "[cri] max_pending_per_connection",
                config.cri.max_pending_per_connection,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    path: path.display().to_string(),
                    message: format!(
                        "[server] {key} = 0 would refuse every client; give at least 1"
                    ),
                });
            }
        }
        if server.auth_failure_interval < std::time::Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                message: "[server] auth_failure_interval must be at least 1s".into(),
            });
        }
        if config.watch.settle > MAX_WATCH_SETTLE {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                message: format!("[watch] settle is at most {}s", MAX_WATCH_SETTLE.as_secs()),
            });
        }
        if server.stall_timeout < std::time::Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                message: "[server] stall_timeout must be at least 1s".into(),
            });
        }
        if config.store.kind == StoreKind::S3 && config.store.bucket.is_none() {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                message: "[store] kind = \"s3\" needs bucket = \"...\"".into(),
            });
        }
        if config.fleet.enabled && config.store.kind != StoreKind::S3 {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                message: "[fleet] enabled needs a bucket ([store] kind = \"s3\"): capture requests travel through it".into(),
            });
        }
        config
            .check_incident_capture()
            .map_err(|message| ConfigError::Invalid {
                path: path.display().to_string(),
                message,
            })?;
        // Against the file's own directory, made absolute: `--config ckvault.toml` has an
        // empty parent, and every path handed to another process must be absolute.
        let file = crate::fsutil::absolute(path);
        config.resolve(file.parent().unwrap_or(Path::new("/")));
        Ok(config)
    }

    /// The embedded defaults, their relative paths (`./ckvault-data`) resolved against
    /// the working directory.
    pub fn embedded() -> Self {
        let mut config = Config::default();
        config.resolve(&crate::fsutil::absolute(Path::new(".")));
        config
    }

    /// The embedded defaults with the local store at `dir` (`--store DIR`).
    pub fn for_store(dir: &Path) -> Self {
        let mut config = Self::embedded();
        config.store.path = crate::fsutil::absolute(dir);
        config
    }

    /// `[capture]`, `[alerts]`, `[[trigger]]` and `[[notify]]`: what serde cannot check.
    fn check_incident_capture(&self) -> Result<(), String> {
        let c = &self.capture;
        for (key, d) in [
            ("[capture] cooldown", c.cooldown),
            ("[capture] capture_timeout", c.capture_timeout),
            ("[alerts] signature_max_age", self.alerts.signature_max_age),
            ("[fleet] publish_interval", self.fleet.publish_interval),
            ("[fleet] poll_interval", self.fleet.poll_interval),
            ("[fleet] request_ttl", self.fleet.request_ttl),
            ("[capture] poll_interval", c.poll_interval),
            ("[capture] stop_budget", c.stop_budget),
        ] {
            if d.is_zero() {
                return Err(format!("{key} must be more than 0"));
            }
        }
        for (key, n) in [
            ("[capture] max_concurrent", c.max_concurrent as u64),
            (
                "[capture] namespace_records_per_day",
                u64::from(c.namespace_records_per_day),
            ),
            (
                "[capture] namespace_bytes_per_day",
                c.namespace_bytes_per_day.bytes(),
            ),
            ("[capture] history", c.history as u64),
            ("[alerts] max_alerts", self.alerts.max_alerts as u64),
        ] {
            if n == 0 {
                return Err(format!(
                    "{key} = 0 would refuse every capture; give at least 1"
                ));
            }
        }
        let a = &self.alerts;
        if a.max_alerts > 1000 {
            return Err(format!(
                "[alerts] max_alerts = {} is more than 1000",
                a.max_alerts
            ));
        }
        if a.max_body.bytes() < 1024 || a.max_body.bytes() > MAX_ALERT_BODY {
            return Err(format!(
                "[alerts] max_body = {} is outside 1KiB..64MiB",
                a.max_body
            ));
        }
        for (key, v) in [
            ("namespace_label", &a.namespace_label),
            ("pod_label", &a.pod_label),
            ("container_label", &a.container_label),
        ] {
            if v.is_empty() {
                return Err(format!("[alerts] {key} is empty: name a label"));
            }
        }
        let mut senders = std::collections::BTreeSet::new();
        for (i, s) in a.sender.iter().enumerate() {
            let at = format!("[[alerts.sender]] number {}", i + 1);
            if s.name.is_empty() {
                return Err(format!("{at} has no name"));
            }
            let name = shown_word(&s.name);
            if !senders.insert(s.name.as_str()) {
                return Err(format!(
                    "[[alerts.sender]] name {name:?} is used twice; names are unique"
                ));
            }
            if s.secret_file.as_os_str().is_empty() {
                return Err(format!(
                    "[[alerts.sender]] {name:?} has no secret_file (a file holding the shared secret)"
                ));
            }
            if s.user.is_empty() {
                return Err(format!(
                    "[[alerts.sender]] {name:?} has no user: name the principal its requests act as"
                ));
            }
        }
        let mut rules = std::collections::BTreeSet::new();
        for (i, r) in self.trigger.iter().enumerate() {
            if r.name.is_empty() {
                return Err(format!("[[trigger]] number {} has no name", i + 1));
            }
            let name = shown_word(&r.name);
            if r.name.len() > 128 || r.name.chars().any(char::is_control) {
                return Err(format!(
                    "[[trigger]] name {name:?}: at most 128 bytes, no control characters"
                ));
            }
            if !rules.insert(r.name.as_str()) {
                return Err(format!(
                    "[[trigger]] name {name:?} is used twice; names are unique"
                ));
            }
            if let Some(s) = r
                .sources
                .iter()
                .find(|s| matches!(s, AlertSource::Unrecognised(_)))
            {
                return Err(format!(
                    "[[trigger]] {name:?}: source {:?} is not one of alertmanager, falco, webhook",
                    shown_word(s.as_str())
                ));
            }
            if r.alerts.iter().any(String::is_empty)
                || r.namespaces.iter().any(String::is_empty)
                || r.labels.keys().any(String::is_empty)
            {
                return Err(format!(
                    "[[trigger]] {name:?}: an empty alert name, namespace glob or label name"
                ));
            }
            if r.cooldown.is_some_and(|d| d.is_zero()) {
                return Err(format!(
                    "[[trigger]] {name:?}: cooldown must be more than 0"
                ));
            }
            if r.max_per_day == Some(0) {
                return Err(format!(
                    "[[trigger]] {name:?}: max_per_day = 0 never captures; remove the rule instead"
                ));
            }
            check_rule_kind(r).map_err(|e| format!("[[trigger]] {name:?}: {e}"))?;
        }
        for n in &self.notify {
            check_notify_url(&n.url)?;
            if n.timeout.is_zero() {
                return Err("[[notify]] timeout must be more than 0".into());
            }
            if n.retries > 100 {
                return Err(format!(
                    "[[notify]] retries = {} is more than 100",
                    n.retries
                ));
            }
        }
        Ok(())
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = crate::fsutil::absolute(&base.join(&*p));
            }
        };
        fix(&mut self.store.path);
        fix(&mut self.store.spool);
        fix(&mut self.cri.listen);
        fix(&mut self.watch.dir);
        for s in &mut self.alerts.sender {
            fix(&mut s.secret_file);
        }
        for p in [
            &mut self.server.cert,
            &mut self.server.key,
            &mut self.server.client_ca,
            &mut self.server.tokens,
            &mut self.server.crl,
            &mut self.audit.path,
            &mut self.policy.dir,
            &mut self.cri.upstream,
            &mut self.cri.staging,
            &mut self.store.credentials_file,
            &mut self.store.trusted_keys,
            &mut self.store.ca_file,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        for n in &mut self.notify {
            for p in [&mut n.token_file, &mut n.ca].into_iter().flatten() {
                fix(p);
            }
        }
    }
}

/// A name from the file, for a message: escaped, at most 64 bytes.
fn shown_word(s: &str) -> String {
    let mut out = crate::inspect::escape_control(s).into_owned();
    crate::vocab::cut_to(&mut out, 64);
    out
}

/// A `[[notify]] url`: https, or http to a loopback address; no credentials in it.
fn check_notify_url(url: &str) -> Result<(), String> {
    let shown = shown_word(url);
    let u = reqwest::Url::parse(url)
        .map_err(|e| format!("[[notify]] url {shown:?} is not a URL: {e}"))?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "[[notify]] url {shown:?} carries credentials; put a bearer token in token_file"
        ));
    }
    let host = u.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    match u.scheme() {
        "https" if !host.is_empty() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "[[notify]] url {shown:?}: http:// only to a loopback address (127.0.0.1, ::1, localhost); a notice names records and people, so it goes over https"
        )),
        _ => Err(format!("[[notify]] url {shown:?} is not an https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckvault.toml");
        std::fs::write(
            &path,
            "[store]\npath = \"data\"\n[server]\nlisten = \"0.0.0.0:9443\"\ncert = \"s.pem\"\nkey = \"s.key\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.store.path, dir.path().join("data"));
        assert_eq!(c.server.cert.unwrap(), dir.path().join("s.pem"));
        assert_eq!(c.server.listen.port(), 9443);
    }

    #[test]
    fn durations_and_capture_sections() {
        assert_eq!(
            parse_duration("2s"),
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(
            parse_duration("500ms"),
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("30d"),
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("s"), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[cri]\nupstream = \"/run/containerd/containerd.sock\"\nkubelet_location = \"none\"\n[watch]\nsettle = \"500ms\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.cri.kubelet_location, KubeletLocation::None);
        assert_eq!(c.watch.settle, std::time::Duration::from_millis(500));
        std::fs::write(&path, "[watch]\nsettle = \"9999999999999d\"\n").unwrap();
        assert!(
            Config::load(&path).is_err(),
            "a duration past a year is refused"
        );
        std::fs::write(&path, "[watch]\nsettle = \"2h\"\n").unwrap();
        assert!(
            Config::load(&path).is_err(),
            "settle past an hour is refused"
        );
        std::fs::write(&path, "[watch]\nsettle = \"soon\"\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .to_string()
                .contains("not a duration")
        );
    }

    #[test]
    fn the_unsent_bound_is_a_size_up_to_16mib_and_0_leaves_the_kernel_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        for (text, bytes) in [
            ("\"32KiB\"", 32 << 10),
            ("\"0\"", 0),
            ("\"16MiB\"", 16 << 20),
        ] {
            std::fs::write(&path, format!("[server]\ntcp_notsent_lowat = {text}\n")).unwrap();
            let c = Config::load(&path).unwrap();
            assert_eq!(c.server.limits().tcp_notsent_lowat, bytes, "{text}");
        }
        std::fs::write(&path, "[server]\ntcp_notsent_lowat = \"17MiB\"\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("tcp_notsent_lowat") && e.contains("16MiB"),
            "{e}"
        );
        std::fs::write(&path, "[server]\ntcp_notsent_lowat = \"lots\"\n").unwrap();
        assert!(Config::load(&path).is_err(), "not a size");
    }

    #[test]
    fn s3_store_section_parses_and_needs_a_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[store]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:8333\"\nbucket = \"b\"\nprefix = \"prod/\"\npath_style = true\nspool = \"sp\"\nobject_lock = \"compliance\"\nlock_days = 7\n[node]\nname = \"node-a\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.store.kind, StoreKind::S3);
        assert_eq!(c.store.local_dir(), dir.path().join("sp"));
        assert_eq!(c.store.object_lock, Some(LockMode::Compliance));
        assert_eq!(c.node.name.as_deref(), Some("node-a"));
        std::fs::write(&path, "[store]\nkind = \"s3\"\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .to_string()
                .contains("bucket")
        );
        std::fs::write(&path, "[store]\nspool_max = \"lots\"\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .to_string()
                .contains("spool_max")
        );
    }

    #[test]
    fn toml_errors_are_located_and_their_line_is_shown_bounded_and_escaped() {
        let text = format!(
            "[store]\npath = \"s\"\nx = \"\u{1b}]0;t\u{7}{}\" oops\n",
            "a".repeat(500)
        );
        let e = toml::from_str::<Config>(&text).unwrap_err();
        let t = TomlError::new(Path::new("c.toml"), &text, &e);
        assert_eq!(t.line, 3, "{t}");
        let shown = t.to_string();
        assert!(shown.starts_with("c.toml:3:"), "{shown}");
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown}"
        );
        assert!(shown.contains("\\u{1b}]0;t"), "{shown}");
        let snippet_line = shown.lines().nth(1).unwrap();
        assert!(
            snippet_line.len() < TomlError::MAX_LINE + 40,
            "{snippet_line}"
        );
        // Without a position: file and message only.
        let none = TomlError {
            file: "f".into(),
            line: 0,
            column: 0,
            message: "m".into(),
            snippet: String::new(),
        };
        assert_eq!(none.to_string(), "f: m");
    }

    #[test]
    fn unknown_keys_and_half_tls_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nlisen = \"x\"\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("c.toml:2:1: unknown field `lisen`")
                && e.contains("\n  2 | lisen = \"x\"\n"),
            "{e}"
        );
        std::fs::write(&path, "[server]\ncert = \"a.pem\"\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .to_string()
                .contains("go together")
        );
        std::fs::write(&path, "[server]\nthreads = 100000\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("threads = 100000 is more than 256"), "{e}");
        std::fs::write(&path, "[server]\nthreads = 4\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().server.threads, 4);
    }

    #[test]
    fn alert_sections_parse_resolve_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let good = r#"
[capture]
cooldown = "15m"
max_concurrent = 2
namespace_bytes_per_day = "8GiB"
[alerts]
enabled = true
pod_label = "kubernetes_pod_name"
[[alerts.sender]]
name = "edr"
secret_file = "edr.secret"
user = "edr"
groups = ["senders"]
[[trigger]]
name = "shell"
sources = ["falco"]
alerts = ["Terminal shell in container"]
min_priority = "Notice"
labels = { "proc.name" = "bash" }
namespaces = ["pay*"]
cooldown = "1h"
max_per_day = 3
hold = true
[[trigger]]
name = "any-critical"
min_priority = "critical"
[[notify]]
url = "https://hooks.example.com/ckvault"
token_file = "notify.token"
[[notify]]
url = "http://127.0.0.1:9000/x"
[[notify]]
url = "http://[::1]/x"
"#;
        std::fs::write(&path, good).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.capture.cooldown, Duration::from_secs(900));
        assert_eq!(c.capture.max_concurrent, 2);
        assert_eq!(c.capture.namespace_bytes_per_day, ByteSize(8 << 30));
        assert_eq!(c.capture.disk_margin, ByteSize(1 << 30));
        assert!(c.alerts.enabled);
        assert_eq!(c.alerts.pod_label, "kubernetes_pod_name");
        assert_eq!(c.alerts.namespace_label, "namespace");
        assert_eq!(
            c.alerts.sender[0].secret_file,
            dir.path().join("edr.secret")
        );
        assert_eq!(c.alerts.sender[0].groups, ["senders"]);
        assert_eq!(c.trigger.len(), 2);
        let t = &c.trigger[0];
        assert_eq!(t.sources, [AlertSource::Falco]);
        assert_eq!(t.min_priority, Some(Priority::Notice));
        assert_eq!(t.labels["proc.name"], "bash");
        assert_eq!(t.cooldown, Some(Duration::from_secs(3600)));
        assert_eq!((t.max_per_day, t.hold), (Some(3), true));
        assert_eq!(c.trigger[1].cooldown, None);
        assert_eq!(c.trigger[1].min_priority, Some(Priority::Critical));
        assert_eq!(
            c.notify[0].token_file.as_deref(),
            Some(dir.path().join("notify.token").as_path())
        );
        assert_eq!(
            (c.notify[0].timeout, c.notify[0].retries),
            (Duration::from_secs(10), 5)
        );

        for (text, want) in [
            ("[[trigger]]\nname = \"\"\n", "has no name"),
            (
                "[[trigger]]\nname = \"a\"\n[[trigger]]\nname = \"a\"\n",
                "used twice",
            ),
            (
                "[[trigger]]\nname = \"a\"\nsources = [\"nagios\"]\n",
                "not one of alertmanager",
            ),
            (
                "[[trigger]]\nname = \"a\"\nmin_priority = \"severe\"\n",
                "is not a priority",
            ),
            (
                "[[trigger]]\nname = \"a\"\ncooldown = \"0s\"\n",
                "cooldown must be more than 0",
            ),
            (
                "[[trigger]]\nname = \"a\"\nmax_per_day = 0\n",
                "never captures",
            ),
            ("[[trigger]]\nname = \"a\"\nnamespaces = [\"\"]\n", "empty"),
            (
                "[[trigger]]\nname = \"a\"\nholdd = true\n",
                "unknown field `holdd`",
            ),
            (
                "[[trigger]]\nname = \"a\\u001b[2J\"\n",
                "control characters",
            ),
            (
                "[[trigger]]\nname = \"a\"\non_stop = true\nevery = \"1h\"\n",
                "mixes on_stop and every",
            ),
            (
                "[[trigger]]\nname = \"a\"\nsources = [\"falco\"]\nmemory_above = \"1GiB\"\n",
                "mixes an alert rule",
            ),
            (
                "[[trigger]]\nname = \"a\"\ncontainers = [\"api\"]\n",
                "node's own rules",
            ),
            (
                "[[trigger]]\nname = \"a\"\nmemory_share = 1.5\n",
                "not a share",
            ),
            (
                "[[trigger]]\nname = \"a\"\nmemory_share = 0.5\nmemory_above = \"1GiB\"\n",
                "not both",
            ),
            (
                "[[trigger]]\nname = \"a\"\non_stop = true\nsustained = \"30s\"\n",
                "sustained goes with",
            ),
            (
                "[[trigger]]\nname = \"a\"\nevery = \"500ms\"\n",
                "at least 1s",
            ),
            ("[capture]\npoll_interval = \"0s\"\n", "more than 0"),
            (
                "[[alerts.sender]]\nname = \"s\"\nsecret_file = \"f\"\nuser = \"u\"\n[[alerts.sender]]\nname = \"s\"\nsecret_file = \"g\"\nuser = \"u\"\n",
                "used twice",
            ),
            (
                "[[alerts.sender]]\nname = \"s\"\nuser = \"u\"\n",
                "has no secret_file",
            ),
            (
                "[[alerts.sender]]\nname = \"s\"\nsecret_file = \"f\"\n",
                "has no user",
            ),
            (
                "[[alerts.sender]]\nsecret_file = \"f\"\nuser = \"u\"\n",
                "has no name",
            ),
            (
                "[[notify]]\nurl = \"http://hooks.example.com/x\"\n",
                "only to a loopback",
            ),
            (
                "[[notify]]\nurl = \"ftp://127.0.0.1/x\"\n",
                "not an https:// URL",
            ),
            (
                "[[notify]]\nurl = \"https://u:p@hooks.example.com/\"\n",
                "carries credentials",
            ),
            ("[[notify]]\nurl = \"hooks.example.com\"\n", "is not a URL"),
            ("[[notify]]\n", "is not a URL"),
            (
                "[[notify]]\nurl = \"https://h/\"\ntimeout = \"0ms\"\n",
                "timeout must be more than 0",
            ),
            (
                "[capture]\ncooldown = \"0s\"\n",
                "cooldown must be more than 0",
            ),
            ("[capture]\nmax_concurrent = 0\n", "max_concurrent = 0"),
            ("[capture]\nhistory = 0\n", "history = 0"),
            (
                "[alerts]\nsignature_max_age = \"0s\"\n",
                "signature_max_age must be more",
            ),
            ("[alerts]\nmax_alerts = 5000\n", "more than 1000"),
            ("[alerts]\nmax_body = \"1GiB\"\n", "outside 1KiB..64MiB"),
            ("[alerts]\npod_label = \"\"\n", "pod_label is empty"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Config::load(&path).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\u{1b}'), "{e}");
        }
    }
}

/// `examples/ckvault.toml` is the configuration reference: held true against these types.
#[cfg(test)]
mod reference {
    use super::*;
    use std::collections::BTreeSet;

    /// Arrays of tables (`[[trigger]]`, `[[alerts.sender]]`): their keys are
    /// `[[path]] key`, documented by one commented entry each.
    const TABLE_ARRAYS: [&str; 3] = ["alerts.sender", "trigger", "notify"];

    fn example() -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(root.join("examples/ckvault.toml")).unwrap()
    }

    /// The example with its commented-out settings (`# key = value`, `# [section]`,
    /// `# [[array]]`) made live: every key it documents.
    fn documented(text: &str) -> String {
        let setting =
            regex::Regex::new(r#"^# ?(\[\[[a-z.]+\]\]|\[[a-z]+\]|[a-z_0-9]+ = ["\[0-9tf{].*)$"#)
                .unwrap();
        text.lines()
            .map(|l| match setting.captures(l) {
                Some(c) => c[1].to_owned(),
                None => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every key with its value: `[section] key`, and `[[path]] key` for each entry of an
    /// array of tables.
    fn entries(v: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        let mut table_array = |path: &str, items: &serde_json::Value| {
            for item in items.as_array().unwrap() {
                for (key, value) in item.as_object().unwrap() {
                    out.push((format!("[[{path}]] {key}"), value.clone()));
                }
            }
        };
        let mut plain = Vec::new();
        for (section, value) in v.as_object().unwrap() {
            if TABLE_ARRAYS.contains(&section.as_str()) {
                table_array(section, value);
                continue;
            }
            for (key, value) in value.as_object().unwrap() {
                let path = format!("{section}.{key}");
                if TABLE_ARRAYS.contains(&path.as_str()) {
                    table_array(&path, value);
                } else {
                    plain.push((format!("[{section}] {key}"), value.clone()));
                }
            }
        }
        out.extend(plain);
        out
    }

    fn keys(v: &serde_json::Value) -> BTreeSet<String> {
        entries(v).into_iter().map(|(k, _)| k).collect()
    }

    fn toml_keys(v: &toml::Table) -> BTreeSet<String> {
        keys(&serde_json::to_value(v).unwrap())
    }

    #[test]
    fn the_example_sets_every_default_as_coded() {
        // Live settings: each one is a key of the types, with the value the code defaults to.
        let live: Config = toml::from_str(&example()).unwrap();
        assert_eq!(
            serde_json::to_value(&live).unwrap(),
            serde_json::to_value(Config::default()).unwrap(),
            "a live setting of examples/ckvault.toml differs from its coded default"
        );
        // And every key with a default is live in it; a key without one (None) is shown
        // commented out, as are the entries of arrays of tables (none by default).
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let with_default: BTreeSet<String> = entries(&defaults)
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, _)| k)
            .collect();
        let live_keys = toml_keys(&toml::from_str(&example()).unwrap());
        assert_eq!(
            live_keys, with_default,
            "keys with a default must be live in examples/ckvault.toml, the others commented"
        );
    }

    #[test]
    fn the_example_documents_every_key_and_only_known_keys() {
        let text = documented(&example());
        // Known to the types (deny_unknown_fields), ...
        let config: Config = toml::from_str(&text).unwrap();
        // ... with an entry of each array of tables, ...
        let as_json = serde_json::to_value(&config).unwrap();
        for path in TABLE_ARRAYS {
            let items = path
                .split('.')
                .fold(&as_json, |v, part| &v[part])
                .as_array()
                .unwrap();
            assert!(
                !items.is_empty(),
                "examples/ckvault.toml documents no [[{path}]] entry"
            );
        }
        // ... and every key of the types is there (of an array's entries: every field of
        // the documented entry, None fields included).
        let documented = toml_keys(&toml::from_str(&text).unwrap());
        let mut coded = keys(&serde_json::to_value(Config::default()).unwrap());
        coded.extend(keys(&as_json));
        assert_eq!(
            coded.difference(&documented).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "keys of the config types missing from examples/ckvault.toml"
        );
        assert_eq!(
            documented, coded,
            "examples/ckvault.toml documents keys the types do not have"
        );
    }

    #[test]
    fn defaults_read_back_as_they_are_written() {
        let text = toml::to_string(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(
            serde_json::to_value(back).unwrap(),
            serde_json::to_value(Config::default()).unwrap()
        );
    }
}
