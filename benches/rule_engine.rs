//! Rule engine throughput: lines per second through the `RegexSet` gate and, for the ~1% of
//! lines that match, captures and rendering of the Chat message.
//!
//! `N_rules_pipeline` runs the same lines through the whole `Pipeline` (what `run` and
//! `test` use: UTF-8 check, the file's rule set, rendering, notifications collected).
//!
//! Run with `cargo bench --bench rule_engine`. The corpus is synthetic but shaped like a
//! web application's logs: access-log lines, INFO/DEBUG chatter and about 1% errors that
//! the rules are written for.

use std::hint::black_box;
use std::path::Path;

use chattail::config::{LoadOptions, UrlPolicy, load_bytes};
use chattail::pipeline::{FileId, Notification, Origin, Pipeline, RuleSet, Source};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A small deterministic generator, so every run benchmarks the same corpus.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Rule `i` of the benchmark config: realistic shapes, each with its own literal so that
/// they do not all match the same lines.
fn rule_yaml(i: usize) -> String {
    let (pattern, key) = match i % 5 {
        0 => (
            format!(r#"ERROR \[svc{i}\] .*timeout connecting to (?P<db>[\w.-]+)"#),
            "db-{db}",
        ),
        1 => (
            format!(
                r#""(?P<method>GET|POST) (?P<path>/api/v{i}/[^ ?"]*)[^"]*" (?P<status>5\d\d) "#
            ),
            "http-{status}-{path}",
        ),
        2 => (
            format!(r#"FATAL worker-{i}: (?P<kind>\w+(?:Error|Exception))"#),
            "exc-{kind}",
        ),
        3 => (
            format!(r#"Out of memory: Killed process (?P<pid>\d+) \((?P<comm>app{i})\)"#),
            "oom-{comm}",
        ),
        _ => (
            format!(r#"WARN queue=q{i} depth=(?P<depth>\d{{5,}})"#),
            "queue-q{depth}",
        ),
    };
    format!(
        "  - name: rule-{i}\n    match: '{pattern}'\n    webhook: oncall\n    thread_key: '{key}'\n    message: \"*{{rule}}* on {{host}}\\n```{{line}}```\"\n"
    )
}

/// A line that rule `i` matches.
fn matching_line(i: usize, rng: &mut XorShift) -> String {
    match i % 5 {
        0 => format!(
            "2026-11-28T14:00:{:02}Z ERROR [svc{i}] pool: timeout connecting to db-{}.internal after 5000ms",
            rng.below(60),
            rng.below(8)
        ),
        1 => format!(
            "10.0.0.{} - - [28/Nov/2026:14:00:00 +0000] \"POST /api/v{i}/orders/{} HTTP/1.1\" 503 0 \"-\" \"curl/8\"",
            rng.below(250),
            rng.below(1000)
        ),
        2 => {
            format!("2026-11-28T14:00:00Z FATAL worker-{i}: IllegalStateException: cart is locked")
        }
        3 => format!(
            "Nov 28 14:00:00 web-1 kernel: Out of memory: Killed process {} (app{i}) total-vm:812345kB",
            rng.below(60000)
        ),
        _ => format!(
            "2026-11-28T14:00:00Z WARN queue=q{i} depth={}",
            10000 + rng.below(90000)
        ),
    }
}

/// A line no rule matches.
fn ordinary_line(rng: &mut XorShift) -> String {
    match rng.below(4) {
        0 | 1 => format!(
            "10.0.{}.{} - - [28/Nov/2026:14:00:{:02} +0000] \"GET /api/v1/items/{} HTTP/1.1\" 200 {} \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\" rt=0.0{}",
            rng.below(4),
            rng.below(250),
            rng.below(60),
            rng.below(100000),
            rng.below(9000),
            rng.below(90) + 10
        ),
        2 => format!(
            "2026-11-28T14:00:{:02}.{:03}Z INFO request_id={:012x} user={} handled in {}ms",
            rng.below(60),
            rng.below(1000),
            rng.next() & 0xffff_ffff_ffff,
            rng.below(900),
            rng.below(400)
        ),
        _ => format!(
            "2026-11-28T14:00:{:02}Z DEBUG pool: {} of 20 connections in use, queue=q{} depth={}",
            rng.below(60),
            rng.below(20),
            rng.below(100),
            rng.below(100)
        ),
    }
}

fn bench_rules(c: &mut Criterion) {
    const LINES: usize = 100_000;
    let mut group = c.benchmark_group("rule_engine");
    group.throughput(Throughput::Elements(LINES as u64));
    group.sample_size(20);
    let mut for_decode = None;
    for rule_count in [1usize, 20, 100] {
        let mut yaml = String::from(
            "webhooks:\n  oncall:\n    url: https://chat.googleapis.com/v1/spaces/A/messages?key=k&token=t\nfiles:\n  - path: /var/log/*.log\n  - path: /var/log/pods/*/*/*.log\n    format: cri\nrules:\n",
        );
        for i in 0..rule_count {
            yaml.push_str(&rule_yaml(i));
        }
        let env = |_: &str| None;
        let options = LoadOptions {
            url_policy: UrlPolicy::Required,
            env: &env,
            default_host: "web-1".to_owned(),
        };
        let config = match load_bytes(Path::new("bench.yaml"), yaml.as_bytes(), &options) {
            Ok(loaded) => loaded.config,
            Err(report) => panic!("benchmark config is invalid:\n{report}"),
        };
        let rules = RuleSet::all(&config).expect("gate compiles");
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let corpus: Vec<Vec<u8>> = (0..LINES)
            .map(|_| {
                if rng.below(100) == 0 {
                    let rule = rng.below(rule_count as u64) as usize;
                    matching_line(rule, &mut rng).into_bytes()
                } else {
                    ordinary_line(&mut rng).into_bytes()
                }
            })
            .collect();
        let source = Source {
            file: "/var/log/app/web.log",
            host: "web-1",
            stream: None,
            journal: None,
        };
        let expected: usize = corpus.iter().map(|l| rules.evaluate(l, |_| {})).sum();
        assert!(
            (LINES / 200..LINES / 50).contains(&expected),
            "about 1% of lines should match, got {expected}"
        );
        group.bench_function(format!("{rule_count}_rules"), |b| {
            b.iter(|| {
                let mut hits = 0usize;
                for line in &corpus {
                    rules.evaluate(line, |hit| {
                        hits += 1;
                        black_box(hit.notification(line, &source));
                    });
                }
                assert_eq!(hits, expected);
                hits
            })
        });
        // The same lines through the whole pipeline, as `run` and `test` use it: UTF-8
        // check, the file's rule set, rendering, and the notifications collected.
        let config = std::sync::Arc::new(config);
        let path = Path::new("/var/log/app/web.log");
        group.bench_function(format!("{rule_count}_rules_pipeline"), |b| {
            let mut pipeline =
                Pipeline::new(std::sync::Arc::clone(&config), Vec::new(), Vec::new());
            let origin = Origin {
                id: FileId { dev: 1, ino: 1 },
                path,
                spec: 0,
                number: 0,
                stream: None,
                journal: None,
            };
            let mut out: Vec<Notification> = Vec::with_capacity(expected);
            b.iter(|| {
                out.clear();
                for line in &corpus {
                    pipeline.line(&origin, line, 0, &mut out);
                }
                assert_eq!(out.len(), expected);
                out.len()
            })
        });
        if rule_count == 20 {
            for_decode = Some((std::sync::Arc::clone(&config), corpus.clone(), expected));
        }
    }
    group.finish();
    if let Some((config, corpus, expected)) = for_decode {
        decode_group(c, &config, &corpus, expected);
    }
}

/// The same payload through the whole pipeline as plain lines and as CRI records (as
/// containerd writes them: time, stream, tag, payload), in MB/s of payload: what decoding
/// costs.
fn decode_group(
    c: &mut Criterion,
    config: &std::sync::Arc<chattail::config::Config>,
    corpus: &[Vec<u8>],
    expected: usize,
) {
    let payload: u64 = corpus.iter().map(|l| l.len() as u64 + 1).sum();
    let cri: Vec<Vec<u8>> = corpus
        .iter()
        .map(|l| {
            let mut record = b"2026-12-06T05:00:01.123456789Z stdout F ".to_vec();
            record.extend_from_slice(l);
            record
        })
        .collect();
    let mut group = c.benchmark_group("decode_20_rules");
    group.throughput(Throughput::Bytes(payload));
    group.sample_size(20);
    for (name, spec, lines, path) in [
        ("plain", 0, corpus, "/var/log/app/web.log"),
        ("cri", 1, &cri[..], "/var/log/pods/shop_api-1_uid/api/0.log"),
    ] {
        group.bench_function(name, |b| {
            let mut pipeline = Pipeline::new(std::sync::Arc::clone(config), Vec::new(), Vec::new());
            let origin = Origin {
                id: FileId { dev: 1, ino: 1 },
                path: Path::new(path),
                spec,
                number: 0,
                stream: None,
                journal: None,
            };
            let mut out: Vec<Notification> = Vec::with_capacity(expected);
            b.iter(|| {
                out.clear();
                for line in lines {
                    pipeline.line(&origin, line, 0, &mut out);
                }
                assert_eq!(out.len(), expected);
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_rules);
criterion_main!(benches);
