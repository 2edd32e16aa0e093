//! The tailer on real files: every rotation mode, restarts, odd bytes and many files.
//! Each test asserts the exact sequence of lines: none missing, none twice.

use std::fs;
use std::io::Write;
use std::time::Duration;

use chattail::agent::state_rows::{commit_checkpoints, saved_files};
use chattail::store::{Store, StoreError};
use chattail::tail::StartAt;

use crate::tail_support::{Harness, append, open_append, rename, write_lines};

#[test]
fn follows_appends_and_holds_partial_lines() {
    let mut h = Harness::new("*.log", StartAt::Beginning);
    let path = h.path("app.log");
    append(&path, b"one\ntw");
    h.pump_until("the first line", |l| l.len() == 1);
    append(&path, b"o\nthree\n");
    h.pump_until("three lines", |l| l.len() == 3);
    h.settle();
    assert_eq!(h.lines_text(), ["one", "two", "three"]);
}

#[test]
fn rename_and_create_rotation_reads_the_old_file_to_its_end_then_the_new_one() {
    let mut h = Harness::new("*.log", StartAt::Beginning);
    let path = h.path("app.log");
    let mut old = open_append(&path);
    let mut expected = write_lines(&mut old, "old", 0..100);
    h.pump_until("the old lines", |l| l.len() == 100);
    // logrotate `create`: rename, create a new file; the application writes a few more
    // lines to its old handle before it reopens.
    rename(&path, &h.path("app.log.1"));
    let mut new = open_append(&path);
    expected.extend(write_lines(&mut old, "late", 0..10));
    expected.extend(write_lines(&mut new, "new", 0..50));
    h.settle();
    assert_eq!(h.lines_text(), expected);
    assert_eq!(h.events.renames(), 1);
}

#[test]
fn copytruncate_restarts_at_zero_and_recovers_unread_lines_from_the_copy() {
    let mut h = Harness::new("*.log", StartAt::Beginning);
    let path = h.path("app.log");
    let mut f = open_append(&path);
    let mut expected = write_lines(&mut f, "before", 0..100);
    h.pump_until("the first lines", |l| l.len() == 100);
    // Written after the last read: these lines end up only in the copy.
    expected.extend(write_lines(&mut f, "unread", 0..20));
    fs::copy(&path, h.path("app.log.1")).unwrap();
    f.set_len(0).unwrap();
    expected.extend(write_lines(&mut f, "after", 0..30));
    h.settle();
    assert_eq!(h.lines_text(), expected);
    assert_eq!(h.events.truncations(), 1);
    assert_eq!(h.events.copies_recovered(), 1);
}

#[test]
fn truncation_that_outgrows_the_old_size_is_detected_by_the_first_bytes() {
    let mut h = Harness::new("*.log", StartAt::Beginning);
    let path = h.path("app.log");
    let mut f = open_append(&path);
    let mut expected = write_lines(&mut f, "first", 0..5);
    h.pump_until("the first lines", |l| l.len() == 5);
    // Truncate with no copy and write more than before, before the tailer looks again.
    f.set_len(0).unwrap();
    expected.extend(write_lines(&mut f, "second", 0..50));
    h.settle();
    assert_eq!(h.lines_text(), expected);
}

#[test]
fn delete_and_recreate_within_milliseconds() {
    let mut h = Harness::new("*.log", StartAt::Beginning);
    let path = h.path("app.log");
    let mut f = open_append(&path);
    let mut expected = write_lines(&mut f, "a", 0..50);
    h.pump_until("the first lines", |l| l.len() == 50);
    expected.extend(write_lines(&mut f, "a-unread", 0..5));
    fs::remove_file(&path).unwrap();
    let mut g = open_append(&path);
    expected.extend(write_lines(&mut g, "b", 0..50));
    drop(f);
    h.settle();
    assert_eq!(h.lines_text(), expected);
}

