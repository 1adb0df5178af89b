//! Which local blobs were verified since they last changed: a record's blob whose every
//! byte matched its signed digest, remembered with the [`FileIdentity`] the file had then.
//! A download of a blob with that same identity is checked by identity instead of being
//! re-hashed: the identity is taken again from the open file when the stream ends, and a
//! blob that changed meanwhile is cut off before its last chunk. The argument for why an
//! unchanged identity stands for unchanged bytes, and its limits, is in SECURITY.md
//! ("Downloads").
//!
//! This module only keeps the facts; hashing is [`super::download`]'s, streaming the
//! front-end's, and the store's buckets have no file identity, so their blobs are never
//! remembered here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::manifest::RecordId;
use crate::store::backend::FileIdentity;

/// A verification stands for this long at most; the next download after it re-hashes
/// (bounds how long a change that bypasses the file system, such as a write to the raw
/// device or a failing disk, can go unnoticed by the server).
pub(crate) const VERIFIED_FOR: Duration = Duration::from_secs(3600);

/// A blob is remembered only if it last changed at least this long before its
/// verification began: file time stamps come from a coarse clock (a few milliseconds; a
/// second on some file systems), so a change made while the hash ran is then sure to give
/// the file a different change time.
pub(crate) const SETTLED: Duration = Duration::from_secs(2);

/// Blobs verified since they last changed, by record.
#[derive(Debug, Default)]
pub(crate) struct VerifiedBlobs {
    known: Mutex<HashMap<RecordId, (FileIdentity, Instant)>>,
}

impl VerifiedBlobs {
    /// Whether `id`'s blob, now of `identity`, was verified with that very identity less
    /// than [`VERIFIED_FOR`] ago.
    pub(crate) fn holds(&self, id: &RecordId, identity: &FileIdentity) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|(known, at)| known == identity && at.elapsed() < VERIFIED_FOR)
    }

    /// Notes that every byte of `id`'s blob matched its digest in a pass that began at
    /// `began` on a file of `identity` (still its identity when the pass ended). Ignored
    /// unless the file had settled ([`SETTLED`]) when the pass began.
    pub(crate) fn remember(&self, id: &RecordId, identity: FileIdentity, began: SystemTime) {
        let settled = began
            .duration_since(identity.changed_at())
            .is_ok_and(|age| age >= SETTLED);
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if settled {
            known.insert(id.clone(), (identity, Instant::now()));
        } else {
            known.remove(id);
        }
    }

    /// Forgets `id` (its blob failed a check, or the record is gone).
    pub(crate) fn forget(&self, id: &RecordId) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(ctime: i64) -> FileIdentity {
        FileIdentity {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: (ctime, 0),
            ctime: (ctime, 0),
        }
    }

    fn at(secs: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    #[test]
    fn only_a_settled_identity_is_remembered_and_only_that_identity_holds() {
        let v = VerifiedBlobs::default();
        let id = RecordId::generate();
        // Changed one second before the pass began: a change during the pass could share
        // its time stamp. Not remembered.
        v.remember(&id, identity(1000), at(1001));
        assert!(!v.holds(&id, &identity(1000)));
        // Settled: remembered, for that identity only.
        v.remember(&id, identity(1000), at(1010));
        assert!(v.holds(&id, &identity(1000)));
        assert!(!v.holds(&id, &identity(1011)));
        let mut bigger = identity(1000);
        bigger.size += 1;
        assert!(!v.holds(&id, &bigger));
        // A change time in the future (clock set back) is not settled: forgotten.
        v.remember(&id, identity(2000), at(1010));
        assert!(!v.holds(&id, &identity(2000)));
        assert!(!v.holds(&id, &identity(1000)));
        v.remember(&id, identity(1000), at(1010));
        v.forget(&id);
        assert!(!v.holds(&id, &identity(1000)));
    }
}
