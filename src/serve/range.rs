//! HTTP `Range: bytes=...` for downloads (RFC 9110 §14). One range is served as 206;
//! several ranges are answered with the whole representation (allowed by the RFC, and
//! simpler than multipart); an unsatisfiable range is 416.

/// What to send for a `Range` header value on a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// Send everything (no or ignorable Range).
    Full,
    /// Send bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// Decides how to answer `header` (the raw Range value) for `len` bytes.
pub fn decide(header: Option<&str>, len: u64) -> RangeDecision {
    let Some(value) = header else {
        return RangeDecision::Full;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeDecision::Full; // unknown unit: ignore
    };
    if spec.contains(',') {
        return RangeDecision::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeDecision::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
    if first.is_empty() {
        // suffix range: the last N bytes
        if !digits(last) {
            return RangeDecision::Full;
        }
        let n: u64 = last.parse().unwrap_or(0);
        if n == 0 || len == 0 {
            return RangeDecision::Unsatisfiable;
        }
        return RangeDecision::Partial {
            start: len.saturating_sub(n),
            end: len - 1,
        };
    }
    if !digits(first) || !(last.is_empty() || digits(last)) {
        return RangeDecision::Full;
    }
    let start: u64 = first.parse().unwrap_or(u64::MAX);
    if start >= len {
        return RangeDecision::Unsatisfiable;
    }
    let end = if last.is_empty() {
        len - 1
    } else {
        match last.parse::<u64>() {
            Ok(e) if e >= start => e.min(len - 1),
            _ => return RangeDecision::Full, // invalid (last < first): ignore the header
        }
    };
    RangeDecision::Partial { start, end }
}

#[cfg(test)]
mod tests {
    use super::RangeDecision::*;
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(decide(None, 100), Full);
        assert_eq!(decide(Some("bytes=0-9"), 100), Partial { start: 0, end: 9 });
        assert_eq!(
            decide(Some("bytes=90-"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            decide(Some("bytes=-10"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            decide(Some("bytes=-1000"), 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            decide(Some("bytes=50-5000"), 100),
            Partial { start: 50, end: 99 }
        );
        assert_eq!(decide(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(decide(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(decide(Some("bytes=9-1"), 100), Full);
        assert_eq!(decide(Some("bytes=0-1,5-6"), 100), Full);
        assert_eq!(decide(Some("items=0-1"), 100), Full);
        assert_eq!(decide(Some("bytes=a-b"), 100), Full);
        assert_eq!(decide(Some("bytes=99999999999999999999-"), 100), Full);
        assert_eq!(decide(Some("bytes=0-0"), 0), Unsatisfiable);
    }
}