#[test]
fn rapid_rotation_like_pythons_rotating_file_handler() {
    let mut h = Harness::new("app.log", StartAt::Beginning);
    let path = h.path("app.log");
    let dir = h.dir.path().to_path_buf();
    // The agent is running before the application starts (files rotated before the
    // agent's first scan are history, not missed rotations).
    h.settle();
    // A writer that rotates every 25 lines, shifting app.log.N to app.log.N+1 first, as
    // RotatingFileHandler does, about 20 times a second, while the tailer runs.
    let writer = std::thread::spawn(move || {
        let mut expected = Vec::new();
        let path = dir.join("app.log");
        let mut f = open_append(&path);
        for generation in 0..20 {
            for i in 0..25 {
                let line = format!("gen{generation:02}-line{i:02}");
                writeln!(f, "{line}").unwrap();
                expected.push(line);
            }
            for n in (1..=generation + 1).rev() {
                let from = if n == 1 {
                    path.clone()
                } else {
                    dir.join(format!("app.log.{}", n - 1))
                };
                if from.exists() {
                    fs::rename(&from, dir.join(format!("app.log.{n}"))).unwrap();
                }
            }
            f = open_append(&path);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        expected
    });
    h.pump_until("the writer to finish", |_| writer.is_finished());
    let expected = writer.join().unwrap();
    h.settle();
    assert_eq!(h.lines_text(), expected);
    assert!(path.exists());
}

#[test]
fn resumes_exactly_after_a_restart_including_lines_written_while_down() {
    let mut h = Harness::new("*.log", StartAt::End);
    let path = h.path("app.log");
    append(&path, b"written before the first start\n");
    h.settle();
    assert!(
        h.committed.is_empty(),
        "start_at: end skips existing content"
    );
    let mut f = open_append(&path);
    let mut expected = write_lines(&mut f, "run1", 0..10);
    h.pump_until("run1", |l| l.len() == 10);
    h.stop();
    expected.extend(write_lines(&mut f, "down", 0..10));
    append(&path, b"partial ");
    h.start();
    h.settle();
    append(&path, b"line finished after the restart\n");
    expected.push("partial line finished after the restart".to_owned());
    h.settle();
    assert_eq!(h.lines_text(), expected);
}

#[test]
fn a_file_rotated_while_down_is_finished_from_its_rotated_name() {
    let mut h = Harness::new("*.log", StartAt::Beginning);
    let path = h.path("app.log");
    let mut f = open_append(&path);
    let mut expected = write_lines(&mut f, "run1", 0..10);
    h.pump_until("run1", |l| l.len() == 10);
    h.stop();
    expected.extend(write_lines(&mut f, "old-while-down", 0..5));
    rename(&path, &h.path("app.log.1"));
    let mut g = open_append(&path);
    expected.extend(write_lines(&mut g, "new-while-down", 0..5));
    h.start();
    h.settle();
    assert_eq!(h.lines_text(), expected);
}

#[test]
fn a_crash_before_commit_rereads_only_the_uncommitted_lines() {
    let mut h = Harness::new("*.log", StartAt::Beginning);
    let path = h.path("app.log");
    let mut f = open_append(&path);
    let mut expected = write_lines(&mut f, "a", 0..10);
    h.pump_until("a", |l| l.len() == 10);
    expected.extend(write_lines(&mut f, "b", 0..10));
    h.crash();
    h.start();
    h.settle();
    assert_eq!(h.lines_text(), expected);
}

#[test]
fn a_reused_inode_with_other_content_is_read_from_the_start() {
    let mut h = Harness::new("*.log", StartAt::End);
    let path = h.path("app.log");
    append(&path, b"old content that was read\n");
    h.settle();
    h.stop();
    // Replace the file and forge a saved row claiming the new file's inode with the old
    // file's first bytes, as if the filesystem had reused the inode.
    let old_rows = saved_files(&Store::open(&h.path("state")).unwrap()).unwrap();
    fs::remove_file(&path).unwrap();
    append(&path, b"brand new file\n");
    let meta = fs::metadata(&path).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        let mut store = Store::open(&h.path("state")).unwrap();
        let mut row = old_rows[0].clone();
        row.key = chattail::tail::FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        row.offset = 10;
        commit_checkpoints(&mut store, &[chattail::tail::Checkpoint::Progress(row)]).unwrap();
    }
    h.start();
    h.settle();
    assert_eq!(h.lines_text(), ["brand new file"]);
}

