//! The command line: argument parsing and the commands' outer shells.
//!
//! This is the edge of the program. Commands turn typed errors from the core into
//! messages for the operator (with `anyhow` context) and into exit codes: 0 for success,
//! 2 for a config that does not validate, 1 for anything else.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, Config, UrlPolicy};
use crate::rule_test;
use crate::rules::RuleSet;

/// Follow log files, match YAML regex rules, post grouped alerts to Google Chat threads.
#[derive(Debug, Parser)]
#[command(name = "chattail", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config file: print every error with its line, or a short summary.
    Check {
        /// The YAML config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the rules over sample logs and show what each match would post.
    ///
    /// Reads the given log files (or standard input when none is given), never the network
    /// or the state directory. Every rule is applied to every input, whatever its `files`.
    Test {
        /// The YAML config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Log files to read; standard input when none is given.
        #[arg(value_name = "LOGFILE")]
        logs: Vec<PathBuf>,
    },
}

/// Exit code for a config that does not validate.
const EXIT_CONFIG: u8 = 2;

/// Parses the process's arguments, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check { config } => check(&config),
        Command::Test { config, logs } => test(&config, &logs),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            // A closed pipe (`chattail test ... | head`) is not a failure worth reporting.
            if error.chain().any(|e| {
                e.downcast_ref::<io::Error>()
                    .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config, printing warnings, or printing the errors and returning `None`.
fn load(path: &std::path::Path, policy: UrlPolicy) -> Option<Config> {
    match config::load(path, policy) {
        Ok(loaded) => {
            if !loaded.warnings.items().is_empty() {
                eprint!("{}", loaded.warnings);
            }
            Some(loaded.config)
        }
        Err(report) => {
            eprint!("{report}");
            None
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
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
    writeln!(out, "  rules ({}):", config.rules.len())?;
    for r in &config.rules {
        let dedup = match &r.dedup {
            Some(d) => format!(", dedup window {}", humantime::format_duration(d.window)),
            None => String::new(),
        };
        writeln!(
            out,
            "    {} → {}, thread {:?}{dedup}",
            r.name,
            r.webhook,
            r.thread_key.source()
        )?;
    }
    Ok(())
}

fn test(config_path: &std::path::Path, logs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let Some(config) = load(config_path, UrlPolicy::Optional) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    let rules = RuleSet::all(&config).context("building the rule gate")?;
    let mut out = io::stdout().lock();
    let mut summary = rule_test::Summary::default();
    if logs.is_empty() {
        let mut stdin = io::stdin().lock();
        rule_test::test_input(
            &config,
            &rules,
            "(stdin)",
            &mut stdin,
            &mut out,
            &mut summary,
        )
        .context("reading standard input")?;
    }
    for log in logs {
        let file = File::open(log).with_context(|| format!("opening {}", log.display()))?;
        let name = log.display().to_string();
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        rule_test::test_input(&config, &rules, &name, &mut reader, &mut out, &mut summary)
            .with_context(|| format!("reading {}", log.display()))?;
    }
    rule_test::write_summary(&config, &summary, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
