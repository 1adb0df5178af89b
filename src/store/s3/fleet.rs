//! Capture across a fleet, the bucket's side: the small JSON objects under `captures/`
//! through which a process that received an alert asks the node running the container
//! to capture it (docs/fleet-capture.md has the protocol and its costs):
//!
//! - `captures/pods/NAMESPACE/POD.json`: a [`PodPublication`], which node runs the pod;
//! - `captures/requests/ID.json`: a [`CaptureRequest`], written once (`If-None-Match: *`);
//! - `captures/inbox/NODE.json`: the IDs pending for a node ([`Inbox`]), replaced only
//!   over the ETag read (`If-Match`), created with `If-None-Match: *`, retried on 412;
//! - `captures/claims/ID.json`: a [`Claim`], written once: the one node that captures it;
//! - `captures/outcomes/ID.json`: an [`Outcome`], written once: the answer.
//!
//! Everything read back is another process's writing: sizes are capped, names checked,
//! text bounded before it is kept or shown.

use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::S3Store;
use super::client::Kind;
use crate::manifest::Trigger;
use crate::store::StoreError;

/// The largest object of this protocol read.
pub const MAX_OBJECT: usize = 64 << 10;
/// The most IDs one inbox holds; the oldest expired go first, then a new request is refused.
pub const INBOX_MAX: usize = 200;
/// The most containers one publication names.
pub const MAX_CONTAINERS: usize = 64;
/// A node rewrites an unchanged publication this often, so its age says it is alive.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(600);
/// A publication older than this is ignored (three heartbeats missed: the node is gone).
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(1800);
/// Conditional writes tried before giving up on a contended inbox.
const INBOX_TRIES: usize = 16;
/// Longest free text (reasons) kept from an object.
const MAX_TEXT: usize = 512;

/// One container of a published pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedContainer {
    /// Its name in the pod.
    pub name: String,
    /// The runtime's ID.
    pub id: String,
}

/// `captures/pods/NAMESPACE/POD.json`: which node runs the pod, and its containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPublication {
    /// The node (its `[node] name`).
    pub node: String,
    /// The pod's namespace and name.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// Its running containers.
    pub containers: Vec<PublishedContainer>,
    /// When it was written (RFC 3339).
    pub updated_at: String,
}

/// `captures/nodes/NODE.json`: the node agent is alive (rewritten every [`HEARTBEAT`]), so
/// its pod publications, written only when they change, stay trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBeat {
    /// The node.
    pub node: String,
    /// When it was written (RFC 3339).
    pub updated_at: String,
}

/// The rule that matched at the receiver, as the node's gate applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRule {
    /// Its name.
    pub name: String,
    /// Hold the record.
    pub hold: bool,
    /// Its own cooldown, in seconds.
    pub cooldown_secs: Option<u64>,
    /// Its records a day.
    pub max_per_day: Option<u32>,
}

/// `captures/requests/ID.json`: a capture the receiver decided on (rules and
/// authorization passed there) for the node that runs the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureRequest {
    /// `cap-` and a ULID.
    pub id: String,
    /// The container, by the names kubelet gives it.
    pub namespace: String,
    /// Pod.
    pub pod: String,
    /// Container.
    pub container: String,
    /// The node asked (none when no node published the pod when it was written).
    pub node: Option<String>,
    /// The receiving process's node name.
    pub receiver: String,
    /// Who asked (the authenticated caller at the receiver).
    pub requested_by: String,
    /// The rule that matched.
    pub rule: RequestRule,
    /// The alert's deduplication key (its source and fingerprint), if it has one.
    pub alert_key: Option<String>,
    /// Why it was asked for: written into the signed manifest.
    pub trigger: Trigger,
    /// When (RFC 3339).
    pub created_at: String,
    /// Not claimed by then: `unclaimed` (RFC 3339).
    pub expires_at: String,
}

/// `captures/claims/ID.json`: the one node that captures a request (or the receiver,
/// `expired = true`, closing it unclaimed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The request.
    pub id: String,
    /// The claimer's node name.
    pub node: String,
    /// The claimer's process (`NODE:PID`), to tell a restarted agent from the one that
    /// claimed.
    pub holder: String,
    /// When (RFC 3339).
    pub claimed_at: String,
    /// No outcome by then: the claimer stopped (RFC 3339).
    pub deadline: String,
    /// The receiver closed the request at its expiry: nobody may claim it any more.
    #[serde(default)]
    pub expired: bool,
}

