//! CRIU's dump statistics from the `stats-dump` service image.

use super::proto::{CriuError, IMG_SERVICE_MAGIC, bytes_of, entries_after, fields, varint_of};

/// Magic of `stats-dump` (`StatsEntry { dump = 1 }`).
pub const STATS_MAGIC: u32 = 0x5709_3306;

/// CRIU's dump statistics (`DumpStatsEntry`): times in microseconds, page counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DumpStatistics {
    /// Time to freeze the tasks.
    pub freezing_time: u64,
    /// Time the tasks stayed frozen.
    pub frozen_time: u64,
    /// Time to dump memory.
    pub memdump_time: u64,
    /// Time to write memory out.
    pub memwrite_time: u64,
    /// Pages scanned.
    pub pages_scanned: u64,
    /// Pages written.
    pub pages_written: u64,
}

/// The dump statistics of `stats-dump`, if it has a dump entry.
pub fn parse_stats(img: &[u8]) -> Result<Option<DumpStatistics>, CriuError> {
    let ents = entries_after(img, IMG_SERVICE_MAGIC, STATS_MAGIC)?;
    let Some(first) = ents.first() else {
        return Ok(None);
    };
    let Some(dump) = bytes_of(&fields(first)?, 1) else {
        return Ok(None);
    };
    let f = fields(dump)?;
    let v = |n: u32| varint_of(&f, n).unwrap_or(0);
    Ok(Some(DumpStatistics {
        freezing_time: v(1),
        frozen_time: v(2),
        memdump_time: v(3),
        memwrite_time: v(4),
        pages_scanned: v(5),
        pages_written: v(7),
    }))
}