#[test]
fn a_huge_line_without_newline_is_cut_and_the_file_keeps_flowing() {
    let mut h = Harness::new("*.log", StartAt::Beginning);
    let path = h.path("app.log");
    let mut f = open_append(&path);
    f.write_all(&vec![b'x'; 3 * 1024 * 1024]).unwrap();
    h.pump_until("the cut line", |l| !l.is_empty());
    f.write_all(b"yyy\nnormal 1\nnormal 2\n").unwrap();
    h.settle();
    let lines = &h.committed;
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0].1.len(), 64 * 1024);
    assert!(lines[0].2, "the first line is marked cut");
    assert_eq!(h.lines_text()[1..], ["normal 1", "normal 2"]);
    assert_eq!(h.events.lines_cut(), 1);
}

#[test]
fn invalid_utf8_nul_and_binary_junk_never_stop_a_file() {
    let mut h = Harness::new("*.log", StartAt::Beginning);
    let path = h.path("app.log");
    let junk: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').collect();
    let mut content = b"before\n".to_vec();
    content.extend_from_slice(&junk);
    content.extend_from_slice(b"\n\xff\xfe\x00latin-1 caf\xe9\r\nafter\n");
    append(&path, &content);
    h.settle();
    let lines: Vec<&[u8]> = h.committed.iter().map(|(_, l, _)| l.as_slice()).collect();
    assert_eq!(
        lines,
        [
            b"before".as_slice(),
            junk.as_slice(),
            b"\xff\xfe\x00latin-1 caf\xe9".as_slice(),
            b"after".as_slice()
        ]
    );
}

#[test]
fn a_file_that_does_not_exist_at_start_is_read_from_its_first_byte() {
    let mut h = Harness::new("*.log", StartAt::End);
    h.settle();
    append(&h.path("late.log"), b"first line of a late file\n");
    h.pump_until("the late file", |l| l.len() == 1);
    assert_eq!(h.lines_text(), ["first line of a late file"]);
}

#[test]
fn a_directory_that_does_not_exist_at_start_works_too() {
    let mut h = Harness::new("later/deeper/*.log", StartAt::End);
    h.settle();
    fs::create_dir_all(h.path("later/deeper")).unwrap();
    append(
        &h.path("later/deeper/app.log"),
        b"hello from a new directory\n",
    );
    h.pump_until("the new directory's file", |l| l.len() == 1);
    assert_eq!(h.lines_text(), ["hello from a new directory"]);
}

#[test]
fn double_star_globs_find_files_in_subdirectories() {
    let mut h = Harness::new("**/*.log", StartAt::Beginning);
    fs::create_dir_all(h.path("a/b")).unwrap();
    append(&h.path("a/b/deep.log"), b"deep\n");
    append(&h.path("top.log"), b"top\n");
    h.settle();
    let mut lines = h.lines_text();
    lines.sort();
    assert_eq!(lines, ["deep", "top"]);
}

#[test]
fn a_thousand_files_matched_by_one_glob() {
    let mut h = Harness::new("many/*.log", StartAt::Beginning);
    fs::create_dir_all(h.path("many")).unwrap();
    for i in 0..1000 {
        append(
            &h.path(&format!("many/f{i:04}.log")),
            format!("file {i} line 1\n").as_bytes(),
        );
    }
    h.pump_until("1000 lines", |l| l.len() == 1000);
    for i in 0..1000 {
        append(
            &h.path(&format!("many/f{i:04}.log")),
            format!("file {i} line 2\n").as_bytes(),
        );
    }
    h.settle();
    assert_eq!(h.committed.len(), 2000);
    assert_eq!(h.tailer().followed_paths().len(), 1000);
    for i in 0..1000 {
        let mine: Vec<String> = h
            .committed
            .iter()
            .filter(|(p, _, _)| p.ends_with(format!("f{i:04}.log")))
            .map(|(_, l, _)| String::from_utf8_lossy(l).into_owned())
            .collect();
        assert_eq!(
            mine,
            [format!("file {i} line 1"), format!("file {i} line 2")]
        );
    }
}

#[test]
fn files_that_disappear_are_released() {
    let mut h = Harness::new("*.log", StartAt::Beginning);
    let path = h.path("gone.log");
    append(&path, b"last words\n");
    h.pump_until("the line", |l| l.len() == 1);
    fs::remove_file(&path).unwrap();
    h.settle();
    assert!(h.tailer().followed_paths().is_empty());
    assert_eq!(h.events.files_released(), 1);
}

