//! Audit events leave every node and server replica for the bucket as signed, chained
//! segments, so one place holds the whole cluster's record of access:
//!
//! - `audit/SOURCE/SEQ.jsonl`: events `SEQ..` of SOURCE's local log, byte for byte
//! - `audit/SOURCE/SEQ.sig.json`: a [`SegmentSig`] over that segment's digest, its first and
//!   last sequence numbers, the hash it continues from and its last hash
//! - `audit/SOURCE/head.json`: the [`SegmentSig`] of the latest segment (overwritten), so a
//!   removed tail of segments is noticed
//!
//! Segments are Object-Lock retained like records when `[store] object_lock` is set.
//! [`verify_bucket`] re-checks every event hash, the chain across segments, every
//! signature (with the source's published or trusted key) and the head.

use std::io::{BufRead, Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{AuditEvent, GENESIS, event_hash};
use crate::manifest::sign::canonical_json;
use crate::store::s3::S3Store;
use crate::store::{LocalStore, StoreError};

/// Most bytes of events in one segment.
const SEGMENT_BYTES: u64 = 8 << 20;

/// The signed description of one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSig {
    /// The node or replica whose log this is.
    pub source: String,
    /// Sequence number of the segment's first event.
    pub first: u64,
    /// Sequence number of its last event.
    pub last: u64,
    /// Hash the first event continues from.
    pub prev: String,
    /// Hash of the last event.
    pub last_hash: String,
    /// SHA-256 (hex) of the segment object.
    pub sha256: String,
    /// Signing key fingerprint.
    pub key_id: String,
    /// Base64 Ed25519 signature over the canonical JSON of all other fields.
    #[serde(default)]
    pub sig: String,
}

impl SegmentSig {
    fn message(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.sig = String::new();
        let mut v = serde_json::to_value(&unsigned).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(m) = &mut v {
            m.remove("sig");
        }
        canonical_json(&v).unwrap_or_default()
    }
}

/// Where shipping has got to in the local log.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Shipped {
    offset: u64,
    seq: u64,
    hash: String,
}

fn shipped_path(spool: &LocalStore) -> std::path::PathBuf {
    spool.root().join("audit.shipped.json")
}

/// Ships the local audit log's new events to the bucket; returns how many.
///
/// One shipper at a time per spool (an exclusive `flock` on `SPOOL/audit.ship.lock`, held
/// until the state is saved): concurrent shippers (an uploader, a CLI command) would send
/// overlapping segments and a verifier would then report a removed segment that never was.
pub async fn ship(s3: &S3Store, spool: &LocalStore, source: &str) -> Result<u64, StoreError> {
    let lock_path = spool.root().join("audit.ship.lock");
    let _lock = super::lock_exclusive(&lock_path).await?;
    let log = spool.audit_path();
    let state_path = shipped_path(spool);
    let mut state: Shipped = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if state.hash.is_empty() {
        state.hash = GENESIS.to_owned();
    }
    let key = spool.signing_key()?;
    let mut total = 0;
    // Only events a signed head confirms: an append in progress (or one a crash
    // interrupted, which the next append cuts) must not leave the node.
    let confirmed = crate::audit::latest_head(&log).map_or(u64::MAX, |h| h.size);
    while let Some((body, events)) = read_segment(&log, state.offset, confirmed)? {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            break;
        };
        let mut sig = SegmentSig {
            source: source.to_owned(),
            first: first.seq,
            last: last.seq,
            prev: first.prev.clone(),
            last_hash: last.hash.clone(),
            sha256: hex::encode(Sha256::digest(&body)),
            key_id: key.verifying_key().key_id(),
            sig: String::new(),
        };
        sig.sig = key.sign_bytes(&sig.message());
        let sig_json = serde_json::to_vec(&sig).map_err(|source| StoreError::Encode {
            what: "a segment signature",
            source,
        })?;
        let base = s3.key(&format!("audit/{source}/{:020}", sig.first));
        let len = body.len() as u64;
        s3.put_bytes(&format!("{base}.jsonl"), body, false, true)
            .await?;
        s3.put_bytes(&format!("{base}.sig.json"), sig_json.clone(), false, true)
            .await?;
        s3.put_bytes(
            &s3.key(&format!("audit/{source}/head.json")),
            sig_json,
            false,
            false,
        )
        .await?;
        state.offset += len;
        state.seq = sig.last;
        state.hash = sig.last_hash;
        total += events.len() as u64;
        let json = serde_json::to_vec(&state).map_err(|source| StoreError::Encode {
            what: "the shipping state",
            source,
        })?;
        crate::fsutil::replace_atomic_owned(&spool.root().join("tmp"), &state_path, &json)
            .map_err(|e| StoreError::io(&state_path, e))?;
    }
    Ok(total)
}

