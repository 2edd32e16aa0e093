//! Validating a rule's `card`: templates against the rule's groups, what Chat would refuse
//! and can be known at load time (an empty title, more than 100 widgets, fixed text beyond
//! a card's 32 KB), and link buttons whose scheme and host no capture can change.

use serde_saphyr::Spanned;

use super::super::raw::RawCard;
use super::super::{Card, CardButton, CardField, MAX_CARD_WIDGETS};
use super::{Validator, loc};
use crate::pipeline::pattern::RulePattern;
use crate::pipeline::template::Template;

/// The most fixed text a card may hold: its templates are rendered into a card of at
/// most 32 KB, and captures need room too.
const MAX_CARD_FIXED_BYTES: usize = 16 * 1024;

impl Validator<'_> {
    pub(super) fn card(
        &mut self,
        raw: &Spanned<RawCard>,
        pattern: &RulePattern,
        name: &str,
        message_set: bool,
    ) -> Option<Card> {
        let card = &raw.value;
        let what = |field: &str| format!("rule `{name}`: card.{field}");
        let title = self.template(pattern, Some(&card.title), "", &what("title"));
        if card.title.value.trim().is_empty() {
            self.report.error(
                loc(&card.title),
                format!("rule `{name}`: card.title is empty; Chat needs a title to show the card"),
            );
        }
        let subtitle = match &card.subtitle {
            None => None,
            Some(s) => Some(self.template(pattern, Some(s), "", &what("subtitle"))?),
        };
        let mut fields = Vec::new();
        for (i, f) in card.fields.iter().enumerate() {
            let label = f.value.label.value.clone();
            if label.trim().is_empty() {
                self.report.error(
                    loc(&f.value.label),
                    format!("rule `{name}`: card.fields[{i}].label is empty"),
                );
            }
            let value = self.template(
                pattern,
                Some(&f.value.value),
                "",
                &what(&format!("fields[{i}].value")),
            );
            if let Some(value) = value {
                fields.push(CardField { label, value });
            }
        }
        let mut buttons = Vec::new();
        for (i, b) in card.buttons.iter().enumerate() {
            let text = b.value.text.value.clone();
            if text.trim().is_empty() {
                self.report.error(
                    loc(&b.value.text),
                    format!("rule `{name}`: card.buttons[{i}].text is empty"),
                );
            }
            let url = self.template(
                pattern,
                Some(&b.value.url),
                "",
                &what(&format!("buttons[{i}].url")),
            );
            let Some(url) = url else { continue };
            if let Err(why) = fixed_link(&url) {
                self.report.error(
                    loc(&b.value.url),
                    format!("rule `{name}`: card.buttons[{i}].url {why}"),
                );
                continue;
            }
            buttons.push(CardButton { text, url });
        }
        let line = card.line.unwrap_or(true);
        let widgets = card.fields.len() + usize::from(line) + usize::from(!card.buttons.is_empty());
        if widgets > MAX_CARD_WIDGETS {
            self.report.error(
                loc(raw),
                format!(
                    "rule `{name}`: the card has {widgets} widgets (fields, the line, the buttons); Chat shows at most {MAX_CARD_WIDGETS}"
                ),
            );
        }
        let fixed: usize = title.as_ref().map_or(0, Template::literal_len)
            + subtitle.as_ref().map_or(0, Template::literal_len)
            + fields
                .iter()
                .map(|f| f.label.len() + f.value.literal_len())
                .sum::<usize>()
            + buttons
                .iter()
                .map(|b| b.text.len() + b.url.literal_len())
                .sum::<usize>();
        if fixed > MAX_CARD_FIXED_BYTES {
            self.report.error(
                loc(raw),
                format!(
                    "rule `{name}`: the card's fixed text is {fixed} bytes; a card holds at most 32 KB, and captures need at least half of it (keep it under {MAX_CARD_FIXED_BYTES})"
                ),
            );
        }
        Some(Card {
            title: title?,
            subtitle,
            fields,
            line,
            buttons,
            text_is_message: message_set,
        })
    }
}

/// Whether a button URL's scheme and host are in its fixed part (before the first
/// placeholder), with `http` or `https`.
fn fixed_link(url: &Template) -> Result<(), String> {
    let prefix = url.literal_prefix();
    let lower = prefix.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    else {
        let scheme = prefix.split(':').next().unwrap_or(prefix);
        return Err(if url.has_placeholders() && !prefix.contains(':') {
            "must start with `https://` or `http://` and a host before any placeholder".to_owned()
        } else {
            format!("must be an `https` or `http` link, not `{scheme}:`")
        });
    };
    let authority_end = rest.find(['/', '?', '#']);
    if url.has_placeholders() && authority_end.is_none() {
        return Err(
            "must name its host in full before any placeholder (`https://host/path?q={db}`): a capture may not change the host"
                .to_owned(),
        );
    }
    let authority = &rest[..authority_end.unwrap_or(rest.len())];
    let scheme_len = prefix.len() - rest.len();
    let checked = &prefix[..scheme_len + authority.len()];
    match url::Url::parse(checked) {
        Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(format!("has no valid host in `{checked}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(source: &str) -> Template {
        Template::parse(source, |n| (n == "db").then_some(1), &["db"]).unwrap()
    }

    #[test]
    fn a_link_keeps_its_scheme_and_host_out_of_reach_of_captures() {
        assert!(fixed_link(&t("https://runbooks.example.com/db?db={db}")).is_ok());
        assert!(fixed_link(&t("http://grafana:3000/explore?q={db}")).is_ok());
        assert!(fixed_link(&t("https://example.com")).is_ok());
        for bad in [
            "javascript:alert(1)",
            "JavaScript:{db}",
            "{db}",
            "https://{db}.example.com/",
            "https://example.com{db}",
            "ftp://example.com/{db}",
            "https:///path/{db}",
        ] {
            assert!(fixed_link(&t(bad)).is_err(), "{bad}");
        }
    }
}
