//! Templates such as `db-timeout-{db}`, parsed once when the config is loaded.
//!
//! A template is a list of segments: literal text, a capture group of the rule's pattern
//! (resolved to its group index at load time, so rendering does no name lookups) or a
//! built-in (`{line}`, `{file}`, `{rule}`, `{host}`). `{{` and `}}` stand for literal braces.
//! Rendering never fails: a capture group that did not take part in the match renders as
//! nothing, and bytes that are not UTF-8 are rendered lossily.

use std::borrow::Cow;
use std::fmt;

use super::pattern::Groups;
use thiserror::Error;

/// The built-in placeholders every template may use.
pub const BUILTINS: [&str; 6] = ["line", "first_line", "context", "file", "rule", "host"];

/// Built-ins a line's source provides (container logs), empty for a line whose source
/// does not. A capture group of the same name shadows one (the capture is used).
pub const SOURCE_BUILTINS: [&str; 8] = [
    "stream",
    "namespace",
    "pod",
    "container",
    "unit",
    "identifier",
    "pid",
    "priority",
];

/// Built-ins of alerts: `{count}` and `{within}` in the message of a rule with
/// `threshold`, `{occurrences}` and `{duration}` in `resolve.message`. A capture of the
/// same name takes their place.
pub const ALERT_BUILTINS: [&str; 4] = ["count", "within", "occurrences", "duration"];

/// What the alert built-ins render to, for one notification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertValues {
    pub count: String,
    pub within: String,
    pub occurrences: String,
    pub duration: String,
}

/// The source built-ins of journal entries.
pub const JOURNAL_BUILTINS: [&str; 4] = ["unit", "identifier", "pid", "priority"];

/// The source built-ins that `files` entries (their format and glob) provide.
pub fn provided_builtins<'a>(
    files: impl Iterator<Item = (crate::config::LogFormat, &'a str)>,
    journal: bool,
) -> Vec<&'static str> {
    use crate::config::LogFormat;
    let mut provided = Vec::new();
    if journal {
        provided.extend(JOURNAL_BUILTINS);
    }
    for (format, pattern) in files {
        let shape = crate::pipeline::container_path::container_log_glob(pattern);
        let kubelet = shape == Some(LogFormat::Cri);
        let docker = shape == Some(LogFormat::Docker);
        if format != LogFormat::Plain {
            provided.push("stream");
        }
        if kubelet {
            provided.extend(["namespace", "pod", "container"]);
        }
        if docker {
            provided.push("container");
        }
    }
    provided.sort_unstable();
    provided.dedup();
    provided
}

/// What a source built-in needs, for the error when nothing provides it.
pub fn builtin_needs(name: &str) -> &'static str {
    match name {
        "stream" => "it needs an entry with `format: cri` or `format: docker`",
        "container" => {
            "it needs an entry whose glob follows the kubelet's layout or Docker's (`…/containers/*/*-json.log`)"
        }
        _ => {
            "it needs an entry whose glob follows the kubelet's layout (`…/pods/*/*/*.log` or `…/log/containers/*.log`)"
        }
    }
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Group { index: usize },
    Line,
    FirstLine,
    Context,
    File,
    Rule,
    Host,
    Stream,
    Namespace,
    Pod,
    Container,
    Unit,
    Identifier,
    Pid,
    Priority,
    Count,
    Within,
    Occurrences,
    Duration,
}

/// A parsed template. `Debug` shows the source text.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

/// Why a template was refused; `position` is a character offset into the template.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error(
        "names `{{{name}}}`, which the pattern does not define \
         (named groups: {groups}; built-ins: line, first_line, context, file, rule, host, \
         for container logs stream, namespace, pod, container; for the journal unit, \
         identifier, pid, priority)"
    )]
    UnknownName { name: String, groups: String },
    #[error(
        "has a `{{` at character {position} that is never closed (write `{{{{` for a literal brace)"
    )]
    Unclosed { position: usize },
    #[error(
        "has a `}}` at character {position} that closes nothing (write `}}}}` for a literal brace)"
    )]
    UnmatchedClose { position: usize },
    #[error(
        "has `{{{text}}}` at character {position}, which is not a placeholder \
         (use a group or built-in name; write `{{{{` and `}}}}` for literal braces)"
    )]
    BadPlaceholder { text: String, position: usize },
}

