//! LocalChain on a real SQLite file in a tempdir: registration, subtensor's set_weights checks
//! and rate limit, commit-reveal v2 windows and the 10-pending limit, epochs with the owner's
//! cut, persistence across reopen, coexistence with other components' tables, and the
//! `gradients chain` command line.

mod cli_support;

use gradients_subnet::chain::{commit_hash, AccountId, Chain, ChainParams, LocalChain, Reject};
use gradients_subnet::weights::{quantize_u16, tournament_weights, PoolInput};

fn key(name: &str) -> AccountId {
    AccountId::from_name(name)
}

fn params(commit_reveal: bool) -> ChainParams {
    ChainParams {
        tempo: 10,
        weights_rate_limit: 5,
        min_allowed_weights: 2,
        max_allowed_validators: 2,
        commit_reveal,
        ..ChainParams::default()
    }
}

/// Three miners and two staked validators; one epoch hands out permits.
fn net(dir: &tempfile::TempDir, commit_reveal: bool) -> LocalChain {
    let mut c = LocalChain::open_with(&dir.path().join("g.db"), &params(commit_reveal)).unwrap();
    for (name, stake) in [("v0", 700), ("v1", 300), ("m0", 0), ("m1", 0), ("m2", 0)] {
        c.register(&key(name), stake).unwrap();
    }
    c.run_next_epoch().unwrap();
    c
}

fn reason<T: std::fmt::Debug>(r: gradients_subnet::chain::Result<T>) -> Reject {
    r.unwrap_err().reason().expect("a refusal")
}

#[test]
fn set_weights_applies_the_chain_checks_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = net(&dir, false);
    let m = c.metagraph().unwrap();
    assert_eq!(
        m.neurons
            .iter()
            .map(|n| n.validator_permit)
            .collect::<Vec<_>>(),
        vec![true, true, false, false, false]
    );
    let v0 = key("v0");
    assert_eq!(
        reason(c.set_weights(&v0, &[2, 3], &[1], 0)),
        Reject::WeightVecNotEqualSize
    );
    assert_eq!(
        reason(c.set_weights(&v0, &[0, 1, 2, 3, 4, 4], &[1; 6], 0)),
        Reject::UidsLengthExceedUidsInSubNet
    );
    assert_eq!(
        reason(c.set_weights(&key("nobody"), &[2, 3], &[1, 1], 0)),
        Reject::HotKeyNotRegisteredInSubNet
    );
    assert_eq!(
        reason(c.set_weights(&key("m0"), &[3, 4], &[1, 1], 0)),
        Reject::NeuronNoValidatorPermit
    );
    assert_eq!(
        reason(c.set_weights(&v0, &[2, 2], &[1, 1], 0)),
        Reject::DuplicateUids
    );
    assert_eq!(
        reason(c.set_weights(&v0, &[2, 9], &[1, 1], 0)),
        Reject::UidVecContainInvalidOne
    );
    assert_eq!(
        reason(c.set_weights(&v0, &[2], &[1], 0)),
        Reject::WeightVecLengthIsLow
    );
    // A self weight is always allowed, even without a permit and below the minimum length.
    c.set_weights(&key("m0"), &[2], &[5], 0).unwrap();
    // Stored max-upscaled.
    c.set_weights(&v0, &[2, 3], &[100, 50], 0).unwrap();
    assert_eq!(c.weights_of(0).unwrap(), vec![(2, 65535), (3, 32768)]);

    // Version key: the subnet's key or newer.
    let mut p = c.params().clone();
    p.weights_version_key = 7;
    c.set_params(p).unwrap();
    c.advance_blocks(5).unwrap();
    assert_eq!(
        reason(c.set_weights(&v0, &[2, 3], &[1, 1], 6)),
        Reject::IncorrectWeightVersionKey
    );
    c.set_weights(&v0, &[2, 3], &[1, 1], 7).unwrap();
}

#[test]
fn rate_limit_counts_blocks_since_the_last_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = net(&dir, false);
    let v1 = key("v1");
    c.set_weights(&v1, &[2, 3], &[1, 2], 0).unwrap();
    let set_at = c.current_block().unwrap();
    c.advance_blocks(4).unwrap();
    assert_eq!(
        reason(c.set_weights(&v1, &[2, 3], &[2, 1], 0)),
        Reject::SettingWeightsTooFast
    );
    // The refused call changed nothing.
    assert_eq!(c.weights_of(1).unwrap(), vec![(2, 32768), (3, 65535)]);
    c.advance_blocks(1).unwrap();
    c.set_weights(&v1, &[2, 3], &[2, 1], 0).unwrap();
    let m = c.metagraph().unwrap();
    assert_eq!(m.neurons[1].last_update, set_at + 5);
}

