//! Container logs written exactly as the runtimes write them: CRI records (containerd,
//! CRI-O) in the kubelet's `pods/NAMESPACE_POD_UID/CONTAINER/N.log` layout, and Docker's
//! `json-file` records. Lines over 16 KiB arrive in pieces; rules, multiline and
//! templates must see what the application wrote, and a restart between the pieces must
//! neither lose nor repeat the line.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent_support::{Agent, committed_to_end, free_port, open_chat, wait_for};
use crate::support::http;
use crate::tail_support::open_append;

const TIME: &str = "2026-12-06T05:00:01.000000001Z";

/// A container's log file in the kubelet's layout under the agent's `logs` directory.
fn pod_log(agent: &Agent) -> PathBuf {
    let dir = agent
        .dir
        .path()
        .join("logs/pods/shop_checkout-7d9f_0b5c3e2a-1111/api");
    fs::create_dir_all(&dir).unwrap();
    dir.join("0.log")
}

/// Appends `line` as containerd writes it: pieces of at most 16 KiB tagged `P`, the last
/// one `F`.
fn write_cri(path: &Path, stream: &str, line: &str) {
    let mut f = open_append(path);
    let bytes = line.as_bytes();
    let mut chunks: Vec<&[u8]> = bytes.chunks(16 * 1024).collect();
    if chunks.is_empty() {
        chunks.push(b"");
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.iter().enumerate() {
        let tag = if i == last { "F" } else { "P" };
        f.write_all(format!("{TIME} {stream} {tag} ").as_bytes())
            .unwrap();
        f.write_all(chunk).unwrap();
        f.write_all(b"\n").unwrap();
    }
}

fn cri_agent(url: &str, admin: Option<u16>, extra: &str) -> Agent {
    let agent = Agent::with_sections(
        url,
        "  - path: '{logs}/pods/*/*/*.log'\n    format: cri\n    start_at: beginning\n",
        "  - name: upstream\n    match: 'because .* (?P<tail>END-\\d+)$'\n    webhook: oncall\n    \
         thread_key: '{namespace}-{pod}-{container}-{stream}-{tail}'\n    message: 'upstream {tail}'\n\
         \x20 - name: junk\n    match: 'junk record'\n    webhook: oncall\n    thread_key: 'junk-{stream}-{container}'\n",
    );
    let mut yaml = fs::read_to_string(&agent.config).unwrap();
    if let Some(port) = admin {
        yaml.push_str(&format!("admin:\n  listen: 127.0.0.1:{port}\n"));
    }
    yaml.push_str(extra);
    fs::write(&agent.config, yaml).unwrap();
    agent
}

/// A 40 KiB line in three pieces is one line to the rules (its last words are captured),
/// the path says namespace, pod and container, the record says the stream; a record that
/// is not CRI is passed on as text and counted.
#[test]
fn cri_pieces_are_one_line_and_the_path_names_the_pod() {
    let (chat, url) = open_chat();
    let admin = free_port();
    let mut agent = cri_agent(&url, Some(admin), "");
    let log = pod_log(&agent);
    let long = format!(
        "request failed because {} END-40",
        "the upstream closed the connection ".repeat(1200)
    );
    assert!(long.len() > 40 * 1024);
    write_cri(&log, "stderr", &long);
    fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"a junk record that no runtime wrote\n")
        .unwrap();
    agent.start();
    wait_for("both messages", Duration::from_secs(30), || {
        chat.messages().len() == 2
    });
    let keys: Vec<String> = chat
        .messages()
        .iter()
        .filter_map(|m| m.thread_key.clone())
        .collect();
    assert!(
        keys.contains(&"shop-checkout-7d9f-api-stderr-END-40".to_owned()),
        "{keys:?}"
    );
    // The malformed record has no stream; the path still names the container.
    assert!(keys.contains(&"junk--api".to_owned()), "{keys:?}");
    let (_, _, metrics) = http(&format!("127.0.0.1:{admin}"), "GET", "/metrics", "");
    assert!(
        metrics.contains("chattail_decode_errors_total{format=\"cri\"} 1"),
        "{metrics}"
    );
    assert!(agent.terminate().success());
}

