//! Searching a checkpoint's memory without unpacking it: one streaming pass over the
//! archive, where each process's `checkpoint/pagemap-<pid>.img` (read whole, bounded) maps
//! the pages stored in `checkpoint/pages-<id>.img` to virtual addresses, and the pages are
//! scanned as they stream by, with every match reported with its pid, virtual address and
//! context bytes (entries contiguous in virtual memory are scanned as one run, so a match
//! across two of them is found). Nothing is written anywhere. Also the deep view's share
//! of memory ([`Areas`]: each process's argument and environment areas and memory size),
//! which keeps of each pagemap only the segments holding those areas.
//!
//! Pagemap image: `IMG_COMMON_MAGIC`, `PAGEMAP_MAGIC` (0x56084025), a `PagemapHead
//! { pages_id = 1 }` entry, then `PagemapEntry { vaddr = 1; nr_pages = 2; in_parent = 3;
//! flags = 4; nr_pages (u64) = 5 }` entries (CRIU 4.2 writes the count in field 5 and 0 in
//! field 2; earlier versions field 2 only). Entries flagged `PE_PRESENT` (4) have their pages
//! in the pages image, in pagemap order. Checked against real images of both harnesses:
//! the present pages add up to the pages image's size.

use std::collections::BTreeMap;

use super::InspectError;
use super::criu::{CriuError, entries_of, submessages, varint_fields};
use super::input::Input;
use super::tar::{Entry, Kind, TarReader};

/// Magic of `pagemap-<pid>.img`.
pub const PAGEMAP_MAGIC: u32 = 0x5608_4025;
/// `PE_PRESENT`: the entry's pages are in the pages image.
const PE_PRESENT: u64 = 4;
const PAGE: u64 = 4096;
/// Longest literal needle, and longest regex match reported whole.
pub const MAX_MATCH: usize = 4096;
/// Most context bytes on each side of a match.
pub const MAX_CONTEXT: usize = 4096;
/// Bytes searched at a time (plus the overlap that catches matches across windows).
const WINDOW: usize = 1 << 20;
/// Most pagemap ranges per process, and most bytes of all pagemaps together.
const MAX_RANGES: usize = 1 << 20;
const MAX_PAGEMAP_BYTES: u64 = 64 << 20;

/// What to look for.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// These exact bytes.
    Literal(Vec<u8>),
    /// A regular expression over bytes (Unicode off for `.` matching any byte is up to
    /// the caller's pattern).
    Regex(regex::bytes::Regex),
}

/// A search request.
#[derive(Debug, Clone)]
pub struct Search {
    /// The pattern.
    pub pattern: Pattern,
    /// Only this process (its pid in the checkpoint).
    pub pid: Option<u32>,
    /// Context bytes on each side (at most [`MAX_CONTEXT`]).
    pub context: usize,
    /// Stop after this many matches.
    pub max_matches: usize,
}

/// One match.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Match {
    /// The process (pid in the checkpoint).
    pub pid: u32,
    /// Virtual address of the match's first byte.
    pub address: u64,
    /// The matched bytes.
    #[serde(skip)]
    pub matched: Vec<u8>,
    /// Context: up to `context` bytes before, the match, up to `context` bytes after
    /// (within the same run of contiguous pages).
    #[serde(skip)]
    pub context: Vec<u8>,
    /// Where the match starts within `context`.
    #[serde(skip)]
    pub context_offset: usize,
}

/// What a search found.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The matches, in archive order.
    pub matches: Vec<Match>,
    /// Whether `max_matches` stopped the search.
    pub truncated: bool,
    /// Bytes of memory pages scanned, per pid.
    pub scanned: BTreeMap<u32, u64>,
}

/// A run of present pages: virtual address and page count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Virtual address of the first page.
    pub vaddr: u64,
    /// Pages.
    pub pages: u64,
}

