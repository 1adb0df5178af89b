//! Strict parsing of PAX extended header (`x`) records: `"LEN key=value\n"`, repeated,
//! covering the data exactly. Only `path`, `linkpath` and `size` are used; `GNU.sparse.*`
//! marks a sparse member (rejected by the caller); other keys (times, owners, xattrs) are
//! ignored. Anything ambiguous is an error: a repeated used key, an empty value (POSIX
//! reads that as "unset", which readers disagree on), a NUL in a path, a bad length.

/// The records of one PAX extended header that the inspector acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PaxRecords {
    /// `path`.
    pub path: Option<String>,
    /// `linkpath`.
    pub linkpath: Option<String>,
    /// `size`.
    pub size: Option<u64>,
    /// A `GNU.sparse.*` key was present.
    pub sparse: bool,
}

/// Why a PAX header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PaxError {
    /// Records that do not parse strictly.
    Malformed(String),
    /// A NUL byte inside a `path` or `linkpath` value.
    NulInPath(&'static str),
}

/// Longest decimal length prefix accepted (a record can never be longer than the 1 MiB
/// extension header cap anyway).
const MAX_LEN_DIGITS: usize = 20;

/// Parses the whole data of a PAX `x` header.
pub(crate) fn parse(data: &[u8]) -> Result<PaxRecords, PaxError> {
    let mut out = PaxRecords::default();
    let mut rest = data;
    let mut at = 0usize;
    while !rest.is_empty() {
        let (key, value, len) = parse_record(rest)
            .map_err(|why| PaxError::Malformed(format!("record at byte {at}: {why}")))?;
        match key {
            b"path" => out.path = Some(path_value(value, "PAX path", out.path.is_some())?),
            b"linkpath" => {
                out.linkpath = Some(path_value(value, "PAX linkpath", out.linkpath.is_some())?)
            }
            b"size" => {
                if out.size.is_some() {
                    return Err(PaxError::Malformed("the key \"size\" appears twice".into()));
                }
                out.size = Some(size_value(value)?);
            }
            k if k.starts_with(b"GNU.sparse.") => out.sparse = true,
            _ => {}
        }
        rest = rest.get(len..).unwrap_or_default();
        at = at.saturating_add(len);
    }
    Ok(out)
}

/// Splits one record off the front of `buf`: returns (key, value, record length).
fn parse_record(buf: &[u8]) -> Result<(&[u8], &[u8], usize), String> {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err("missing decimal length".into());
    }
    if digits > MAX_LEN_DIGITS {
        return Err("length has too many digits".into());
    }
    if buf.first() == Some(&b'0') {
        return Err("length has a leading zero".into());
    }
    if buf.get(digits) != Some(&b' ') {
        return Err("length is not followed by a space".into());
    }
    let mut len: usize = 0;
    for &b in buf.get(..digits).unwrap_or_default() {
        len = len
            .checked_mul(10)
            .and_then(|l| l.checked_add(usize::from(b - b'0')))
            .ok_or("length overflows")?;
    }
    // At least "N k=\n": the digits, the space, one key byte, '=' and '\n'.
    if len < digits.saturating_add(4) {
        return Err(format!("length {len} is too short for a record"));
    }
    let record = buf
        .get(..len)
        .ok_or_else(|| format!("length {len} runs past the end of the header data"))?;
    let (last, body) = record.split_last().ok_or("empty record")?;
    if *last != b'\n' {
        return Err("record does not end with a newline".into());
    }
    let body = body.get(digits.saturating_add(1)..).unwrap_or_default();
    let eq = body
        .iter()
        .position(|&b| b == b'=')
        .ok_or("record has no '='")?;
    let key = body.get(..eq).unwrap_or_default();
    let value = body.get(eq.saturating_add(1)..).unwrap_or_default();
    if key.is_empty() {
        return Err("record has an empty key".into());
    }
    if key.contains(&0) {
        return Err("key holds a NUL byte".into());
    }
    Ok((key, value, len))
}

fn path_value(value: &[u8], what: &'static str, repeated: bool) -> Result<String, PaxError> {
    if repeated {
        return Err(PaxError::Malformed(format!("{what} appears twice")));
    }
    if value.is_empty() {
        return Err(PaxError::Malformed(format!(
            "{what} is empty (POSIX reads that as unset; readers disagree)"
        )));
    }
    if value.contains(&0) {
        return Err(PaxError::NulInPath(what));
    }
    String::from_utf8(value.to_vec())
        .map_err(|_| PaxError::Malformed(format!("{what} is not valid UTF-8")))
}

fn size_value(value: &[u8]) -> Result<u64, PaxError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(PaxError::Malformed(
            "size is not a plain decimal number".into(),
        ));
    }
    let mut n: u64 = 0;
    for &b in value {
        n = n
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .filter(|&v| v <= i64::MAX as u64)
            .ok_or_else(|| PaxError::Malformed("size is too large".into()))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut n = body.len() + 1;
        while format!("{n}{body}").len() != n {
            n += 1;
        }
        format!("{n}{body}").into_bytes()
    }

    #[test]
    fn parses_used_keys() {
        let mut d = rec("path", "a/b");
        d.extend(rec("size", "42"));
        d.extend(rec("mtime", "1.5"));
        let r = parse(&d).unwrap();
        assert_eq!(r.path.as_deref(), Some("a/b"));
        assert_eq!(r.size, Some(42));
        assert!(!r.sparse);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b"05 a=b\n"[..],
            b"9 a=b\n",
            b"5 ab\n",
            b"6 =ab\n",
            b"x",
            b"7 a=b\nX",
        ] {
            assert!(matches!(parse(bad), Err(PaxError::Malformed(_))), "{bad:?}");
        }
        let mut twice = rec("path", "a");
        twice.extend(rec("path", "b"));
        assert!(parse(&twice).is_err());
        assert!(parse(&rec("size", "-1")).is_err());
        assert!(parse(&rec("size", "")).is_err());
        assert!(parse(&rec("path", "")).is_err());
        assert_eq!(
            parse(&rec("path", "a\0b")),
            Err(PaxError::NulInPath("PAX path"))
        );
        assert!(parse(&rec("GNU.sparse.major", "1")).unwrap().sparse);
    }
}