/// What a template is rendered from: one matched line (or multiline event, whose first
/// line is `{first_line}`) and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct RenderContext<'a> {
    pub line: &'a [u8],
    pub file: &'a str,
    pub rule: &'a str,
    pub host: &'a str,
    pub captures: Option<&'a Groups<'a>>,
    /// The lines before the match (`rules[].context.before`), joined with `\n`.
    pub context: &'a [u8],
    /// `stdout` or `stderr` for container logs; `None` for plain files.
    pub stream: Option<&'a str>,
    /// The writer of a journal entry; `None` for files (and for a journal event resumed
    /// after a restart, whose `{identifier}`, `{pid}` and `{priority}` render empty).
    pub journal: Option<&'a crate::pipeline::journal_fields::JournalFields>,
    /// Capture values kept from an earlier match, by group index, used when `captures` is
    /// `None` (an incident resolved by time, an expected absence key).
    pub stored: Option<&'a [Option<String>]>,
    /// The alert built-ins' values.
    pub alert: Option<&'a AlertValues>,
}

/// How substituted values are written into the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Values are copied as they are (thread keys, dedup keys).
    None,
    /// Values are neutralised for Chat text: they cannot close a code block or mention
    /// everyone (see [`crate::pipeline::chat_text::neutralise_into`]).
    ChatText,
    /// Values are escaped for the HTML subset card text takes (`decoratedText`,
    /// `textParagraph`): `&`, `<`, `>`, `"` and `'` as entities, a newline as `<br>`.
    Html,
    /// Values are percent-encoded for a URL (all but RFC 3986's unreserved characters),
    /// so a capture cannot change a link's scheme, host or query structure.
    Url,
    /// Values are plain text on one line (a card's header): control characters, the
    /// newline included, become spaces.
    PlainLine,
}

/// What percent-encoding leaves alone: RFC 3986's unreserved characters.
const URL_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Appends `value` to `out` escaped for card HTML.
pub fn html_escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("<br>"),
            '\0' => out.push(crate::pipeline::chat_text::NUL_SHOWN_AS),
            c => out.push(c),
        }
    }
}