/// Parses a pagemap image: its pages image ID and the runs of pages present there.
pub fn parse_pagemap(img: &[u8]) -> Result<(u64, Vec<Range>), CriuError> {
    let ents = entries_of(img, PAGEMAP_MAGIC)?;
    let mut it = ents.into_iter();
    let head = it
        .next()
        .ok_or_else(|| CriuError::Malformed("no pagemap head".into()))?;
    let pages_id = varint_fields(head)?
        .into_iter()
        .find(|(f, _)| *f == 1)
        .map(|(_, v)| v)
        .ok_or_else(|| CriuError::Malformed("pagemap head without pages_id".into()))?;
    let mut ranges = Vec::new();
    for e in it {
        let (mut vaddr, mut n2, mut n5, mut flags, mut in_parent) = (None, 0, None, None, 0);
        for (f, v) in varint_fields(e)? {
            match f {
                1 => vaddr = Some(v),
                2 => n2 = v,
                3 => in_parent = v,
                4 => flags = Some(v),
                5 => n5 = Some(v),
                _ => {}
            }
        }
        let vaddr =
            vaddr.ok_or_else(|| CriuError::Malformed("pagemap entry without vaddr".into()))?;
        let pages = n5.unwrap_or(n2);
        let present = match flags {
            Some(f) => f & PE_PRESENT != 0,
            None => in_parent == 0,
        };
        if !present || pages == 0 {
            continue;
        }
        if vaddr % PAGE != 0
            || pages
                .checked_mul(PAGE)
                .and_then(|b| b.checked_add(vaddr))
                .is_none()
        {
            return Err(CriuError::Malformed(format!(
                "pagemap entry {vaddr:#x} + {pages} pages is not a valid range"
            )));
        }
        if ranges.len() >= MAX_RANGES {
            return Err(CriuError::Malformed(format!(
                "more than {MAX_RANGES} pagemap entries"
            )));
        }
        ranges.push(Range { vaddr, pages });
    }
    Ok((pages_id, ranges))
}

pub(crate) fn digits(name: &str, prefix: &str) -> Option<u64> {
    let d = name.strip_prefix(prefix)?.strip_suffix(".img")?;
    if d.is_empty() || d.len() > 10 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    d.parse().ok()
}

/// Streams the archive's members, searching every pages image whose pagemap came before
/// it (both runtimes write `pagemap-*` before `pages-*`, in name order).
pub(crate) fn search<I: Input>(
    tar: &mut TarReader<'_, I>,
    limits: &super::Limits,
    search: &Search,
) -> Result<Found, InspectError> {
    let mut maps: BTreeMap<u64, (u32, Vec<Range>)> = BTreeMap::new();
    let mut pagemap_bytes = 0u64;
    let mut found = Found::default();
    let mut saw_pages_first = None;
    while let Some(entry) = tar.next_entry()? {
        if entry.kind == Kind::Dir {
            continue;
        }
        let Some(image) = entry.path.strip_prefix("checkpoint/") else {
            continue;
        };
        if let Some(pid) = digits(image, "pagemap-") {
            pagemap_bytes = pagemap_bytes.saturating_add(entry.size);
            if entry.size > limits.max_criu_image_bytes.max(16 << 20)
                || pagemap_bytes > MAX_PAGEMAP_BYTES
            {
                return Err(InspectError::CriuImageTooLarge {
                    member: entry.path.clone(),
                    size: entry.size,
                    limit: limits.max_criu_image_bytes.max(16 << 20),
                });
            }
            let data = tar.read_data(&entry.path)?;
            let (id, ranges) = parse_pagemap(&data).map_err(|e| InspectError::CriuMalformed {
                member: entry.path.clone(),
                reason: e.to_string(),
            })?;
            let pid = u32::try_from(pid).map_err(|_| InspectError::CriuMalformed {
                member: entry.path.clone(),
                reason: "pid does not fit 32 bits".into(),
            })?;
            maps.insert(id, (pid, ranges));
        } else if let Some(id) = digits(image, "pages-") {
            let Some((pid, ranges)) = maps.remove(&id) else {
                saw_pages_first.get_or_insert(entry.path.clone());
                continue;
            };
            if search.pid.is_some_and(|p| p != pid) {
                continue;
            }
            let declared = ranges
                .iter()
                .fold(0u64, |a, r| a.saturating_add(r.pages.saturating_mul(PAGE)));
            if declared != entry.size {
                return Err(InspectError::CriuMalformed {
                    member: entry.path.clone(),
                    reason: format!(
                        "its pagemap declares {declared} bytes of pages, the image holds {}",
                        entry.size
                    ),
                });
            }
            scan_pages(tar, &entry.path, pid, &ranges, search, &mut found)?;
            if found.truncated {
                break;
            }
        }
    }
    if let Some(p) = saw_pages_first
        && found.scanned.is_empty()
    {
        return Err(InspectError::CriuMalformed {
            member: p,
            reason: "a pages image comes before its pagemap (not a layout CRI-O, containerd or \
                     Podman write)"
                .into(),
        });
    }
    Ok(found)
}