/// `captures/outcomes/ID.json`: how a request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The request.
    pub id: String,
    /// `sealed`, `refused`, `failed`, `unclaimed`, `deduplicated`.
    pub state: String,
    /// The sealed record.
    pub record: Option<String>,
    /// Why it was refused or failed.
    pub reason: Option<String>,
    /// The node that captured (or was asked).
    pub node: Option<String>,
    /// The container's runtime ID, when the node resolved it.
    pub container_id: Option<String>,
    /// Who wrote this (`NODE:PID`).
    pub written_by: String,
    /// When (RFC 3339).
    pub at: String,
}

/// One pending ID in an inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// The request.
    pub id: String,
    /// Its expiry (Unix seconds), so the oldest expired can be dropped unread.
    pub expires: i64,
}

/// `captures/inbox/NODE.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbox {
    /// Pending requests, oldest first.
    pub pending: Vec<InboxEntry>,
}

/// What a poll of an inbox found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// The same ETag as last time (HTTP 304).
    Unchanged,
    /// No inbox yet.
    Missing,
    /// The inbox, and its ETag.
    Changed(Inbox, Option<String>),
}

/// Now, as RFC 3339.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// An RFC 3339 time read from an object.
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s.get(..64).unwrap_or(s), &Rfc3339).ok()
}

/// Whether `id` is a capture ID (`cap-` and 26 Crockford base32 characters).
pub fn valid_capture_id(id: &str) -> bool {
    id.strip_prefix("cap-").is_some_and(|u| {
        u.len() == 26
            && u.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    })
}

/// Whether `s` can be a Kubernetes namespace, pod or container name (and so a key part).
pub fn valid_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn bounded(s: &str) -> String {
    crate::inspect::escape_control(s)
        .chars()
        .take(MAX_TEXT)
        .collect()
}

/// Why an object of this protocol was refused.
fn malformed(key: &str, why: impl Into<String>) -> StoreError {
    StoreError::S3 {
        op: "GetObject".into(),
        key: key.into(),
        detail: format!("not a valid object of the capture protocol: {}", why.into()),
        kind: Kind::Other,
    }
}

impl PodPublication {
    fn check(self, key: &str) -> Result<Self, StoreError> {
        if !super::valid_node_name(&self.node)
            || !valid_k8s_name(&self.namespace)
            || !valid_k8s_name(&self.pod)
            || self.containers.len() > MAX_CONTAINERS
            || self
                .containers
                .iter()
                .any(|c| !valid_k8s_name(&c.name) || !is_container_id(&c.id))
            || parse_time(&self.updated_at).is_none()
        {
            return Err(malformed(key, "a name, an ID or the time"));
        }
        Ok(self)
    }

    /// How old it is (zero when written in the future).
    pub fn age(&self, now: OffsetDateTime) -> std::time::Duration {
        parse_time(&self.updated_at)
            .map(|t| (now - t).try_into().unwrap_or_default())
            .unwrap_or(std::time::Duration::MAX)
    }
}

