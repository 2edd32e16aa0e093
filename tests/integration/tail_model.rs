//! Model-based test of the tailer: random sequences of writes, partial writes, rotations,
//! truncations, deletions, restarts and crashes run against the real tailer on disk and
//! against an in-memory model. Every complete line written must be read exactly once, in
//! order per file.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chattail::tail::StartAt;
use proptest::prelude::*;

use crate::tail_support::{DEADLINE, Harness, open_append};

const FILES: [&str; 2] = ["a.log", "b.log"];

#[derive(Debug, Clone)]
enum Op {
    /// Append this many complete lines.
    Write(usize, u8),
    /// Append a fragment without a newline.
    Partial(usize),
    /// Finish the fragment with a newline.
    Newline(usize),
    /// One poll of the tailer.
    Poll,
    /// logrotate `create`: shift `.N` to `.N+1`, rename to `.1`, create a new file.
    Rename(usize),
    /// logrotate `copytruncate`: copy to `.1` (after shifting), truncate in place.
    CopyTruncate(usize),
    /// Delete the file and create a new one at once.
    DeleteRecreate(usize),
    /// Stop cleanly and start again.
    Restart,
    /// Stop as kill -9 would, losing what was read but not committed, and start again.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..FILES.len();
    prop_oneof![
        6 => (file.clone(), 1u8..6).prop_map(|(f, n)| Op::Write(f, n)),
        2 => file.clone().prop_map(Op::Partial),
        2 => file.clone().prop_map(Op::Newline),
        4 => Just(Op::Poll),
        2 => file.clone().prop_map(Op::Rename),
        1 => file.clone().prop_map(Op::CopyTruncate),
        1 => file.clone().prop_map(Op::DeleteRecreate),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

/// What the files hold, as the model sees it.
struct Model {
    /// Complete lines written per path, in order.
    lines: Vec<Vec<String>>,
    /// The fragment written after the last complete line, per path.
    partial: Vec<String>,
    /// Rotated files per path (`.1` is the newest).
    generations: Vec<usize>,
    counter: usize,
}

struct World {
    h: Harness,
    model: Model,
    files: Vec<File>,
}

impl World {
    fn new() -> Self {
        let mut h = Harness::new("*.log", StartAt::Beginning);
        h.options.rotate_wait = Duration::from_millis(60);
        h.options.rescan_interval = Duration::from_millis(50);
        h.options.event_rescan_interval = Duration::from_millis(50);
        // Every wait here takes milliseconds when the tailer is right; fail fast otherwise
        // so that shrinking a failure stays quick.
        h.deadline = Duration::from_secs(4);
        h.restart();
        let files = FILES.iter().map(|n| open_append(&h.path(n))).collect();
        let mut world = Self {
            h,
            model: Model {
                lines: vec![Vec::new(); FILES.len()],
                partial: vec![String::new(); FILES.len()],
                generations: vec![0; FILES.len()],
                counter: 0,
            },
            files,
        };
        world.notice_files();
        world
    }

    /// Polls until the tailer follows every file now at the two paths. The agent notices
    /// a new file within milliseconds; a file that is created, written and rotated away
    /// while no agent has ever seen it (before the first start, or while it is down) does
    /// not match the glob any more and cannot be found.
    fn notice_files(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let started = Instant::now();
        loop {
            self.h.poll_once();
            let all = (0..FILES.len()).all(|f| {
                let m = fs::metadata(self.path(f)).unwrap();
                self.h.tailer().follows(chattail::tail::FileKey {
                    dev: m.dev(),
                    ino: m.ino(),
                })
            });
            if all {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the tailer never followed the current files"
            );
            self.h.tailer_mut().wait(Duration::from_millis(10));
        }
    }

    fn path(&self, f: usize) -> PathBuf {
        self.h.path(FILES[f])
    }

    fn rotated(&self, f: usize, n: usize) -> PathBuf {
        self.h.path(&format!("{}.{n}", FILES[f]))
    }

    /// Finishes a fragment, so that rotations never leave a line without its newline
    /// (that case is tested on its own in `tailer.rs`).
    fn finish_partial(&mut self, f: usize) {
        if !self.model.partial[f].is_empty() {
            self.files[f].write_all(b"\n").unwrap();
            let line = std::mem::take(&mut self.model.partial[f]);
            self.model.lines[f].push(line);
        }
    }

    fn shift(&mut self, f: usize) {
        for n in (1..=self.model.generations[f]).rev() {
            fs::rename(self.rotated(f, n), self.rotated(f, n + 1)).unwrap();
        }
        self.model.generations[f] += 1;
    }

    /// Polls until every complete line written so far is committed (the agent keeping
    /// up, as it does within milliseconds in real life).
    fn catch_up(&mut self) {
        let total: usize = self.model.lines.iter().map(Vec::len).sum();
        self.h
            .pump_until("the tailer to catch up", |l| l.len() >= total);
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write(f, n) => {
                let mut text = std::mem::take(&mut self.model.partial[f]);
                let mut first = true;
                for _ in 0..n {
                    self.model.counter += 1;
                    let line = format!("{}-{:06}", FILES[f], self.model.counter);
                    let full = if first {
                        format!("{text}{line}")
                    } else {
                        line.clone()
                    };
                    first = false;
                    self.model.lines[f].push(full);
                    text.clear();
                    self.files[f]
                        .write_all(format!("{line}\n").as_bytes())
                        .unwrap();
                }
            }
            Op::Partial(f) => {
                self.model.counter += 1;
                let piece = format!("part{:06}.", self.model.counter);
                self.files[f].write_all(piece.as_bytes()).unwrap();
                self.model.partial[f].push_str(&piece);
            }
            Op::Newline(f) => self.finish_partial(f),
            Op::Poll => {
                self.h.poll_once();
            }
            Op::Rename(f) => {
                self.finish_partial(f);
                self.shift(f);
                fs::rename(self.path(f), self.rotated(f, 1)).unwrap();
                self.files[f] = open_append(&self.path(f));
            }
            Op::CopyTruncate(f) => {
                self.finish_partial(f);
                // copytruncate loses what was written between the copy and the truncation
                // unless the reader kept up; the agent keeps up, so catch up first.
                self.catch_up();
                self.shift(f);
                fs::copy(self.path(f), self.rotated(f, 1)).unwrap();
                self.files[f].set_len(0).unwrap();
            }
            Op::DeleteRecreate(f) => {
                self.finish_partial(f);
                // A file deleted before the agent ever opened it is gone for everyone.
                self.catch_up();
                fs::remove_file(self.path(f)).unwrap();
                self.files[f] = open_append(&self.path(f));
            }
            Op::Restart => {
                self.notice_files();
                self.h.restart();
            }
            Op::Crash => {
                self.notice_files();
                self.h.crash();
                self.h.start();
            }
        }
    }

    fn check(mut self) -> Result<(), TestCaseError> {
        // Everything written as complete lines must arrive; then nothing more may.
        self.catch_up();
        self.h.settle();
        let mut got: HashMap<usize, Vec<String>> = HashMap::new();
        for (path, line, _) in &self.h.committed {
            let f = FILES
                .iter()
                .position(|n| path.file_name().is_some_and(|p| p == *n))
                .expect("lines come from a followed path");
            got.entry(f)
                .or_default()
                .push(String::from_utf8_lossy(line).into_owned());
        }
        for (f, name) in FILES.iter().enumerate() {
            prop_assert_eq!(
                got.remove(&f).unwrap_or_default(),
                self.model.lines[f].clone(),
                "file {}",
                name
            );
        }
        Ok(())
    }
}

proptest! {
    // 32 cases in every `cargo test`; set CHATTAIL_MODEL_CASES for a longer soak.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("CHATTAIL_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_line_is_read_exactly_once_in_order(ops in proptest::collection::vec(op(), 1..40)) {
        let started = Instant::now();
        let mut world = World::new();
        for op in &ops {
            world.apply(op);
        }
        world.check()?;
        prop_assert!(started.elapsed() < DEADLINE * 2);
    }
}
