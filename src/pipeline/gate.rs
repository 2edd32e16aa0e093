//! The gate: every pattern of a rule set in one forward automaton. On a line it says
//! whether any rule may hit and which rules' patterns match; on a run of whole lines (a
//! file being caught up) it finds the next line where one may, as `rg` searches a buffer.
//!
//! One Thompson NFA, compiled forward only and without capture groups, serves both uses,
//! searched by a lazy DFA. `regex::bytes::RegexSet` compiles every pattern a second time
//! in reverse, and a separate multi-line regex for runs compiled them twice more: with
//! Unicode classes such as `\w`, those compilations were about a fifth of catching up
//! 100 MiB with 100 rules, and the extra automata and their caches about 4 MiB with 50
//! rules. The lazy DFA stops where it cannot go on: its cache cleared too often, or, when
//! a pattern has a Unicode word boundary (`\b`), at any non-ASCII byte. A line is then
//! searched by the PikeVM; a run, from the line where it stopped, line by line.
//!
//! The automaton is compiled in multi-line mode unless a pattern anchors at the very start
//! or end of the text (`\A`, `\z`, `^` under `(?-m)`), which would mean the run's ends in
//! a run. A line never holds a `\n`, so on a line `^` and `$` then match where they would
//! without that mode. (An event joined from several lines holds some, and a `(?R)` pattern
//! sees a lone `\r` as a line's end: there the gate may let more through, never less, and
//! each rule's own regex decides.)
//!
//! The automaton is a superset of the patterns where non-ASCII text is concerned: each
//! Unicode class keeps its ASCII part and stands for any run of one to four bytes from
//! 0x80 to 0xFF beyond it, which covers the UTF-8 form of every non-ASCII character it
//! holds. Unicode `\w` alone takes about 300 NFA states and splits the bytes into dozens
//! of classes that every lazy-DFA state has a transition for; 20 rules with `\w` made up
//! most of the gate's 7,900 states and of its cache. So on a line with non-ASCII bytes the
//! gate may name a rule whose pattern does not match; the rule's own regex, which runs
//! next on every line the gate names, decides. Literals, `(?-u)` classes, anchors and word
//! boundaries are kept as written, and the prefilter is built from the patterns as
//! written, which is sound: every place a pattern matches starts at one of its literals.

use std::fmt;

use regex_automata::hybrid;
use regex_automata::nfa::thompson::pikevm::{self, PikeVM};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::pool::Pool;
use regex_automata::util::prefilter::Prefilter;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchErrorKind, MatchKind, PatternSet};
use regex_syntax::hir::{Capture, Class, ClassBytes, ClassBytesRange, Hir, HirKind, Repetition};

/// Why a rule set's patterns could not be put behind one gate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GateError(String);

/// Builds a search cache for a thread that uses the gate.
type NewCache = Box<dyn Fn() -> SearchCache + Send + Sync>;

/// One thread's scratch space for searching the gate.
struct SearchCache {
    dfa: Option<hybrid::dfa::Cache>,
    /// Made at the first line the lazy DFA cannot finish.
    pikevm: Option<pikevm::Cache>,
    matched: PatternSet,
}

/// The compiled gate of a rule set.
pub struct Gate {
    /// `None` for a gate without patterns, which matches nothing.
    engines: Option<Engines>,
    scans: bool,
}

/// The searches of a gate with patterns.
struct Engines {
    /// `None` when the lazy DFA cannot be built within its cache (then the PikeVM
    /// searches alone, and runs are not searched whole).
    dfa: Option<hybrid::dfa::DFA>,
    pikevm: PikeVM,
    caches: Pool<SearchCache, NewCache>,
    patterns: usize,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let engines = self.engines.as_ref();
        f.debug_struct("Gate")
            .field("patterns", &engines.map_or(0, |e| e.patterns))
            .field("scans", &self.scans)
            .field("lazy_dfa", &engines.is_some_and(|e| e.dfa.is_some()))
            .finish()
    }
}

