//! Burst windows: unit tests, and the property test that holds them to a plain list.

use super::*;
use crate::pipeline::template::Template;
use std::time::Duration;

fn dedup(window_s: u64, max_keys: usize) -> Dedup {
    Dedup {
        window: Duration::from_secs(window_s),
        key: Template::parse("{rule}", |_| None, &[]).unwrap(),
        max_keys,
    }
}

fn note(key: &str) -> Notification {
    Notification {
        rule: "db".into(),
        webhook: "oncall".into(),
        thread_key: format!("t-{key}"),
        dedup_key: Some(key.into()),
        text: format!("first {key}"),
        burst: None,
        card: None,
    }
}

#[test]
fn first_posted_repeats_counted_then_one_summary() {
    let d = dedup(4, 100);
    let mut b = Bursts::default();
    let mut out = Vec::new();
    let mut counted = 0;
    for i in 0..300 {
        let observed = b.observe(
            &d,
            &note("a"),
            format!("line {i}").as_bytes(),
            1_000 + i * 3,
            &mut out,
        );
        counted += u32::from(!observed.posted);
    }
    assert_eq!(out.len(), 1);
    b.expire(4_999, |_| Some(d.window), &mut out);
    assert_eq!(out.len(), 1, "not before the window ends");
    b.expire(5_000, |_| Some(d.window), &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].thread_key, "t-a");
    assert!(
        out[1]
            .text
            .starts_with("*db*: 299 more occurrences within a second of the first."),
        "{}",
        out[1].text
    );
    assert!(out[1].text.contains("line 299"));
    // The next occurrence opens a new window and is posted.
    b.observe(&d, &note("a"), b"again", 6_000, &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(counted, 299);
}

#[test]
fn keys_are_counted_apart_and_the_least_recent_is_evicted() {
    let d = dedup(60, 2);
    let mut b = Bursts::default();
    let mut out = Vec::new();
    b.observe(&d, &note("a"), b"a1", 0, &mut out);
    b.observe(&d, &note("b"), b"b1", 1, &mut out);
    b.observe(&d, &note("a"), b"a2", 2, &mut out);
    b.observe(&d, &note("b"), b"b2", 3, &mut out);
    b.observe(&d, &note("b"), b"b3", 4, &mut out);
    // `a` was seen least recently: `c` evicts it and its summary is queued.
    let observed = b.observe(&d, &note("c"), b"c1", 5, &mut out);
    assert_eq!(
        observed,
        Observed {
            posted: true,
            evicted: true
        }
    );
    let texts: Vec<&str> = out.iter().map(|n| n.text.as_str()).collect();
    assert_eq!(texts.len(), 4, "{texts:?}");
    assert_eq!(texts[0], "first a");
    assert_eq!(texts[1], "first b");
    assert!(
        texts[2].starts_with("*db*: 1 more occurrence within a second"),
        "{}",
        texts[2]
    );
    assert!(texts[2].contains("a2"));
    assert_eq!(texts[3], "first c");
    b.flush(&mut out);
    assert!(
        out[4].text.starts_with("*db*: 2 more occurrences"),
        "{}",
        out[4].text
    );
    assert_eq!(b.len(), 1, "the window of `c` (nothing counted) stays open");
}

/// What the model and the windows are asked to do.
#[derive(Debug, Clone)]
enum Op {
    /// An occurrence of rule `a` or `b` with key 0–4, `advance` ms after the last op.
    Hit(bool, u8, i64),
    Expire(i64),
    Flush,
    /// Rule `a`'s window becomes this many ms (a reload).
    Reload(i64),
    /// The state is stored and the windows resumed from it (a restart).
    Restart,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (any::<bool>(), 0u8..5, 0i64..400).prop_map(|(a, k, t)| Op::Hit(a, k, t)),
        2 => (0i64..800).prop_map(Op::Expire),
        1 => Just(Op::Flush),
        1 => (1i64..1_000).prop_map(Op::Reload),
        1 => Just(Op::Restart),
    ]
}

/// The windows as plainly as they can be kept: a list, searched whole.
#[derive(Default)]
struct Model {
    /// (window, last seen).
    open: Vec<(Window, u64)>,
    seq: u64,
}

impl Model {
    fn close(&mut self, at: usize, out: &mut Vec<String>) {
        let (w, _) = self.open.remove(at);
        if w.count > 0 {
            out.push(format!("summary {} {} {}", w.rule, w.key, w.count));
        }
    }

    fn hit(&mut self, rule: &str, key: &str, now: i64, window: i64, out: &mut Vec<String>) {
        let find = |m: &Self| {
            m.open
                .iter()
                .position(|(w, _)| w.rule == rule && w.key == key)
        };
        if let Some(i) = find(self)
            && now >= self.open[i].0.first_ms + window
        {
            self.close(i, out);
        }
        self.seq += 1;
        if let Some(i) = find(self) {
            let (w, seen) = &mut self.open[i];
            w.count += 1;
            w.last_ms = now;
            w.last_line = format!("{now}");
            *seen = self.seq;
            return;
        }
        let of_rule: Vec<usize> = (0..self.open.len())
            .filter(|&i| self.open[i].0.rule == rule)
            .collect();
        if of_rule.len() >= 3
            && let Some(&oldest) = of_rule.iter().min_by_key(|&&i| self.open[i].1)
        {
            self.close(oldest, out);
        }
        self.open.push((
            Window {
                rule: rule.into(),
                key: key.into(),
                webhook: "oncall".into(),
                thread_key: format!("t-{key}"),
                first_ms: now,
                last_ms: now,
                count: 0,
                last_line: String::new(),
            },
            self.seq,
        ));
        out.push(format!("first {rule} {key}"));
    }
}

