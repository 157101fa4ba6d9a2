use super::*;

fn task(pieces: u32) -> (tempfile::TempDir, Arc<Task>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let task = task_for_tests(dir.path(), pieces);
    (dir, task)
}

fn digest(n: u32) -> PieceDigest {
    PieceDigest::of(&n.to_le_bytes())
}

#[test]
fn a_piece_is_claimed_once_and_later_askers_wait_on_that_claim() {
    let (_dir, task) = task(4);
    let Asked::Claimed(claim) = task.ask(1, Priority::Bulk) else {
        panic!("the first asker must claim the piece");
    };
    let Asked::Coming(mut waiting) = task.ask(1, Priority::Read) else {
        panic!("a second asker must wait on the first claim");
    };
    // The waiter raised the claim's priority to its own.
    assert_eq!(claim.priority.load(Ordering::Relaxed), Priority::Read as u8);
    claim.done.send_replace(Some(Ok(())));
    assert!(matches!(*waiting.borrow_and_update(), Some(Ok(()))));
    task.finish_fetch(1);
    assert!(matches!(task.ask(1, Priority::Bulk), Asked::Claimed(_)));
}

#[test]
fn recording_a_piece_wakes_waiters_once_and_counts_its_bytes() {
    let (_dir, task) = task(2);
    let progress = task.subscribe();
    let mut calls = Vec::new();
    assert!(task.record_present(0, digest(0), |complete| calls.push(complete)));
    assert!(!task.record_present(0, digest(0), |complete| calls.push(complete)));
    assert!(task.record_present(1, digest(1), |complete| calls.push(complete)));
    assert_eq!(calls, [false, true], "the hook runs once per new piece");
    assert_eq!(*progress.borrow(), 2 << 18);
    assert!(task.is_complete());
    assert_eq!(task.digest(1), Some(digest(1)));
    assert!(matches!(task.ask(0, Priority::Bulk), Asked::Present));
}

#[test]
fn a_piece_out_of_range_is_never_recorded() {
    let (_dir, task) = task(2);
    assert!(!task.record_present(2, digest(2), |_| panic!("hook ran")));
    assert_eq!(task.lock().present_bytes, 0);
}

#[test]
fn a_run_stops_before_a_piece_someone_fetches() {
    let (_dir, task) = task(8);
    let Asked::Claimed(_held) = task.ask(4, Priority::Bulk) else {
        panic!("claim");
    };
    let run = task.claim_run(1, 8, 6, Priority::Bulk);
    assert_eq!(run.iter().map(|c| c.n).collect::<Vec<_>>(), [1, 2, 3]);
    // One priority for the whole run: raising one piece raises them all.
    let Asked::Coming(_) = task.ask(2, Priority::Read) else {
        panic!("piece 2 belongs to the run");
    };
    assert_eq!(
        run[0].priority.load(Ordering::Relaxed),
        Priority::Read as u8
    );
}

#[test]
fn a_root_runs_ahead_only_of_a_child_reading_in_order_from_a_ranged_origin() {
    let (_dir, task) = task(16);
    task.learned_ranges_work(4);
    assert_eq!(
        task.run_ahead_gap(5, 16),
        None,
        "piece 4 is neither here nor coming"
    );
    let Asked::Claimed(_four) = task.ask(4, Priority::Bulk) else {
        panic!("claim");
    };
    let Asked::Claimed(_eight) = task.ask(8, Priority::Bulk) else {
        panic!("claim");
    };
    assert_eq!(task.run_ahead_gap(5, 16), Some(6..8));
    task.lock().whole_downloads = 1;
    assert_eq!(
        task.run_ahead_gap(5, 16),
        None,
        "a whole download fetches it all"
    );
}

#[test]
fn digests_learned_never_replace_known_ones() {
    let (_dir, task) = task(3);
    task.record_present(0, digest(0), |_| {});
    let offered = |n: u32, byte: u8| api::proto::PieceDigest {
        number: n,
        blake3: vec![byte; 32],
    };
    task.learn_digests(&[offered(0, 9), offered(1, 9), offered(7, 9)]);
    assert_eq!(task.digest(0), Some(digest(0)));
    assert_eq!(task.digest(1), PieceDigest::from_slice(&[9; 32]));
    assert_eq!(task.missing_digests(), [2]);
}

#[test]
fn credentials_are_kept_until_better_ones_come() {
    let (_dir, task) = task(1);
    let header = |v: &str| api::proto::Header {
        name: "Authorization".into(),
        value: v.into(),
    };
    let given = Credentials::parse(&[header("Bearer a")]).unwrap();
    task.offer_credentials(&given);
    task.offer_credentials(&Credentials::default());
    assert!(
        !task.credentials().is_empty(),
        "an empty offer dropped them"
    );
}