#[test]
fn commit_reveal_only_in_the_reveal_epoch_and_at_most_ten_pending() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = net(&dir, true);
    let v0 = key("v0");
    let netuid = c.netuid();
    let (uids, vals, salt) = (vec![2u16, 3], vec![65535u16, 100], vec![9u16, 8, 7]);
    assert_eq!(
        reason(c.set_weights(&v0, &uids, &vals, 0)),
        Reject::CommitRevealEnabled
    );
    assert_eq!(
        reason(c.reveal_weights(&v0, &uids, &vals, &salt, 0)),
        Reject::NoWeightsCommitFound
    );
    let epoch0 = c.epoch_index().unwrap();
    c.commit_weights(&v0, commit_hash(&v0, netuid, &uids, &vals, &salt, 0))
        .unwrap();
    // Same epoch: too early.
    assert_eq!(
        reason(c.reveal_weights(&v0, &uids, &vals, &salt, 0)),
        Reject::RevealTooEarly
    );
    c.run_next_epoch().unwrap();
    assert_eq!(c.epoch_index().unwrap(), epoch0 + 1);
    // Wrong salt: no such hash.
    assert_eq!(
        reason(c.reveal_weights(&v0, &uids, &vals, &[1], 0)),
        Reject::InvalidRevealCommitHashNotMatch
    );
    c.reveal_weights(&v0, &uids, &vals, &salt, 0).unwrap();
    assert_eq!(c.weights_of(0).unwrap(), vec![(2, 65535), (3, 100)]);
    assert!(c.pending_commits(&v0).unwrap().is_empty());

    // A commit left past its reveal epoch expires.
    let v1 = key("v1");
    c.commit_weights(&v1, commit_hash(&v1, netuid, &uids, &vals, &salt, 0))
        .unwrap();
    c.run_next_epoch().unwrap();
    c.run_next_epoch().unwrap();
    assert_eq!(
        reason(c.reveal_weights(&v1, &uids, &vals, &salt, 0)),
        Reject::ExpiredWeightCommit
    );

    // Ten unrevealed commits at most (rate limit 0 so they can come block after block).
    let mut p = c.params().clone();
    p.weights_rate_limit = 0;
    c.set_params(p).unwrap();
    for i in 0..10u16 {
        c.commit_weights(&v1, commit_hash(&v1, netuid, &uids, &vals, &[i], 0))
            .unwrap();
    }
    assert_eq!(
        reason(c.commit_weights(&v1, [0; 32])),
        Reject::TooManyUnrevealedCommits
    );
    // Revealing the 4th drops it and the three before it.
    c.run_next_epoch().unwrap();
    c.reveal_weights(&v1, &uids, &vals, &[3], 0).unwrap();
    assert_eq!(c.pending_commits(&v1).unwrap().len(), 6);
}

