//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chattail::config::{self, LoadOptions, Loaded, Report, UrlPolicy};

/// The made-up webhook URL the tests export; its key and token must never be printed.
pub const SECRET_URL: &str =
    "https://chat.googleapis.com/v1/spaces/AAAAtest123/messages?key=SECRETKEY&token=SECRETTOKEN%3D";

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

/// Runs the built `chattail` binary in the repository root with a clean environment.
pub fn chattail(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chattail"));
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

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
