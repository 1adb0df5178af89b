//! HPACK decoding (RFC 7541) for the relay: it must follow every client header block to
//! keep the client's dynamic table, on every call, so it has to be cheap. The generic
//! decoder this replaces rebuilt a map-based Huffman table for every string (half of the
//! proxy's CPU per call); here the canonical Huffman code is turned once into per-length
//! tables, and strings decode with array lookups.
//!
//! The code and the static table are *read* from `loona_hpack` once at first use rather
//! than typed in: the HPACK Huffman code is canonical (codewords ordered by length, then
//! symbol), so walking candidate codewords in that order and asking its decoder which
//! symbol each one is rebuilds it exactly; the unit tests check RFC 7541's own examples.
//!
//! Bounded: integers of at most 5 continuation bytes, strings no longer than the block,
//! a dynamic table of at most [`MAX_TABLE`] bytes (size updates above it are refused).

use std::collections::VecDeque;
use std::sync::OnceLock;

/// Largest dynamic table a client may ask for (the relay accepts what any runtime would).
pub const MAX_TABLE: usize = 64 << 10;

/// Why a header block does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends in the middle of a field.
    #[error("the header block ends in the middle of a field")]
    Truncated,
    /// An integer longer than this decoder takes.
    #[error("an HPACK integer overflows")]
    Overflow,
    /// An index outside the static and dynamic tables.
    #[error("HPACK index {0} is not in the table")]
    BadIndex(usize),
    /// A Huffman string that is not valid (bad padding, EOS inside).
    #[error("a Huffman-coded string is malformed")]
    Huffman,
    /// A dynamic table size update above the limit, or after the first field.
    #[error("a dynamic table size update is not allowed here ({0} bytes)")]
    SizeUpdate(usize),
}

/// The canonical Huffman code: for each length, the first codeword and the symbols.
struct Code {
    /// `first[len]`: the first codeword of that length; `count[len]` how many;
    /// `offset[len]`: index of its first symbol in `symbols`.
    first: [u32; 31],
    count: [u32; 31],
    offset: [usize; 31],
    symbols: Vec<u8>,
}

struct Tables {
    code: Code,
    statics: Vec<(Vec<u8>, Vec<u8>)>,
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| Tables {
        code: derive_code(),
        statics: derive_statics(),
    })
}

/// Bits, most significant first, packed into bytes and padded with ones.
fn pack(bits: &[(u32, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut n) = (0u64, 0u32);
    for &(code, len) in bits {
        acc = (acc << len) | u64::from(code);
        n += len;
        while n >= 8 {
            out.push((acc >> (n - 8)) as u8);
            n -= 8;
        }
    }
    if n > 0 {
        out.push(((acc << (8 - n)) as u8) | (0xff >> n));
    }
    out
}

/// Rebuilds the canonical code by walking candidate codewords in canonical order; see the
/// module documentation. A codeword `(c, len)` is real iff `c` followed by the first
/// codeword (five zero bits, symbol `0`) decodes to exactly two symbols ending in `0`.
fn derive_code() -> Code {
    let mut dec = loona_hpack::huffman::HuffmanDecoder::new();
    let mut first = [u32::MAX; 31];
    let mut count = [0u32; 31];
    let mut by_len: Vec<Vec<u8>> = vec![Vec::new(); 31];
    let (mut c, mut len) = (0u32, 5u32);
    let mut found = 0;
    while found < 256 && len <= 30 {
        let probe = pack(&[(c, len), (0, 5)]);
        match dec.decode(&probe) {
            Ok(s) if s.len() == 2 && s.get(1) == Some(&b'0') => {
                let l = len as usize;
                if count[l] == 0 {
                    first[l] = c;
                }
                count[l] += 1;
                if let (Some(v), Some(&sym)) = (by_len.get_mut(l), s.first()) {
                    v.push(sym);
                }
                found += 1;
                c += 1;
            }
            _ => {
                c <<= 1;
                len += 1;
            }
        }
    }
    let mut offset = [0usize; 31];
    let mut symbols = Vec::with_capacity(256);
    for l in 0..31 {
        offset[l] = symbols.len();
        symbols.extend_from_slice(&by_len[l]);
    }
    Code {
        first,
        count,
        offset,
        symbols,
    }
}

/// The 61 entries of the static table, as the reference decoder has them.
fn derive_statics() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::with_capacity(61);
    for i in 1..=61u8 {
        let mut d = loona_hpack::Decoder::new();
        let mut field = (Vec::new(), Vec::new());
        let _ = d.decode_with_cb(&[0x80 | i], |n, v| field = (n.into_owned(), v.into_owned()));
        out.push(field);
    }
    out
}