impl Template {
    /// Parses `source`. `group_index` maps a placeholder name to the capture group it
    /// denotes; `group_names` lists the defined names for the error message.
    pub fn parse(
        source: &str,
        group_index: impl Fn(&str) -> Option<usize>,
        group_names: &[&str],
    ) -> Result<Self, TemplateError> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let chars: Vec<char> = source.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            match c {
                '{' if chars.get(i + 1) == Some(&'{') => {
                    literal.push('{');
                    i += 2;
                }
                '}' if chars.get(i + 1) == Some(&'}') => {
                    literal.push('}');
                    i += 2;
                }
                '}' => return Err(TemplateError::UnmatchedClose { position: i }),
                '{' => {
                    let Some(len) = chars[i + 1..].iter().position(|&c| c == '}') else {
                        return Err(TemplateError::Unclosed { position: i });
                    };
                    let name: String = chars[i + 1..i + 1 + len].iter().collect();
                    if !is_identifier(&name) {
                        return Err(TemplateError::BadPlaceholder {
                            text: name,
                            position: i,
                        });
                    }
                    let source_builtin = match name.as_str() {
                        "stream" => Some(Segment::Stream),
                        "namespace" => Some(Segment::Namespace),
                        "pod" => Some(Segment::Pod),
                        "container" => Some(Segment::Container),
                        "unit" => Some(Segment::Unit),
                        "identifier" => Some(Segment::Identifier),
                        "pid" => Some(Segment::Pid),
                        "priority" => Some(Segment::Priority),
                        "count" => Some(Segment::Count),
                        "within" => Some(Segment::Within),
                        "occurrences" => Some(Segment::Occurrences),
                        "duration" => Some(Segment::Duration),
                        _ => None,
                    };
                    let segment = match name.as_str() {
                        // A capture of the same name shadows a source built-in.
                        _ if source_builtin.is_some() => match group_index(&name) {
                            Some(index) => Segment::Group { index },
                            None => source_builtin.unwrap_or(Segment::Line),
                        },
                        "line" => Segment::Line,
                        "first_line" => Segment::FirstLine,
                        "context" => Segment::Context,
                        "file" => Segment::File,
                        "rule" => Segment::Rule,
                        "host" => Segment::Host,
                        _ => match group_index(&name) {
                            Some(index) => Segment::Group { index },
                            None => {
                                let groups = if group_names.is_empty() {
                                    "none".to_owned()
                                } else {
                                    group_names.join(", ")
                                };
                                return Err(TemplateError::UnknownName { name, groups });
                            }
                        },
                    };
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(segment);
                    i += len + 2;
                }
                _ => {
                    literal.push(c);
                    i += 1;
                }
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Self {
            source: source.to_owned(),
            segments,
        })
    }

    /// The source built-ins the template uses (not shadowed by a capture).
    pub fn source_builtins(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Stream => Some("stream"),
                Segment::Namespace => Some("namespace"),
                Segment::Pod => Some("pod"),
                Segment::Container => Some("container"),
                Segment::Unit => Some("unit"),
                Segment::Identifier => Some("identifier"),
                Segment::Pid => Some("pid"),
                Segment::Priority => Some("priority"),
                _ => None,
            })
            .collect();
        names.dedup();
        names
    }

    /// The alert built-ins the template uses (not shadowed by a capture).
    pub fn alert_builtins(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Count => Some("count"),
                Segment::Within => Some("within"),
                Segment::Occurrences => Some("occurrences"),
                Segment::Duration => Some("duration"),
                _ => None,
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Whether the template renders from nothing but captures, `{rule}` and `{host}`
    /// (so that values alone can render it, as `expect` does).
    pub fn uses_only_captures_rule_host(&self) -> bool {
        self.segments.iter().all(|s| {
            matches!(
                s,
                Segment::Literal(_) | Segment::Group { .. } | Segment::Rule | Segment::Host
            )
        })
    }

    /// Whether the template uses `{context}`.
    pub fn uses_context(&self) -> bool {
        self.segments.contains(&Segment::Context)
    }

    /// The literal text before the first placeholder (all of it when there is none): what
    /// no capture can change.
    pub fn literal_prefix(&self) -> &str {
        match self.segments.first() {
            Some(Segment::Literal(text)) => text,
            _ => "",
        }
    }

    /// Whether the template has placeholders.
    pub fn has_placeholders(&self) -> bool {
        self.segments
            .iter()
            .any(|s| !matches!(s, Segment::Literal(_)))
    }

    /// The bytes of its literal text.
    pub fn literal_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(text) => text.len(),
                _ => 0,
            })
            .sum()
    }

    /// The template as written in the config.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Appends the rendering of this template to `out`.
    pub fn render_into(&self, out: &mut String, ctx: &RenderContext<'_>, escape: Escape) {
        for segment in &self.segments {
            let value: Cow<'_, str> = match segment {
                Segment::Literal(text) => {
                    out.push_str(text);
                    continue;
                }
                Segment::Line => String::from_utf8_lossy(ctx.line),
                Segment::Context => String::from_utf8_lossy(ctx.context),
                Segment::FirstLine => {
                    let end = memchr::memchr(b'\n', ctx.line).unwrap_or(ctx.line.len());
                    String::from_utf8_lossy(&ctx.line[..end])
                }
                Segment::File => Cow::Borrowed(ctx.file),
                Segment::Rule => Cow::Borrowed(ctx.rule),
                Segment::Host => Cow::Borrowed(ctx.host),
                Segment::Stream => Cow::Borrowed(ctx.stream.unwrap_or("")),
                Segment::Namespace => Cow::Borrowed(
                    crate::pipeline::container_path::path_meta(ctx.file)
                        .namespace
                        .unwrap_or(""),
                ),
                Segment::Pod => Cow::Borrowed(
                    crate::pipeline::container_path::path_meta(ctx.file)
                        .pod
                        .unwrap_or(""),
                ),
                Segment::Container => Cow::Borrowed(
                    crate::pipeline::container_path::path_meta(ctx.file)
                        .container
                        .unwrap_or(""),
                ),
                Segment::Unit => {
                    Cow::Borrowed(crate::pipeline::journal_fields::unit_of(ctx.file).unwrap_or(""))
                }
                Segment::Identifier => {
                    Cow::Borrowed(ctx.journal.map_or("", |j| j.identifier.as_str()))
                }
                Segment::Pid => Cow::Borrowed(ctx.journal.map_or("", |j| j.pid.as_str())),
                Segment::Priority => Cow::Borrowed(ctx.journal.map_or("", |j| j.priority.as_str())),
                Segment::Count => Cow::Borrowed(ctx.alert.map_or("", |a| a.count.as_str())),
                Segment::Within => Cow::Borrowed(ctx.alert.map_or("", |a| a.within.as_str())),
                Segment::Occurrences => {
                    Cow::Borrowed(ctx.alert.map_or("", |a| a.occurrences.as_str()))
                }
                Segment::Duration => Cow::Borrowed(ctx.alert.map_or("", |a| a.duration.as_str())),
                Segment::Group { index } => match ctx.captures {
                    Some(caps) => match caps.get(*index) {
                        Some(m) => String::from_utf8_lossy(m),
                        None => continue,
                    },
                    None => match ctx
                        .stored
                        .and_then(|s| s.get(*index))
                        .and_then(Option::as_deref)
                    {
                        Some(v) => Cow::Borrowed(v),
                        None => continue,
                    },
                },
            };
            match escape {
                Escape::None => out.push_str(&value),
                Escape::ChatText => crate::pipeline::chat_text::neutralise_into(&value, out),
                Escape::Html => html_escape_into(&value, out),
                Escape::Url => {
                    out.extend(percent_encoding::utf8_percent_encode(&value, URL_VALUE));
                }
                Escape::PlainLine => {
                    out.extend(value.chars().map(|c| if c.is_control() { ' ' } else { c }))
                }
            }
        }
    }

    /// Renders this template into a new string.
    pub fn render(&self, ctx: &RenderContext<'_>, escape: Escape) -> String {
        let mut out = String::new();
        self.render_into(&mut out, ctx, escape);
        out
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.source)
    }
}

