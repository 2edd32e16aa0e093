//! The command line: argument parsing and the commands' outer shells.
//!
//! This is the edge of the program. Commands turn typed errors from the core into
//! messages for the operator (with `anyhow` context) and into exit codes: 0 for success,
//! 2 for a config that does not validate, 1 for anything else.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod check;
mod silence;
mod test_command;

use crate::agent::RunOptions;
use crate::config::{self, Config, UrlPolicy};
use crate::random_hex::random_hex;

/// Follow log files, match YAML regex rules, post grouped alerts to Google Chat threads.
#[derive(Debug, Parser)]
#[command(name = "chattail", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow the files, match the rules and post to Google Chat.
    ///
    /// Runs until SIGTERM or SIGINT; then it stops reading, posts what is queued for up
    /// to `delivery.shutdown_grace` and exits 0. What was not posted is sent at the next
    /// start. SIGHUP reloads the config; a config with errors is logged and the running
    /// one stays in force.
    Run {
        /// The YAML config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Print each message instead of posting it; no webhook is needed and the state
        /// directory is not touched.
        #[arg(long)]
        dry_run: bool,
        /// Read what the files hold now, post it, and exit.
        #[arg(long)]
        once: bool,
        /// Reload the config when its file changes, as on SIGHUP.
        #[arg(long)]
        watch_config: bool,
        /// The format of chattail's own log on standard error.
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
    },
    /// Validate a config file: print every error with its line, or a short summary.
    Check {
        /// The YAML config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the rules over sample logs and show what each match would post.
    ///
    /// Reads the given log files (or standard input when none is given), never the network
    /// or the state directory. Lines pass through the same pipeline as in `run`
    /// (multiline events, context, burst windows); every rule is applied to every input,
    /// whatever its `files`.
    Test {
        /// The YAML config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Log files to read; standard input when none is given.
        #[arg(value_name = "LOGFILE")]
        logs: Vec<PathBuf>,
        /// Take each line's time from an RFC 3339 timestamp in it (`rfc3339`), for burst
        /// windows; without it every line arrives at once.
        #[arg(long, value_name = "FORMAT", value_parser = ["rfc3339"])]
        timestamps: Option<String>,
        /// Read the systemd journal (from its oldest entry to now) instead of log files;
        /// with --timestamps, each entry's time is its own (`__REALTIME_TIMESTAMP`).
        #[arg(long, conflicts_with = "logs")]
        journal: bool,
        /// With --journal: a directory of journal files instead of the config's
        /// `journal.directory` (or the system journal).
        #[arg(long, value_name = "DIR", requires = "journal")]
        directory: Option<PathBuf>,
        /// With --journal: only entries of units matching this glob (repeatable); default
        /// the config's `journal.units`, or every unit.
        #[arg(long, value_name = "UNIT", requires = "journal")]
        unit: Vec<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Post one message through a configured webhook and print the thread it went to.
    ///
    /// Uses the agent's own client (thread key, reply option, requestId, retries of
    /// transient errors); Chat's refusals are explained. Exit 0 when posted, 1 when Chat
    /// refused or could not be reached, 2 for an invalid config or an unknown webhook.
    Send {
        /// The YAML config file.
        #[arg(long)]
        config: PathBuf,
        /// The name of the webhook in the config.
        #[arg(long)]
        webhook: String,
        /// The thread key; a new thread when not given.
        #[arg(long)]
        thread: Option<String>,
        /// The message text (Chat markup); `-` or nothing reads standard input.
        text: Option<String>,
    },
    /// Run a local Google Chat stand-in with a live web page of its spaces and threads.
    ///
    /// Any space, key and token in a webhook URL is accepted at its first use; the quota,
    /// thread keys, requestId replay and Chat's errors behave as Chat's do.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8099")]
        listen: std::net::SocketAddr,
        /// Requests per second each space accepts (Chat: 1); 0 for no limit.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// On an address other hosts can reach, accept any key and token (by default only
        /// the random ones printed at start are accepted there).
        #[arg(long)]
        open: bool,
    },
    /// Hold back alerts for a while, on this host or the whole fleet: add, list, expire.
    Silence {
        #[command(subcommand)]
        command: silence::SilenceCommand,
    },
    /// Print the manual page (roff), e.g. `chattail man > /usr/local/share/man/man1/chattail.1`.
    Man,
}

