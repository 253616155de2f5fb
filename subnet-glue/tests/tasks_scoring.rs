//! SPEC §3–§4 scoring on hand-made results: first place +3, the bottom quarter −1 above 8
//! valid results, failures −1 only when a valid result exists, duplicates (same adapter or
//! bit-equal test loss) −1 with the earliest keeping its place, NaN ranked last, and the
//! re-evaluate rule when every score is 0.

use gradients_subnet::scoring::{score_task, Outcome};
use gradients_subnet::validator::{rank_loss, MethodResult};

fn res(i: usize, test: f64, synth: f64) -> MethodResult {
    MethodResult {
        task_id: "t".into(),
        method_hash: format!("m{i}"),
        test_loss: test,
        synth_loss: synth,
        rank_loss: rank_loss(test, synth),
        per_sample_test: vec![test],
        test_rows: vec![0],
        adapter_sha256: Some(format!("sha{i}")),
        adapter_dir: None,
        failed: None,
        tokens: 10,
        wall_s: 1.0,
        search: Vec::new(),
        seq: i as i64,
        grpo: None,
    }
}

fn failed(i: usize) -> MethodResult {
    let mut r = res(i, f64::NAN, f64::NAN);
    r.failed = Some("boom".into());
    r.adapter_sha256 = None;
    r
}

fn scores(rs: &[MethodResult]) -> Vec<f64> {
    score_task(rs).scores.iter().map(|s| s.score).collect()
}

#[test]
fn rank_loss_is_max_and_nan_is_worst() {
    assert_eq!(rank_loss(1.0, 2.0), 2.0);
    assert_eq!(rank_loss(3.0, 2.0), 3.0);
    assert!(rank_loss(f64::NAN, 2.0).is_nan());
    assert!(rank_loss(1.0, f64::NAN).is_nan());
    // synth decides when it is the larger: m1 has the lower test loss but a high synth loss
    let rs = [res(0, 1.2, 1.3), res(1, 1.0, 1.5), res(2, f64::NAN, 0.1)];
    let s = score_task(&rs);
    assert_eq!(s.ranking(), vec![0, 1, 2]);
    assert_eq!(scores(&rs), [3.0, 0.0, 0.0]);
}

#[test]
fn first_place_and_bottom_quarter() {
    // 8 valid: only first place scores
    let eight: Vec<_> = (0..8).map(|i| res(i, 2.0 - i as f64 * 0.1, 0.0)).collect();
    let s = scores(&eight);
    assert_eq!(s[7], 3.0);
    assert_eq!(s.iter().filter(|&&x| x == -1.0).count(), 0);
    // 9 valid: bottom max(1, int(0.25·9)) = 2 get −1
    let nine: Vec<_> = (0..9).map(|i| res(i, 1.0 + i as f64 * 0.1, 0.0)).collect();
    assert_eq!(
        scores(&nine),
        [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0]
    );
    // 13 valid: bottom 3
    let thirteen: Vec<_> = (0..13).map(|i| res(i, 1.0 + i as f64 * 0.1, 0.0)).collect();
    let s = scores(&thirteen);
    assert_eq!(s.iter().filter(|&&x| x == -1.0).count(), 3);
    assert_eq!(&s[10..], &[-1.0, -1.0, -1.0]);
}

#[test]
fn failures_duplicates_and_reevaluation() {
    let rs = [failed(0), res(1, 1.5, 1.0), res(2, 1.2, 1.0)];
    let s = score_task(&rs);
    assert_eq!(scores(&rs), [-1.0, 0.0, 3.0]);
    assert!(!s.reevaluate);
    assert_eq!(s.valid, 2);
    assert!(matches!(s.scores[0].outcome, Outcome::Failed { .. }));
    // every submission failed: all 0, evaluate again
    let all = [failed(0), failed(1)];
    let s = score_task(&all);
    assert_eq!(scores(&all), [0.0, 0.0]);
    assert!(s.reevaluate);
    assert!(!score_task(&[]).reevaluate);
    // same adapter (m2 copies m0) and bit-equal test loss (m3 = m1): the later ones are −1
    let mut copy = res(2, 1.9, 1.0);
    copy.adapter_sha256 = Some("sha0".into());
    let rs = [
        res(0, 1.4, 1.0),
        res(1, 1.1, 1.0),
        copy,
        res(3, 1.1, 1.0),
        res(4, 1.3, 1.0),
    ];
    let s = score_task(&rs);
    assert_eq!(scores(&rs), [0.0, 3.0, -1.0, -1.0, 0.0]);
    assert_eq!(s.scores[2].outcome, Outcome::Duplicate { of: 0 });
    assert_eq!(s.scores[3].outcome, Outcome::Duplicate { of: 1 });
    assert_eq!(s.ranking(), vec![1, 4, 0]);
    // the earliest of a group keeps its place even when a later copy is listed first by loss
    let rs = [res(0, 1.0, 1.0), res(1, 1.0, 1.0)];
    assert_eq!(scores(&rs), [3.0, -1.0]);
}