/// A segment's bytes and the events they hold.
type Segment = (Vec<u8>, Vec<AuditEvent>);

/// Reads whole lines from `offset`, up to [`SEGMENT_BYTES`] and event `confirmed`; `None`
/// when there is none.
fn read_segment(
    log: &std::path::Path,
    offset: u64,
    confirmed: u64,
) -> Result<Option<Segment>, StoreError> {
    let mut f = match crate::fsutil::open_regular_nofollow(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(log, e)),
    };
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| StoreError::io(log, e))?;
    let mut reader = std::io::BufReader::new(f.take(SEGMENT_BYTES));
    let mut body = Vec::new();
    let mut events = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| StoreError::io(log, e))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break; // end, or a line still being written
        }
        let event: AuditEvent =
            serde_json::from_slice(&line).map_err(|source| StoreError::Unreadable {
                at: log.display().to_string(),
                expected: "a readable audit event",
                source,
            })?;
        if event.seq > confirmed {
            break;
        }
        body.extend_from_slice(&line);
        events.push(event);
    }
    Ok((!events.is_empty()).then_some((body, events)))
}

/// What [`verify_bucket`] found for one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceVerified {
    /// The node or replica.
    pub source: String,
    /// Segments checked.
    pub segments: u64,
    /// Events checked.
    pub events: u64,
    /// The last event's hash.
    pub head: String,
}

/// Why the audit segments in a bucket do not verify. Messages name the source and segment.
#[derive(Debug, thiserror::Error)]
pub enum BucketAuditError {
    /// The bucket could not be listed or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A segment or signature named by the listing is gone.
    #[error("{key} is missing")]
    Missing {
        /// The object's key.
        key: String,
    },
    /// A signature object does not parse.
    #[error("{key}: not a segment signature: {cause}")]
    NotASignature {
        /// The object's key.
        key: String,
        /// Why it does not parse.
        #[source]
        cause: serde_json::Error,
    },
    /// The key a signature names is not trusted for its source.
    #[error("{key}: {cause}")]
    Key {
        /// The signature's key.
        key: String,
        /// Why the key is not trusted.
        #[source]
        cause: StoreError,
    },
    /// A signature does not verify.
    #[error("{key}: signature does not verify (altered or forged)")]
    Forged {
        /// The signature's key.
        key: String,
    },
    /// A segment's bytes are not the signed ones.
    #[error("{key}: contents differ from the signed segment")]
    Altered {
        /// The segment's key.
        key: String,
    },
    /// Events are missing before a segment.
    #[error("{node}: events {from}..{to} are missing before {key} (removed segment)")]
    Removed {
        /// The node or replica.
        node: String,
        /// The first missing event.
        from: u64,
        /// The last missing event.
        to: u64,
        /// The segment after the gap.
        key: String,
    },
    /// A line of a segment is not an event.
    #[error("{key}: {cause}")]
    BadEvent {
        /// The segment's key.
        key: String,
        /// Why the line does not parse.
        #[source]
        cause: serde_json::Error,
    },
    /// An event's hash does not match its contents.
    #[error("{key}: event {seq} was edited")]
    Edited {
        /// The segment's key.
        key: String,
        /// The event.
        seq: u64,
    },
    /// An event does not follow the one before it.
    #[error("{key}: chain broken at event {seq}")]
    Broken {
        /// The segment's key.
        key: String,
        /// The event.
        seq: u64,
    },
    /// A segment ends elsewhere than its signature says.
    #[error("{key}: ends at {seq}, signature says {last}")]
    Ends {
        /// The segment's key.
        key: String,
        /// Its last event.
        seq: u64,
        /// The last event its signature names.
        last: u64,
    },
    /// The signed head names events no segment holds.
    #[error("{node}: the signed head names event {head}, but segments end at {seq} (truncated)")]
    Truncated {
        /// The node or replica.
        node: String,
        /// The head's last event.
        head: u64,
        /// The segments' last event.
        seq: u64,
    },
}