/// Scans one pages image range by range.
fn scan_pages<I: Input>(
    tar: &mut TarReader<'_, I>,
    what: &str,
    pid: u32,
    ranges: &[Range],
    search: &Search,
    found: &mut Found,
) -> Result<(), InspectError> {
    let ctx = search.context.min(MAX_CONTEXT);
    let overlap = MAX_MATCH + ctx;
    let mut chunk = vec![0u8; WINDOW];
    for r in contiguous_runs(ranges) {
        let len = r.pages * PAGE;
        // buf holds the range's bytes from offset `base`.
        let mut buf: Vec<u8> = Vec::with_capacity(WINDOW + overlap + ctx);
        let mut base = 0u64;
        let mut read = 0u64;
        let mut next_report = 0u64; // matches starting before this were reported
        while next_report < len {
            // Fill up to next_report + WINDOW + overlap (or the range's end).
            let want_to = (next_report + WINDOW as u64 + overlap as u64).min(len);
            while read < want_to {
                let n = usize::try_from((want_to - read).min(WINDOW as u64)).unwrap_or(WINDOW);
                let got = tar.read_chunk(chunk.get_mut(..n).unwrap_or_default(), what)?;
                if got == 0 {
                    return Err(InspectError::Truncated {
                        what: what.to_owned(),
                        offset: read,
                        needed: len - read,
                    });
                }
                buf.extend_from_slice(chunk.get(..got).unwrap_or_default());
                read += got as u64;
            }
            let report_to = if read == len {
                len
            } else {
                next_report + WINDOW as u64
            };
            let from = usize::try_from(next_report - base).unwrap_or(0);
            for (s, e) in find_all(&search.pattern, &buf, from) {
                let abs = base + s as u64;
                if abs >= report_to {
                    break;
                }
                if found.matches.len() >= search.max_matches {
                    found.truncated = true;
                    return Ok(());
                }
                let c0 = s.saturating_sub(ctx);
                let c1 = (e + ctx).min(buf.len());
                found.matches.push(Match {
                    pid,
                    address: r.vaddr + abs,
                    matched: buf.get(s..e).unwrap_or_default().to_vec(),
                    context: buf.get(c0..c1).unwrap_or_default().to_vec(),
                    context_offset: s - c0,
                });
            }
            *found.scanned.entry(pid).or_default() += report_to - next_report;
            next_report = report_to;
            // Keep `ctx` bytes before the next window for context.
            let keep_from = next_report.saturating_sub(ctx as u64).max(base);
            let drop = usize::try_from(keep_from - base)
                .unwrap_or(0)
                .min(buf.len());
            buf.drain(..drop);
            base = keep_from;
        }
    }
    Ok(())
}

/// The ranges, with each one that starts where the one before it ends (in virtual memory)
/// joined to it: CRIU cuts one mapping into several pagemap entries (every 1 MiB, and where
/// VMAs meet), and a match may straddle the cut. Pages are stored in pagemap order, so
/// ranges contiguous in memory are contiguous in the pages image too; the scan of a run
/// keeps [`MAX_MATCH`] bytes of overlap between its windows, so a match crossing an entry
/// boundary is found like any other. Ranges with a gap between them are never joined.
fn contiguous_runs(ranges: &[Range]) -> Vec<Range> {
    let mut runs: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(last) = runs.last_mut()
            && last
                .pages
                .checked_mul(PAGE)
                .and_then(|b| b.checked_add(last.vaddr))
                == Some(r.vaddr)
        {
            last.pages = last.pages.saturating_add(r.pages);
            continue;
        }
        runs.push(*r);
    }
    runs
}

