//! Alert states: thresholds, incidents and heartbeats, on a test clock.

use super::*;

const MIN: i64 = 60_000;

#[test]
fn a_threshold_is_reached_by_count_within_the_time() {
    let mut a = Alerts::default();
    // 49 within a minute: nothing.
    for i in 0..49 {
        assert_eq!(a.count_towards(("r", "k"), 50, MIN, i * 1000, 10).0, None);
    }
    // The 50th, still within the minute of the first: reached, and the counter is gone.
    assert_eq!(a.count_towards(("r", "k"), 50, MIN, 49_000, 10).0, Some(50));
    assert_eq!(a.count_towards(("r", "k"), 50, MIN, 50_000, 10).0, None);
    // Spread out, 50 matches never fall within one minute.
    let mut b = Alerts::default();
    for i in 0..200 {
        assert_eq!(b.count_towards(("r", "k"), 50, MIN, i * 2000, 10).0, None);
    }
}

#[test]
fn keys_beyond_max_keys_drop_the_least_recently_seen() {
    let mut a = Alerts::default();
    assert!(!a.count_towards(("r", "a"), 5, MIN, 0, 2).1);
    assert!(!a.count_towards(("r", "b"), 5, MIN, 1, 2).1);
    assert!(a.count_towards(("r", "c"), 5, MIN, 2, 2).1);
    let (rows, removed) = a.take_changes();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        removed,
        vec![(Kind::Threshold, "r".to_owned(), "a".to_owned())]
    );
}

#[test]
fn room_is_made_from_healthy_heartbeats_first() {
    let mut a = Alerts::default();
    a.expect("hb", &["expected".to_owned()], "oncall", 0);
    a.heartbeat(("hb", "absent"), "oncall", 1, 3);
    a.heartbeat(("hb", "healthy"), "oncall", 2, 3);
    assert_eq!(a.absences(10 * MIN, |_| Some(MIN)).len(), 3);
    // `healthy` was seen again: the only one not absent.
    a.heartbeat(("hb", "healthy"), "oncall", 11 * MIN, 3);
    assert!(a.heartbeat(("hb", "new"), "oncall", 12 * MIN, 3).1);
    let (_, removed) = a.take_changes();
    assert_eq!(
        removed,
        vec![(Kind::Heartbeat, "hb".to_owned(), "healthy".to_owned())]
    );
}

#[test]
fn an_incident_opens_counts_and_resolves_once() {
    let mut a = Alerts::default();
    // A counted occurrence with no incident open opens nothing.
    a.occurrence(("r", "db-1"), None, 0, 10);
    assert!(a.incident("r", "db-1").is_none());
    a.occurrence(("r", "db-1"), Some(("oncall", vec![])), 1_000, 10);
    a.occurrence(("r", "db-1"), None, 2_000, 10);
    let i = a.incident("r", "db-1").unwrap();
    assert_eq!((i.opened_ms, i.last_ms, i.occurrences), (1_000, 2_000, 2));
    assert!(a.resolve("r", "db-2").is_none());
    assert_eq!(a.resolve("r", "db-1").map(|i| i.occurrences), Some(2));
    assert!(a.resolve("r", "db-1").is_none());
}

#[test]
fn quiet_incidents_resolve_after_their_time() {
    let mut a = Alerts::default();
    a.occurrence(("r", "k"), Some(("oncall", vec![])), 0, 10);
    assert!(a.quiet_incidents(9 * MIN, |_| Some(10 * MIN)).is_empty());
    let done = a.quiet_incidents(10 * MIN, |_| Some(10 * MIN));
    assert_eq!(done.len(), 1);
    assert!(a.quiet_incidents(20 * MIN, |_| Some(10 * MIN)).is_empty());
}

#[test]
fn an_absence_is_posted_once_and_its_end_once() {
    let mut a = Alerts::default();
    a.expect("backup", &["backup-orders".to_owned()], "oncall", 0);
    a.heartbeat(("backup", "backup-users"), "oncall", 0, 10);
    assert!(a.absences(MIN, |_| Some(2 * MIN)).is_empty());
    let absent = a.absences(2 * MIN, |_| Some(2 * MIN));
    assert_eq!(absent.len(), 2);
    assert!(
        !absent
            .iter()
            .find(|x| x.1 == "backup-orders")
            .unwrap()
            .2
            .seen
    );
    // Once posted, not again.
    assert!(a.absences(10 * MIN, |_| Some(2 * MIN)).is_empty());
    // The line is back: the end of the absence, once.
    assert!(
        a.heartbeat(("backup", "backup-users"), "oncall", 11 * MIN, 10)
            .0
            .is_some()
    );
    assert!(
        a.heartbeat(("backup", "backup-users"), "oncall", 12 * MIN, 10)
            .0
            .is_none()
    );
    // Expecting again does not reset a tracked key: `backup-orders` stays absent (not
    // posted again); `backup-users`, quiet since 12 min, is absent again.
    a.expect("backup", &["backup-orders".to_owned()], "oncall", 30 * MIN);
    let again = a.absences(30 * MIN, |_| Some(2 * MIN));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1, "backup-users");
}

#[test]
fn saved_states_round_trip() {
    let mut a = Alerts::default();
    a.count_towards(("r", "k"), 3, MIN, 5, 10);
    a.occurrence(
        ("s", "t"),
        Some(("oncall", vec![Some("db".to_owned()), None])),
        7,
        10,
    );
    let (rows, _) = a.take_changes();
    let json: Vec<String> = rows
        .iter()
        .map(|r| serde_json::to_string(&r.state).unwrap())
        .collect();
    let back: Vec<AlertRow> = rows
        .iter()
        .zip(&json)
        .map(|(r, j)| AlertRow {
            rule: r.rule.clone(),
            key: r.key.clone(),
            state: serde_json::from_str(j).unwrap(),
        })
        .collect();
    let b = Alerts::from_saved(back);
    assert_eq!(
        b.incident("s", "t").map(|i| i.values.clone()),
        Some(vec![Some("db".to_owned()), None])
    );
    assert!(!b.has_changes());
}