#[test]
fn epochs_pay_the_consensus_winner_and_record_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let (v0, v1) = (key("v0"), key("v1"));
    {
        let mut c = net(&dir, false);
        // Tournament weights for miners 2 (champion), 3 (second); burn to uid 4.
        let w = tournament_weights(&PoolInput {
            ranked_uids: vec![2, 3],
            participants: vec![2, 3],
            boss_losses: vec![(1.2, 1.0)],
            champion_defences: 0,
            burn_uid: 4,
        })
        .unwrap();
        let (uids, vals) = quantize_u16(&w).unwrap();
        c.advance_blocks(1).unwrap();
        c.set_weights(&v0, &uids, &vals, 0).unwrap();
        c.set_weights(&v1, &uids, &vals, 0).unwrap();
        let r = c.run_next_epoch().unwrap();
        let total = 10 * 1_000_000_000u64;
        assert_eq!(r.total_emission, total);
        assert_eq!(r.owner_cut, total * 11_796 / 65_535);
        // Both validators agree, so incentive follows the weights exactly (u16 rounding).
        let inc: Vec<f64> = r
            .neurons
            .iter()
            .map(|n| f64::from(n.incentive) / 65535.0)
            .collect();
        let wsum: f64 = w.iter().map(|(_, x)| x).sum();
        for (uid, x) in &w {
            assert!((inc[*uid as usize] - x / wsum).abs() < 1e-3, "uid {uid}");
        }
        // Dividends go to the validators by stake; miners and validators split the pot.
        assert!(r.neurons[0].dividends > r.neurons[1].dividends);
        let paid: u64 = r
            .neurons
            .iter()
            .map(|n| n.server_emission + n.validator_emission)
            .sum();
        let pot = total - r.owner_cut;
        assert!(pot - paid < 10, "paid {paid} of {pot}");
        let miners: u64 = r.neurons.iter().map(|n| n.server_emission).sum();
        assert!((miners as f64 / pot as f64 - 0.5).abs() < 1e-3);
    }
    // Reopen: the same state and history.
    let c = LocalChain::open(&path).unwrap();
    assert_eq!(c.params(), &params(false));
    let m = c.metagraph().unwrap();
    assert_eq!(m.neurons.len(), 5);
    assert_eq!(m.neurons[0].hotkey, v0);
    assert_eq!(m.neurons[1].stake, 300);
    assert!(m.neurons[2].incentive > m.neurons[3].incentive);
    let epochs = c.epochs().unwrap();
    assert_eq!(epochs.len(), 2);
    assert_eq!(epochs[1].neurons[2].incentive, m.neurons[2].incentive);
    assert!(!c.bonds_of(0).unwrap().is_empty());
    assert_eq!(m.block, epochs[1].block);
}

#[test]
fn shares_the_file_with_other_tables_and_runs_epochs_on_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    {
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch(
                "CREATE TABLE tasks (id TEXT PRIMARY KEY); INSERT INTO tasks VALUES ('t1');",
            )
            .unwrap();
    }
    let mut c = LocalChain::open_with(&path, &params(false)).unwrap();
    c.register(&key("a"), 10).unwrap();
    assert_eq!(c.current_block().unwrap(), 1);
    // Tempo 10: advancing 25 blocks from block 1 runs the epochs at blocks 10 and 20.
    let recs = c.advance_blocks(25).unwrap();
    assert_eq!(
        recs.iter().map(|r| r.block).collect::<Vec<_>>(),
        vec![10, 20]
    );
    assert_eq!(recs[1].total_emission, 10 * 1_000_000_000);
    assert_eq!(c.current_block().unwrap(), 26);
    assert_eq!(c.next_epoch_block().unwrap(), 30);
    drop(c);
    let other = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = other
        .query_row("SELECT COUNT(*) FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    let mode: String = other
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // Registration refuses a second use of a hotkey.
    let mut c = LocalChain::open(&path).unwrap();
    assert_eq!(
        reason(c.register(&key("a"), 1)),
        Reject::HotKeyAlreadyRegisteredInSubNet
    );
}

#[test]
fn cli_register_set_weights_epoch_metagraph() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.db");
    let db = db.to_str().unwrap();
    let run = |args: &[&str]| cli_support::gradients(&[&["chain"], args].concat());
    assert!(run(&["init", "--db", db, "--tempo", "20"]).0);
    assert!(run(&["register", "--db", db, "--hotkey", "val", "--stake", "1000"]).0);
    assert!(run(&["register", "--db", db, "--hotkey", "miner-a"]).0);
    assert!(run(&["register", "--db", db, "--hotkey", "miner-b"]).0);
    assert!(run(&["epoch", "--db", db]).0); // permits
    let (ok, _, err) = run(&[
        "set-weights",
        "--db",
        db,
        "--hotkey",
        "val",
        "--weights",
        "1:0.75,2:0.25",
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = run(&["epoch", "--db", db]);
    assert!(ok);
    assert!(out.contains("epoch 2"), "{out}");
    let (ok, out, _) = run(&["metagraph", "--db", db]);
    assert!(ok);
    let line = |uid: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(uid))
            .unwrap()
            .to_string()
    };
    assert!(line("0").contains(&AccountId::from_name("val").to_ss58()));
    assert!(line("1").contains("0.7500"), "{out}");
    assert!(line("2").contains("0.2500"), "{out}");
    // Bad input names the field.
    let (ok, _, err) = run(&[
        "set-weights",
        "--db",
        db,
        "--hotkey",
        "val",
        "--weights",
        "1:x",
    ]);
    assert!(!ok);
    assert!(err.contains("--weights item 0"), "{err}");
}