/// Every match in `hay` starting at or after `from`: (start, end), non-overlapping, in
/// order; a regex match is cut at [`MAX_MATCH`] bytes.
fn find_all(p: &Pattern, hay: &[u8], from: usize) -> Vec<(usize, usize)> {
    let Some(h) = hay.get(from..) else {
        return Vec::new();
    };
    match p {
        Pattern::Literal(needle) if needle.is_empty() => Vec::new(),
        Pattern::Literal(needle) => memchr::memmem::find_iter(h, needle)
            .map(|s| (from + s, from + s + needle.len()))
            .collect(),
        Pattern::Regex(re) => re
            .find_iter(h)
            .filter(|m| m.end() > m.start())
            .map(|m| {
                (
                    from + m.start(),
                    from + m.start() + (m.end() - m.start()).min(MAX_MATCH),
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(u8, u64)]) -> Vec<u8> {
        let mut m = Vec::new();
        for (f, v) in fields {
            m.push(f << 3);
            let mut v = *v;
            while v >= 0x80 {
                m.push((v as u8) | 0x80);
                v >>= 7;
            }
            m.push(v as u8);
        }
        let mut out = (m.len() as u32).to_le_bytes().to_vec();
        out.extend(m);
        out
    }

    fn image(ents: &[Vec<u8>]) -> Vec<u8> {
        let mut b = super::super::criu::IMG_COMMON_MAGIC.to_le_bytes().to_vec();
        b.extend(PAGEMAP_MAGIC.to_le_bytes());
        for e in ents {
            b.extend(e);
        }
        b
    }

    #[test]
    fn pagemaps_of_both_criu_versions() {
        let img = image(&[
            entry(&[(1, 1)]),
            entry(&[(1, 0x400000), (2, 2), (4, 4)]), // CRIU 4.1: count in 2
            entry(&[(1, 0x500000), (2, 0), (4, 6), (5, 3)]), // CRIU 4.2: count in 5
            entry(&[(1, 0x600000), (2, 9), (4, 1)]), // lazy, not present
        ]);
        let (id, ranges) = parse_pagemap(&img).unwrap();
        assert_eq!(id, 1);
        assert_eq!(
            ranges,
            [
                Range {
                    vaddr: 0x400000,
                    pages: 2
                },
                Range {
                    vaddr: 0x500000,
                    pages: 3
                }
            ]
        );
        for bad in [
            image(&[]),
            image(&[entry(&[(1, 1)]), entry(&[(1, 0x400001), (2, 1), (4, 4)])]),
            image(&[
                entry(&[(1, 1)]),
                entry(&[(1, u64::MAX - 4095), (2, 2), (4, 4)]),
            ]),
            image(&[entry(&[(1, 1)]), entry(&[(2, 1), (4, 4)])]),
        ] {
            assert!(parse_pagemap(&bad).is_err());
        }
    }

    /// A plain tar of `members` (ustar headers, no end marker needed by the reader).
    fn tar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..108].copy_from_slice(b"0000644\0");
            h[108..116].copy_from_slice(b"0000000\0");
            h[116..124].copy_from_slice(b"0000000\0");
            h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
            h[136..148].copy_from_slice(b"00000000000\0");
            h[156] = b'0';
            h[257..265].copy_from_slice(b"ustar\x0000");
            h[148..156].fill(b' ');
            let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    /// Searches an archive whose pid 1 has two one-page entries at `first` and `second`,
    /// the first page ending with `tail`, the second starting with `head`.
    fn split_search(first: u64, second: u64, tail: &[u8], head: &[u8], p: Pattern) -> Found {
        let map = image(&[
            entry(&[(1, 1)]),
            entry(&[(1, first), (2, 1), (4, 4)]),
            entry(&[(1, second), (2, 1), (4, 4)]),
        ]);
        let mut pages = vec![0u8; 2 * PAGE as usize];
        let cut = PAGE as usize;
        pages[cut - tail.len()..cut].copy_from_slice(tail);
        pages[cut..cut + head.len()].copy_from_slice(head);
        let archive = tar(&[
            ("checkpoint/pagemap-1.img", &map),
            ("checkpoint/pages-1.img", &pages),
        ]);
        let search = Search {
            pattern: p,
            pid: Some(1),
            context: 8,
            max_matches: 100,
        };
        super::super::memsearch_reader(&archive[..], &super::super::Limits::default(), &search)
            .unwrap()
    }

    #[test]
    fn a_match_split_across_entries_contiguous_in_memory_is_found() {
        let needle = b"Authorization: Bearer";
        for pattern in [
            Pattern::Literal(needle.to_vec()),
            Pattern::Regex(regex::bytes::Regex::new("Authorization: [A-Z][a-z]+").unwrap()),
        ] {
            let found = split_search(0x40_0000, 0x40_1000, b"Author", b"ization: Bearer", pattern);
            assert_eq!(found.matches.len(), 1, "{found:?}");
            let m = &found.matches[0];
            assert_eq!((m.pid, m.address), (1, 0x40_1000 - 6));
            assert_eq!(m.matched, needle);
            // Context runs across the cut too.
            assert_eq!(&m.context[8..8 + needle.len()], needle);
            assert_eq!(m.context.len(), 8 + needle.len() + 8);
            assert_eq!(found.scanned.get(&1), Some(&(2 * PAGE)));
        }
    }

    #[test]
    fn a_string_split_across_entries_with_a_gap_between_them_is_not_a_match() {
        // The same bytes, but the second page is elsewhere in memory (and an entry before
        // the first one is not joined to it either).
        for (first, second) in [(0x40_0000, 0x50_0000), (0x40_1000, 0x40_0000)] {
            let found = split_search(
                first,
                second,
                b"Author",
                b"ization: Bearer",
                Pattern::Literal(b"Authorization: Bearer".to_vec()),
            );
            assert!(found.matches.is_empty(), "{found:?}");
            assert_eq!(found.scanned.get(&1), Some(&(2 * PAGE)));
        }
    }

    #[test]
    fn the_deep_view_reads_areas_through_cut_down_pagemaps_in_either_order() {
        // Pages: 0x1000 (one page, the environment in it), then 0x10000 (two pages, the
        // arguments across their boundary).
        let map = image(&[
            entry(&[(1, 1)]),
            entry(&[(1, 0x1000), (2, 1), (4, 4)]),
            entry(&[(1, 0x1_0000), (2, 2), (4, 4)]),
        ]);
        let (args, env) = (b"/bin/app\0--serve\0", b"A=1\0PATH=/bin\0");
        let args_at = 0x1_1000 - 9;
        let mut pages = vec![0u8; 3 * PAGE as usize];
        pages[16..16 + env.len()].copy_from_slice(env);
        let a = (PAGE as usize) + (args_at - 0x1_0000) as usize;
        pages[a..a + args.len()].copy_from_slice(args);
        let mut mm = super::super::criu::IMG_COMMON_MAGIC.to_le_bytes().to_vec();
        mm.extend(MM_MAGIC.to_le_bytes());
        mm.extend(&entry(&[
            (8, args_at),
            (9, args_at + args.len() as u64),
            (10, 0x1000 + 16),
            (11, 0x1000 + 16 + env.len() as u64),
        ]));
        let mm_first = [
            ("checkpoint/mm-1.img", &mm[..]),
            ("checkpoint/pagemap-1.img", &map[..]),
            ("checkpoint/pages-1.img", &pages[..]),
        ];
        let mm_second = [mm_first[1], mm_first[0], mm_first[2]];
        for members in [mm_first, mm_second] {
            let view =
                super::super::deep_reader(&tar(&members)[..], &super::super::Limits::default())
                    .unwrap();
            let p = &view.processes[&1].memory;
            assert_eq!(p.cmdline, ["/bin/app", "--serve"]);
            assert_eq!(
                p.env,
                [("A".into(), "1".into()), ("PATH".into(), "/bin".into())]
            );
            assert_eq!(p.memory_bytes, 3 * PAGE);
        }
    }

    #[test]
    fn contiguous_runs_join_only_what_touches() {
        let r = |vaddr, pages| Range { vaddr, pages };
        assert_eq!(
            contiguous_runs(&[
                r(0x1000, 1),
                r(0x2000, 2),
                r(0x5000, 1),
                r(0x6000, 1),
                r(0x1000, 1)
            ]),
            [r(0x1000, 3), r(0x5000, 2), r(0x1000, 1)]
        );
        assert_eq!(contiguous_runs(&[]), []);
    }

    #[test]
    fn matches_across_windows_are_found_once() {
        let p = Pattern::Literal(b"needle".to_vec());
        let mut hay = vec![0u8; 100];
        hay[10..16].copy_from_slice(b"needle");
        hay[40..46].copy_from_slice(b"needle");
        assert_eq!(find_all(&p, &hay, 0), [(10, 16), (40, 46)]);
        assert_eq!(find_all(&p, &hay, 11), [(40, 46)]);
    }
}

/// Magic of `mm-<pid>.img`.
pub const MM_MAGIC: u32 = 0x5749_2820;
/// Most bytes of one process's argument or environment area read.
pub const MAX_AREA: u64 = 1 << 20;

/// The argument and environment areas of a process, from `mm-<pid>.img`: `MmEntry {
/// mm_arg_start = 8; mm_arg_end = 9; mm_env_start = 10; mm_env_end = 11 }`.
/// Areas longer than [`MAX_AREA`] are cut to it (the `bool` says so).
pub fn parse_mm(img: &[u8]) -> Result<([(u64, u64); 2], bool), CriuError> {
    let ents = entries_of(img, MM_MAGIC)?;
    let first = ents
        .first()
        .ok_or_else(|| CriuError::Malformed("empty mm image".into()))?;
    let mut v = [0u64; 4];
    for (f, x) in varint_fields(first)? {
        if (8..=11).contains(&f) {
            v[(f - 8) as usize] = x;
        }
    }
    let area = |s: u64, e: u64| -> Result<(u64, u64), CriuError> {
        if e < s {
            return Err(CriuError::Malformed(format!(
                "area {s:#x}..{e:#x} ends before it starts"
            )));
        }
        Ok((s, e.min(s.saturating_add(MAX_AREA))))
    };
    let areas = [area(v[0], v[1])?, area(v[2], v[3])?];
    // (Both areas are checked to end after they start before their lengths are taken.)
    let cut = v[1] - v[0] > MAX_AREA || v[3] - v[2] > MAX_AREA;
    Ok((areas, cut))
}

/// `MAP_SHARED` in a VMA's flags.
const MAP_SHARED: u64 = 1;

/// Bytes of a process's shared mappings (`MAP_SHARED` VMAs, as `checkpointctl memparse`
/// counts them): `MmEntry { vmas = 14 }`, `VmaEntry { start = 1; end = 2; flags = 6 }`.
pub fn parse_mm_shared(img: &[u8]) -> Result<u64, CriuError> {
    let ents = entries_of(img, MM_MAGIC)?;
    let first = ents
        .first()
        .ok_or_else(|| CriuError::Malformed("empty mm image".into()))?;
    let mut total = 0u64;
    for vma in submessages(first, 14)? {
        let (mut start, mut end, mut flags) = (0, 0, 0);
        for (f, x) in varint_fields(vma)? {
            match f {
                1 => start = x,
                2 => end = x,
                6 => flags = x,
                _ => {}
            }
        }
        if end < start {
            return Err(CriuError::Malformed(format!(
                "VMA {start:#x}..{end:#x} ends before it starts"
            )));
        }
        if flags & MAP_SHARED != 0 {
            total = total.saturating_add(end - start);
        }
    }
    Ok(total)
}

/// What a process's memory says about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Its command line as the kernel kept it (argv), read from its memory.
    pub cmdline: Vec<String>,
    /// Its environment (NAME, value), read from its memory.
    pub env: Vec<(String, String)>,
    /// Bytes of memory pages in the checkpoint.
    pub memory_bytes: u64,
    /// Bytes of its shared mappings (see [`parse_mm_shared`]).
    pub shared_bytes: u64,
    /// Whether an area was longer than [`MAX_AREA`] and cut.
    pub truncated: bool,
}

