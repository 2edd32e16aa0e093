//! A rule's `card` rendered as Chat's `cardsV2` entry: a header (title, subtitle), one
//! `decoratedText` per field, the line as a `textParagraph`, and a `buttonList` of links.
//!
//! Captured text is safe wherever it lands: plain text on one line in the header (which
//! Chat shows as text), escaped for the HTML subset in fields and the paragraph, and
//! percent-encoded in a button's URL, whose scheme and host validation put in the fixed
//! part. The entry stays well under Chat's 32 KB per card: each value is bounded and the
//! line takes what is left, cut with a note as text messages are.

use serde_json::{Value, json};

use super::chat_text;
use super::template::{Escape, RenderContext, html_escape_into};
use crate::config::Card;

/// The most bytes a rendered card's JSON takes, leaving the request room for the text
/// (at most [`CARD_TEXT_CHARS`]) within Chat's 32,000 bytes.
pub const MAX_CARD_BYTES: usize = 20_000;

/// The text posted with a card (what notifications and previews show) is cut to this.
pub const CARD_TEXT_CHARS: usize = 2_000;

/// How long the header's title and subtitle, a field's value and a URL may be.
const TITLE_CHARS: usize = 200;
const FIELD_CHARS: usize = 1_000;
const URL_CHARS: usize = 2_000;

/// The `cardsV2` entry for one hit, as JSON, and the card's rendered title (the text
/// beside the card when the rule has no `message`).
pub fn render(card: &Card, ctx: &RenderContext<'_>) -> (String, String) {
    let title = cut(card.title.render(ctx, Escape::PlainLine), TITLE_CHARS);
    let mut header = json!({ "title": title });
    if let Some(subtitle) = &card.subtitle {
        header["subtitle"] =
            Value::String(cut(subtitle.render(ctx, Escape::PlainLine), TITLE_CHARS));
    }
    let mut widgets: Vec<Value> = Vec::new();
    // With many fields, each gets its share of the budget.
    let per_field = FIELD_CHARS.min(MAX_CARD_BYTES / 2 / card.fields.len().max(1));
    for field in &card.fields {
        let mut label = String::new();
        html_escape_into(&field.label, &mut label);
        let value = cut_html(field.value.render(ctx, Escape::Html), per_field);
        widgets.push(
            json!({ "decoratedText": { "topLabel": label, "text": value, "wrapText": true } }),
        );
    }
    let mut sections = vec![json!({ "widgets": widgets })];
    if !card.buttons.is_empty() {
        let buttons: Vec<Value> = card
            .buttons
            .iter()
            .map(|b| {
                let url = cut(b.url.render(ctx, Escape::Url), URL_CHARS);
                json!({ "text": cut(b.text.clone(), TITLE_CHARS), "onClick": { "openLink": { "url": url } } })
            })
            .collect();
        sections.push(json!({ "widgets": [ { "buttonList": { "buttons": buttons } } ] }));
    }
    let mut entry = json!({
        "cardId": "chattail",
        "card": { "header": header, "sections": sections },
    });
    if card.line {
        let used = entry.to_string().len();
        // Room for the paragraph's own JSON and the cut note.
        let room = MAX_CARD_BYTES.saturating_sub(used + 200);
        let line = String::from_utf8_lossy(ctx.line);
        let mut text = String::new();
        html_escape_into(&line, &mut text);
        let paragraph = fit_bytes(text, room);
        if let Some(Value::Array(widgets)) = entry.pointer_mut("/card/sections/0/widgets") {
            widgets.push(json!({ "textParagraph": { "text": paragraph } }));
        }
    }
    (entry.to_string(), title)
}

/// The text beside a card: the rule's message, or the card's title, cut to
/// [`CARD_TEXT_CHARS`].
pub fn text_beside(message: String) -> String {
    chat_text::fit_to(message, CARD_TEXT_CHARS)
}