/// Verifies every source's segments in the bucket. Errors name the source and segment.
pub async fn verify_bucket(s3: &S3Store) -> Result<Vec<SourceVerified>, BucketAuditError> {
    let keys = s3.list("audit/").await?;
    let mut sources: Vec<String> = keys
        .iter()
        .filter_map(|k| k.split_once('/').map(|(s, _)| s.to_owned()))
        .collect();
    sources.sort();
    sources.dedup();
    let mut out = Vec::new();
    for source in sources {
        // The head first, then the segments: a shipper writes a segment before the head
        // that names it, so every segment a head names is listed after it, even while the
        // source keeps shipping.
        let head = signed(s3, &source, "head.json").await?;
        let keys = s3.list(&format!("audit/{source}/")).await?;
        let mut firsts: Vec<(u64, String)> = keys
            .iter()
            .filter_map(|k| {
                let n = k.strip_suffix(".jsonl")?;
                Some((n.parse().ok()?, k.clone()))
            })
            .collect();
        firsts.sort();
        out.push(verify_source(s3, &source, &firsts, &head).await?);
    }
    Ok(out)
}

async fn signed(s3: &S3Store, source: &str, name: &str) -> Result<SegmentSig, BucketAuditError> {
    let key = s3.key(&format!("audit/{source}/{name}"));
    let Some((bytes, _)) = s3.get_bytes(&key, 64 << 10).await? else {
        return Err(BucketAuditError::Missing { key });
    };
    let sig: SegmentSig = match serde_json::from_slice(&bytes) {
        Ok(sig) => sig,
        Err(cause) => return Err(BucketAuditError::NotASignature { key, cause }),
    };
    let vk = match s3.node_key(source, &sig.key_id).await {
        Ok(vk) => vk,
        Err(cause) => return Err(BucketAuditError::Key { key, cause }),
    };
    if sig.source != source || !vk.verify_bytes(&sig.message(), &sig.sig) {
        return Err(BucketAuditError::Forged { key });
    }
    Ok(sig)
}

async fn verify_source(
    s3: &S3Store,
    source: &str,
    segments: &[(u64, String)],
    head: &SegmentSig,
) -> Result<SourceVerified, BucketAuditError> {
    let mut prev = GENESIS.to_owned();
    let mut seq = 0u64;
    let mut events = 0u64;
    for (first, name) in segments {
        let base = name.trim_end_matches(".jsonl");
        let sig = signed(s3, source, &format!("{base}.sig.json")).await?;
        let key = s3.key(&format!("audit/{source}/{name}"));
        let Some((body, _)) = s3
            .get_bytes(&key, SEGMENT_BYTES as usize + (1 << 20))
            .await?
        else {
            return Err(BucketAuditError::Missing { key });
        };
        if hex::encode(Sha256::digest(&body)) != sig.sha256 || sig.first != *first {
            return Err(BucketAuditError::Altered { key });
        }
        if sig.first != seq + 1 || sig.prev != prev {
            return Err(BucketAuditError::Removed {
                node: source.to_owned(),
                from: seq + 1,
                to: sig.first.saturating_sub(1),
                key,
            });
        }
        for line in body.split_inclusive(|b| *b == b'\n') {
            let event: AuditEvent = match serde_json::from_slice(line) {
                Ok(event) => event,
                Err(cause) => return Err(BucketAuditError::BadEvent { key, cause }),
            };
            if event_hash(&event) != event.hash {
                return Err(BucketAuditError::Edited {
                    key,
                    seq: event.seq,
                });
            }
            if event.seq != seq + 1 || event.prev != prev {
                return Err(BucketAuditError::Broken {
                    key,
                    seq: event.seq,
                });
            }
            seq = event.seq;
            prev = event.hash;
            events += 1;
        }
        if seq != sig.last || prev != sig.last_hash {
            return Err(BucketAuditError::Ends {
                key,
                seq,
                last: sig.last,
            });
        }
    }
    if head.last > seq {
        return Err(BucketAuditError::Truncated {
            node: source.to_owned(),
            head: head.last,
            seq,
        });
    }
    Ok(SourceVerified {
        source: source.to_owned(),
        segments: segments.len() as u64,
        events,
        head: prev,
    })
}
