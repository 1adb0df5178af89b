//! Byte sizes in policy and configuration files: `512`, `64KiB`, `8MiB`, `8GiB`, `1TiB`
//! (also KB/MB/GB/TB as powers of 1000), and [`ByteSize`], such a size as a typed value.

/// Parses a size.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let k: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(k)
}

/// A byte size read from text (`20GiB`), written back in the largest binary unit that
/// holds it exactly (`20GiB`, `1536MiB`, `512`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(ByteSize).ok_or_else(|| {
            format!(
                "{:?} is not a size (e.g. 500MiB, 20GiB)",
                s.chars().take(32).collect::<String>()
            )
        })
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("8GiB"), Some(8 << 30));
        assert_eq!(parse_size("2 MB"), Some(2_000_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999TiB"), None);
    }

    #[test]
    fn byte_sizes_read_and_write_back() {
        for (text, bytes, shown) in [
            ("20GiB", 20u64 << 30, "20GiB"),
            ("1536MiB", 1536 << 20, "1536MiB"),
            ("2MB", 2_000_000, "2000000"),
            ("0", 0, "0"),
        ] {
            let b: ByteSize = text.parse().unwrap();
            assert_eq!(b.bytes(), bytes);
            assert_eq!(b.to_string(), shown);
            assert_eq!(shown.parse::<ByteSize>().unwrap(), b);
        }
        assert!(
            "lots"
                .parse::<ByteSize>()
                .unwrap_err()
                .contains("not a size")
        );
    }
}