impl Gate {
    /// Compiles `patterns` (with the syntax of `regex::bytes`: Unicode on, `(?-u)` may
    /// match any byte) into one automaton of at most `size_limit` bytes, whose lazy DFA
    /// may keep `cache_capacity` bytes of states per searching thread.
    pub fn new(
        patterns: &[&str],
        size_limit: usize,
        cache_capacity: usize,
    ) -> Result<Self, GateError> {
        if patterns.is_empty() {
            return Ok(Self::empty());
        }
        let syntax = syntax::Config::new().utf8(false);
        let parse = |syntax: &syntax::Config| {
            syntax::parse_many_with(patterns, syntax).map_err(|error| GateError(error.to_string()))
        };
        // Decided on the parsed patterns, not their text: `(?x)( ?-m)^` turns multi-line
        // mode off as surely as `(?-m)^` does.
        let mut hirs = parse(&syntax.multi_line(true))?;
        let mut scans = hirs
            .iter()
            .all(|hir| !hir.properties().look_set().contains_anchor_haystack());
        if !scans {
            hirs = parse(&syntax)?;
        }
        let widened: Vec<Hir> = hirs.iter().map(widen_unicode_classes).collect();
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .utf8(false)
                    .which_captures(WhichCaptures::None)
                    .nfa_size_limit(Some(size_limit)),
            )
            .build_many_from_hir(&widened)
            .map_err(|error| GateError(error.to_string()))?;
        // A line or run is first searched for the patterns' literal prefixes, when they
        // all have some. The set is the one leftmost-first search would use: trimmed to
        // fewer, shorter literals (a hundred rules' prefixes are cut to a few bytes each,
        // where the exact set would need a slow Aho-Corasick automaton; catching up with
        // 100 rules took 0.67 s instead of 0.45 s). Cutting a literal short or dropping
        // one that another is a prefix of still finds every position where a match may
        // start, whatever the match semantics, so the gate may use it.
        let prefilter = Prefilter::from_hirs_prefix(MatchKind::LeftmostFirst, &hirs);
        let dfa = hybrid::dfa::Builder::new()
            .configure(
                hybrid::dfa::Config::new()
                    .match_kind(MatchKind::All)
                    .prefilter(prefilter.clone())
                    .specialize_start_states(prefilter.is_some())
                    .unicode_word_boundary(true)
                    .cache_capacity(cache_capacity)
                    // Like `regex`: a cache cleared three times with fewer than ten bytes
                    // searched per state built is thrashing, and the PikeVM takes over.
                    .minimum_cache_clear_count(Some(3))
                    .minimum_bytes_per_state(Some(10)),
            )
            .build_from_nfa(nfa.clone())
            .ok();
        scans = scans && dfa.is_some();
        let pikevm = PikeVM::builder()
            .configure(
                pikevm::Config::new()
                    .match_kind(MatchKind::All)
                    .prefilter(prefilter),
            )
            .build_from_nfa(nfa)
            .map_err(|error| GateError(error.to_string()))?;
        let for_caches = dfa.clone();
        let count = patterns.len();
        let new_cache: NewCache = Box::new(move || SearchCache {
            dfa: for_caches.as_ref().map(hybrid::dfa::Cache::new),
            pikevm: None,
            matched: PatternSet::new(count),
        });
        Ok(Self {
            engines: Some(Engines {
                dfa,
                pikevm,
                caches: Pool::new(new_cache),
                patterns: count,
            }),
            scans,
        })
    }

    /// A gate without patterns: nothing matches.
    pub fn empty() -> Self {
        Self {
            engines: None,
            scans: false,
        }
    }

    /// Whether runs of lines can be searched whole ([`next_line_to_check`](Self::next_line_to_check)).
    pub fn scans(&self) -> bool {
        self.scans
    }

    /// Whether any pattern matches `line`.
    pub fn is_match(&self, line: &[u8]) -> bool {
        self.engines.as_ref().is_some_and(|e| {
            let mut cache = e.caches.get();
            let input = Input::new(line).earliest(true);
            if let (Some(dfa), Some(dfa_cache)) = (&e.dfa, cache.dfa.as_mut())
                && let Ok(found) = dfa.try_search_fwd(dfa_cache, &input)
            {
                return found.is_some();
            }
            let pikevm_cache = cache.pikevm.get_or_insert_with(|| e.pikevm.create_cache());
            e.pikevm.is_match(pikevm_cache, input)
        })
    }

    /// Calls `each` with the index of every pattern that matches `line`, in order.
    pub fn for_each_match(&self, line: &[u8], mut each: impl FnMut(usize)) {
        let Some(e) = &self.engines else {
            return;
        };
        let mut cache = e.caches.get();
        let cache = &mut *cache;
        cache.matched.clear();
        let input = Input::new(line);
        let done = match (&e.dfa, cache.dfa.as_mut()) {
            (Some(dfa), Some(dfa_cache)) => dfa
                .try_which_overlapping_matches(dfa_cache, &input, &mut cache.matched)
                .is_ok(),
            _ => false,
        };
        if !done {
            // What the lazy DFA found before it stopped is found again.
            cache.matched.clear();
            let pikevm_cache = cache.pikevm.get_or_insert_with(|| e.pikevm.create_cache());
            e.pikevm
                .which_overlapping_matches(pikevm_cache, &input, &mut cache.matched);
        }
        for pattern in cache.matched.iter() {
            each(pattern.as_usize());
        }
    }

    /// In `run` (whole lines, each ending in `\n`, none holding a `\r`), where the line
    /// to check next begins, searching from `from` (a line start): every line before it
    /// from `from` on matches no pattern on its own. `None` when none of those lines
    /// does. A gate that does not [`scan`](Self::scans) points at `from` (a gate without
    /// patterns at none).
    ///
    /// The search stops at the first end of a match of any pattern. A line that matches
    /// on its own has a match ending at or before its newline, so no line before the one
    /// that holds the first end can match (nor the line whose newline a match ending
    /// right after it took). That match may have begun on an earlier line (a class such
    /// as `\s` crosses a newline in a run): the line is a candidate to check, not a hit.
    pub fn next_line_to_check(&self, run: &[u8], from: usize) -> Option<usize> {
        debug_assert!(from == 0 || run.get(from - 1) == Some(&b'\n'));
        let e = self.engines.as_ref()?;
        if !self.scans {
            return Some(from).filter(|&f| f < run.len());
        }
        let mut cache = e.caches.get();
        let (Some(dfa), Some(dfa_cache)) = (&e.dfa, cache.dfa.as_mut()) else {
            return Some(from).filter(|&f| f < run.len());
        };
        let input = Input::new(run).range(from..).earliest(true);
        let end = match dfa.try_search_fwd(dfa_cache, &input) {
            Ok(None) => return None,
            Ok(Some(found)) => found.offset(),
            // The lazy DFA stopped at `offset` (a byte beside which it cannot decide a
            // Unicode word boundary, or its cache thrashing) with every match ending
            // before it found: the line holding it is checked on its own, and the search
            // resumes after that line.
            Err(error) => match error.kind() {
                MatchErrorKind::Quit { offset, .. } | MatchErrorKind::GaveUp { offset } => {
                    (*offset).max(from)
                }
                _ => from,
            },
        };
        // A match that ends after the run's last newline is in no line: it is empty, or it
        // ended with that newline, and then its line has no match ending sooner.
        if end >= run.len() {
            return None;
        }
        Some(memchr::memrchr(b'\n', &run[from..end]).map_or(from, |i| from + i + 1))
    }
}

