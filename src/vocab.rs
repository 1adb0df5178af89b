//! The words records and events are written with, as types: [`vocabulary!`] declares a
//! closed set of kebab-case names (an audit action, a capture source kind) as an enum that
//! serializes to exactly the string earlier versions wrote, so logs and signed manifests
//! stay byte for byte what they were. [`AlertSource`] (the alert receivers) is one;
//! [`Priority`] is Falco's ordered set of priorities, read in any case.
//!
//! A file written by a newer ckvault may hold a word this version does not know. It still
//! reads, as the `Unrecognised` variant that keeps the word verbatim (so a hash chain or a
//! signature computed over it still verifies); no code of this version can make one, since
//! [`Unrecognised`] has no public constructor.

use std::fmt;

/// A word read from a file that this version of ckvault does not know (written by a newer
/// one), kept as it was read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Unrecognised(String);

impl Unrecognised {
    /// The word as it was read.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Cuts the word to `max` bytes (at a character boundary, marked with `...`); true if
    /// it was cut. For events: a word read from a log and appended again stays bounded.
    pub(crate) fn cut_to(&mut self, max: usize) -> bool {
        cut_to(&mut self.0, max)
    }

    pub(crate) fn new(word: String) -> Self {
        Self(word)
    }
}

impl fmt::Display for Unrecognised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Cuts `s` to at most `max` bytes (at a character boundary, plus the `...` marker); true
/// if it was cut.
pub(crate) fn cut_to(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    s.push_str("...");
    true
}

/// Declares a vocabulary: `vocabulary! { /// doc  pub enum Name { /// doc  Variant => "word", ... } }`
/// gives the enum (plus an `Unrecognised` variant for words of newer versions), `as_str`,
/// `ALL` (the known words), `Display`, and serde as the bare word.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A word written by a newer ckvault, kept verbatim (never made by this one).
            Unrecognised($crate::vocab::Unrecognised),
        }

        impl $name {
            /// Every word this version knows.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word as written.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $word, )+
                    $name::Unrecognised(w) => w.as_str(),
                }
            }

            /// The known word `word` names, if any.
            pub fn known(word: &str) -> Option<Self> {
                match word {
                    $( $word => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = <String as ::serde::Deserialize>::deserialize(d)?;
                Ok(Self::known(&word).unwrap_or_else(|| {
                    $name::Unrecognised($crate::vocab::Unrecognised::new(word))
                }))
            }
        }
    };
}

pub(crate) use vocabulary;

vocabulary! {
    /// Which receiver an alert came in through (`[[trigger]] sources`; the trigger kind of
    /// an alert capture).
    pub enum AlertSource {
        /// Prometheus Alertmanager's webhook (`POST /v1/alerts/alertmanager`).
        Alertmanager => "alertmanager",
        /// Falco's `http_output` (`POST /v1/alerts/falco`).
        Falco => "falco",
        /// ckvault's own small JSON (`POST /v1/alerts/webhook`).
        Webhook => "webhook",
    }
}

/// A Falco priority, ordered: `Debug` < `Informational` < `Notice` < `Warning` < `Error` <
/// `Critical` < `Alert` < `Emergency` (syslog's levels, as Falco has them). Read
/// case-insensitively (Falco writes `Critical`, Alertmanager `severity` labels are usually
/// lower case), `info` for `Informational`; written lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// `debug`
    Debug,
    /// `informational` (or `info`)
    Informational,
    /// `notice`
    Notice,
    /// `warning`
    Warning,
    /// `error`
    Error,
    /// `critical`
    Critical,
    /// `alert`
    Alert,
    /// `emergency`
    Emergency,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 8] = [
        Priority::Debug,
        Priority::Informational,
        Priority::Notice,
        Priority::Warning,
        Priority::Error,
        Priority::Critical,
        Priority::Alert,
        Priority::Emergency,
    ];

    /// The word as written (lower case).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Debug => "debug",
            Priority::Informational => "informational",
            Priority::Notice => "notice",
            Priority::Warning => "warning",
            Priority::Error => "error",
            Priority::Critical => "critical",
            Priority::Alert => "alert",
            Priority::Emergency => "emergency",
        }
    }

    /// The priority `word` names, in any case (`info` is `Informational`); `None` for
    /// any other word.
    pub fn parse(word: &str) -> Option<Self> {
        if word.eq_ignore_ascii_case("info") {
            return Some(Priority::Informational);
        }
        Self::ALL
            .into_iter()
            .find(|p| word.eq_ignore_ascii_case(p.as_str()))
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Priority {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = <String as serde::Deserialize>::deserialize(d)?;
        Priority::parse(&word).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{:?} is not a priority (emergency, alert, critical, error, warning, notice, informational or info, debug)",
                word.chars().take(32).collect::<String>()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    // The macro declares `pub` items; this test vocabulary is reachable from nowhere.
    #![allow(unreachable_pub)]

    vocabulary! {
        /// A test vocabulary.
        pub enum Colour {
            /// Red.
            Red => "red",
            /// Dark blue.
            DarkBlue => "dark-blue",
        }
    }

    #[test]
    fn words_serialize_as_written_and_unknown_ones_are_kept_verbatim() {
        assert_eq!(
            serde_json::to_string(&Colour::DarkBlue).unwrap(),
            "\"dark-blue\""
        );
        let back: Colour = serde_json::from_str("\"red\"").unwrap();
        assert_eq!(back, Colour::Red);
        let newer: Colour = serde_json::from_str("\"ultra-violet\\u0001\"").unwrap();
        assert!(matches!(&newer, Colour::Unrecognised(w) if w.as_str() == "ultra-violet\u{1}"));
        assert_eq!(
            serde_json::to_string(&newer).unwrap(),
            "\"ultra-violet\\u0001\""
        );
        assert_eq!(Colour::ALL, [Colour::Red, Colour::DarkBlue]);
        assert_eq!(Colour::known("dark-blue"), Some(Colour::DarkBlue));
        assert!(serde_json::from_str::<Colour>("3").is_err());
    }

    #[test]
    fn priorities_are_ordered_and_read_in_any_case() {
        use super::Priority;
        assert!(Priority::Emergency > Priority::Alert);
        assert!(Priority::Alert > Priority::Critical);
        assert!(Priority::Critical > Priority::Error);
        assert!(Priority::Error > Priority::Warning);
        assert!(Priority::Warning > Priority::Notice);
        assert!(Priority::Notice > Priority::Informational);
        assert!(Priority::Informational > Priority::Debug);
        assert_eq!(Priority::parse("Critical"), Some(Priority::Critical));
        assert_eq!(Priority::parse("WARNING"), Some(Priority::Warning));
        assert_eq!(Priority::parse("info"), Some(Priority::Informational));
        assert_eq!(
            Priority::parse("Informational"),
            Some(Priority::Informational)
        );
        assert_eq!(Priority::parse("page"), None);
        assert_eq!(Priority::parse(""), None);
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Priority>(&json).unwrap(), p);
        }
        let e = serde_json::from_str::<Priority>("\"severe\"").unwrap_err();
        assert!(e.to_string().contains("is not a priority"), "{e}");
    }
}