/// A Java stack trace in CRI records is grouped by the `java` preset into one event: the
/// presets look at what the application wrote, not at the runtime's time.
#[test]
fn a_java_trace_in_cri_records_is_one_event() {
    let (chat, url) = open_chat();
    let agent_dir = Agent::with_sections(
        &url,
        "  - path: '{logs}/pods/*/*/*.log'\n    format: cri\n    start_at: beginning\n    multiline: {preset: java, timeout: 200ms}\n",
        "  - name: exception\n    match: 'Exception in thread \"main\" (?P<what>[\\w.]+)'\n    webhook: oncall\n    thread_key: '{what}'\n    message: \"{line}\"\n",
    );
    let mut agent = agent_dir;
    let log = pod_log(&agent);
    for line in [
        "2026-12-06 05:00:01 INFO starting",
        "Exception in thread \"main\" java.lang.IllegalStateException: boom",
        "\tat com.example.Orders.place(Orders.java:42)",
        "\tat com.example.Api.handle(Api.java:7)",
        "Caused by: java.io.IOException: reset",
        "\t... 2 more",
        "2026-12-06 05:00:02 INFO next",
    ] {
        write_cri(&log, "stderr", line);
    }
    agent.start();
    wait_for("the trace", Duration::from_secs(30), || {
        !chat.messages().is_empty()
    });
    let text = chat.messages()[0].text.clone();
    for part in [
        "IllegalStateException: boom",
        "Orders.java:42",
        "Api.java:7",
        "Caused by",
        "2 more",
    ] {
        assert!(text.contains(part), "{part} in: {text}");
    }
    assert!(!text.contains(TIME) && !text.contains("stderr F"), "{text}");
    assert!(agent.terminate().success());
    assert_eq!(chat.messages().len(), 1);
}

/// Docker's `json-file`: a line in pieces (records without a newline) is one line, the
/// container id comes from the path, the stream from the record.
#[test]
fn docker_json_file_records_are_decoded() {
    let (chat, url) = open_chat();
    let mut agent = Agent::with_sections(
        &url,
        "  - path: '{logs}/docker/containers/*/*-json.log'\n    format: docker\n    start_at: beginning\n",
        "  - name: boom\n    match: 'boom (?P<n>\\d+) .*(?P<tail>END)$'\n    webhook: oncall\n    thread_key: '{container}-{stream}-{n}-{tail}'\n",
    );
    let id = "0123456789ab".to_owned() + &"c".repeat(52);
    let dir = agent
        .dir
        .path()
        .join(format!("logs/docker/containers/{id}"));
    fs::create_dir_all(&dir).unwrap();
    let log = dir.join(format!("{id}-json.log"));
    let record = |log: &str| {
        serde_json::json!({"log": log, "stream": "stdout", "time": "2026-12-06T05:00:01.5Z"})
            .to_string()
            + "\n"
    };
    fs::write(
        &log,
        [
            record("boom 7 "),
            record(&"x".repeat(100)),
            record(" \"quoted\" END\n"),
        ]
        .concat(),
    )
    .unwrap();
    agent.start();
    wait_for("the message", Duration::from_secs(30), || {
        !chat.messages().is_empty()
    });
    assert_eq!(
        chat.messages()[0].thread_key.as_deref(),
        Some("0123456789ab-stdout-7-END")
    );
    assert!(agent.terminate().success());
}

/// kill -9 between a line's pieces, several times: the pieces read before each kill are
/// kept with the offset, so every line arrives once, whole.
#[test]
fn kill_9_between_pieces_loses_and_repeats_nothing() {
    let (chat, url) = open_chat();
    let mut agent = cri_agent(&url, None, "");
    let log = pod_log(&agent);
    agent.start();
    for n in 0..3 {
        let piece = format!("line {n} failed because the upstream ");
        let mut f = open_append(&log);
        writeln!(f, "{TIME} stdout P {piece}").unwrap();
        drop(f);
        wait_for("the piece read and kept", Duration::from_secs(30), || {
            committed_to_end(&agent, &log)
        });
        agent.kill9();
        let mut f = open_append(&log);
        writeln!(f, "{TIME} stdout F closed it END-{n}").unwrap();
        drop(f);
        agent.start();
        wait_for("the whole line", Duration::from_secs(30), || {
            chat.messages().len() == n + 1
        });
    }
    assert!(agent.terminate().success());
    let keys: Vec<String> = chat
        .messages()
        .iter()
        .filter_map(|m| m.thread_key.clone())
        .collect();
    assert_eq!(
        keys,
        [
            "shop-checkout-7d9f-api-stdout-END-0",
            "shop-checkout-7d9f-api-stdout-END-1",
            "shop-checkout-7d9f-api-stdout-END-2"
        ]
    );
}

