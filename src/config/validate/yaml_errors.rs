//! Messages for YAML syntax and type errors, with a suggestion for a misspelt key.

/// serde-saphyr's message without its own location and snippet, because the report
/// prints both in one uniform style, plus a suggestion for a misspelt key.
pub(super) fn yaml_message(error: &serde_saphyr::Error) -> String {
    let text = error.without_snippet().to_string();
    let mut text = text.trim();
    if let Some((head, rest)) = text.split_once(": ")
        && head.starts_with("line ")
        && head.contains(" column ")
    {
        text = rest;
    }
    if let Some(at) = text.rfind(" at line ")
        && text[at..].contains(", column ")
    {
        text = &text[..at];
    }
    if text.is_empty() {
        return "the file is not valid YAML".to_owned();
    }
    // Reword the parser's terms into what the operator sees in the file, and keep the
    // library's internals (type names, function names) out of the message.
    if text.contains("budget breached") {
        return "the config is too large or too deeply nested to be a chattail config \
                (a YAML alias bomb or a generated file?)"
            .to_owned();
    }
    if text.contains("from_str_multiple") || text.contains("multiple documents") {
        return "the file holds several YAML documents (separated by `---`); a config is one document"
            .to_owned();
    }
    if text == "expected sequence start" {
        return "expected a list here (lines starting with `- `)".to_owned();
    }
    if text == "expected mapping start" {
        return "expected a mapping here (`key: value` lines)".to_owned();
    }
    if let Some(rest) = text.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest);
        return format!("`{key}` is defined twice in the same mapping");
    }
    match suggest_field(text) {
        Some(field) => format!("{text}; did you mean `{field}`?"),
        None => text.to_owned(),
    }
}

/// For serde's "unknown field `x`, expected one of a, b" message, the expected field closest
/// to `x`, when it is close enough to be a typo.
fn suggest_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected ")?.1;
    let expected = expected.strip_prefix("one of ").unwrap_or(expected);
    expected
        .split(", ")
        .map(|f| f.trim_matches('`'))
        .map(|f| (edit_distance(unknown, f), f))
        .filter(|(d, f)| *d <= 2 && *d < f.len())
        .min()
        .map(|(_, f)| f)
}

/// Levenshtein distance, for short key names only.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}
