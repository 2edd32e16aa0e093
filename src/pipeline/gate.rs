//! The gate: every pattern of a rule set in one forward automaton. On a line it says
//! whether any rule may hit and which rules' patterns match; on a run of whole lines (a
//! file being caught up) it finds the next line where one may, as `rg` searches a buffer.
//!
//! One Thompson NFA, compiled forward only and without capture groups, serves both uses,
//! searched by a lazy DFA and, where the lazy DFA gives up (its cache cleared too often)
//! or cannot decide a Unicode word boundary (a non-ASCII byte next to `\b`), by the
//! PikeVM. `regex::bytes::RegexSet` compiles every pattern a second time in reverse, and
//! a separate multi-line regex for runs compiled them twice more: with Unicode classes
//! such as `\w`, those compilations were about a fifth of catching up 100 MiB with 100
//! rules, and the extra automata and their caches about 4 MiB with 50 rules.
//!
//! When every pattern is [`scannable`], the automaton is compiled in multi-line mode.
//! A line never holds a `\n`, so on a line `^` and `$` mean what they mean without that
//! mode, and the same automaton is exact on lines and searches runs.

use std::fmt;

use regex_automata::hybrid;
use regex_automata::nfa::thompson::pikevm::{self, PikeVM};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::pool::Pool;
use regex_automata::util::prefilter::Prefilter;
use regex_automata::util::primitives::NonMaxUsize;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};

/// Why a rule set's patterns could not be put behind one gate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GateError(String);

/// Builds a search cache for a thread that uses the gate.
type NewCache = Box<dyn Fn() -> SearchCache + Send + Sync>;

/// One thread's scratch space for searching the gate.
struct SearchCache {
    dfa: Option<hybrid::dfa::Cache>,
    /// The PikeVM's cache and each pattern's match bounds, made at the first search the
    /// lazy DFA cannot finish (most gates never need them).
    fallback: Option<(pikevm::Cache, Vec<Option<NonMaxUsize>>)>,
    matched: PatternSet,
}

/// The PikeVM's part of a [`SearchCache`], made at its first use.
fn fallback<'c>(
    slot: &'c mut Option<(pikevm::Cache, Vec<Option<NonMaxUsize>>)>,
    pikevm: &PikeVM,
    patterns: usize,
) -> &'c mut (pikevm::Cache, Vec<Option<NonMaxUsize>>) {
    slot.get_or_insert_with(|| (pikevm.create_cache(), vec![None; patterns * 2]))
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
    /// searches alone).
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
        let scans = patterns.iter().all(|p| scannable(p));
        let syntax = syntax::Config::new().utf8(false).multi_line(scans);
        let hirs = syntax::parse_many_with(patterns, &syntax)
            .map_err(|error| GateError(error.to_string()))?;
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .utf8(false)
                    // The PikeVM reports where a match ends through each pattern's
                    // implicit group; the lazy DFA ignores groups.
                    .which_captures(WhichCaptures::Implicit)
                    .nfa_size_limit(Some(size_limit)),
            )
            .build_many_from_hir(&hirs)
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
            fallback: None,
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
            e.earliest_end(&mut cache, &Input::new(line).earliest(true))
                .is_some()
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
            // What the lazy DFA found before it gave up is found again.
            cache.matched.clear();
            let (pikevm_cache, _) = fallback(&mut cache.fallback, &e.pikevm, e.patterns);
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
    /// does, or the gate does not [`scan`](Self::scans).
    ///
    /// The search stops at the first end of a match of any pattern. A line that matches
    /// on its own has a match ending at or before its newline, so no line before the one
    /// that holds the first end can match (nor the line whose newline a match ending
    /// right after it took). That match may have begun on an earlier line (a class such
    /// as `\s` crosses a newline in a run): the line is a candidate to check, not a hit.
    pub fn next_line_to_check(&self, run: &[u8], from: usize) -> Option<usize> {
        let e = self.engines.as_ref().filter(|_| self.scans)?;
        let mut cache = e.caches.get();
        let input = Input::new(run).range(from..).earliest(true);
        let end = e.earliest_end(&mut cache, &input)?;
        // A match that ends after the run's last newline is in no line: it is empty, or it
        // ended with that newline, and then its line has no match ending sooner.
        if end >= run.len() {
            return None;
        }
        Some(memchr::memrchr(b'\n', &run[from..end]).map_or(from, |i| from + i + 1))
    }
}