/// The format of chattail's own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Exit code for a config that does not validate.
pub(crate) const EXIT_CONFIG: u8 = 2;

/// Parses the process's arguments, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run {
            config,
            dry_run,
            once,
            watch_config,
            log_format,
        } => {
            init_logging(log_format);
            run(
                &config,
                RunOptions {
                    dry_run,
                    once,
                    watch_config,
                },
            )
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "chattail", &mut io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => man_page(),
        Command::Send {
            config,
            webhook,
            thread,
            text,
        } => send(&config, &webhook, thread.as_deref(), text.as_deref()),
        Command::Sandbox { listen, rate, open } => sandbox(listen, rate, open),
        Command::Check { config } => check::check(&config),
        Command::Silence { command } => silence::silence(command),
        Command::Test {
            config,
            logs,
            timestamps,
            journal,
            directory,
            unit,
        } => {
            if journal {
                test_command::test_journal(&config, directory, &unit, timestamps.is_some())
            } else {
                test_command::test(&config, &logs, timestamps.is_some())
            }
        }
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
            eprintln!("error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes in one line, each cause once: a typed error that already
/// shows its source (`cannot create …: Permission denied`) is not followed by that source
/// again.
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// Writes the manual page of the whole command line in roff: the main page, then one
/// section per subcommand with its synopsis, description and options.
fn man_page() -> anyhow::Result<ExitCode> {
    let command = <Cli as clap::CommandFactory>::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = sub.get_name().to_owned();
        let man = clap_mangen::Man::new(sub.clone().bin_name(format!("chattail {name}")));
        let mut section = Vec::new();
        man.render_synopsis_section(&mut section)?;
        man.render_description_section(&mut section)?;
        man.render_options_section(&mut section)?;
        // Each subcommand's sections become subsections of one section per subcommand.
        let section = String::from_utf8_lossy(&section).replace(".SH ", ".SS ");
        writeln!(page, ".SH \"CHATTAIL {}\"", name.to_uppercase())?;
        page.extend_from_slice(section.as_bytes());
    }
    let mut out = io::stdout().lock();
    out.write_all(&page).context("writing the manual page")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Sets up chattail's own log: level from `CHATTAIL_LOG` (or `RUST_LOG`), default `info`.
fn init_logging(format: LogFormat) {
    let filter = std::env::var("CHATTAIL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|error| {
        eprintln!("warning: ignoring the log filter {filter:?}: {error}");
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    match format {
        LogFormat::Human => builder
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn run(path: &std::path::Path, options: RunOptions) -> anyhow::Result<ExitCode> {
    // Signal handlers come before the config: a SIGHUP during a slow start must not kill.
    let launch = crate::agent::prepare().context("starting the runtime")?;
    tracing::info!(
        config = %path.display(),
        version = env!("CARGO_PKG_VERSION"),
        "chattail is starting: loading the config."
    );
    let policy = if options.dry_run {
        UrlPolicy::Optional
    } else {
        UrlPolicy::Required
    };
    let Some(config) = load(path, policy) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    let state_dir = config.state_dir.clone();
    let result = launch.run(config, options, Box::new(io::stdout()));
    if result
        .as_ref()
        .is_err_and(crate::agent::RunError::state_dir_not_writable)
    {
        // The usual first run as a user: the default state directory is root's.
        eprintln!(
            "hint: {} is not writable by this user. Set `state_dir` in the config to a directory you own (the example config reads `${{CHATTAIL_STATE_DIR}}`: CHATTAIL_STATE_DIR=$HOME/.local/state/chattail), or run as the service user.",
            state_dir.display()
        );
    }
    result.with_context(|| format!("running with the state directory {}", state_dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Loads the config, printing warnings, or printing the errors and returning `None`.
pub(crate) fn load(path: &std::path::Path, policy: UrlPolicy) -> Option<Config> {
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

fn send(
    path: &std::path::Path,
    webhook: &str,
    thread: Option<&str>,
    text: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use crate::send::{SendError, Sent};
    let Some(config) = load(path, UrlPolicy::Required) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    let text = match text {
        Some(text) if text != "-" => text.to_owned(),
        _ => {
            // Decoded as log lines are: invalid UTF-8 is shown, not refused.
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut io::stdin(), &mut bytes)
                .context("reading the message from standard input")?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let sent = runtime.block_on(crate::send::send(&config, webhook, thread, &text));
    match sent {
        Ok(Sent::Posted {
            thread,
            thread_key,
            cut,
        }) => {
            if let Some(length) = cut {
                eprintln!(
                    "note: the message was {length} characters long (as Chat counts them), over Chat's limit of {}; it was cut (the end says how much).",
                    crate::send::MAX_TEXT_CHARS
                );
            }
            println!(
                "Posted through webhook `{webhook}` into {} (thread key `{thread_key}`).",
                thread.as_deref().unwrap_or("a thread Chat did not name")
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(Sent::Refused { advice, .. }) => {
            eprintln!("error: webhook `{webhook}`: {advice}");
            Ok(ExitCode::FAILURE)
        }
        Ok(Sent::GaveUp { attempts, reason }) => {
            eprintln!(
                "error: webhook `{webhook}`: Chat did not take the message after {attempts} attempts (last: {reason}); nothing was posted, or Chat stored it without answering."
            );
            Ok(ExitCode::FAILURE)
        }
        Err(
            error @ (SendError::UnknownWebhook { .. } | SendError::NoUrl(_) | SendError::Empty),
        ) => {
            eprintln!("error: {error}");
            Ok(ExitCode::from(EXIT_CONFIG))
        }
        Err(error) => Err(error.into()),
    }
}

fn sandbox(listen: std::net::SocketAddr, rate: f64, open: bool) -> anyhow::Result<ExitCode> {
    use crate::sandbox::{KEPT_MESSAGES, KEPT_REQUESTS, Sandbox, SandboxOptions};
    if !(rate == 0.0 || (0.001..=1000.0).contains(&rate)) {
        eprintln!(
            "error: --rate must be 0 (no quota) or between 0.001 and 1000 requests per second"
        );
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    // Reachable from other hosts: say what is exposed, and accept only a random key and
    // token (unless --open) so that nobody else on the network can post.
    let exposed = !listen.ip().is_loopback();
    let credentials = (exposed && !open).then(|| (random_hex(8), random_hex(8)));
    if exposed {
        eprintln!(
            "warning: listening on {listen}, which other hosts can reach: anyone there can read every \
             message posted here (the page and /api/state) and {}. Use 127.0.0.1 unless you need that.",
            if open {
                "post messages with any key and token (--open)"
            } else {
                "post with the key and token printed below"
            }
        );
        if listen.ip().is_unspecified() {
            eprintln!(
                "warning: the sandbox answers only to localhost, 127.0.0.1 and [::1] (the Host it \
                 is called by); listen on this machine's own address for other hosts to use it."
            );
        }
    }
    let sandbox = Sandbox::serve(
        listener,
        SandboxOptions {
            rate: (rate > 0.0).then_some(rate),
            open: true,
            credentials: credentials.clone(),
            page: true,
            max_messages: KEPT_MESSAGES,
            max_requests: KEPT_REQUESTS,
        },
    )
    .context("starting the sandbox")?;
    let (key, token) =
        credentials.unwrap_or_else(|| ("sandbox-key".to_owned(), "sandbox-token".to_owned()));
    // An unspecified address (0.0.0.0, [::]) is not one to call: show loopback, which the
    // sandbox answers to.
    let shown = if listen.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], sandbox.addr.port()))
    } else {
        sandbox.addr
    };
    let url = sandbox
        .url_for("SANDBOX", &key, &token)
        .replace(&sandbox.addr.to_string(), &shown.to_string());
    let quota = if rate > 0.0 {
        format!("{rate} request(s) per second per space, as Chat")
    } else {
        "no quota".to_owned()
    };
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "chattail sandbox: a local Google Chat stand-in ({quota})."
    )?;
    writeln!(out, "  page:    http://{shown}/")?;
    writeln!(out, "  webhook: {url}")?;
    if exposed && !open {
        writeln!(
            out,
            "Any space id works with this key and token; for the bundled example:"
        )?;
    } else {
        writeln!(
            out,
            "Any space id, key and token works; for the bundled example:"
        )?;
    }
    writeln!(out, "  export CHATTAIL_WEBHOOK_URL='{url}'")?;
    writeln!(out, "Stop with Ctrl-C.")?;
    out.flush()?;
    drop(out);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = term.recv() => Ok(()),
            }
        })
        .context("waiting for a signal")?;
    Ok(ExitCode::SUCCESS)
}
