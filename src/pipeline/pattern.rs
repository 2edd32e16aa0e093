//! A rule's compiled `match` pattern: the regex that runs on the lines its rule's gate
//! let through, for the capture groups that feed templates.
//!
//! It is built on `regex-automata`'s meta regex (the engine behind `regex`) with the
//! one-pass DFA and the lazy DFA turned off. `regex` builds the one-pass DFA for every
//! pattern with capture groups, eagerly, and with Unicode classes such as `\w` it takes
//! about 700 KiB per pattern: 14 MiB of a 29 MiB agent with 20 such rules. The lazy DFA
//! needs a reverse NFA and two caches (forward and reverse) per pattern, whose sizes follow
//! the NFA's: about 130 KiB per `\w` rule that hits, 2.9 MiB of a 20.8 MiB agent with 20
//! such rules (steady-state bench). Captures only run on lines that hit (the `RegexSet`
//! gate decides which), so the bounded backtracker or the PikeVM, which need neither,
//! cost nothing that shows (the rule bench's lines/s did not move).

use std::fmt;

use regex_automata::meta::{self, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternID};

/// Why a pattern did not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternError {
    /// Its compiled form is over the size limit (the limit, in bytes).
    TooBig(usize),
    /// It is not a valid regex; the text points at the mistake.
    Syntax(String),
}

/// A compiled rule pattern, matching bytes (lines need not be UTF-8).
#[derive(Clone)]
pub struct RulePattern {
    source: String,
    regex: Regex,
}

impl fmt::Debug for RulePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RulePattern").field(&self.source).finish()
    }
}

impl RulePattern {
    /// Compiles `source` with the semantics of `regex::bytes::Regex` (leftmost-first,
    /// Unicode on, `(?-u)` allowed to match any byte), refusing a compiled form over
    /// `size_limit` bytes.
    pub fn new(source: &str, size_limit: usize) -> Result<Self, PatternError> {
        let config = meta::Config::new()
            .match_kind(MatchKind::LeftmostFirst)
            .utf8_empty(false)
            .nfa_size_limit(Some(size_limit))
            .onepass(false)
            .hybrid(false);
        let regex = Regex::builder()
            .configure(config)
            .syntax(syntax::Config::new().utf8(false))
            .build(source)
            .map_err(|error| match (error.size_limit(), error.syntax_error()) {
                (Some(limit), _) => PatternError::TooBig(limit),
                (None, Some(syntax)) => PatternError::Syntax(syntax.to_string()),
                (None, None) => PatternError::Syntax(error.to_string()),
            })?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The names of the capture groups by index (group 0, the whole match, has none).
    pub fn capture_names(&self) -> impl Iterator<Item = Option<&str>> {
        self.regex.group_info().pattern_names(PatternID::ZERO)
    }

    /// Whether the pattern matches somewhere in `line`.
    pub fn is_match(&self, line: &[u8]) -> bool {
        self.regex.is_match(line)
    }

    /// The groups of the first match in `line`, if any.
    pub fn captures<'l>(&self, line: &'l [u8]) -> Option<Groups<'l>> {
        let mut captures = self.regex.create_captures();
        self.regex.search_captures(&Input::new(line), &mut captures);
        captures.is_match().then_some(Groups { line, captures })
    }
}

/// The capture groups of one match.
#[derive(Debug)]
pub struct Groups<'l> {
    line: &'l [u8],
    captures: Captures,
}

impl<'l> Groups<'l> {
    /// The bytes group `index` matched; `None` if it took no part in the match.
    pub fn get(&self, index: usize) -> Option<&'l [u8]> {
        self.captures
            .get_group(index)
            .map(|span| &self.line[span.range()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_index_and_name_like_regex() {
        let p = RulePattern::new(r"timeout (?P<db>\S+)(?: after (?P<ms>\d+))?", 1 << 20).unwrap();
        assert_eq!(
            p.capture_names().collect::<Vec<_>>(),
            [None, Some("db"), Some("ms")]
        );
        let groups = p.captures(b"x timeout db-a y").unwrap();
        assert_eq!(groups.get(0), Some(&b"timeout db-a"[..]));
        assert_eq!(groups.get(1), Some(&b"db-a"[..]));
        assert_eq!(groups.get(2), None);
        assert!(p.captures(b"nothing").is_none());
    }

    #[test]
    fn matches_bytes_that_are_not_utf8() {
        let p = RulePattern::new(r"(?-u)id=(?P<id>.+)", 1 << 20).unwrap();
        let groups = p.captures(b"id=\xff\xfe").unwrap();
        assert_eq!(groups.get(1), Some(&b"\xff\xfe"[..]));
        // Unicode classes still match UTF-8 text.
        let words = RulePattern::new(r"(?P<w>\w+)", 1 << 20).unwrap();
        assert_eq!(
            words.captures("é!".as_bytes()).unwrap().get(1),
            Some("é".as_bytes())
        );
    }

    #[test]
    fn errors_say_what_regex_says() {
        // Built at run time, as a config's pattern is (a literal would be linted).
        let broken = String::from("a(") + "b";
        let syntax = RulePattern::new(&broken, 1 << 20).unwrap_err();
        let expected = regex::bytes::Regex::new(&broken).unwrap_err().to_string();
        assert_eq!(syntax, PatternError::Syntax(expected));
        assert!(matches!(
            RulePattern::new(r"\w{1000}", 45_000),
            Err(PatternError::TooBig(45_000))
        ));
    }
}
