//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chattail::config::{self, LoadOptions, Loaded, Report, UrlPolicy};

/// The made-up webhook URL the tests export; its key and token must never be printed.
pub const SECRET_URL: &str =
    "https://chat.googleapis.com/v1/spaces/AAAAtest123/messages?key=SECRETKEY&token=SECRETTOKEN%3D";

/// The `chattail` binary under test: the one cargo built, or `CHATTAIL_TEST_BIN` (to run
/// the end-to-end tests against a release build, or an older build to show a test fails
/// there).
pub fn bin() -> PathBuf {
    std::env::var_os("CHATTAIL_TEST_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_chattail")),
        PathBuf::from,
    )
}

/// The repository root, where `rules.example.yaml` and `fixtures/` live.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The environment the config tests see: only these variables exist.
fn test_env(name: &str) -> Option<String> {
    match name {
        "CHATTAIL_WEBHOOK_URL" => Some(SECRET_URL.to_owned()),
        "LOG_DIR" => Some("/var/log/app".to_owned()),
        _ => None,
    }
}

/// Loads a config file with a fixed environment and host name, so results do not depend
/// on the machine. `relative` is relative to the repository root and is also the path
/// that diagnostics show.
pub fn load_fixture(relative: &str, policy: UrlPolicy) -> Result<Loaded, Report> {
    let bytes = std::fs::read(repo().join(relative)).expect("fixture exists");
    let options = LoadOptions {
        url_policy: policy,
        env: &test_env,
        default_host: "web-1".to_owned(),
    };
    config::load_bytes(Path::new(relative), &bytes, &options)
}

/// Loads the config file at `path` (anywhere, e.g. a temporary directory) with the fixed
/// environment, for the report of a config that must be refused.
pub fn refused(path: &Path) -> Report {
    let bytes = std::fs::read(path).expect("the config was written");
    let options = LoadOptions {
        url_policy: UrlPolicy::Required,
        env: &test_env,
        default_host: "web-1".to_owned(),
    };
    match config::load_bytes(path, &bytes, &options) {
        Ok(loaded) => panic!("accepted: {:?}", loaded.config),
        Err(report) => report,
    }
}

/// Runs the built `chattail` binary in the repository root with a clean environment.
pub fn chattail(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(repo())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("chattail starts");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    if let Some(bytes) = stdin {
        pipe.write_all(bytes).expect("stdin accepts the input");
    }
    drop(pipe);
    child.wait_with_output().expect("chattail finishes")
}

/// `chattail test` over `input` (standard input) with a config of one webhook, one glob
/// and the `rules` given (YAML list items): its standard output, after checking it exited 0.
pub fn chattail_test(rules: &str, input: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("rules.yaml");
    std::fs::write(
        &config,
        format!("webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\nfiles:\n  - path: /var/log/*.log\nrules:\n{rules}"),
    )
    .expect("the config is written");
    let config = config.to_string_lossy().into_owned();
    let out = chattail(&["test", "--config", &config], &[], Some(input));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One HTTP/1.1 request to `addr` over a fresh connection (`Connection: close`): the
/// status, the head (lowercased) and the body.
pub fn http(addr: &str, method: &str, target: &str, body: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_owned())
}