/// Decodes a Huffman-coded string into `out`.
fn huffman(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let code = &tables().code;
    let (mut c, mut len) = (0u32, 0usize);
    for &byte in bytes {
        for i in (0..8).rev() {
            c = (c << 1) | u32::from((byte >> i) & 1);
            len += 1;
            if len > 30 {
                return Err(HpackError::Huffman);
            }
            let (first, count) = (code.first[len], code.count[len]);
            if count > 0 && c >= first && c - first < count {
                let sym = code
                    .symbols
                    .get(code.offset[len] + (c - first) as usize)
                    .ok_or(HpackError::Huffman)?;
                out.push(*sym);
                c = 0;
                len = 0;
            }
        }
    }
    // Padding: at most 7 bits, all ones (the most significant bits of EOS).
    if len > 7 || c != (1u32 << len) - 1 {
        return Err(HpackError::Huffman);
    }
    Ok(())
}

/// A header field as decoded.
pub type Field = (Vec<u8>, Vec<u8>);

/// One direction's HPACK decoding state.
pub struct Decoder {
    dynamic: VecDeque<Field>,
    size: usize,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

fn int(buf: &[u8], at: &mut usize, prefix: u32) -> Result<usize, HpackError> {
    let first = *buf.get(*at).ok_or(HpackError::Truncated)?;
    *at += 1;
    let max = (1usize << prefix) - 1;
    let mut v = usize::from(first) & max;
    if v < max {
        return Ok(v);
    }
    for shift in [0u32, 7, 14, 21, 28] {
        let b = *buf.get(*at).ok_or(HpackError::Truncated)?;
        *at += 1;
        v = v
            .checked_add(usize::from(b & 0x7f) << shift)
            .ok_or(HpackError::Overflow)?;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(HpackError::Overflow)
}

fn string(buf: &[u8], at: &mut usize) -> Result<Vec<u8>, HpackError> {
    let huff = buf.get(*at).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = int(buf, at, 7)?;
    let end = at.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = buf.get(*at..end).ok_or(HpackError::Truncated)?;
    *at = end;
    if huff {
        let mut out = Vec::with_capacity(len + len / 2);
        huffman(raw, &mut out)?;
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

impl Decoder {
    /// A decoder with the default 4,096-byte table.
    pub fn new() -> Self {
        Self {
            dynamic: VecDeque::new(),
            size: 0,
            max: 4096,
        }
    }

    fn get(&self, index: usize) -> Result<Field, HpackError> {
        let statics = &tables().statics;
        match index {
            0 => Err(HpackError::BadIndex(0)),
            i if i <= statics.len() => statics.get(i - 1).cloned().ok_or(HpackError::BadIndex(i)),
            i => self
                .dynamic
                .get(i - statics.len() - 1)
                .cloned()
                .ok_or(HpackError::BadIndex(i)),
        }
    }

    fn evict(&mut self) {
        while self.size > self.max {
            match self.dynamic.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => self.size = 0,
            }
        }
    }

    fn insert(&mut self, field: Field) {
        let size = field.0.len() + field.1.len() + 32;
        if size > self.max {
            self.dynamic.clear();
            self.size = 0;
            return;
        }
        self.size += size;
        self.dynamic.push_front(field);
        self.evict();
    }

    /// Decodes one complete header block, calling `f` with each field in order.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut at = 0;
        let mut fields = 0usize;
        while let Some(&b) = block.get(at) {
            if b & 0x80 != 0 {
                let (n, v) = self.get(int(block, &mut at, 7)?)?;
                f(&n, &v);
            } else if b & 0x20 != 0 && b & 0x40 == 0 {
                // Dynamic table size update: only before the first field.
                let size = int(block, &mut at, 5)?;
                if fields > 0 || size > MAX_TABLE {
                    return Err(HpackError::SizeUpdate(size));
                }
                self.max = size;
                self.evict();
                continue;
            } else {
                let indexing = b & 0x40 != 0;
                let index = int(block, &mut at, if indexing { 6 } else { 4 })?;
                let name = if index == 0 {
                    string(block, &mut at)?
                } else {
                    self.get(index)?.0
                };
                let value = string(block, &mut at)?;
                f(&name, &value);
                if indexing {
                    self.insert((name, value));
                }
            }
            fields += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn all(d: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })
        .unwrap();
        out
    }

    #[test]
    fn the_derived_code_is_rfc_7541s() {
        let code = &tables().code;
        assert_eq!(code.symbols.len(), 256);
        // Appendix B: '0' is 00000 (5 bits), 'a' 00011, ' ' 010100 (6 bits), and the
        // longest symbols are 30 bits.
        assert_eq!((code.first[5], code.count[5]), (0, 10));
        assert_eq!(code.symbols[code.offset[5]], b'0');
        assert_eq!(code.symbols[code.offset[5] + 3], b'a');
        assert_eq!(
            (code.first[6], code.symbols[code.offset[6]]),
            (0b010100, b' ')
        );
        assert_eq!(
            code.count[30], 3,
            "three symbols of 30 bits (EOS is the fourth)"
        );
        let mut out = Vec::new();
        // C.4.1: "www.example.com"
        huffman(&hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff"), &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        assert_eq!(tables().statics[0].0, b":authority");
        assert_eq!(tables().statics[1], (b":method".to_vec(), b"GET".to_vec()));
        assert_eq!(tables().statics[60].0, b"www-authenticate");
    }

    #[test]
    fn rfc_7541_c4_requests_with_huffman_and_the_dynamic_table() {
        let mut d = Decoder::new();
        let r1 = all(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"));
        assert_eq!(r1[3], (":authority".into(), "www.example.com".into()));
        let r2 = all(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf"));
        assert_eq!(r2[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(r2[4], ("cache-control".into(), "no-cache".into()));
        let r3 = all(
            &mut d,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        );
        assert_eq!(r3[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.size, 164);
    }

    #[test]
    fn hostile_blocks_are_errors() {
        for block in [
            &[0x7f][..],                                 // integer continuation missing
            &[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff],       // integer too long
            &[0x80],                                     // index 0
            &[0xbe],                                     // empty dynamic table
            &[0x40, 0x05, b'a'],                         // string past the end
            &[0x40, 0x81, 0x00, 0x00],                   // Huffman with zero padding
            &[0x40, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00], // EOS inside
            &[0x82, 0x20],                               // size update after a field
            &[0x3f, 0xe1, 0xff, 0x04],                   // size update over the limit
        ] {
            assert!(
                Decoder::new().decode(block, |_, _| {}).is_err(),
                "{block:x?}"
            );
        }
    }

    #[test]
    fn agrees_with_the_reference_decoder_on_generated_blocks() {
        // Literals with and without indexing, Huffman or not, then indexed references.
        let mut enc_blocks: Vec<Vec<u8>> = Vec::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200 {
            let mut block = Vec::new();
            for _ in 0..(next() % 6 + 1) {
                match next() % 4 {
                    0 => block.push(0x80 | (next() % 61 + 1) as u8),
                    1 | 2 => {
                        block.push(if next() % 2 == 0 { 0x40 } else { 0x00 });
                        let name: Vec<u8> = (0..next() % 12 + 1)
                            .map(|_| b'a' + (next() % 26) as u8)
                            .collect();
                        let value: Vec<u8> =
                            (0..next() % 40).map(|_| (next() % 256) as u8).collect();
                        for s in [&name, &value] {
                            block.push(s.len() as u8);
                            block.extend_from_slice(s);
                        }
                    }
                    _ => block.push(0x80 | (next() % 5 + 62) as u8),
                }
            }
            enc_blocks.push(block);
        }
        let mut ours = Decoder::new();
        let mut theirs = loona_hpack::Decoder::new();
        for block in &enc_blocks {
            let mut a = Vec::new();
            let ra = ours.decode(block, |n, v| a.push((n.to_vec(), v.to_vec())));
            let mut b = Vec::new();
            let rb = theirs.decode_with_cb(block, |n, v| b.push((n.into_owned(), v.into_owned())));
            assert_eq!(ra.is_ok(), rb.is_ok(), "{block:x?}");
            if ra.is_ok() {
                assert_eq!(a, b);
            } else {
                // Both refuse; start both afresh.
                ours = Decoder::new();
                theirs = loona_hpack::Decoder::new();
            }
        }
    }
}
