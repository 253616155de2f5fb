//! The method library and the tournament tables on a real SQLite file: archiving winners
//! (crowned, then defended), lineage through parents, prefix lookup, and the guards that
//! keep a tournament from being finished or recorded twice.

use gradients_subnet::library::{self, archive, Archive, TaskWin};
use gradients_subnet::store::Store;
use gradients_subnet::tournament::store::{
    self as tstore, create_run, finish_run, load_match, matches, save_match, MatchRecord, Showing,
    Stage,
};

fn hash(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

fn win(t: &str, task: &str, loss: f64) -> TaskWin {
    TaskWin {
        tournament_id: t.into(),
        task_id: task.into(),
        stage: "knockout".into(),
        kind: "instruct".into(),
        loss: Some(loss),
        opponent_hash: Some(hash('f')),
        opponent_loss: Some(loss + 0.5),
    }
}

fn finish(store: &Store, t: &str, h: &str, parent: Option<&str>, defended: bool, wins: &[TaskWin]) {
    create_run(store, t, 0, "{}", "[]", None).unwrap();
    let tx = store.transaction().unwrap();
    assert!(finish_run(&tx, t, "{}").unwrap());
    archive(
        &tx,
        &Archive {
            tournament_id: t,
            method_hash: h,
            name: "m",
            recipe: "{}",
            parent_hash: parent,
            uid: 3,
            hotkey: "miner-3",
            defended,
            wins,
        },
    )
    .unwrap();
    tx.commit().unwrap();
}

#[test]
fn archive_list_show_and_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("lib.db")).unwrap();
    tstore::migrate(&store).unwrap();
    assert!(library::list(&store).unwrap().is_empty());
    let (a, b) = (hash('a'), hash('b'));
    finish(
        &store,
        "t1",
        &a,
        None,
        false,
        &[win("t1", "k0", 1.5), win("t1", "k1", 1.4)],
    );
    finish(&store, "t2", &a, None, true, &[win("t2", "boss0", 1.3)]);
    finish(
        &store,
        "t3",
        &b,
        Some(&a),
        false,
        &[win("t3", "boss0", 1.1)],
    );

    let all = library::list(&store).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].method_hash, a, "most tournaments won first");
    assert_eq!(
        (all[0].tournaments_won, all[0].defences, all[0].tasks_won),
        (2, 1, 3)
    );
    assert_eq!(
        (
            all[0].first_tournament.as_str(),
            all[0].last_tournament.as_str()
        ),
        ("t1", "t2")
    );

    let d = library::show(&store, "bbbbbbb").unwrap();
    assert_eq!(d.entry.method_hash, b);
    assert_eq!(d.lineage, vec![a.clone()]);
    let da = library::show(&store, &a).unwrap();
    assert_eq!(da.children, vec![b.clone()]);
    assert_eq!(
        da.wins
            .iter()
            .map(|w| w.task_id.as_str())
            .collect::<Vec<_>>(),
        ["k0", "k1", "boss0"]
    );

    // Bad lookups name the hash.
    assert!(library::show(&store, "abc")
        .unwrap_err()
        .to_string()
        .contains("abc"));
    assert!(library::show(&store, "cccccc")
        .unwrap_err()
        .to_string()
        .contains("no archived"));
    // A tournament cannot finish twice: the second finish changes nothing.
    let tx = store.transaction().unwrap();
    assert!(!finish_run(&tx, "t1", "{}").unwrap());
    drop(tx);
    assert_eq!(library::list(&store).unwrap()[0].tournaments_won, 2);
}

#[test]
fn a_match_is_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("m.db")).unwrap();
    tstore::migrate(&store).unwrap();
    create_run(&store, "t", 0, "{}", "[]", None).unwrap();
    let rec = MatchRecord {
        stage: Stage::Knockout,
        round: 0,
        idx: 1,
        task_id: Some("t-k0-1".into()),
        kind: "instruct".into(),
        players: vec![Showing {
            method_hash: hash('a'),
            uid: 1,
            champion: false,
            loss: Some(1.25),
            test_loss: Some(1.2),
            failed: None,
        }],
        winners: vec![hash('a')],
        rule: "lower loss".into(),
        margin: None,
        gate: None,
    };
    assert!(load_match(&store, "t", Stage::Knockout, 0, 1)
        .unwrap()
        .is_none());
    save_match(&store, "t", &rec).unwrap();
    assert_eq!(
        load_match(&store, "t", Stage::Knockout, 0, 1).unwrap(),
        Some(rec.clone())
    );
    assert!(
        save_match(&store, "t", &rec).is_err(),
        "a second record of the same match"
    );
    assert_eq!(matches(&store, "t").unwrap(), vec![rec]);
}
