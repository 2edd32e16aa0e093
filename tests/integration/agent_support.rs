//! The harness for end-to-end tests of `chattail run`: an agent process with its own
//! directory (config, logs, state) and captured stderr, and helpers to write log lines
//! and read what the mock Chat received.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::mock_chat::MockChat;
use crate::tail_support::open_append;

/// A running agent with its own directory (config, logs, state) and captured stderr.
pub struct Agent {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub config: PathBuf,
    starts: usize,
    /// Extra arguments after `run --config FILE`.
    pub args: Vec<String>,
    /// Extra environment variables (the environment is otherwise cleared).
    pub env: Vec<(String, String)>,
}

/// The rules used by these tests: one thread per database host.
fn config_yaml(dir: &Path, webhooks: &str, extra_rules: &str) -> String {
    format!(
        r#"state_dir: {state}
webhooks:
{webhooks}
files:
  - path: {logs}/*.log
    start_at: beginning
delivery:
  shutdown_grace: 5s
  park_for: 1s
  request_timeout: 2s
  min_backoff: 100ms
  max_backoff: 1s
rules:
  - name: db-timeout
    match: 'ERROR timeout connecting to (?P<db>[\w.-]+) #(?P<n>\d+)'
    webhook: oncall
    thread_key: 'db-{{db}}'
    message: "*DB timeout* on `{{db}}` #{{n}}"
{extra_rules}"#,
        state = dir.join("state").display(),
        logs = dir.join("logs").display(),
    )
}

impl Agent {
    pub fn new(webhooks: &str, extra_rules: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("logs")).unwrap();
        let config = dir.path().join("chattail.yaml");
        fs::write(&config, config_yaml(dir.path(), webhooks, extra_rules)).unwrap();
        Self {
            dir,
            child: None,
            config,
            starts: 0,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// An agent whose config has the `files` and `rules` sections given; `{logs}` in
    /// them names the agent's log directory.
    pub fn with_sections(url: &str, files: &str, rules: &str) -> Self {
        let agent = Self::new(&oncall(url), "");
        let dir = agent.dir.path();
        let yaml = format!(
            "state_dir: {state}\nwebhooks:\n  oncall:\n    url: \"{url}\"\n    max_per_second: 5\nfiles:\n{files}rules:\n{rules}",
            state = dir.join("state").display(),
            files = files.replace("{logs}", &dir.join("logs").display().to_string()),
        );
        fs::write(&agent.config, yaml).unwrap();
        agent
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("logs/app.log")
    }

    pub fn start(&mut self) {
        self.starts += 1;
        let stderr = fs::File::create(
            self.dir
                .path()
                .join(format!("agent-{}.stderr", self.starts)),
        )
        .unwrap();
        let child = Command::new(crate::support::bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .args(&self.args)
            .env_clear()
            .env("CHATTAIL_LOG", "trace")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The running agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the running agent.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().unwrap();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the agent did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Everything the agent wrote to stderr, over all its starts.
    pub fn stderr(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                fs::read_to_string(self.dir.path().join(format!("agent-{i}.stderr")))
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn write_timeouts(path: &Path, db: &str, range: std::ops::Range<usize>) {
    let mut f = open_append(path);
    for n in range {
        writeln!(
            f,
            "2026-11-28T14:00:00Z ERROR timeout connecting to {db} #{n}"
        )
        .unwrap();
    }
}

/// Appends `lines` lines that no rule matches.
pub fn write_noise(path: &Path, lines: usize) {
    let mut f = open_append(path);
    for n in 0..lines {
        writeln!(f, "2026-11-28T14:00:00Z INFO request {n} served in 12 ms").unwrap();
    }
}

/// The numbers `#n` found in the messages of `db`'s thread, in message order.
pub fn delivered_numbers(chat: &MockChat, db: &str) -> Vec<usize> {
    let needle = format!("on `{db}` #");
    chat.messages()
        .iter()
        .flat_map(|m| {
            m.text
                .match_indices(&needle)
                .filter_map(|(i, _)| {
                    let rest = &m.text[i + needle.len()..];
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                })
                .collect::<Vec<usize>>()
        })
        .collect()
}

pub fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn oncall(url: &str) -> String {
    format!("  oncall:\n    url: \"{url}\"\n")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `agent` committed a position at the end of `log` (its state, read directly).
pub fn committed_to_end(agent: &Agent, log: &std::path::Path) -> bool {
    let size = fs::metadata(log).map(|m| m.len()).unwrap_or(0) as i64;
    let db = agent.dir.path().join("state/state.sqlite3");
    rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.query_row("SELECT COALESCE(MAX(offset), 0) FROM files", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .is_ok_and(|offset| offset == size && size > 0)
}

/// A Chat stand-in without a quota, and the URL of its one webhook.
pub fn open_chat() -> (crate::mock_chat::MockChat, String) {
    let chat = crate::mock_chat::MockChat::start();
    chat.set_rate(None, None);
    let url = chat.webhook("SPACE", "KEY", "TOKEN");
    (chat, url)
}