#[test]
fn a_second_agent_on_the_same_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let second = Store::open(dir.path());
    assert!(matches!(second, Err(StoreError::Locked { .. })));
    let message = second.unwrap_err().to_string();
    assert!(
        message.contains("another chattail is already using the state directory"),
        "{message}"
    );
}

/// With file events watching the directory, reading and copytruncate detection need no
/// sweep: with the sweep a minute away, writes are read and truncations are handled, both
/// when the file is shorter than the old offset at the event and when it has already
/// grown past it (then the read finds the replaced first bytes).
#[test]
fn file_events_alone_drive_reading_and_truncation() {
    let mut h = Harness::new("*.log", StartAt::Beginning);
    h.options.event_sweep_interval = Duration::from_secs(60);
    h.restart();
    let path = h.path("app.log");
    let mut f = open_append(&path);
    let mut expected = write_lines(&mut f, "before", 0..50);
    h.pump_until("the first lines", |l| l.len() == 50);
    fs::copy(&path, h.path("app.log.1")).unwrap();
    f.set_len(0).unwrap();
    expected.extend(write_lines(&mut f, "short", 0..10));
    h.pump_until("the lines after the first truncation", |l| l.len() == 60);
    fs::copy(&path, h.path("app.log.2")).unwrap();
    f.set_len(0).unwrap();
    expected.extend(write_lines(&mut f, "grown-past-the-old-offset", 0..40));
    h.pump_until("the lines after the second truncation", |l| l.len() == 100);
    assert_eq!(h.lines_text(), expected);
    assert_eq!(h.events.truncations(), 2);
}

/// With file events watching the directory, new files and rotations need no periodic
/// rescan: with both the sweep and the rescan a minute away, a file created later, a
/// rename rotation (the rotated file read to its end) and a delete-and-recreate are all
/// followed through their events alone.
#[test]
fn file_events_alone_find_new_files_and_rotations() {
    let mut h = Harness::new("*.log", StartAt::Beginning);
    h.options.event_sweep_interval = Duration::from_secs(60);
    h.options.event_rescan_interval = Duration::from_secs(60);
    h.restart();
    // The first poll rescans once; everything after it is driven by events.
    h.poll_once();
    let path = h.path("app.log");
    let mut f = open_append(&path);
    let mut expected = write_lines(&mut f, "first", 0..20);
    h.pump_until("a file created after the start", |l| l.len() == 20);
    rename(&path, &h.path("app.log.1"));
    expected.extend(write_lines(&mut f, "late-in-rotated", 0..5));
    let mut g = open_append(&path);
    expected.extend(write_lines(&mut g, "after-rename", 0..10));
    h.pump_until("the rotated file's end and the new file", |l| l.len() == 35);
    drop(g);
    fs::remove_file(&path).unwrap();
    let mut g = open_append(&path);
    expected.extend(write_lines(&mut g, "recreated", 0..10));
    h.pump_until("the recreated file", |l| l.len() == 45);
    let mut got = h.lines_text();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    assert!(h.events.renames() >= 1);
}

/// A glob with a wildcard directory part: a directory that appears later (empty at
/// first) is watched as soon as the walk looks into it, so a file created in it is found
/// by its event, with both the sweep and the periodic rescan a minute away.
#[test]
fn a_file_in_a_directory_that_appeared_later_is_found_by_events() {
    let mut h = Harness::new("*/app.log", StartAt::Beginning);
    h.options.event_sweep_interval = Duration::from_secs(60);
    h.options.event_rescan_interval = Duration::from_secs(60);
    h.restart();
    h.poll_once();
    fs::create_dir(h.path("svc-a")).unwrap();
    // Let the tailer see the empty directory (its create event asks for a rescan).
    h.poll_once();
    h.poll_once();
    let mut f = open_append(&h.path("svc-a/app.log"));
    let expected = write_lines(&mut f, "in-a-new-directory", 0..5);
    h.pump_until("the file in the new directory", |l| l.len() == 5);
    assert_eq!(h.lines_text(), expected);
}
