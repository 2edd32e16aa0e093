//! `chattail silence add | list | expire`: the commands' shells over
//! [`crate::silence_admin`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::{EXIT_CONFIG, load};
use crate::clock::unix_now_ms;
use crate::config::UrlPolicy;
use crate::silence_admin::{AdminError, NewSilence, Place, who};
use crate::silences::{Matchers, Silence, describe_state};

#[derive(Debug, Subcommand)]
pub enum SilenceCommand {
    /// Hold back matching alerts for a while; prints the silence's id.
    ///
    /// Every matcher given must match: the rule, the host, the thread (the rendered key or
    /// the key Chat receives) and capture values (`--match db=orders-1`, or an anchored
    /// regex with `--match db=~orders-.*`). Held-back matches are counted and told in one
    /// message per thread when the silence ends. Without `fleet`, it is written to the
    /// agent's state directory (run it as the directory's owner); with `fleet`, to Redis,
    /// for every host of the namespace. Running agents apply it within 2 seconds.
    Add {
        /// The YAML config file (only `state_dir`, `fleet` and the rules are used).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Only this rule's alerts.
        #[arg(long, value_name = "NAME")]
        rule: Option<String>,
        /// Only alerts of this host (its `host` setting).
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// Only this thread: the key as the rule renders it, or as Chat receives it.
        #[arg(long, value_name = "KEY")]
        thread: Option<String>,
        /// A capture group's value: CAPTURE=VALUE, or CAPTURE=~REGEX (anchored); repeatable.
        #[arg(long = "match", value_name = "CAPTURE=VALUE")]
        matches: Vec<String>,
        /// How long it lasts (`30m`, `2h`, at most `7d`).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_length)]
        length: Duration,
        /// Why, for whoever reads `silence list` and the end message.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Show the active silences and those ended in the last day, with what each held back.
    List {
        /// The YAML config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// End a silence now: each thread it held anything back from gets its message.
    Expire {
        /// The YAML config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The silence's id (or a unique start of it).
        id: String,
    },
}

/// A silence's length: `0` is accepted here so that it can be refused with its reason.
fn parse_length(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (for example `2h` or `30m`)"))
}

pub(super) fn silence(command: SilenceCommand) -> anyhow::Result<ExitCode> {
    let config_path = match &command {
        SilenceCommand::Add { config, .. }
        | SilenceCommand::List { config }
        | SilenceCommand::Expire { config, .. } => config.clone(),
    };
    // Only `state_dir`, `fleet` and the rules matter here: a webhook whose variable is
    // not set is a warning.
    let Some(config) = load(&config_path, UrlPolicy::Optional) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    let place = Place::of(&config)?;
    let outcome = match command {
        SilenceCommand::Add {
            rule,
            host,
            thread,
            matches,
            length,
            comment,
            ..
        } => {
            let new = NewSilence {
                matchers: Matchers {
                    rule,
                    host,
                    thread,
                    captures: matches,
                },
                length,
                comment,
                created_by: who(&config.host),
            };
            place.add(&config, new).map(|s| {
                println!("{}", s.id);
                eprintln!(
                    "Silence {} holds back {} until {} ({}), in {}. Running agents apply it within 2 s; `chattail silence expire --config {} {}` ends it early.",
                    s.id,
                    s.matchers_text(),
                    at(s.ends_ms),
                    humantime::format_duration(length),
                    place.describe(),
                    config_path.display(),
                    s.id,
                );
            })
        }
        SilenceCommand::List { .. } => place.list().and_then(|listed| {
            write_list(&listed, &place.describe()).map_err(|e| AdminError::StateDir {
                dir: PathBuf::from("-"),
                source: e,
            })
        }),
        SilenceCommand::Expire { id, .. } => place.expire(&id, &who(&config.host)).map(|(s, now)| {
            if now {
                println!(
                    "Silence {} ended now; each thread it held anything back from gets its message within seconds.",
                    s.id
                );
            } else {
                println!(
                    "Silence {} had already ended ({}).",
                    s.id,
                    describe_state(&s, unix_now_ms())
                );
            }
        }),
    };
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error @ AdminError::Invalid(_)) => {
            eprintln!("error: {error}");
            Ok(ExitCode::from(EXIT_CONFIG))
        }
        Err(error) => Err(anyhow::Error::new(error).context(format!(
            "silence command with the config {}",
            Path::new(&config_path).display()
        ))),
    }
}

fn write_list(listing: &crate::silence_admin::Listing, place: &str) -> std::io::Result<()> {
    for id in &listing.unreadable {
        eprintln!(
            "warning: the silence record `{id}` cannot be read (written by hand, or by a newer chattail); it is left out"
        );
    }
    let listed = &listing.silences;
    let mut out = std::io::stdout().lock();
    if listed.is_empty() {
        writeln!(out, "No silences in {place}.")?;
        return out.flush();
    }
    let now = unix_now_ms();
    // Records can come from anyone who can write to Redis: nothing they hold may drive
    // the terminal (escape sequences) or fake a line of this list.
    let shown = |text: &str| -> String {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    writeln!(out, "Silences in {place}:")?;
    for l in listed {
        let s: &Silence = &l.silence;
        let hosts = if l.hosts > 1 {
            format!(" on {} hosts", l.hosts)
        } else {
            String::new()
        };
        writeln!(out, "{}  {}", shown(&s.id), describe_state(s, now))?;
        writeln!(out, "    matches:   {}", shown(&s.matchers_text()))?;
        writeln!(
            out,
            "    from:      {} to {} (by {})",
            at(s.starts_ms),
            at(s.ends_ms),
            shown(&s.created_by)
        )?;
        writeln!(out, "    held back: {}{hosts}", l.held)?;
        if !s.comment.is_empty() {
            writeln!(out, "    comment:   {}", shown(&s.comment))?;
        }
    }
    out.flush()
}

/// A unix time in milliseconds as RFC 3339 (UTC, to the second).
fn at(ms: i64) -> String {
    // RFC 3339 has four-digit years: a record from Redis may say anything.
    const YEAR_9999_MS: i64 = 253_402_300_799_000;
    let ms = ms.clamp(0, YEAR_9999_MS);
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}