/// `hir` with every Unicode class replaced by its ASCII part or, where it holds non-ASCII
/// characters, one to four bytes from 0x80 to 0xFF: it matches everything `hir` matches,
/// and more only where the text has non-ASCII bytes.
fn widen_unicode_classes(hir: &Hir) -> Hir {
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => {
            let ascii = ClassBytes::new(class.iter().filter(|r| r.start().is_ascii()).map(|r| {
                // Both ends are at most 0x7F here, so the casts keep them whole.
                ClassBytesRange::new(r.start() as u8, r.end().min('\x7F') as u8)
            }));
            let ascii = Hir::class(Class::Bytes(ascii));
            if class.iter().all(|r| r.end().is_ascii()) {
                return ascii;
            }
            let high = ClassBytes::new([ClassBytesRange::new(0x80, 0xFF)]);
            let beyond = Hir::repetition(Repetition {
                min: 1,
                max: Some(4),
                greedy: true,
                sub: Box::new(Hir::class(Class::Bytes(high))),
            });
            Hir::alternation(vec![ascii, beyond])
        }
        HirKind::Repetition(repetition) => Hir::repetition(Repetition {
            sub: Box::new(widen_unicode_classes(&repetition.sub)),
            ..repetition.clone()
        }),
        HirKind::Capture(capture) => Hir::capture(Capture {
            sub: Box::new(widen_unicode_classes(&capture.sub)),
            ..capture.clone()
        }),
        HirKind::Concat(parts) => Hir::concat(parts.iter().map(widen_unicode_classes).collect()),
        HirKind::Alternation(parts) => {
            Hir::alternation(parts.iter().map(widen_unicode_classes).collect())
        }
        HirKind::Empty
        | HirKind::Literal(_)
        | HirKind::Class(Class::Bytes(_))
        | HirKind::Look(_) => hir.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use regex::bytes::RegexSet;

    const LIMIT: usize = 1 << 24;

    fn gate(patterns: &[&str]) -> Gate {
        Gate::new(patterns, LIMIT, 1 << 21).unwrap()
    }

    /// Lazy-DFA caches too small to build, small enough to thrash, and ample.
    fn cache_capacity() -> impl Strategy<Value = usize> {
        prop_oneof![Just(0), Just(12_000), Just(40_000), Just(1 << 21)]
    }

    fn matched(gate: &Gate, line: &[u8]) -> Vec<usize> {
        let mut found = Vec::new();
        gate.for_each_match(line, |i| found.push(i));
        found
    }

    /// Patterns with anchors, word boundaries (Unicode and not), classes that cross a
    /// newline in a run, an empty match, `(?-u)` bytes, and one that turns multi-line
    /// mode off (so the gate holding it does not scan).
    const PATTERNS: &[&str] = &[
        r"^ERROR \w+",
        r"end$",
        r"\bword\b",
        r"a[^x]+y",
        r"b\s+c",
        r"^$",
        r"(?-u:\xff)z",
        r"é\B",
        r"(?i)TIMEOUT after (\d+)ms",
    ];

    fn line() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"ERROR ".to_vec()),
            Just(b"end".to_vec()),
            Just(b"word".to_vec()),
            Just(b"a".to_vec()),
            Just(b"y".to_vec()),
            Just(b"x".to_vec()),
            Just(b"b".to_vec()),
            Just(b"c".to_vec()),
            Just(b" ".to_vec()),
            Just(b"\t".to_vec()),
            Just(b"\r".to_vec()),
            Just("é".as_bytes().to_vec()),
            Just(b"\xff".to_vec()),
            Just(b"z".to_vec()),
            Just(b"timeout AFTER 12ms".to_vec()),
            Just(b"_".to_vec()),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// On any line, the gate names every pattern `regex::bytes::RegexSet` says matches,
        /// whether it was compiled to scan runs or not, and on an ASCII line only those.
        #[test]
        fn a_line_matches_as_with_regex_set(
            line in line(),
            turn_off_scanning in any::<bool>(),
            cache in cache_capacity(),
        ) {
            let mut patterns = PATTERNS.to_vec();
            if turn_off_scanning {
                patterns.push(r"(?x)( ?-m)^never");
            }
            let gate = Gate::new(&patterns, LIMIT, cache).unwrap();
            if cache == 1 << 21 {
                prop_assert_eq!(gate.scans(), !turn_off_scanning);
            }
            let set = RegexSet::new(&patterns).unwrap();
            let exact: Vec<usize> = set.matches(&line).into_iter().collect();
            let named = matched(&gate, &line);
            prop_assert_eq!(gate.is_match(&line), !named.is_empty());
            prop_assert!(exact.iter().all(|i| named.contains(i)), "{:?} misses some of {:?}", named, exact);
            if line.is_ascii() {
                prop_assert_eq!(named, exact);
            }
        }

        /// In a run of lines (no `\r`), no line before the one the gate points to matches
        /// on its own, and when it points to none, no line from `from` on matches.
        #[test]
        fn no_line_before_the_one_to_check_matches(
            lines in proptest::collection::vec(line(), 1..30),
            cache in cache_capacity(),
        ) {
            let lines: Vec<Vec<u8>> = lines
                .into_iter()
                .map(|l| l.into_iter().filter(|&b| b != b'\r').collect())
                .collect();
            let gate = Gate::new(PATTERNS, LIMIT, cache).unwrap();
            let set = RegexSet::new(PATTERNS).unwrap();
            let mut run = Vec::new();
            let mut starts = Vec::new();
            for line in &lines {
                starts.push(run.len());
                run.extend_from_slice(line);
                run.push(b'\n');
            }
            for (first, &from) in starts.iter().enumerate() {
                let to_check = gate.next_line_to_check(&run, from);
                let upto = match to_check {
                    Some(at) => starts.iter().position(|&s| s == at).expect("a line start"),
                    None => lines.len(),
                };
                prop_assert!(upto >= first);
                for skipped in &lines[first..upto] {
                    prop_assert!(!gate.is_match(skipped), "skipped {:?}", String::from_utf8_lossy(skipped));
                    prop_assert!(!set.is_match(skipped), "skipped {:?}", String::from_utf8_lossy(skipped));
                }
            }
        }
    }

    /// Patterns led by literals over a small alphabet (many sharing prefixes, more than a
    /// literal searcher's 64), and a line over the same alphabet.
    fn literal_led() -> impl Strategy<Value = (Vec<String>, Vec<u8>)> {
        let word = proptest::collection::vec(prop_oneof![Just('a'), Just('b'), Just('c')], 1..6)
            .prop_map(|w| w.into_iter().collect::<String>());
        let tail = prop_oneof![Just(""), Just(r"\d+"), Just(r" \w"), Just("$"), Just(r"\b")];
        let patterns = proptest::collection::vec((word, tail), 1..90)
            .prop_map(|p| p.into_iter().map(|(w, t)| format!("{w}{t}")).collect());
        let line = proptest::collection::vec(
            prop_oneof![Just(b'a'), Just(b'b'), Just(b'c'), Just(b'1'), Just(b' ')],
            0..40,
        );
        (patterns, line)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The prefilter built from the patterns' literal prefixes (trimmed as for
        /// leftmost-first search) lets through every line `RegexSet` matches.
        #[test]
        fn literal_prefixes_miss_no_match((patterns, line) in literal_led()) {
            let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
            let gate = gate(&patterns);
            let set = RegexSet::new(&patterns).unwrap();
            prop_assert_eq!(gate.is_match(&line), set.is_match(&line));
            prop_assert_eq!(matched(&gate, &line), set.matches(&line).into_iter().collect::<Vec<_>>());
            let mut run = line.clone();
            run.push(b'\n');
            prop_assert_eq!(gate.next_line_to_check(&run, 0).is_some(), set.is_match(&line));
        }
    }

    #[test]
    fn a_unicode_class_lets_through_any_non_ascii_character_and_only_ascii_it_holds() {
        let gate = gate(&[r"port \d+ open"]);
        let exact = RegexSet::new([r"port \d+ open"]).unwrap();
        // An Arabic-Indic digit is a `\d`: both agree.
        assert!(gate.is_match("port ٣ open".as_bytes()));
        assert!(exact.is_match("port ٣ open".as_bytes()));
        // `é` is not, but the gate stands for any non-ASCII character there; the rule's
        // own regex refuses the line (see the rule set's tests).
        assert!(gate.is_match("port é open".as_bytes()));
        assert!(!exact.is_match("port é open".as_bytes()));
        // ASCII is decided exactly.
        assert!(!gate.is_match(b"port x open"));
        assert_eq!(
            gate.next_line_to_check(b"port x open\nport 7 open\n", 0),
            Some(12)
        );
    }

    #[test]
    fn a_match_across_lines_points_at_the_line_where_it_ends() {
        let gate = gate(&[r"a\s+b"]);
        let run = b"one\ntwo a\n b three\nfour\n";
        // `a\n b` spans the second and third lines; it ends in the third, where the search
        // resumes (neither line matches alone, which the caller checks).
        assert_eq!(gate.next_line_to_check(run, 0), Some(10));
        assert_eq!(gate.next_line_to_check(run, 19), None);
    }

    #[test]
    fn an_empty_match_points_at_its_line_and_none_after_the_last_newline() {
        let gate = gate(&[r"^$"]);
        let run = b"x\n\ny\n";
        assert_eq!(gate.next_line_to_check(run, 0), Some(2));
        // `^$` also matches after the run's last newline, in no line.
        assert_eq!(gate.next_line_to_check(run, 3), None);
    }

    #[test]
    fn a_match_that_takes_a_newline_points_past_that_line() {
        let gate = gate(&[r"y\s"]);
        // `y\n` ends where the second line starts; the first line does not match alone.
        assert_eq!(gate.next_line_to_check(b"xy\nz\n", 0), Some(3));
        assert_eq!(gate.next_line_to_check(b"xy\n", 0), None);
    }

    #[test]
    fn with_a_unicode_word_boundary_non_ascii_bytes_are_decided_line_by_line() {
        // The lazy DFA cannot decide `\b` once it meets a non-ASCII byte: a line goes to
        // the PikeVM, and a run's search stops at the line holding that byte.
        let gate = gate(&[r"\bcafé\b", r"x"]);
        assert!(gate.is_match("un café noir".as_bytes()));
        assert!(!gate.is_match("un caféine".as_bytes()));
        assert_eq!(matched(&gate, "café x".as_bytes()), vec![0, 1]);
        let run = "ok\nthé\ncafé\n".as_bytes();
        // The literal prefixes skip `thé`; the search stops at `café`'s `é`.
        assert_eq!(gate.next_line_to_check(run, 0), Some(8));
        // Without a literal to skip to, it stops at the first non-ASCII byte.
        let words = self::gate(&[r"\b\w+é\b"]);
        assert_eq!(words.next_line_to_check(run, 0), Some(3));
        assert_eq!(words.next_line_to_check(run, 8), Some(8));
        assert_eq!(words.next_line_to_check(b"ok\nfine\n", 0), None);
    }

    #[test]
    fn a_pattern_anchored_at_the_texts_ends_keeps_the_gate_off_runs() {
        for pattern in [
            r"\Astart",
            r"end\z",
            r"(?-m)^x",
            r"(?x)( ?-m)^x",
            r"(?s-m:^x)",
        ] {
            assert!(!gate(&[pattern, "y"]).scans(), "{pattern}");
        }
        for pattern in [r"^x$", r"(?i-u:x)", r"\\A", r"(?m)^x"] {
            assert!(gate(&[pattern, "y"]).scans(), "{pattern}");
        }
        // Without multi-line mode `^` is still the line's start.
        let gate = gate(&[r"\Astart", r"^y"]);
        assert!(gate.is_match(b"y"));
        assert!(!gate.is_match(b"x y"));
    }

    #[test]
    fn an_empty_gate_matches_nothing() {
        let gate = Gate::new(&[], LIMIT, 1 << 21).unwrap();
        assert!(!gate.is_match(b""));
        assert!(matched(&gate, b"x").is_empty());
        assert_eq!(gate.next_line_to_check(b"x\n", 0), None);
    }

    #[test]
    fn a_gate_over_its_size_limit_is_refused() {
        let error = Gate::new(&[r"\w{1000}"], 10_000, 1 << 21).unwrap_err();
        assert!(error.to_string().contains("exceeded limit"), "{error}");
    }
}
