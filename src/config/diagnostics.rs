//! Located config errors and warnings, rendered the way a compiler would show them.
//!
//! Every problem found while loading a config becomes a [`Diagnostic`]: a severity, a
//! message and, when known, the line and column in the file. A [`Report`] collects all of
//! them so that the operator sees every mistake at once, each followed by the offending
//! source line and a caret.

use std::fmt;
use std::path::{Path, PathBuf};

/// Replaces the values of `key=` and `token=` query parameters, and the password of a
/// `scheme://user:password@host` URL (a Redis URL), with `…`, so that neither a snippet of
/// a line holding a literal URL nor a message echoing a value (a URL pasted where a name
/// belongs) prints its secret.
pub fn redact_secrets(line: &str) -> String {
    redact_query_secrets(&redact_userinfo(line))
}

/// Whether a source line may hold a secret, however it is quoted or broken: user
/// information after a `://` (an `@` anywhere after it, since a password may hold blanks
/// and quotes a snippet cannot parse), or a `key=` or `token=` query parameter. Such a
/// line is never shown in a snippet, redacted or not.
pub fn may_hold_secret(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    lower
        .find("://")
        .is_some_and(|at| lower[at..].contains('@'))
        || lower.contains("key=")
        || lower.contains("token=")
}

/// `scheme://user:password@` → `scheme://user:…@`.
fn redact_userinfo(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The URL runs to a quote or a blank; its user information ends at the last `@`
        // in it (a password may hold `/`, `?` or `#`).
        let token_end = tail
            .find(|c: char| matches!(c, '"' | '\'' | '`') || c.is_whitespace())
            .unwrap_or(tail.len());
        let end = tail[..token_end].rfind('@').map_or_else(
            || tail[..token_end].find(['/', '?', '#']).unwrap_or(token_end),
            |at| {
                tail[at..token_end]
                    .find(['/', '?', '#'])
                    .map_or(token_end, |i| at + i)
            },
        );
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at_sign) => {
                let userinfo = &authority[..at_sign];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push('…');
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at_sign..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn redact_query_secrets(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = ["key=", "token="]
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
        .filter(|&(i, _)| i == 0 || matches!(rest.as_bytes()[i - 1], b'?' | b'&'))
        .min()
    {
        let (start, len) = at;
        out.push_str(&rest[..start + len]);
        rest = &rest[start + len..];
        let end = rest
            .find(|c: char| matches!(c, '&' | '"' | '\'' | '`' | '#' | ',') || c.is_whitespace())
            .unwrap_or(rest.len());
        if end > 0 {
            out.push('…');
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The most characters of a source line a snippet shows.
const SNIPPET_CHARS: usize = 120;

/// At most [`SNIPPET_CHARS`] characters of `line` around character `column`, with `…` where
/// it was cut, and the column within the window. A one-line config of 250 KB must not
/// print 250 KB under each error.
fn snippet_window(line: &str, column: usize) -> (String, usize) {
    let total = line.chars().count();
    if total <= SNIPPET_CHARS {
        return (line.to_owned(), column);
    }
    let start = column
        .saturating_sub(SNIPPET_CHARS / 2)
        .min(total - SNIPPET_CHARS);
    let mut window: String = line.chars().skip(start).take(SNIPPET_CHARS).collect();
    let mut column = column - start;
    if start + SNIPPET_CHARS < total {
        window.push('…');
    }
    if start > 0 {
        window.insert(0, '…');
        column += 1;
    }
    (window, column)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// A line and column in the config file, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: u64,
    pub column: u64,
}

impl Location {
    /// Converts serde-saphyr's location; its "unknown" location becomes `None`.
    pub fn from_yaml(location: serde_saphyr::Location) -> Option<Self> {
        (location.line() > 0).then(|| Self {
            line: location.line(),
            column: location.column().max(1),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: Option<Location>,
    pub message: String,
    /// Whether the source line may be shown. It may not for a webhook URL, whose secret
    /// could sit anywhere in the line.
    pub show_source: bool,
}

/// All diagnostics for one config file, with the source kept for snippets.
#[derive(Debug, Clone)]
pub struct Report {
    path: PathBuf,
    source: String,
    items: Vec<Diagnostic>,
}

impl Report {
    pub fn new(path: &Path, source: &str) -> Self {
        Self {
            path: path.to_owned(),
            source: source.to_owned(),
            items: Vec::new(),
        }
    }

    pub fn error(&mut self, location: Option<Location>, message: impl Into<String>) {
        self.push(Severity::Error, location, message.into(), true);
    }

    pub fn warning(&mut self, location: Option<Location>, message: impl Into<String>) {
        self.push(Severity::Warning, location, message.into(), true);
    }

    /// Records a diagnostic about a value that may hold a secret: located, but printed
    /// without its source line.
    pub fn secret_value(
        &mut self,
        severity: Severity,
        location: Option<Location>,
        message: String,
    ) {
        self.push(severity, location, message, false);
    }

    fn push(
        &mut self,
        severity: Severity,
        location: Option<Location>,
        message: String,
        show_source: bool,
    ) {
        // Messages echo values from the file; one may be a webhook URL in the wrong place.
        self.items.push(Diagnostic {
            severity,
            location,
            message: redact_secrets(&message),
            show_source,
        });
    }

    pub fn items(&self) -> &[Diagnostic] {
        &self.items
    }

    pub fn error_count(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warning_count(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.items.iter().filter(|d| d.severity == severity).count()
    }

    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn source_line(&self, line: u64) -> Option<&str> {
        let index = usize::try_from(line.checked_sub(1)?).ok()?;
        self.source.lines().nth(index)
    }
}

impl fmt::Display for Report {
    /// Renders every diagnostic in file order (unlocated ones first), then a count line
    /// when there are errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<&Diagnostic> = self.items.iter().collect();
        items.sort_by_key(|d| d.location.map(|l| (l.line, l.column)));
        for d in items {
            let label = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let mut lines = d.message.lines();
            writeln!(f, "{label}: {}", lines.next().unwrap_or(""))?;
            for more in lines {
                writeln!(f, "       {more}")?;
            }
            match d.location {
                Some(loc) => {
                    writeln!(
                        f,
                        "  --> {}:{}:{}",
                        self.path.display(),
                        loc.line,
                        loc.column
                    )?;
                    let shown = self.source_line(loc.line).filter(|_| d.show_source);
                    if shown.is_some_and(may_hold_secret) {
                        let pad = " ".repeat(loc.line.to_string().len());
                        writeln!(f, "{pad} |")?;
                        writeln!(f, "{} | (not shown: the line holds a secret)", loc.line)?;
                    } else if let Some(text) = shown {
                        let column = usize::try_from(loc.column - 1).unwrap_or(0);
                        let (text, column) = snippet_window(&redact_secrets(text), column);
                        let gutter = loc.line.to_string().len();
                        let pad = " ".repeat(gutter);
                        let caret_pad: String = text
                            .chars()
                            .take(column)
                            .map(|c| if c == '\t' { '\t' } else { ' ' })
                            .collect();
                        writeln!(f, "{pad} |")?;
                        writeln!(f, "{} | {text}", loc.line)?;
                        writeln!(f, "{pad} | {caret_pad}^")?;
                    }
                }
                None => writeln!(f, "  --> {}", self.path.display())?,
            }
            writeln!(f)?;
        }
        let errors = self.error_count();
        if errors > 0 {
            let plural = if errors == 1 { "" } else { "s" };
            writeln!(
                f,
                "{}: {errors} error{plural}; the config was not loaded",
                self.path.display()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{may_hold_secret, redact_secrets};

    #[test]
    fn lines_with_secrets_are_recognised_however_quoted() {
        for line in [
            "  redis: redis://u:pa ss@h:6379/0",
            "  redis: \"redis://:a'b\"c`d@h\"",
            "    url: https://chat.googleapis.com/v1/spaces/A/messages?key=K&token=T",
        ] {
            assert!(may_hold_secret(line), "{line}");
        }
        assert!(!may_hold_secret("    url: ${ONCALL_WEBHOOK_URL}"));
        assert!(!may_hold_secret("  redis: redis://cache:6379/0"));
    }

    #[test]
    fn snippets_hide_key_and_token_values() {
        assert_eq!(
            redact_secrets("    url: https://h/v1/spaces/A/messages?key=K1&token=T2%3D"),
            "    url: https://h/v1/spaces/A/messages?key=…&token=…"
        );
        assert_eq!(
            redact_secrets("  redis: redis://agent:pa:ss@h:6379/0 # x"),
            "  redis: redis://agent:…@h:6379/0 # x"
        );
        assert_eq!(
            redact_secrets("redis: redis://:ab/c+d==@h/0"),
            "redis: redis://:…@h/0"
        );
        assert_eq!(
            redact_secrets("url: \"https://h/x?token=abc\" # c"),
            "url: \"https://h/x?token=…\" # c"
        );
        assert_eq!(redact_secrets("monkey=1 tokens: x"), "monkey=1 tokens: x");
    }
}