/// One wanted area being filled: virtual start, bytes.
struct Area {
    start: u64,
    buf: Vec<u8>,
}

/// Where some of a process's memory lies in its pages image: `len` bytes from `offset`
/// hold virtual memory from `vaddr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    offset: u64,
    vaddr: u64,
    len: u64,
}

/// What the deep view keeps of one pagemap until its pages image passes: the process, the
/// bytes of pages it declares, and the segments of the pages image that hold the process's
/// argument and environment areas. All its ranges are kept only while the process's mm
/// image has not been seen (no writer puts a pagemap before its mm image: `mm-` sorts
/// first), counted against [`MAX_HELD_SEGMENTS`].
struct Held {
    pid: u32,
    declared: u64,
    segments: Vec<Segment>,
    /// Whether `segments` were cut down to the areas.
    pruned: bool,
}

/// Most pagemap segments the deep view holds in all (the areas' share of each pagemap,
/// or whole pagemaps that came before their mm image): 1 Mi segments, 24 MiB.
pub const MAX_HELD_SEGMENTS: usize = 1 << 20;

/// The parts of `ranges` (laid one after another in the pages image) that hold bytes of
/// the `areas`, in pages-image order; all of them when `areas` is `None`.
fn segments(ranges: impl Iterator<Item = Segment>, areas: Option<&[Area; 2]>) -> Vec<Segment> {
    let Some(areas) = areas else {
        return ranges.collect();
    };
    let mut out = Vec::new();
    for r in ranges {
        for a in areas {
            let (s, e) = (a.start, a.start.saturating_add(a.buf.len() as u64));
            let (from, to) = (s.max(r.vaddr), e.min(r.vaddr.saturating_add(r.len)));
            if from < to {
                out.push(Segment {
                    offset: r.offset + (from - r.vaddr),
                    vaddr: from,
                    len: to - from,
                });
            }
        }
    }
    out.sort_by_key(|g| g.offset);
    out
}