fn is_container_id(id: &str) -> bool {
    (12..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl CaptureRequest {
    fn check(mut self, key: &str) -> Result<Self, StoreError> {
        if !valid_capture_id(&self.id)
            || !valid_k8s_name(&self.namespace)
            || !valid_k8s_name(&self.pod)
            || !valid_k8s_name(&self.container)
            || self
                .node
                .as_deref()
                .is_some_and(|n| !super::valid_node_name(n))
            || !super::valid_node_name(&self.receiver)
            || parse_time(&self.created_at).is_none()
            || parse_time(&self.expires_at).is_none()
        {
            return Err(malformed(key, "an ID, a name or a time"));
        }
        self.requested_by = bounded(&self.requested_by);
        self.rule.name = bounded(&self.rule.name);
        self.alert_key = self.alert_key.as_deref().map(bounded);
        self.trigger = self.trigger.bounded();
        Ok(self)
    }

    /// Its expiry.
    pub fn expires(&self) -> OffsetDateTime {
        parse_time(&self.expires_at).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl Claim {
    fn check(self, key: &str) -> Result<Self, StoreError> {
        if !valid_capture_id(&self.id)
            || !super::valid_node_name(&self.node)
            || self.holder.len() > 128
            || self.holder.chars().any(char::is_control)
            || parse_time(&self.deadline).is_none()
        {
            return Err(malformed(key, "an ID, the node or the deadline"));
        }
        Ok(self)
    }

    /// Its deadline.
    pub fn deadline(&self) -> OffsetDateTime {
        parse_time(&self.deadline).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl Outcome {
    fn check(mut self, key: &str) -> Result<Self, StoreError> {
        const STATES: [&str; 5] = ["sealed", "refused", "failed", "unclaimed", "deduplicated"];
        if !valid_capture_id(&self.id)
            || !STATES.contains(&self.state.as_str())
            || self
                .record
                .as_deref()
                .is_some_and(|r| r.parse::<crate::manifest::RecordId>().is_err())
            || self
                .node
                .as_deref()
                .is_some_and(|n| !super::valid_node_name(n))
            || self
                .container_id
                .as_deref()
                .is_some_and(|c| !is_container_id(c))
        {
            return Err(malformed(key, "an ID, the state, the record or the node"));
        }
        self.reason = self.reason.as_deref().map(bounded);
        self.written_by = bounded(&self.written_by);
        self.at = bounded(&self.at);
        Ok(self)
    }
}

/// The capture protocol's objects in one bucket.
#[derive(Debug, Clone)]
pub struct Fleet {
    s3: S3Store,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn lost(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::S3 {
            kind: Kind::Precondition,
            ..
        }
    )
}

impl Fleet {
    /// Over `s3`.
    pub fn new(s3: S3Store) -> Self {
        Self { s3 }
    }

    fn key(&self, rel: &str) -> String {
        self.s3.key(&format!("captures/{rel}"))
    }

    /// Reads and parses one object; `None` when absent.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, Option<String>)>, StoreError> {
        let Some((bytes, etag)) = self.s3.get_bytes(key, MAX_OBJECT).await? else {
            return Ok(None);
        };
        let v = serde_json::from_slice(&bytes).map_err(|e| malformed(key, e.to_string()))?;
        Ok(Some((v, etag)))
    }

    /// Writes `v` at `key` only if nothing is there: `Ok(false)` when something was.
    async fn create<T: Serialize>(&self, key: &str, v: &T) -> Result<bool, StoreError> {
        match self.s3.put_bytes(key, json(v), true, false).await {
            Ok(_) => Ok(true),
            Err(e) if lost(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn pod_key(&self, namespace: &str, pod: &str) -> String {
        self.key(&format!("pods/{namespace}/{pod}.json"))
    }

    /// Publishes (or rewrites) which node runs a pod.
    pub async fn publish(&self, p: &PodPublication) -> Result<(), StoreError> {
        let key = self.pod_key(&p.namespace, &p.pod);
        self.s3.put_bytes(&key, json(p), false, false).await?;
        Ok(())
    }

    /// Says that `node`'s agent is alive now (one PUT per [`HEARTBEAT`]).
    pub async fn beat(&self, node: &str, at: &str) -> Result<(), StoreError> {
        let key = self.key(&format!("nodes/{node}.json"));
        let b = NodeBeat {
            node: node.to_owned(),
            updated_at: at.to_owned(),
        };
        self.s3.put_bytes(&key, json(&b), false, false).await?;
        Ok(())
    }

    /// How long ago `node`'s agent last said it was alive (`None`: never, or unreadable).
    pub async fn node_age(
        &self,
        node: &str,
        now: OffsetDateTime,
    ) -> Result<Option<std::time::Duration>, StoreError> {
        let key = self.key(&format!("nodes/{node}.json"));
        Ok(self.read::<NodeBeat>(&key).await?.and_then(|(b, _)| {
            parse_time(&b.updated_at).map(|t| (now - t).try_into().unwrap_or_default())
        }))
    }

    /// Deletes a pod's publication if it is still `node`'s (another node may have
    /// published the same name since).
    pub async fn unpublish(
        &self,
        node: &str,
        namespace: &str,
        pod: &str,
    ) -> Result<(), StoreError> {
        let key = self.pod_key(namespace, pod);
        match self.read::<PodPublication>(&key).await {
            Ok(Some((p, _))) if p.node == node => {}
            Ok(_) => return Ok(()),
            Err(StoreError::S3 {
                kind: Kind::Other, ..
            }) => {}
            Err(e) => return Err(e),
        }
        self.s3
            .client
            .delete_object()
            .bucket(&self.s3.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.s3.err("DeleteObject", &key, e))?;
        Ok(())
    }

    /// Which node publishes `namespace/pod` (one GET), if any.
    pub async fn locate(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<Option<PodPublication>, StoreError> {
        if !valid_k8s_name(namespace) || !valid_k8s_name(pod) {
            return Ok(None);
        }
        let key = self.pod_key(namespace, pod);
        let Some((p, _)) = self.read::<PodPublication>(&key).await? else {
            return Ok(None);
        };
        let p = p.check(&key)?;
        if p.namespace != namespace || p.pod != pod {
            return Err(malformed(&key, "it names another pod than its key"));
        }
        Ok(Some(p))
    }

    fn request_key(&self, id: &str) -> String {
        self.key(&format!("requests/{id}.json"))
    }

    fn claim_key(&self, id: &str) -> String {
        self.key(&format!("claims/{id}.json"))
    }

    fn outcome_key(&self, id: &str) -> String {
        self.key(&format!("outcomes/{id}.json"))
    }

    fn inbox_key(&self, node: &str) -> String {
        self.key(&format!("inbox/{node}.json"))
    }

    /// Writes a request (once).
    pub async fn put_request(&self, r: &CaptureRequest) -> Result<(), StoreError> {
        let key = self.request_key(&r.id);
        if self.create(&key, r).await? {
            Ok(())
        } else {
            Err(StoreError::S3 {
                op: "PutObject".into(),
                key,
                detail: "a request with this ID exists".into(),
                kind: Kind::Precondition,
            })
        }
    }

    /// A request, if it exists (checked and bounded).
    pub async fn request(&self, id: &str) -> Result<Option<CaptureRequest>, StoreError> {
        if !valid_capture_id(id) {
            return Ok(None);
        }
        let key = self.request_key(id);
        match self.read::<CaptureRequest>(&key).await? {
            Some((r, _)) => {
                let r = r.check(&key)?;
                if r.id != id {
                    return Err(malformed(&key, "it names another ID than its key"));
                }
                Ok(Some(r))
            }
            None => Ok(None),
        }
    }

    /// Claims a request: `Ok(true)` for the one claimer, `Ok(false)` for everyone else.
    pub async fn claim(&self, c: &Claim) -> Result<bool, StoreError> {
        self.create(&self.claim_key(&c.id), c).await
    }

    /// A request's claim, if any.
    pub async fn claim_of(&self, id: &str) -> Result<Option<Claim>, StoreError> {
        let key = self.claim_key(id);
        match self.read::<Claim>(&key).await? {
            Some((c, _)) => Ok(Some(c.check(&key)?)),
            None => Ok(None),
        }
    }

    /// Writes a request's outcome: `Ok(false)` when one was written first.
    pub async fn put_outcome(&self, o: &Outcome) -> Result<bool, StoreError> {
        self.create(&self.outcome_key(&o.id), o).await
    }

    /// A request's outcome, if any.
    pub async fn outcome(&self, id: &str) -> Result<Option<Outcome>, StoreError> {
        let key = self.outcome_key(id);
        match self.read::<Outcome>(&key).await? {
            Some((o, _)) => Ok(Some(o.check(&key)?)),
            None => Ok(None),
        }
    }

    /// Changes `node`'s inbox with `f` (which says whether it changed anything), over the
    /// ETag read, again while another writer gets there first.
    async fn change_inbox(
        &self,
        node: &str,
        mut f: impl FnMut(&mut Inbox) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let key = self.inbox_key(node);
        for _ in 0..INBOX_TRIES {
            let (mut inbox, etag) = match self.read::<Inbox>(&key).await {
                Ok(Some((i, e))) => (i, e),
                Ok(None) => (Inbox::default(), None),
                // A garbled inbox is replaced (its IDs are in captures/requests/).
                Err(StoreError::S3 {
                    kind: Kind::Other, ..
                }) => (Inbox::default(), self.etag_of(&key).await?),
                Err(e) => return Err(e),
            };
            if !f(&mut inbox)? {
                return Ok(());
            }
            let body = json(&inbox);
            let r = match &etag {
                None => self.s3.put_bytes(&key, body, true, false).await,
                Some(etag) => self.s3.replace_bytes(&key, body, etag).await,
            };
            match r {
                Ok(_) => return Ok(()),
                // Another writer first (412), or the object went (moto answers If-Match on
                // a missing key 404): read again.
                Err(StoreError::S3 {
                    kind: Kind::Precondition | Kind::NotFound,
                    ..
                }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20 + u64::from(rand_ms())))
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::S3 {
            op: "PutObject".into(),
            key,
            detail: format!("the inbox changed under {INBOX_TRIES} tries in a row"),
            kind: Kind::Precondition,
        })
    }

    async fn etag_of(&self, key: &str) -> Result<Option<String>, StoreError> {
        let r = self
            .s3
            .client
            .head_object()
            .bucket(&self.s3.bucket)
            .key(key)
            .send()
            .await;
        Ok(self
            .s3
            .found("HeadObject", key, r)?
            .and_then(|h| h.e_tag().map(str::to_owned)))
    }

    /// Adds `id` (expiring at `expires`, Unix seconds) to `node`'s inbox; the oldest
    /// expired entries make room, and a full inbox of live requests refuses it.
    pub async fn push_inbox(&self, node: &str, id: &str, expires: i64) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let key = self.inbox_key(node);
        self.change_inbox(node, |inbox| {
            if inbox.pending.iter().any(|e| e.id == id) {
                return Ok(false);
            }
            while inbox.pending.len() >= INBOX_MAX {
                let Some(pos) = inbox.pending.iter().position(|e| e.expires < now) else {
                    return Err(StoreError::S3 {
                        op: "PutObject".into(),
                        key: key.clone(),
                        detail: format!("{INBOX_MAX} live requests already wait for this node"),
                        kind: Kind::Other,
                    });
                };
                inbox.pending.remove(pos);
            }
            inbox.pending.push(InboxEntry {
                id: id.to_owned(),
                expires,
            });
            Ok(true)
        })
        .await
    }

    /// Removes `ids` from `node`'s inbox (taken, or expired).
    pub async fn drop_from_inbox(&self, node: &str, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.change_inbox(node, |inbox| {
            let before = inbox.pending.len();
            inbox.pending.retain(|e| !ids.contains(&e.id));
            Ok(inbox.pending.len() != before)
        })
        .await
    }

    /// Reads `node`'s inbox unless its ETag is still `last` (one GET, 304 when unchanged).
    pub async fn poll_inbox(&self, node: &str, last: Option<&str>) -> Result<Polled, StoreError> {
        let key = self.inbox_key(node);
        let mut req = self
            .s3
            .client
            .get_object()
            .bucket(&self.s3.bucket)
            .key(&key);
        if let Some(etag) = last {
            req = req.if_none_match(etag);
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                if e.raw_response().map(|r| r.status().as_u16()) == Some(304) {
                    return Ok(Polled::Unchanged);
                }
                return match self.s3.err("GetObject", &key, e) {
                    StoreError::S3 {
                        kind: Kind::NotFound,
                        ..
                    } => Ok(Polled::Missing),
                    e => Err(e),
                };
            }
        };
        let etag = out.e_tag().map(str::to_owned);
        let bytes = read_capped(out.body, MAX_OBJECT)
            .await
            .map_err(|e| malformed(&key, e))?;
        let inbox: Inbox = match serde_json::from_slice(&bytes) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(key, error = %e, "an inbox that does not parse is read as empty");
                Inbox::default()
            }
        };
        let mut inbox = inbox;
        inbox.pending.retain(|e| valid_capture_id(&e.id));
        inbox.pending.truncate(INBOX_MAX);
        Ok(Polled::Changed(inbox, etag))
    }
}

async fn read_capped(body: ByteStream, max: usize) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    body.into_async_read()
        .take(max as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    if buf.len() > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(buf)
}

/// A few milliseconds of jitter, so two writers that lost to each other do not meet again.
fn rand_ms() -> u8 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    ((nanos ^ (nanos >> 7) ^ std::process::id()) % 64) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_from_the_bucket_are_checked() {
        assert!(valid_capture_id("cap-01JQ8Z6X3V5T2M9W0K7R4N1B6C"));
        for bad in [
            "cap-../../x",
            "cap-",
            "01JQ8Z6X3V5T2M9W0K7R4N1B6C",
            "cap-01jq8z6x3v5t2m9w0k7r4n1b6c",
        ] {
            assert!(!valid_capture_id(bad), "{bad}");
        }
        assert!(valid_k8s_name("api-0") && valid_k8s_name("kube-system"));
        for bad in ["", "../x", "a/b", "A", ".x", &"a".repeat(254)] {
            assert!(!valid_k8s_name(bad), "{bad}");
        }
        let p = PodPublication {
            node: "node-a".into(),
            namespace: "shop".into(),
            pod: "api-0".into(),
            containers: vec![PublishedContainer {
                name: "api".into(),
                id: "ab".repeat(32),
            }],
            updated_at: "2026-01-01T00:00:00Z".into(),
        };
        assert!(p.clone().check("k").is_ok());
        let mut bad = p.clone();
        bad.node = "../x".into();
        assert!(bad.check("k").is_err());
        let mut bad = p;
        bad.containers[0].id = "not hex".into();
        assert!(bad.check("k").is_err());
    }
}
