//! `gradients chain commit|reveal|commits` end to end: the built binary on a real SQLite file
//! in a tempdir. A commit-reveal chain refuses plain set-weights; a commit prints its hash
//! (checked against an independent SCALE + blake2 computation) and reveal epoch and saves
//! the reveal; revealing too early, with a wrong salt, twice, or too late fails with a clear
//! message; the revealed weights drive the next epoch; an 11th pending commit is refused.

mod cli_support;

use std::path::Path;

use gradients_subnet::chain::{commit_hash, AccountId, PendingReveal};
use gradients_subnet::weights::quantize_u16;

use cli_support::gradients;

/// Run `gradients chain ARGS`: (success, stdout, stderr).
fn chain(args: &[&str]) -> (bool, String, String) {
    gradients(&[&["chain"], args].concat())
}

fn ok(args: &[&str]) -> String {
    let (good, out, err) = chain(args);
    assert!(good, "chain {args:?} failed:\n{out}\n{err}");
    out
}

fn fails(args: &[&str]) -> String {
    let (good, out, err) = chain(args);
    assert!(!good, "chain {args:?} should fail:\n{out}");
    err
}

/// The metagraph row of `uid`.
fn row(metagraph: &str, uid: &str) -> String {
    metagraph
        .lines()
        .find(|l| l.split_whitespace().next() == Some(uid))
        .unwrap_or_else(|| panic!("no uid {uid} in\n{metagraph}"))
        .to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn commit_reveal_from_the_command_line() {
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cr.db");
    let db = s(&db);
    let out = ok(&[
        "init",
        "--db",
        db,
        "--tempo",
        "50",
        "--commit-reveal",
        "--weights-rate-limit",
        "1",
    ]);
    assert!(out.contains("\"commit_reveal\": true"), "{out}");
    ok(&["register", "--db", db, "--hotkey", "val", "--stake", "1000"]);
    ok(&["register", "--db", db, "--hotkey", "miner-a"]);
    ok(&["register", "--db", db, "--hotkey", "miner-b"]);
    ok(&["epoch", "--db", db]); // epoch 1: permits
    let weights = "1:0.75,2:0.25";
    let err = fails(&[
        "set-weights",
        "--db",
        db,
        "--hotkey",
        "val",
        "--weights",
        weights,
    ]);
    assert!(err.contains("CommitRevealEnabled"), "{err}");
    let out = ok(&["commits", "--db", db]);
    assert!(out.contains("0 pending commit"), "{out}");

    // Commit with a fixed salt: the hash is the independent SCALE + blake2 hash.
    let file = dir.path().join("reveal.json");
    let out = ok(&[
        "commit",
        "--db",
        db,
        "--hotkey",
        "val",
        "--weights",
        weights,
        "--salt",
        "1,2,3,4,5,6,7,8",
        "--out",
        s(&file),
    ]);
    let (uids, values) = quantize_u16(&[(1, 0.75), (2, 0.25)]).unwrap();
    let val = AccountId::from_name("val");
    let hash = hex::encode(commit_hash(
        &val,
        56,
        &uids,
        &values,
        &[1, 2, 3, 4, 5, 6, 7, 8],
        0,
    ));
    assert!(out.contains(&format!("committed {hash}")), "{out}");
    assert!(out.contains("reveal in epoch 2"), "{out}");
    let saved = PendingReveal::load(&file).unwrap();
    assert_eq!(
        (saved.hash.as_str(), saved.reveal_epoch),
        (hash.as_str(), 2)
    );
    assert_eq!(saved.values, values);
    let out = ok(&["commits", "--db", db]);
    assert!(
        out.contains("1 pending commit") && out.contains(&hash) && out.contains("waiting"),
        "{out}"
    );

    // Too early: still epoch 1.
    let err = fails(&["reveal", "--db", db, "--file", s(&file)]);
    assert!(
        err.contains("too early") && err.contains("reveal epoch is 2"),
        "{err}"
    );
    let out = ok(&["advance", "--db", db, "--blocks", "50"]);
    assert!(out.contains("epoch 2 at block 100"), "{out}");
    let out = ok(&["commits", "--db", db]);
    assert!(out.contains("revealable now"), "{out}");

    // Wrong salt: hash mismatch, and the commit stays pending.
    let err = fails(&[
        "reveal",
        "--db",
        db,
        "--hotkey",
        "val",
        "--weights",
        weights,
        "--salt",
        "1,2,3,4,5,6,7,9",
    ]);
    assert!(err.contains("hash mismatch"), "{err}");
    // The same flags as the commit reveal it; a second reveal finds nothing pending.
    let out = ok(&[
        "reveal",
        "--db",
        db,
        "--hotkey",
        "val",
        "--weights",
        weights,
        "--salt",
        "1,2,3,4,5,6,7,8",
    ]);
    assert!(out.contains(&format!("revealed {hash}")), "{out}");
    let err = fails(&["reveal", "--db", db, "--file", s(&file)]);
    assert!(err.contains("nothing pending"), "{err}");

    // The next epoch uses the revealed weights: the metagraph shows them as incentive.
    let out = ok(&["epoch", "--db", db]);
    assert!(out.contains("epoch 3"), "{out}");
    let m = ok(&["metagraph", "--db", db]);
    assert!(row(&m, "1").contains("0.7500"), "{m}");
    assert!(row(&m, "2").contains("0.2500"), "{m}");

    // Too late: a commit printed (not saved), revealed two epochs after its reveal epoch.
    let out = ok(&[
        "commit",
        "--db",
        db,
        "--hotkey",
        "val",
        "--weights",
        "1:1,2:1",
        "--print",
    ]);
    let json = out.lines().find(|l| l.starts_with('{')).unwrap();
    let late: PendingReveal = serde_json::from_str(json).unwrap();
    assert_eq!(late.salt.len(), 8, "a random salt of 8 u16");
    assert_eq!(late.reveal_epoch, 4);
    ok(&["epoch", "--db", db, "--count", "2"]);
    let salt: Vec<String> = late.salt.iter().map(u16::to_string).collect();
    let err = fails(&[
        "reveal",
        "--db",
        db,
        "--hotkey",
        "val",
        "--weights",
        "1:1,2:1",
        "--salt",
        &salt.join(","),
    ]);
    assert!(err.contains("too late"), "{err}");

    // At most 10 unrevealed commits: the 11th is refused.
    for i in 0..10 {
        let w = format!("1:{},2:1", i + 1);
        ok(&[
            "commit",
            "--db",
            db,
            "--hotkey",
            "val",
            "--weights",
            &w,
            "--out",
            s(&dir.path().join(format!("c{i}.json"))),
        ]);
    }
    let out = ok(&["commits", "--db", db, "--hotkey", "val"]);
    assert!(out.contains("10 pending commit"), "{out}");
    let err = fails(&[
        "commit",
        "--db",
        db,
        "--hotkey",
        "val",
        "--weights",
        weights,
    ]);
    assert!(err.contains("TooManyUnrevealedCommits"), "{err}");

    // An existing chain (say a tournament's) switched to commit-reveal by `init`.
    let db2 = dir.path().join("plain.db");
    let db2 = s(&db2);
    let out = ok(&["init", "--db", db2]);
    assert!(out.contains("\"commit_reveal\": false"), "{out}");
    assert!(!ok(&["init", "--db", db2]).contains("updated"));
    let out = ok(&[
        "init",
        "--db",
        db2,
        "--commit-reveal",
        "--reveal-period",
        "2",
    ]);
    assert!(
        out.contains("updated") && out.contains("\"commit_reveal\": true"),
        "{out}"
    );
    assert!(out.contains("\"reveal_period\": 2"), "{out}");
    ok(&["register", "--db", db2, "--hotkey", "val", "--stake", "1"]);
    let out = ok(&[
        "commit",
        "--db",
        db2,
        "--hotkey",
        "val",
        "--weights",
        "0:1",
        "--print",
    ]);
    assert!(out.contains("reveal in epoch 2"), "{out}");
    eprintln!("commit_reveal_from_the_command_line: {:?}", t0.elapsed());
}

/// The library path the tournament uses: on a commit-reveal chain, `weights_into_epoch`
/// commits, runs epochs to the reveal epoch, reveals and returns the epoch that used the
/// weights (also after an interrupted call left a commit unrevealed); on a plain chain it
/// sets them. Both give the same incentive.
#[test]
fn weights_into_epoch_commits_or_sets_by_the_chain_settings() {
    use gradients_subnet::chain::{
        submit_weights, weights_into_epoch, Chain, ChainParams, LocalChain, Reject, Submitted,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut incentives = Vec::new();
    for commit_reveal in [true, false] {
        let p = ChainParams {
            tempo: 20,
            commit_reveal,
            reveal_period: 2,
            ..ChainParams::default()
        };
        let db = dir.path().join(format!("w{commit_reveal}.db"));
        let mut c = LocalChain::open_with(&db, &p).unwrap();
        let v = AccountId::from_name("v");
        c.register(&v, 1000).unwrap();
        c.register(&AccountId::from_name("a"), 0).unwrap();
        c.register(&AccountId::from_name("b"), 0).unwrap();
        c.run_next_epoch().unwrap();
        let before = c.epoch_index().unwrap();
        if commit_reveal {
            // A validator killed right after its commit: the rerun reveals that commit
            // (saved in the file) instead of being refused by the rate limit.
            let s = submit_weights(&mut c, &v, &[1, 2], &[65535, 13107], 0).unwrap();
            assert!(matches!(s, Submitted::Committed(_)), "{s:?}");
            assert_eq!(c.saved_reveals(&v).unwrap().len(), 1);
        }
        let e = weights_into_epoch(&mut c, &v, &[1, 2], &[65535, 13107], 0).unwrap();
        // Commit-reveal: the commit epoch, two epochs to the reveal, then the one used.
        let want = if commit_reveal {
            before + 3
        } else {
            before + 1
        };
        assert_eq!(e.epoch, want);
        assert!(c.pending_commits(&v).unwrap().is_empty());
        assert!(c.saved_reveals(&v).unwrap().is_empty());
        let inc: Vec<u16> = e.neurons.iter().map(|n| n.incentive).collect();
        assert!(inc[1] > inc[2] && inc[2] > 0, "{inc:?}");
        incentives.push(inc);
        // Again right away: the rate limit refuses it with the matching reason.
        let again = submit_weights(&mut c, &v, &[1], &[1], 0);
        let want = if commit_reveal {
            Reject::CommittingWeightsTooFast
        } else {
            Reject::SettingWeightsTooFast
        };
        match again {
            Err(e) => assert_eq!(e.reason(), Some(want)),
            Ok(s) => panic!("expected a rate-limit refusal, got {s:?}"),
        }
    }
    assert_eq!(incentives[0], incentives[1]);
}