/// The ranges of a pagemap as segments of its pages image.
fn laid_out(ranges: &[Range]) -> impl Iterator<Item = Segment> + '_ {
    ranges.iter().scan(0u64, |offset, r| {
        let len = r.pages.saturating_mul(PAGE);
        let g = Segment {
            offset: *offset,
            vaddr: r.vaddr,
            len,
        };
        *offset = offset.saturating_add(len);
        Some(g)
    })
}

/// Collects each process's argument and environment areas and its memory size while the
/// archive streams by: `mm-<pid>.img` says where the areas are, `pagemap-<pid>.img` maps
/// the pages of `pages-<id>.img`, whose bytes are copied into the areas as they pass.
/// Of each pagemap only its total and the segments holding the areas are kept (see
/// [`Held`]), so memory does not grow with the pagemaps.
#[derive(Default)]
pub(crate) struct Areas {
    areas: BTreeMap<u32, [Area; 2]>,
    cut: BTreeMap<u32, bool>,
    maps: BTreeMap<u64, Held>,
    /// Segments in `maps`, in all.
    held: usize,
    out: BTreeMap<u32, ProcessMemory>,
    area_bytes: u64,
}

impl Areas {
    /// Takes `entry` if it is an mm, pagemap or pages image (reading its data); returns
    /// whether it did.
    pub(crate) fn offer<I: Input>(
        &mut self,
        tar: &mut TarReader<'_, I>,
        entry: &Entry,
        limits: &super::Limits,
    ) -> Result<bool, InspectError> {
        let cap = limits.max_criu_image_bytes.max(16 << 20);
        if entry.kind != Kind::File {
            return Ok(false);
        }
        let Some(image) = entry.path.strip_prefix("checkpoint/") else {
            return Ok(false);
        };
        let malformed = |reason: String| InspectError::CriuMalformed {
            member: entry.path.clone(),
            reason,
        };
        let pid_of =
            |n: u64| u32::try_from(n).map_err(|_| malformed("pid does not fit 32 bits".into()));
        let too_large = || InspectError::CriuImageTooLarge {
            member: entry.path.clone(),
            size: entry.size,
            limit: cap,
        };
        let too_many = || {
            malformed(format!(
                "more than {MAX_HELD_SEGMENTS} pagemap entries held at once (pagemaps before \
                 their mm images, or entries repeated over the argument area)"
            ))
        };
        if let Some(pid) = digits(image, "mm-") {
            let pid = pid_of(pid)?;
            if entry.size > cap {
                return Err(too_large());
            }
            let data = tar.read_data(&entry.path)?;
            let ([(a0, a1), (e0, e1)], was_cut) =
                parse_mm(&data).map_err(|e| malformed(e.to_string()))?;
            self.out.entry(pid).or_default().shared_bytes =
                parse_mm_shared(&data).map_err(|e| malformed(e.to_string()))?;
            self.area_bytes = self
                .area_bytes
                .saturating_add(a1 - a0)
                .saturating_add(e1 - e0);
            if self.area_bytes > 64 << 20 {
                return Err(malformed(
                    "argument and environment areas over 64 MiB in all".into(),
                ));
            }
            let len = |s: u64, e: u64| usize::try_from(e - s).unwrap_or(0);
            let areas = [
                Area {
                    start: a0,
                    buf: vec![0; len(a0, a1)],
                },
                Area {
                    start: e0,
                    buf: vec![0; len(e0, e1)],
                },
            ];
            // A pagemap that came first is cut down to the areas now.
            for held in self.maps.values_mut() {
                if held.pid == pid && !held.pruned {
                    let all = std::mem::take(&mut held.segments);
                    self.held -= all.len();
                    held.segments = segments(all.into_iter(), Some(&areas));
                    held.pruned = true;
                    self.held += held.segments.len();
                }
            }
            self.areas.insert(pid, areas);
            self.cut.insert(pid, was_cut);
        } else if let Some(pid) = digits(image, "pagemap-") {
            let pid = pid_of(pid)?;
            if entry.size > cap {
                return Err(too_large());
            }
            let data = tar.read_data(&entry.path)?;
            let (id, ranges) = parse_pagemap(&data).map_err(|e| malformed(e.to_string()))?;
            drop(data);
            let declared = ranges
                .iter()
                .fold(0u64, |a, r| a.saturating_add(r.pages.saturating_mul(PAGE)));
            let areas = self.areas.get(&pid);
            let kept = segments(laid_out(&ranges), areas);
            let held = Held {
                pid,
                declared,
                segments: kept,
                pruned: areas.is_some(),
            };
            self.held += held.segments.len();
            if let Some(old) = self.maps.insert(id, held) {
                self.held -= old.segments.len();
            }
            if self.held > MAX_HELD_SEGMENTS {
                return Err(too_many());
            }
        } else if let Some(id) = digits(image, "pages-") {
            let Some(held) = self.maps.remove(&id) else {
                return Ok(false);
            };
            self.held -= held.segments.len();
            if held.declared != entry.size {
                return Err(malformed(format!(
                    "its pagemap declares {} bytes of pages, the image holds {}",
                    held.declared, entry.size
                )));
            }
            self.out.entry(held.pid).or_default().memory_bytes = held.declared;
            let Some(want) = self.areas.get_mut(&held.pid) else {
                return Ok(true);
            };
            let mut chunk = vec![0u8; WINDOW.min(2 * MAX_AREA as usize)];
            let mut pos = 0u64;
            for g in &held.segments {
                // Segments may overlap (both areas in one page): what was read was copied
                // into every area it belongs to already.
                let (start, end) = (g.offset.max(pos), g.offset.saturating_add(g.len));
                if start >= end {
                    continue;
                }
                tar.skip_data(start - pos, &entry.path)?;
                pos = start;
                while pos < end {
                    let n = usize::try_from(end - pos)
                        .unwrap_or(usize::MAX)
                        .min(chunk.len());
                    let got =
                        tar.read_chunk(chunk.get_mut(..n).unwrap_or_default(), &entry.path)?;
                    if got == 0 {
                        return Err(malformed("the pages image ends early".into()));
                    }
                    let va = g.vaddr + (pos - g.offset);
                    for a in want.iter_mut() {
                        let (s, e) = (a.start, a.start + a.buf.len() as u64);
                        let (cs, ce) = (va, va + got as u64);
                        let (from, to) = (s.max(cs), e.min(ce));
                        if from < to {
                            let dst = (from - s) as usize..(to - s) as usize;
                            let src = (from - cs) as usize..(to - cs) as usize;
                            if let (Some(d), Some(c)) = (a.buf.get_mut(dst), chunk.get(src)) {
                                d.copy_from_slice(c);
                            }
                        }
                    }
                    pos += got as u64;
                }
            }
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// What was found, by pid.
    pub(crate) fn finish(self) -> BTreeMap<u32, ProcessMemory> {
        let mut out = self.out;
        for (pid, [args, env]) in self.areas {
            let p = out.entry(pid).or_default();
            let strings = |b: &[u8]| -> Vec<String> {
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            };
            p.cmdline = strings(&args.buf);
            p.env = strings(&env.buf)
                .into_iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (kv, String::new()),
                })
                .collect();
            p.truncated = self.cut.get(&pid).copied().unwrap_or(false);
        }
        out
    }
}

