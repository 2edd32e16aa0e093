//! `run --dry-run`: what would be posted, printed instead of queued.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};

use crate::pipeline::Notification;
use crate::pipeline::chat_text::{MAX_TEXT_CHARS, utf16_len};
use crate::pipeline::thread_key::chat_thread_key;
use crate::terminal_text::TerminalSafe;

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

/// Prints notifications as they would be posted, and at the end the threads they went to,
/// with how many messages and how many posts (Chat requests) each got.
pub(super) struct DryRun {
    /// Buffered, and flushed after each poll's notifications: standard output alone is
    /// line-buffered, a system call for each line of a catch-up's thousands of messages.
    /// Control characters from log lines are shown, not sent to the terminal.
    out: BufWriter<TerminalSafe<Box<dyn Write + Send>>>,
    /// Messages and posts per webhook and thread, for the closing summary.
    threads: BTreeMap<String, BTreeMap<String, Thread>>,
    /// Whether every notification is queued before the first post (`--once`): then a
    /// thread's notifications merge across polls, as the outbox merges what waits;
    /// otherwise only within one poll.
    merge_across_polls: bool,
}

#[derive(Default)]
struct Thread {
    messages: usize,
    posts: usize,
    /// The UTF-16 units of the post still open to merging (`None`: none, or a card's).
    open: Option<usize>,
}

impl DryRun {
    pub(super) fn new(out: Box<dyn Write + Send>, merge_across_polls: bool) -> Self {
        Self {
            out: BufWriter::new(TerminalSafe(out)),
            threads: BTreeMap::new(),
            merge_across_polls,
        }
    }

    pub(super) fn print(&mut self, notifications: &[Notification]) {
        if !self.merge_across_polls {
            for thread in self.threads.values_mut().flat_map(BTreeMap::values_mut) {
                thread.open = None;
            }
        }
        for n in notifications {
            let threads = match self.threads.get_mut(&n.webhook) {
                Some(threads) => threads,
                None => self.threads.entry(n.webhook.clone()).or_default(),
            };
            let thread = match threads.get_mut(&n.thread_key) {
                Some(thread) => thread,
                None => threads.entry(n.thread_key.clone()).or_default(),
            };
            thread.messages += 1;
            // Notifications waiting together in one thread go out as one post, as the
            // outbox merges them (up to Chat's 4,000 characters; a card is always a post
            // of its own).
            let units = utf16_len(&n.text);
            match &mut thread.open {
                Some(used) if n.card.is_none() && *used + 2 + units <= MAX_TEXT_CHARS => {
                    *used += 2 + units;
                }
                open => {
                    thread.posts += 1;
                    *open = n.card.is_none().then_some(units);
                }
            }
            if self.print_one(n).is_err() {
                // Standard output is gone (a closed pipe); nothing useful is left to do.
                return;
            }
        }
        let _ = self.out.flush();
    }

    fn print_one(&mut self, n: &Notification) -> std::io::Result<()> {
        let thread = shown_key(&n.thread_key);
        writeln!(
            self.out,
            "── {} · thread {} · rule {}",
            n.webhook, thread, n.rule
        )?;
        for line in n.text.lines() {
            writeln!(self.out, "   {line}")?;
        }
        if let Some(title) = n.card.as_deref().and_then(card_title) {
            writeln!(self.out, "   [card: {title}]")?;
        }
        writeln!(self.out)
    }

    pub(super) fn write_summary(&mut self) {
        let _ = writeln!(self.out, "Threads that would receive messages:");
        let threads = self
            .threads
            .iter()
            .flat_map(|(webhook, threads)| threads.iter().map(move |t| (webhook, t)));
        for (webhook, (key, thread)) in threads {
            let key = shown_key(key);
            let plural = |n: usize, one: &str, many: &str| {
                format!("{n} {}", if n == 1 { one } else { many })
            };
            let _ = writeln!(
                self.out,
                "  {webhook} · {key}: {} in {}",
                plural(thread.messages, "message", "messages"),
                plural(thread.posts, "post", "posts"),
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
