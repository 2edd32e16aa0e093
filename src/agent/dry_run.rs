//! `run --dry-run`: what would be posted, printed instead of queued.

use std::collections::BTreeMap;
use std::io::Write;

use crate::pipeline::Notification;
use crate::pipeline::thread_key::chat_thread_key;

/// The thread key Chat receives, with the rendered one beside it when the two differ
/// (a key Chat would refuse is mapped, the same way on every host).
pub(super) fn shown_key(rendered: &str) -> String {
    let sent = chat_thread_key(rendered);
    if sent == rendered {
        sent
    } else {
        format!("{sent} (rendered: {rendered})")
    }
}

/// Prints notifications as they would be posted, and at the end the threads they went to.
pub(super) struct DryRun {
    out: Box<dyn Write + Send>,
    /// Messages per (webhook, thread), for the closing summary.
    threads: BTreeMap<(String, String), usize>,
}

impl DryRun {
    pub(super) fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            threads: BTreeMap::new(),
        }
    }

    pub(super) fn print(&mut self, notifications: &[Notification]) {
        for n in notifications {
            *self
                .threads
                .entry((n.webhook.clone(), n.thread_key.clone()))
                .or_default() += 1;
            let thread = shown_key(&n.thread_key);
            let mut text = format!("── {} · thread {} · rule {}\n", n.webhook, thread, n.rule);
            for line in n.text.lines() {
                text.push_str("   ");
                text.push_str(line);
                text.push('\n');
            }
            if let Some(title) = n.card.as_deref().and_then(card_title) {
                text.push_str(&format!("   [card: {title}]\n"));
            }
            if writeln!(self.out, "{text}").is_err() {
                // Standard output is gone (a closed pipe); nothing useful is left to do.
                return;
            }
        }
        let _ = self.out.flush();
    }

    pub(super) fn write_summary(&mut self) {
        let _ = writeln!(self.out, "Threads that would receive messages:");
        for ((webhook, key), count) in &self.threads {
            let key = shown_key(key);
            let _ = writeln!(
                self.out,
                "  {webhook} · {key}: {count} message{}",
                if *count == 1 { "" } else { "s" }
            );
        }
        let _ = self.out.flush();
    }
}

/// A card's title, for the dry run's one-line note of it.
fn card_title(card: &str) -> Option<String> {
    let entry: serde_json::Value = serde_json::from_str(card).ok()?;
    entry
        .pointer("/card/header/title")?
        .as_str()
        .map(str::to_owned)
}
