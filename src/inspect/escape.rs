//! Making archive strings safe to print: [`escape_control`] neutralises every character
//! that could drive a terminal or reorder what a reader sees.

use std::borrow::Cow;
use std::fmt::Write as _;

/// True for characters [`escape_control`] rewrites: C0 controls, DEL, C1 controls
/// (U+0080..U+009F), the Unicode bidi embeddings/overrides (U+202A..U+202E) and isolates
/// (U+2066..U+2069), and the backslash (so an escape in the output is never ambiguous).
fn needs_escape(c: char) -> bool {
    matches!(c,
        '\\'
        | '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// Escapes a string from an archive for display: control characters (C0, DEL, C1) and
/// Unicode bidi overrides and isolates become `\u{..}` (lowercase hex), and a backslash
/// becomes `\\`. Everything else, including other non-ASCII text, is kept. Returns the
/// input unchanged (borrowed) when nothing needs escaping.
///
/// ```
/// use ckvault::inspect::escape_control;
/// assert_eq!(escape_control("app"), "app");
/// assert_eq!(escape_control("a\x1b[2Jb"), "a\\u{1b}[2Jb");
/// assert_eq!(escape_control("x\u{202e}y\\"), "x\\u{202e}y\\\\");
/// ```
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().saturating_add(16));
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if needs_escape(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`escape_control`] without escaping the backslash: what a stored field from outside
/// keeps (a manifest's `trigger`), so that bounding it again changes nothing (escaping is
/// idempotent this way) and the stored text never drives a terminal.
pub(crate) fn escape_control_keep_backslash(s: &str) -> Cow<'_, str> {
    let controls = |c: char| c != '\\' && needs_escape(c);
    if !s.chars().any(controls) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().saturating_add(16));
    for c in s.chars() {
        if controls(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape_control;

    #[test]
    fn escapes_every_class() {
        for (input, want) in [
            ("plain ascii é 日本", "plain ascii é 日本"),
            ("\x00\x07\x1b\n\t", "\\u{0}\\u{7}\\u{1b}\\u{a}\\u{9}"),
            ("\x7f", "\\u{7f}"),
            ("\u{80}\u{9b}\u{9f}\u{a0}", "\\u{80}\\u{9b}\\u{9f}\u{a0}"),
            (
                "\u{2029}\u{202a}\u{202e}\u{202f}",
                "\u{2029}\\u{202a}\\u{202e}\u{202f}",
            ),
            (
                "\u{2065}\u{2066}\u{2069}\u{206a}",
                "\u{2065}\\u{2066}\\u{2069}\u{206a}",
            ),
            ("a\\u{1b}", "a\\\\u{1b}"),
        ] {
            assert_eq!(escape_control(input), want, "{input:?}");
        }
    }

    #[test]
    fn borrows_when_clean() {
        assert!(matches!(
            escape_control("web-7d4"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
