//! Text for Google Chat messages: neutralising log content and fitting Chat's size limit.
//!
//! Chat renders its own markup (`*bold*`, `` `mono` ``, ```` ```block``` ````, `<users/all>`
//! mentions), not Markdown. Log lines are attacker-controlled text, so every value a
//! template substitutes is neutralised: it cannot close the code block it sits in and it
//! cannot mention everyone in the space. Rendered text is then cut to
//! [`MAX_TEXT_CHARS`] with a visible marker, because Chat refuses longer messages with a
//! 400 instead of shortening them.

/// The most characters a message text may hold. Chat has refused texts over 4096
/// characters; 4000 leaves room and is what the peers use.
pub const MAX_TEXT_CHARS: usize = 4000;

/// A zero-width space: invisible in Chat, but it breaks up markup sequences.
const ZWSP: char = '\u{200B}';
/// What a NUL byte of a log line is shown as (U+2400 SYMBOL FOR NULL): visible, and
/// nothing downstream (Chat, a terminal, a C string) takes it for the end of the text.
pub const NUL_SHOWN_AS: char = '\u{2400}';

/// Appends `value` to `out` so that it cannot change the markup around it.
///
/// A zero-width space goes between two backticks (so no ```` ``` ```` can form inside the
/// value), before a leading and after a trailing backtick (so the value cannot extend a
/// fence written in the template), and after the `<` of `<users/` (so a log line cannot
/// mention everyone).
pub fn neutralise_into(value: &str, out: &mut String) {
    let mut previous: Option<char> = None;
    for (i, c) in value.char_indices() {
        if c == '`' && (previous.is_none() || previous == Some('`')) {
            out.push(ZWSP);
        }
        out.push(if c == '\0' { NUL_SHOWN_AS } else { c });
        if c == '<' && value[i + 1..].starts_with("users/") {
            out.push(ZWSP);
        }
        previous = Some(c);
    }
    if previous == Some('`') {
        out.push(ZWSP);
    }
}

/// `text` with its NUL characters shown as [`NUL_SHOWN_AS`], as in log lines.
pub fn show_nul(text: &str) -> String {
    text.replace('\0', &NUL_SHOWN_AS.to_string())
}

/// Cuts `text` to at most [`MAX_TEXT_CHARS`] characters, see [`fit_to`].
pub fn fit(text: String) -> String {
    fit_to(text, MAX_TEXT_CHARS)
}

/// Cuts `text` so that it holds at most `limit` characters, counted as UTF-16 code units
/// (the way Chat's backend counts; never fewer than Unicode scalar values).
///
/// A text that fits is returned unchanged. Otherwise the beginning is kept up to a
/// character boundary, an open code block is closed, and a marker says how many
/// characters were cut. `limit` must leave room for the marker (at least 64).
pub fn fit_to(text: String, limit: usize) -> String {
    if utf16_len(&text) <= limit {
        return text;
    }
    let total_chars = text.chars().count();
    // Reserve room for the longest marker this text can need and for a closing fence.
    let reserve = utf16_len(&marker(total_chars)) + 3;
    let budget = limit.saturating_sub(reserve);
    let mut units = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        if units + c.len_utf16() > budget {
            break;
        }
        units += c.len_utf16();
        end = i + c.len_utf8();
    }
    let kept = &text[..end];
    let cut = text[end..].chars().count();
    let mut out = String::with_capacity(end + reserve);
    out.push_str(kept);
    if kept.matches("```").count() % 2 == 1 {
        out.push_str("```");
    }
    out.push_str(&marker(cut));
    out
}

fn marker(cut: usize) -> String {
    format!("\n_[chattail: {cut} more characters cut]_")
}

/// The length of `text` as Chat counts it: in UTF-16 code units.
pub fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn neutralised(value: &str) -> String {
        let mut out = String::new();
        neutralise_into(value, &mut out);
        out
    }

    #[test]
    fn breaks_fences_and_mentions() {
        assert_eq!(neutralised("a```b"), "a`\u{200B}`\u{200B}`b");
        assert_eq!(neutralised("`x`"), "\u{200B}`x`\u{200B}");
        assert_eq!(neutralised("hi <users/all>"), "hi <\u{200B}users/all>");
        assert_eq!(neutralised("plain <b> text"), "plain <b> text");
    }

    #[test]
    fn short_text_is_unchanged() {
        assert_eq!(fit("hello".to_owned()), "hello");
        let exact = "x".repeat(MAX_TEXT_CHARS);
        assert_eq!(fit(exact.clone()), exact);
    }

    #[test]
    fn long_text_is_cut_with_a_marker_and_fences_closed() {
        let text = format!("*boom*\n```{}```", "y".repeat(5000));
        let out = fit(text);
        assert!(utf16_len(&out) <= MAX_TEXT_CHARS);
        assert!(out.starts_with("*boom*\n```yyy"));
        assert!(
            out.ends_with("```\n_[chattail: 1055 more characters cut]_"),
            "{}",
            &out[out.len() - 60..]
        );
    }

    proptest! {
        // Whatever the input, the result fits, is a prefix of the input plus the closing
        // fence and marker, and (being a String) never splits a character.
        #[test]
        fn cut_never_exceeds_and_keeps_a_prefix(
            text in proptest::string::string_regex("(\\PC|`|\n|😀){0,300}").unwrap(),
            limit in 64usize..400,
        ) {
            let out = fit_to(text.clone(), limit);
            prop_assert!(utf16_len(&out) <= limit);
            if utf16_len(&text) <= limit {
                prop_assert_eq!(&out, &text);
            } else {
                let (_, tail) = out.rsplit_once("\n_[chattail: ").unwrap();
                let cut: usize = tail.split(' ').next().unwrap().parse().unwrap();
                let kept: String = text.chars().take(text.chars().count() - cut).collect();
                let fence = if kept.matches("```").count() % 2 == 1 { "```" } else { "" };
                prop_assert_eq!(out, format!("{kept}{fence}{}", marker(cut)));
            }
        }

        #[test]
        fn cut_of_huge_text_fits(n in 4000usize..20000, wide in any::<bool>()) {
            let unit = if wide { "😀" } else { "é" };
            let out = fit(unit.repeat(n));
            prop_assert!(utf16_len(&out) <= MAX_TEXT_CHARS);
            prop_assert!(out.chars().count() <= MAX_TEXT_CHARS);
        }
    }
}
