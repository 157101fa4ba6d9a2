use super::*;
use crate::engine::task::task_for_tests;
use api::piece::Bitmap;
use std::time::Duration;

const CAP: u32 = 2;

fn parent(id: &str, is_root: bool, held: &[u32]) -> ParentView {
    let mut bitmap = Bitmap::new(8);
    for &n in held {
        bitmap.set(n);
    }
    ParentView {
        host_id: id.into(),
        addr: format!("{id}:1"),
        is_root,
        bitmap,
    }
}

fn pick(state: &mut State, n: u32, to_origin: bool) -> String {
    match choose(state, n, CAP, to_origin, Instant::now()) {
        Source::Parent(p) => p.host_id,
        Source::Origin => "origin".into(),
        Source::Busy => "busy".into(),
        Source::Refresh => "refresh".into(),
    }
}

fn with_parents(parents: Vec<ParentView>) -> (tempfile::TempDir, Arc<crate::engine::task::Task>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let task = task_for_tests(dir.path(), 8);
    task.lock().parents = parents;
    (dir, task)
}

use std::sync::Arc;

#[test]
fn a_plain_holder_goes_before_the_root_and_the_root_before_nobody() {
    let (_dir, task) = with_parents(vec![
        parent("root", true, &[1]),
        parent("peer", false, &[1]),
    ]);
    let mut state = task.lock();
    assert_eq!(pick(&mut state, 1, false), "peer");
    assert_eq!(state.load_of("peer"), 1, "the request is counted");
    // Nobody holds piece 3, but the root fetches anything.
    assert_eq!(pick(&mut state, 3, false), "root");
}

#[test]
fn a_full_parent_means_wait_and_no_parent_means_refresh() {
    let (_dir, task) = with_parents(vec![parent("peer", false, &[1])]);
    let mut state = task.lock();
    assert_eq!(pick(&mut state, 1, false), "peer");
    assert_eq!(pick(&mut state, 1, false), "peer");
    assert_eq!(pick(&mut state, 1, false), "busy", "past its cap");
    assert_eq!(pick(&mut state, 2, false), "refresh", "nobody has piece 2");
}

#[test]
fn a_blocked_parent_is_skipped_until_its_time_is_up() {
    let (_dir, task) = with_parents(vec![parent("bad", false, &[1])]);
    let mut state = task.lock();
    let now = Instant::now();
    state
        .blocked
        .insert("bad".into(), now + Duration::from_secs(5));
    assert!(matches!(
        choose(&mut state, 1, CAP, false, now),
        Source::Refresh
    ));
    let later = now + Duration::from_secs(6);
    assert!(matches!(
        choose(&mut state, 1, CAP, false, later),
        Source::Parent(_)
    ));
    assert!(state.blocked.is_empty(), "expired blocks are forgotten");
}

#[test]
fn a_root_or_a_host_told_to_goes_to_the_origin_for_what_nobody_holds() {
    let (_dir, task) = with_parents(vec![parent("root", true, &[]), parent("peer", false, &[1])]);
    let mut state = task.lock();
    assert_eq!(pick(&mut state, 2, true), "origin");
    // Still, a holder is used first.
    assert_eq!(pick(&mut state, 1, true), "peer");
    state.is_root = true;
    assert_eq!(pick(&mut state, 2, false), "origin");
}

#[test]
fn the_least_loaded_holder_is_picked() {
    let (_dir, task) = with_parents(vec![parent("a", false, &[1]), parent("b", false, &[1])]);
    let mut state = task.lock();
    state.load.insert("a".into(), 1);
    assert_eq!(pick(&mut state, 1, false), "b");
}

#[test]
fn a_root_that_sent_corrupt_bytes_is_passed_over_for_the_origin() {
    let (_dir, task) = with_parents(vec![
        parent("root", true, &[1]),
        parent("peer", false, &[2]),
    ]);
    let mut state = task.lock();
    state.root_corrupt = true;
    assert_eq!(pick(&mut state, 1, false), "origin");
    assert_eq!(
        pick(&mut state, 2, false),
        "peer",
        "other holders still serve"
    );
}