/// The kubelet's rotation: `0.log` renamed to `0.log.DATE`, a new `0.log`, then the old
/// one compressed (and removed); Docker's: `-json.log` renamed to `-json.log.1`. Every
/// line is read once.
#[test]
fn kubelet_and_docker_rotations_lose_nothing() {
    let (chat, url) = open_chat();
    let mut agent = cri_agent(&url, None, "");
    let log = pod_log(&agent);
    agent.start();
    let line = |n: usize| format!("job failed because it did END-{n}");
    for n in 0..3 {
        write_cri(&log, "stdout", &line(n));
    }
    wait_for("the first lines", Duration::from_secs(30), || {
        chat.messages().len() == 3
    });
    write_cri(&log, "stdout", &line(3));
    let rotated = log.with_file_name("0.log.20261206-050001");
    fs::rename(&log, &rotated).unwrap();
    for n in 4..6 {
        write_cri(&log, "stdout", &line(n));
    }
    wait_for(
        "the lines around the rotation",
        Duration::from_secs(30),
        || chat.messages().len() == 6,
    );
    // The kubelet compresses the rotated file later; it is read already.
    let gz = std::process::Command::new("gzip")
        .arg(&rotated)
        .status()
        .unwrap();
    assert!(gz.success());
    write_cri(&log, "stdout", &line(6));
    wait_for(
        "the line after compression",
        Duration::from_secs(30),
        || chat.messages().len() == 7,
    );
    assert!(agent.terminate().success());
    let mut keys: Vec<String> = chat
        .messages()
        .iter()
        .filter_map(|m| m.thread_key.clone())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 7, "each line once: {keys:?}");

    // Docker: `ID-json.log` → `ID-json.log.1`, a new `ID-json.log`.
    let (chat, url) = open_chat();
    let mut agent = Agent::with_sections(
        &url,
        "  - path: '{logs}/docker/containers/*/*-json.log'\n    format: docker\n    start_at: beginning\n",
        "  - name: boom\n    match: 'boom (?P<n>\\d+)'\n    webhook: oncall\n    thread_key: 'boom-{n}'\n",
    );
    let id = "f".repeat(64);
    let dir = agent
        .dir
        .path()
        .join(format!("logs/docker/containers/{id}"));
    fs::create_dir_all(&dir).unwrap();
    let log = dir.join(format!("{id}-json.log"));
    let write = |log: &Path, n: usize| {
        let mut f = open_append(log);
        writeln!(
            f,
            "{}",
            serde_json::json!({"log": format!("boom {n}\n"), "stream": "stderr"})
        )
        .unwrap();
    };
    agent.start();
    write(&log, 0);
    wait_for("the first", Duration::from_secs(30), || {
        chat.messages().len() == 1
    });
    write(&log, 1);
    fs::rename(&log, dir.join(format!("{id}-json.log.1"))).unwrap();
    write(&log, 2);
    wait_for("all three", Duration::from_secs(30), || {
        chat.messages().len() == 3
    });
    assert!(agent.terminate().success());
    assert_eq!(chat.messages().len(), 3);
}

/// Runtimes interleave stdout's and stderr's records in one file: a stderr line in pieces
/// with a stdout line between them comes out whole, and so does the stdout line.
#[test]
fn interleaved_streams_are_joined_apart() {
    let (chat, url) = open_chat();
    let mut agent = cri_agent(&url, None, "");
    let log = pod_log(&agent);
    let mut f = open_append(&log);
    writeln!(f, "{TIME} stderr P db call failed because the ").unwrap();
    writeln!(
        f,
        "{TIME} stdout F health check failed because it did END-2"
    )
    .unwrap();
    writeln!(f, "{TIME} stderr F pool is empty END-1").unwrap();
    drop(f);
    agent.start();
    wait_for("both lines", Duration::from_secs(30), || {
        chat.messages().len() == 2
    });
    assert!(agent.terminate().success());
    let mut keys: Vec<String> = chat
        .messages()
        .iter()
        .filter_map(|m| m.thread_key.clone())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "shop-checkout-7d9f-api-stderr-END-1",
            "shop-checkout-7d9f-api-stdout-END-2"
        ]
    );
}