fn said(out: &mut Vec<Notification>) -> Vec<String> {
    out.drain(..)
        .map(|n| match n.burst {
            Some(BurstMark::Summary { key, count, .. }) => {
                format!("summary {} {key} {count}", n.rule)
            }
            _ => format!("first {} {}", n.rule, n.dedup_key.unwrap_or_default()),
        })
        .collect()
}

proptest::proptest! {
    /// The indexed windows (ends in order, lazily kept recency, changes taken for the
    /// state) say and keep what a plain list of windows does, through reloads that
    /// change a window's length and restarts from the stored changes.
    #[test]
    fn windows_agree_with_a_plain_list(ops in proptest::collection::vec(op(), 1..120)) {
        let mut b = Bursts::default();
        let mut model = Model::default();
        let mut stored: BTreeMap<(String, String), Window> = BTreeMap::new();
        let (mut now, mut a_window) = (0i64, 500i64);
        let mut out = Vec::new();
        for op in ops {
            let window_of = |rule: &str| {
                Some(Duration::from_millis(if rule == "a" { a_window } else { 300 } as u64))
            };
            let mut expected = Vec::new();
            match op {
                Op::Hit(is_a, k, advance) => {
                    now += advance;
                    let rule = if is_a { "a" } else { "b" };
                    let window = if is_a { a_window } else { 300 };
                    let key = k.to_string();
                    let mut n = note(&key);
                    n.rule = rule.into();
                    let d = Dedup {
                        window: Duration::from_millis(window as u64),
                        ..dedup(0, 3)
                    };
                    b.observe(&d, &n, format!("{now}").as_bytes(), now, &mut out);
                    model.hit(rule, &key, now, window, &mut expected);
                }
                Op::Expire(advance) => {
                    now += advance;
                    b.expire(now, window_of, &mut out);
                    let mut due: Vec<usize> = (0..model.open.len())
                        .filter(|&i| {
                            let w = &model.open[i].0;
                            let length = if w.rule == "a" { a_window } else { 300 };
                            now >= w.first_ms + length
                        })
                        .collect();
                    due.sort_by_key(|&i| {
                        let w = &model.open[i].0;
                        (w.first_ms, w.rule.clone(), w.key.clone())
                    });
                    let keys: Vec<(String, String)> = due
                        .iter()
                        .map(|&i| (model.open[i].0.rule.clone(), model.open[i].0.key.clone()))
                        .collect();
                    for (rule, key) in keys {
                        if let Some(i) = model.open.iter().position(|(w, _)| w.rule == rule && w.key == key) {
                            model.close(i, &mut expected);
                        }
                    }
                }
                Op::Flush => {
                    b.flush(&mut out);
                    let mut counted: Vec<(String, String)> = model
                        .open
                        .iter()
                        .filter(|(w, _)| w.count > 0)
                        .map(|(w, _)| (w.rule.clone(), w.key.clone()))
                        .collect();
                    counted.sort();
                    for (rule, key) in counted {
                        if let Some(i) = model.open.iter().position(|(w, _)| w.rule == rule && w.key == key) {
                            model.close(i, &mut expected);
                        }
                    }
                }
                Op::Reload(length) => {
                    a_window = length;
                    b.window_lengths_changed();
                }
                Op::Restart => {
                    b = Bursts::from_saved(stored.values().cloned().collect());
                    // What was seen last is stored as `last_ms`; the model's order
                    // of recency becomes that one too (ties: by key).
                    model.open.sort_by(|(x, _), (y, _)| (x.last_ms, &x.key).cmp(&(y.last_ms, &y.key)));
                    for (i, (_, seen)) in model.open.iter_mut().enumerate() {
                        *seen = i as u64;
                    }
                    model.seq = model.open.len() as u64;
                }
            }
            proptest::prop_assert_eq!(said(&mut out), expected);
            proptest::prop_assert_eq!(b.len(), model.open.len());
            let (changed, removed) = b.take_changes();
            for id in removed {
                stored.remove(&id);
            }
            for w in changed {
                stored.insert((w.rule.clone(), w.key.clone()), w);
            }
            let mut open: Vec<&Window> = model.open.iter().map(|(w, _)| w).collect();
            open.sort_by(|x, y| (&x.rule, &x.key).cmp(&(&y.rule, &y.key)));
            proptest::prop_assert_eq!(stored.values().collect::<Vec<_>>(), open);
        }
    }
}

#[test]
fn saved_windows_resume() {
    let d = dedup(60, 10);
    let mut b = Bursts::default();
    let mut out = Vec::new();
    b.observe(&d, &note("a"), b"a1", 0, &mut out);
    b.observe(&d, &note("a"), b"a2", 10, &mut out);
    let (changed, removed) = b.take_changes();
    assert!(removed.is_empty());
    let mut resumed = Bursts::from_saved(changed);
    resumed.observe(&d, &note("a"), b"a3", 20, &mut out);
    assert_eq!(out.len(), 1, "no second first post after a restart");
    resumed.expire(60_000, |_| Some(d.window), &mut out);
    assert!(
        out[1].text.starts_with("*db*: 2 more occurrences"),
        "{}",
        out[1].text
    );
}
