//! `chattail check`: a config validated, and the summary of a valid one.

use std::io::{self, Write};
use std::process::ExitCode;

use super::{EXIT_CONFIG, load};
use crate::config::{self, Config, UrlPolicy};

pub(super) fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let Some(config) = load(path, UrlPolicy::Required) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    let mut out = io::stdout().lock();
    write_check_summary(&config, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// The summary `check` prints for a valid config. It names webhooks and shows at most
/// their host and space id, never their URL.
pub fn write_check_summary(config: &Config, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "{}: OK", config.source_path.display())?;
    writeln!(out, "  state_dir: {}", config.state_dir.display())?;
    writeln!(out, "  host:      {}", config.host)?;
    match &config.fleet {
        Some(f) => writeln!(
            out,
            "  fleet:     on (redis {}, namespace {}, timeout {}): pacing shared with every host of the namespace",
            f.redis.display(),
            f.namespace,
            humantime::format_duration(f.timeout)
        )?,
        None => writeln!(out, "  fleet:     off (this agent paces alone)")?,
    }
    writeln!(out, "  webhooks ({}):", config.webhooks.len())?;
    for w in &config.webhooks {
        let target = match &w.url {
            Some(url) => format!("{}, space {}", url.host(), url.space().unwrap_or("?")),
            None => "no usable url".to_owned(),
        };
        writeln!(
            out,
            "    {} ({target}), at most {}/s",
            w.name, w.max_per_second
        )?;
    }
    writeln!(out, "  files ({}):", config.files.len())?;
    for f in &config.files {
        let start = match f.start_at {
            config::StartAt::End => "end",
            config::StartAt::Beginning => "beginning",
        };
        writeln!(out, "    {} (new files start at {start})", f.pattern)?;
    }
    if let Some(j) = &config.journal {
        let start = match j.start_at {
            config::StartAt::End => "end",
            config::StartAt::Beginning => "beginning",
        };
        let units = match &j.units {
            Some(globs) => globs
                .iter()
                .map(|g| g.pattern.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            None => "every unit".to_owned(),
        };
        let directory = match &j.directory {
            Some(d) => d.display().to_string(),
            None => "the system journal".to_owned(),
        };
        writeln!(
            out,
            "  journal:   {directory}, {units} (without a saved position, starts at the {start})"
        )?;
    }
    let both = !config.files.is_empty() && config.journal.is_some();
    writeln!(out, "  rules ({}):", config.rules.len())?;
    for r in &config.rules {
        let dedup = match &r.dedup {
            Some(d) => format!(", dedup window {}", humantime::format_duration(d.window)),
            None => String::new(),
        };
        let sources = match (&r.files, &r.units) {
            (None, None) if both => ", sees the files and the journal",
            _ => "",
        };
        let mut alerts = String::new();
        if let Some(t) = &r.threshold {
            alerts.push_str(&format!(
                ", threshold {} within {}",
                t.count,
                humantime::format_duration(t.within)
            ));
        }
        if let Some(resolve) = &r.resolve {
            let how = match (&resolve.pattern, resolve.after) {
                (Some(_), Some(after)) => format!(
                    "by a line or after {} quiet",
                    humantime::format_duration(after)
                ),
                (Some(_), None) => "by a line".to_owned(),
                (None, Some(after)) => format!("after {} quiet", humantime::format_duration(after)),
                (None, None) => String::new(),
            };
            alerts.push_str(&format!(", resolves {how}"));
        }
        if let Some(a) = &r.absence {
            alerts.push_str(&format!(
                ", alerts when absent {} ({} expected keys)",
                humantime::format_duration(a.after),
                a.expected.len()
            ));
        }
        writeln!(
            out,
            "    {} → {}, thread {:?}{dedup}{alerts}{sources}",
            r.name,
            r.webhook,
            r.thread_key.source()
        )?;
    }
    Ok(())
}