impl Engines {
    /// Where the first match in `input` ends, if any.
    fn earliest_end(&self, cache: &mut SearchCache, input: &Input<'_>) -> Option<usize> {
        if let (Some(dfa), Some(dfa_cache)) = (&self.dfa, cache.dfa.as_mut())
            && let Ok(found) = dfa.try_search_fwd(dfa_cache, input)
        {
            return found.map(|m| m.offset());
        }
        let (pikevm_cache, slots) = fallback(&mut cache.fallback, &self.pikevm, self.patterns);
        let pattern = self.pikevm.search_slots(pikevm_cache, input, slots)?;
        // The matching pattern's implicit group ends where the match does. Were it
        // missing, the search's start is the safe answer: no line gets skipped.
        Some(
            slots
                .get(pattern.as_usize() * 2 + 1)
                .copied()
                .flatten()
                .map_or(input.start(), NonMaxUsize::get),
        )
    }
}

/// Whether `pattern` finds, in a run of lines searched in multi-line mode, every match it
/// has in one of those lines on its own. `^` and `$` then match at line ends, and `\b`,
/// `\B` see a newline where a line's edge was: the same. What differs: `\A` and `\z` (the
/// run's ends, not the line's) and a flag group turning multi-line mode off (`(?-m)`
/// would make `^` the run's start). Such a pattern keeps its rule set on line-by-line
/// matching. (Both checks are textual, so an escaped look-alike also keeps it there.)
pub fn scannable(pattern: &str) -> bool {
    if pattern.contains("\\A") || pattern.contains("\\z") || pattern.contains("\\Z") {
        return false;
    }
    // `(?flags)` or `(?flags:…)` with `m` after a `-`.
    !pattern.match_indices("(?").any(|(i, _)| {
        pattern[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphabetic() || *c == '-')
            .skip_while(|&c| c != '-')
            .any(|c| c == 'm')
    })
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

        /// On any line, the gate says what `regex::bytes::RegexSet` says of the same
        /// patterns, whether it was compiled to scan runs or not.
        #[test]
        fn a_line_matches_as_with_regex_set(line in line(), turn_off_scanning in any::<bool>()) {
            let mut patterns = PATTERNS.to_vec();
            if turn_off_scanning {
                patterns.push(r"(?-m)^never\z");
            }
            let gate = gate(&patterns);
            prop_assert_eq!(gate.scans(), !turn_off_scanning);
            let set = RegexSet::new(&patterns).unwrap();
            prop_assert_eq!(gate.is_match(&line), set.is_match(&line));
            prop_assert_eq!(matched(&gate, &line), set.matches(&line).into_iter().collect::<Vec<_>>());
        }

        /// In a run of lines (no `\r`), no line before the one the gate points to matches
        /// on its own, and when it points to none, no line from `from` on matches.
        #[test]
        fn no_line_before_the_one_to_check_matches(lines in proptest::collection::vec(line(), 1..30)) {
            let lines: Vec<Vec<u8>> = lines
                .into_iter()
                .map(|l| l.into_iter().filter(|&b| b != b'\r').collect())
                .collect();
            let gate = gate(PATTERNS);
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
    fn a_unicode_word_boundary_next_to_non_ascii_is_decided_by_the_pikevm() {
        // The lazy DFA cannot decide `\b` beside `é` and gives the search to the PikeVM.
        let gate = gate(&[r"\bcafé\b", r"x"]);
        assert!(gate.is_match("un café noir".as_bytes()));
        assert!(!gate.is_match("un caféine".as_bytes()));
        assert_eq!(matched(&gate, "café x".as_bytes()), vec![0, 1]);
        assert_eq!(
            gate.next_line_to_check("thé\ncafé\n".as_bytes(), 0),
            Some(5)
        );
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