#[cfg(test)]
mod mm_tests {
    use super::*;

    #[test]
    fn fuzz_found_mm_images_do_not_panic() {
        let crash = [
            0x19, 0x43, 0x56, 0x54, 0x20, 0x28, 0x49, 0x57, 0x0a, 0x00, 0x00, 0x00, 0x08, 0x01,
            0x50, 0x00, 0xa8, 0xfe, 0x57, 0x08, 0x40, 0x25,
        ];
        let _ = parse_mm(&crash);
        let _ = parse_pagemap(&crash);
        let _ = parse_mm_shared(&crash);
    }

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn mm_with(vmas: &[(u64, u64, u64)]) -> Vec<u8> {
        let mut entry = Vec::new();
        for &(start, end, flags) in vmas {
            let mut vma = Vec::new();
            for (f, x) in [(1u64, start), (2, end), (6, flags)] {
                varint(f << 3, &mut vma);
                varint(x, &mut vma);
            }
            varint((14 << 3) | 2, &mut entry);
            varint(vma.len() as u64, &mut entry);
            entry.extend(vma);
        }
        let mut img = 0x5456_4319u32.to_le_bytes().to_vec();
        img.extend(MM_MAGIC.to_le_bytes());
        img.extend((entry.len() as u32).to_le_bytes());
        img.extend(entry);
        img
    }

    #[test]
    fn shared_mappings_are_summed() {
        // MAP_SHARED (1) counts; MAP_PRIVATE|MAP_ANONYMOUS (0x22) does not.
        let img = mm_with(&[
            (0x1000, 0x3000, 1),
            (0x10000, 0x20000, 0x22),
            (0x40000, 0x41000, 0x21),
        ]);
        assert_eq!(parse_mm_shared(&img).unwrap(), 0x3000);
        assert_eq!(parse_mm_shared(&mm_with(&[])).unwrap(), 0);
        assert!(parse_mm_shared(&mm_with(&[(0x3000, 0x1000, 1)])).is_err());
    }
}