/// Letters, digits and `_`, not starting with a digit: placeholder and variable names.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::pattern::RulePattern;
    use proptest::prelude::*;

    fn parse_for(re: &RulePattern, source: &str) -> Result<Template, TemplateError> {
        let names: Vec<&str> = re.capture_names().flatten().collect();
        Template::parse(
            source,
            |name| re.capture_names().position(|n| n == Some(name)),
            &names,
        )
    }

    fn ctx<'a>(line: &'a [u8], caps: Option<&'a Groups<'a>>) -> RenderContext<'a> {
        RenderContext {
            line,
            file: "/var/log/app.log",
            rule: "db-timeout",
            host: "web-1",
            captures: caps,
            context: b"",
            stream: None,
            journal: None,
            stored: None,
            alert: None,
        }
    }

    #[test]
    fn renders_groups_builtins_and_literal_braces() {
        let re = RulePattern::new(r"timeout connecting to (?P<db>\S+)", 1 << 20).unwrap();
        let line = b"ERROR timeout connecting to orders-db".as_slice();
        let caps = re.captures(line).unwrap();
        let t = parse_for(&re, "{rule}/{db} on {host} in {file} {{x}}: {line}").unwrap();
        assert_eq!(
            t.render(&ctx(line, Some(&caps)), Escape::None),
            "db-timeout/orders-db on web-1 in /var/log/app.log {x}: ERROR timeout connecting to orders-db"
        );
    }

    #[test]
    fn unmatched_optional_group_renders_empty() {
        let re = RulePattern::new(r"a(?P<opt>b)?", 1 << 20).unwrap();
        let caps = re.captures(b"a").unwrap();
        let t = parse_for(&re, "[{opt}]").unwrap();
        assert_eq!(t.render(&ctx(b"a", Some(&caps)), Escape::None), "[]");
    }

    #[test]
    fn refuses_unknown_names_and_stray_braces() {
        let re = RulePattern::new(r"(?P<db>\S+)", 1 << 20).unwrap();
        assert_eq!(
            parse_for(&re, "x-{nosuch}").unwrap_err().to_string(),
            "names `{nosuch}`, which the pattern does not define (named groups: db; built-ins: line, first_line, context, file, rule, host, for container logs stream, namespace, pod, container; for the journal unit, identifier, pid, priority)"
        );
        assert_eq!(
            parse_for(&re, "a}b"),
            Err(TemplateError::UnmatchedClose { position: 1 })
        );
        assert_eq!(
            parse_for(&re, "ab{db"),
            Err(TemplateError::Unclosed { position: 2 })
        );
        assert!(matches!(
            parse_for(&re, "{2,3}"),
            Err(TemplateError::BadPlaceholder { .. })
        ));
    }

    #[test]
    fn invalid_utf8_is_rendered_lossily() {
        let re = RulePattern::new(r"(?-u)user=(?P<u>\S+)", 1 << 20).unwrap();
        let line = b"user=\xff\xfe ok".as_slice();
        let caps = re.captures(line).unwrap();
        let t = parse_for(&re, "{u}").unwrap();
        assert_eq!(
            t.render(&ctx(line, Some(&caps)), Escape::None),
            "\u{fffd}\u{fffd}"
        );
    }

    proptest! {
        // Parsing arbitrary text never panics, and a template that parses renders the same
        // literal text back once placeholders are taken away.
        #[test]
        fn parse_never_panics_and_literals_round_trip(source in "[a-z{}_ ]{0,40}") {
            let re = RulePattern::new(r"(?P<a>x)", 1 << 20).unwrap();
            if let Ok(t) = parse_for(&re, &source) {
                let rendered = t.render(&ctx(b"", None), Escape::None);
                // Read left to right, as the parser does: `{{` and `}}` are literal braces
                // (a `}}` right after a placeholder's `}` included), `{name}` a value.
                let mut stripped = String::new();
                let mut rest = source.as_str();
                while !rest.is_empty() {
                    if let Some(after) = rest.strip_prefix("{{") {
                        stripped.push('{');
                        rest = after;
                    } else if let Some(after) = rest.strip_prefix("}}") {
                        stripped.push('}');
                        rest = after;
                    } else if let Some(after) = rest.strip_prefix('{') {
                        let close = after.find('}').unwrap();
                        stripped.push_str(match &after[..close] {
                            "line" | "first_line" | "context" | "a" => "",
                            "file" => "/var/log/app.log",
                            "rule" => "db-timeout",
                            "host" => "web-1",
                            other => panic!("parsed an unknown name {other:?}"),
                        });
                        rest = &after[close + 1..];
                    } else {
                        let c = rest.chars().next().unwrap();
                        stripped.push(c);
                        rest = &rest[c.len_utf8()..];
                    }
                }
                prop_assert_eq!(rendered, stripped);
            }
        }

        // Rendering arbitrary bytes never panics, and a value escaped for Chat can neither
        // close the code block around it nor merge with the fence's backticks.
        #[test]
        fn render_any_bytes(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let re = RulePattern::new(r"(?s-u)(?P<all>.*)", 1 << 20).unwrap();
            let caps = re.captures(&line).unwrap();
            let t = parse_for(&re, "```{all}```").unwrap();
            let out = t.render(&ctx(&line, Some(&caps)), Escape::ChatText);
            let inner = &out[3..out.len() - 3];
            prop_assert!(!inner.contains("``"), "{:?}", out);
            prop_assert!(!inner.starts_with('`') && !inner.ends_with('`'), "{:?}", out);
        }
    }
}