fn cut(text: String, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text;
    }
    let mut out: String = text.chars().take(chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Cuts escaped HTML to about `chars` characters without splitting an entity or a `<br>`.
fn cut_html(text: String, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text;
    }
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n >= chars.saturating_sub(1) && !inside_markup(&out) {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// Whether `text` ends inside an entity (`&amp`) or a tag (`<br`).
fn inside_markup(text: &str) -> bool {
    let amp = text.rfind('&');
    let semi = text.rfind(';');
    let lt = text.rfind('<');
    let gt = text.rfind('>');
    amp.is_some_and(|a| semi.is_none_or(|s| s < a)) || lt.is_some_and(|l| gt.is_none_or(|g| g < l))
}

/// Fits escaped HTML into `bytes`, ending with a note of how much was cut.
fn fit_bytes(text: String, bytes: usize) -> String {
    // The JSON encoding of a control character takes up to six bytes.
    let cost = |t: &str| t.len() + t.chars().filter(|c| c.is_control()).count() * 5;
    if cost(&text) <= bytes {
        return text;
    }
    let total = text.chars().count();
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let c_cost = c.len_utf8() + if c.is_control() { 5 } else { 0 };
        if used + c_cost > bytes.saturating_sub(80) && !inside_markup(&out) {
            break;
        }
        used += c_cost;
        out.push(c);
    }
    let kept = out.chars().count();
    out.push_str(&format!("<br><i>… {} characters cut</i>", total - kept));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LoadOptions, UrlPolicy, load_bytes};
    use crate::pipeline::{FileId, Notification, Origin, Pipeline};

    /// What the config `yaml` posts for `line` of `/var/log/app.log`.
    fn notifications(yaml: &str, line: &[u8]) -> Vec<Notification> {
        let env = |_: &str| None;
        let options = LoadOptions {
            url_policy: UrlPolicy::Required,
            env: &env,
            default_host: "web-1".to_owned(),
        };
        let config = load_bytes(std::path::Path::new("/c.yaml"), yaml.as_bytes(), &options)
            .unwrap_or_else(|r| panic!("{r}"))
            .config;
        let mut p = Pipeline::new(std::sync::Arc::new(config), Vec::new(), Vec::new());
        let mut out: Vec<Notification> = Vec::new();
        let origin = Origin {
            id: FileId { dev: 1, ino: 1 },
            path: std::path::Path::new("/var/log/app.log"),
            spec: 0,
            number: 0,
            stream: None,
            journal: None,
        };
        p.line(&origin, line, 0, &mut out);
        out
    }

    #[test]
    fn a_capture_with_quotes_markup_and_a_newline_is_safe_everywhere() {
        let yaml = "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\n\
            files:\n  - path: /var/log/app.log\n\
            rules:\n  - name: gw\n    match: '(?s)upstream (?P<up>.+) failed'\n    webhook: oncall\n    card:\n      title: 'Upstream {up}'\n      subtitle: '{host}'\n      fields:\n        - {label: 'A <b>label</b>', value: '{up}'}\n      buttons:\n        - {text: Logs, url: 'https://logs.example.com/q?u={up}'}\n";
        let out = notifications(yaml, b"upstream \"x<y>&z/?#\nnext\" failed");
        let card: Value = serde_json::from_str(out[0].card.as_deref().unwrap()).unwrap();
        let card = &card["card"];
        // The header is one line of plain text.
        assert_eq!(card["header"]["title"], "Upstream \"x<y>&z/?# next\"");
        let field = &card["sections"][0]["widgets"][0]["decoratedText"];
        assert_eq!(field["topLabel"], "A &lt;b&gt;label&lt;/b&gt;");
        assert_eq!(field["text"], "&quot;x&lt;y&gt;&amp;z/?#<br>next&quot;");
        let url = card["sections"][1]["widgets"][0]["buttonList"]["buttons"][0]["onClick"]["openLink"]["url"]
            .as_str()
            .unwrap();
        assert_eq!(
            url,
            "https://logs.example.com/q?u=%22x%3Cy%3E%26z%2F%3F%23%0Anext%22"
        );
        // The text beside the card (no `message`): the title, neutralised for Chat text.
        assert_eq!(out[0].text, "Upstream \"x<y>&z/?# next\"");
    }

    #[test]
    fn a_huge_line_keeps_the_card_under_its_budget() {
        let yaml = "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\n\
            files:\n  - path: /var/log/app.log\n\
            rules:\n  - name: big\n    match: 'E (?P<v>.*)'\n    webhook: oncall\n    message: '{line}'\n    card:\n      title: '{v}'\n      fields:\n        - {label: V, value: '{v}'}\n        - {label: W, value: '{v}'}\n";
        let line = format!("E {}", "<\u{1}é".repeat(40_000));
        let out = notifications(yaml, line.as_bytes());
        let card = out[0].card.as_deref().unwrap();
        assert!(card.len() <= MAX_CARD_BYTES, "{}", card.len());
        assert!(card.contains("characters cut"));
        // The whole request: text, card and a fallback within Chat's 32,000 bytes.
        let body = serde_json::json!({
            "text": out[0].text,
            "cardsV2": [serde_json::from_str::<Value>(card).unwrap()],
            "fallbackText": out[0].text.chars().take(200).collect::<String>(),
            "thread": {"threadKey": "k"},
        });
        assert!(
            body.to_string().len() < 32_000,
            "{}",
            body.to_string().len()
        );
    }

    #[test]
    fn html_cuts_never_split_an_entity_or_a_break() {
        let text = "a&amp;b<br>c".to_owned();
        for n in 1..text.len() {
            let cut = cut_html(text.clone(), n);
            let body = cut.trim_end_matches('…');
            assert!(!inside_markup(body), "{n}: {cut}");
        }
        let long = "&lt;".repeat(10_000);
        let fitted = fit_bytes(long, 1_000);
        assert!(fitted.len() <= 1_000, "{}", fitted.len());
        assert!(fitted.ends_with("characters cut</i>"));
        assert!(!inside_markup(fitted.split("<br><i>").next().unwrap()));
    }
}
