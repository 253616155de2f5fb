//! Subtensor's own epoch tests (opentensor/subtensor `pallets/subtensor/src/tests/epoch.rs`),
//! ported onto `gradients_subnet::chain::yuma::run_epoch`. Each test names the subtensor
//! test it ports; expected values are copied from there. A small simulator below plays the
//! role of the pallet: it keeps stake, permits, registration blocks, last updates, weights
//! (max-upscaled as `set_weights` stores them) and bonds between epochs, exactly as the
//! pallet stores them (u16), so the fixed-point round trips match.
//!
//! Subtensor's mock never sets `LastMechansimStepBlock` for manually called epochs, so
//! `last_epoch_block` stays 0 here (last_tempo = current_block − tempo), as there.

use gradients_subnet::chain::yuma::{max_upscale_u16, run_epoch, EpochInput, YumaParams};

struct Sim {
    params: YumaParams,
    block: u64,
    stake: Vec<u64>,
    permit: Vec<bool>,
    registered: Vec<u64>,
    last_update: Vec<u64>,
    weights: Vec<Vec<(u16, u16)>>,
    bonds: Vec<Vec<(u16, u16)>>,
    dividends: Vec<u16>,
    incentive: Vec<u16>,
    consensus: Vec<u16>,
    server_emission: Vec<u64>,
    validator_emission: Vec<u64>,
    emission: Vec<u64>,
}

impl Sim {
    fn new(params: YumaParams, stake: Vec<u64>, registered_at: u64, block: u64) -> Sim {
        let n = stake.len();
        Sim {
            params,
            block,
            stake,
            permit: vec![false; n],
            registered: vec![registered_at; n],
            last_update: vec![0; n],
            weights: vec![Vec::new(); n],
            bonds: vec![Vec::new(); n],
            dividends: vec![],
            incentive: vec![],
            consensus: vec![],
            server_emission: vec![],
            validator_emission: vec![],
            emission: vec![],
        }
    }

    fn set_weights(&mut self, uid: usize, uids: &[u16], values: &[u16]) {
        let up = max_upscale_u16(values);
        self.weights[uid] = uids.iter().copied().zip(up).collect();
        self.last_update[uid] = self.block;
    }

    fn next_block(&mut self) {
        self.block += 1;
    }

    fn epoch(&mut self, emission: u64) {
        let input = EpochInput {
            current_block: self.block,
            last_epoch_block: 0,
            stake: self.stake.clone(),
            validator_permit: self.permit.clone(),
            last_update: self.last_update.clone(),
            block_at_registration: self.registered.clone(),
            weights: self.weights.clone(),
            bonds: self.bonds.clone(),
            emission,
        };
        let out = run_epoch(&input, &self.params);
        for (i, b) in out.bonds.into_iter().enumerate() {
            if let Some(row) = b {
                self.bonds[i] = row;
            }
        }
        self.permit = out.new_validator_permit;
        self.dividends = out.dividends;
        self.incentive = out.incentive;
        self.consensus = out.consensus;
        self.server_emission = out.server_emission;
        self.validator_emission = out.validator_emission;
        self.emission = out.emission;
    }

    fn bond(&self, i: usize, j: u16) -> u16 {
        self.bonds[i]
            .iter()
            .find(|(t, _)| *t == j)
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }
}

fn frac(x: u16) -> f64 {
    f64::from(x) / 65535.0
}

/// `setup_yuma_3_scenario`: tempo 1, bonds penalty 0, steepness 1000, bonds moving average
/// 975000, kappa 32767, liquid alpha (0.1, 0.3) as `set_alpha_values_32` stores it, Yuma 3,
/// 3 validator permits; everyone registers at block 1; a first epoch at block 2 hands out
/// the permits.
fn yuma3_scenario(stakes: Vec<u64>) -> Sim {
    let params = YumaParams {
        tempo: 1,
        bonds_penalty: 0,
        alpha_sigmoid_steepness: 1000,
        bonds_moving_average: 975_000,
        kappa: u16::MAX / 2,
        liquid_alpha: true,
        // (0.1·65535) and (0.3·65535) in I32F32, truncated: 6553 and 19660.
        alpha_low: 6553,
        alpha_high: 19660,
        yuma3: true,
        max_allowed_validators: 3,
        ..YumaParams::default()
    };
    let mut sim = Sim::new(params, stakes, 1, 1);
    sim.next_block();
    sim.epoch(1_000_000_000);
    sim
}

/// `run_epoch_and_check_bonds_dividends` (tolerance 1e-3). Subtensor's loop compares the
/// bonds with `target_bond.iter().skip(3)`, which skips every target, so it never checks
/// bonds; we do check them, reading each target row's last two entries as the bonds to
/// servers 3 and 4 (the rows of `test_yuma_3_liquid_alpha_disabled` carry a leading 0).
fn step(sim: &mut Sim, bonds: &[Vec<f64>], dividends: &[f64], label: &str) {
    sim.next_block();
    sim.epoch(1_000_000_000);
    for (i, row) in bonds.iter().enumerate() {
        let n = sim.stake.len();
        let servers: Vec<u16> = ((n - row.len()) as u16..n as u16).collect();
        let tail = &row[..];
        for (j, t) in servers.iter().zip(tail) {
            let got = frac(sim.bond(i, *j));
            assert!(
                (got - t).abs() <= 1e-3,
                "{label}: bond[{i}][{j}] = {got:.4}, subtensor expects {t}"
            );
        }
    }
    for (i, t) in dividends.iter().enumerate() {
        let got = frac(sim.dividends[i]);
        assert!(
            (got - t).abs() <= 1e-3,
            "{label}: dividend[{i}] = {got:.4}, subtensor expects {t}"
        );
    }
}

const MAX: u16 = u16::MAX;

fn set3(sim: &mut Sim, rows: [[u16; 2]; 3]) {
    for (uid, r) in rows.iter().enumerate() {
        sim.set_weights(uid, &[3, 4], r);
    }
}

/// Port of `test_yuma_3_kappa_moves_first`.
#[test]
fn yuma3_kappa_moves_first() {
    let mut sim = yuma3_scenario(vec![8, 1, 1, 0, 0]);
    let bonds = [
        [[0.1013, 0.0], [0.1013, 0.0], [0.1013, 0.0]],
        [[0.0908, 0.1013], [0.3697, 0.0], [0.3697, 0.0]],
        [[0.0815, 0.1924], [0.3170, 0.1013], [0.5580, 0.0]],
        [[0.0731, 0.2742], [0.2765, 0.1924], [0.4306, 0.1013]],
        [[0.0656, 0.3478], [0.2435, 0.2742], [0.3589, 0.1924]],
        [[0.0588, 0.4139], [0.2157, 0.3478], [0.3089, 0.2742]],
    ];
    let dividends = [
        [0.8000, 0.1000, 0.1000, 0.0, 0.0],
        [1.0000, 0.0000, 0.0000, 0.0, 0.0],
        [0.9382, 0.0618, 0.0000, 0.0, 0.0],
        [0.8819, 0.0773, 0.0407, 0.0, 0.0],
        [0.8564, 0.0844, 0.0592, 0.0, 0.0],
        [0.8418, 0.0884, 0.0697, 0.0, 0.0],
    ];
    for e in 0..6 {
        match e {
            0 => set3(&mut sim, [[MAX, 0]; 3]),
            1 => set3(&mut sim, [[0, MAX], [MAX, 0], [MAX, 0]]),
            2 => set3(&mut sim, [[0, MAX], [0, MAX], [MAX, 0]]),
            3 => set3(&mut sim, [[0, MAX]; 3]),
            _ => {}
        }
        let b: Vec<Vec<f64>> = bonds[e].iter().map(|r| r.to_vec()).collect();
        step(&mut sim, &b, &dividends[e], &format!("epoch {e}"));
    }
}

/// Port of `test_yuma_3_kappa_moves_second`.
#[test]
fn yuma3_kappa_moves_second() {
    let mut sim = yuma3_scenario(vec![8, 1, 1, 0, 0]);
    let bonds = [
        [[0.1013, 0.0], [0.1013, 0.0], [0.1013, 0.0]],
        [[0.1924, 0.0], [0.0908, 0.2987], [0.1924, 0.0]],
        [[0.1715, 0.1013], [0.0815, 0.3697], [0.4336, 0.0]],
        [[0.1531, 0.1924], [0.0731, 0.4336], [0.3608, 0.1013]],
        [[0.1369, 0.2742], [0.0656, 0.4910], [0.3103, 0.1924]],
        [[0.1225, 0.3478], [0.0588, 0.5426], [0.2712, 0.2742]],
    ];
    let dividends = [
        [0.8000, 0.1000, 0.1000, 0.0, 0.0],
        [0.8446, 0.0498, 0.1056, 0.0, 0.0],
        [0.6868, 0.3132, 0.0000, 0.0, 0.0],
        [0.7421, 0.2090, 0.0489, 0.0, 0.0],
        [0.7625, 0.1706, 0.0669, 0.0, 0.0],
        [0.7730, 0.1508, 0.0762, 0.0, 0.0],
    ];
    for e in 0..6 {
        match e {
            0 => set3(&mut sim, [[MAX, 0]; 3]),
            1 => set3(&mut sim, [[MAX, 0], [0, MAX], [MAX, 0]]),
            2 => set3(&mut sim, [[0, MAX], [0, MAX], [MAX, 0]]),
            3 => set3(&mut sim, [[0, MAX]; 3]),
            _ => {}
        }
        let b: Vec<Vec<f64>> = bonds[e].iter().map(|r| r.to_vec()).collect();
        step(&mut sim, &b, &dividends[e], &format!("epoch {e}"));
    }
}

/// Port of `test_yuma_3_kappa_moves_last`.
#[test]
fn yuma3_kappa_moves_last() {
    let mut sim = yuma3_scenario(vec![8, 1, 1, 0, 0]);
    let bonds = [
        [[0.1013, 0.0], [0.1013, 0.0], [0.1013, 0.0]],
        [[0.1924, 0.0], [0.0908, 0.2987], [0.1924, 0.0]],
        [[0.2742, 0.0], [0.0815, 0.5081], [0.1715, 0.2987]],
        [[0.2416, 0.1013], [0.0731, 0.5580], [0.1531, 0.3697]],
        [[0.2141, 0.1924], [0.0656, 0.6028], [0.1369, 0.4336]],
        [[0.1903, 0.2742], [0.0588, 0.6430], [0.1225, 0.4910]],
    ];
    let dividends = [
        [0.8000, 0.1000, 0.1000, 0.0, 0.0],
        [0.8446, 0.0498, 0.1056, 0.0, 0.0],
        [0.8966, 0.0333, 0.0701, 0.0, 0.0],
        [0.4663, 0.3210, 0.2127, 0.0, 0.0],
        [0.5976, 0.2340, 0.1683, 0.0, 0.0],
        [0.6592, 0.1932, 0.1475, 0.0, 0.0],
    ];
    for e in 0..6 {
        match e {
            0 => set3(&mut sim, [[MAX, 0]; 3]),
            1 => set3(&mut sim, [[MAX, 0], [0, MAX], [MAX, 0]]),
            2 => set3(&mut sim, [[MAX, 0], [0, MAX], [0, MAX]]),
            3 => set3(&mut sim, [[0, MAX]; 3]),
            _ => {}
        }
        let b: Vec<Vec<f64>> = bonds[e].iter().map(|r| r.to_vec()).collect();
        step(&mut sim, &b, &dividends[e], &format!("epoch {e}"));
    }
}

/// Port of `test_yuma_3_one_epoch_switch`.
#[test]
fn yuma3_one_epoch_switch() {
    let mut sim = yuma3_scenario(vec![33, 33, 34, 0, 0]);
    let bonds = [
        [[0.1013, 0.0], [0.1013, 0.0], [0.1013, 0.0]],
        [[0.1924, 0.0], [0.1924, 0.0], [0.1924, 0.0]],
        [[0.2742, 0.0], [0.2742, 0.0], [0.1715, 0.2987]],
        [[0.3478, 0.0], [0.3478, 0.0], [0.2554, 0.2618]],
        [[0.4139, 0.0], [0.4139, 0.0], [0.3309, 0.2312]],
        [[0.4733, 0.0], [0.4733, 0.0], [0.3987, 0.2051]],
    ];
    let dividends = [
        [0.3300, 0.3300, 0.3400, 0.0, 0.0],
        [0.3300, 0.3300, 0.3400, 0.0, 0.0],
        [0.3782, 0.3782, 0.2436, 0.0, 0.0],
        [0.3628, 0.3628, 0.2745, 0.0, 0.0],
        [0.3541, 0.3541, 0.2917, 0.0, 0.0],
        [0.3487, 0.3487, 0.3026, 0.0, 0.0],
    ];
    for e in 0..6 {
        if e == 2 {
            set3(&mut sim, [[MAX, 0], [MAX, 0], [0, MAX]]);
        } else {
            set3(&mut sim, [[MAX, 0]; 3]);
        }
        let b: Vec<Vec<f64>> = bonds[e].iter().map(|r| r.to_vec()).collect();
        step(&mut sim, &b, &dividends[e], &format!("epoch {e}"));
    }
}

/// Port of `test_yuma_3_liquid_alpha_disabled` (fixed α = 1 − 0.975 = 0.025).
#[test]
fn yuma3_liquid_alpha_disabled() {
    let mut sim = yuma3_scenario(vec![33, 33, 34, 0, 0]);
    sim.params.liquid_alpha = false;
    let bonds = [
        [[0.0, 0.0250, 0.0], [0.0, 0.0250, 0.0], [0.0, 0.0250, 0.0]],
        [[0.0, 0.0494, 0.0], [0.0, 0.0494, 0.0], [0.0, 0.0494, 0.0]],
        [
            [0.0, 0.0731, 0.0],
            [0.0, 0.0731, 0.0],
            [0.0, 0.0481, 0.0250],
        ],
        [
            [0.0, 0.0963, 0.0],
            [0.0, 0.0963, 0.0],
            [0.0, 0.0719, 0.0244],
        ],
        [
            [0.0, 0.1189, 0.0],
            [0.0, 0.1189, 0.0],
            [0.0, 0.0951, 0.0238],
        ],
        [
            [0.0, 0.1409, 0.0],
            [0.0, 0.1409, 0.0],
            [0.0, 0.1178, 0.0232],
        ],
    ];
    let dividends = [
        [0.3300, 0.3300, 0.3400, 0.0, 0.0],
        [0.3300, 0.3300, 0.3400, 0.0, 0.0],
        [0.3734, 0.3734, 0.2532, 0.0, 0.0],
        [0.3611, 0.3611, 0.2779, 0.0, 0.0],
        [0.3541, 0.3541, 0.2919, 0.0, 0.0],
        [0.3495, 0.3495, 0.3009, 0.0, 0.0],
    ];
    for e in 0..6 {
        if e == 2 {
            set3(&mut sim, [[MAX, 0], [MAX, 0], [0, MAX]]);
        } else {
            set3(&mut sim, [[MAX, 0]; 3]);
        }
        // Rows are [0, server 3, server 4]: check the last two.
        let b: Vec<Vec<f64>> = bonds[e].iter().map(|r| r[1..].to_vec()).collect();
        step(&mut sim, &b, &dividends[e], &format!("epoch {e}"));
    }
}

/// Port of `test_yuma_3_stable_miner` (3 validators, 3 servers).
#[test]
fn yuma3_stable_miner() {
    let mut sim = yuma3_scenario(vec![8, 1, 1, 0, 0, 0]);
    let bonds = [
        [
            [0.0507, 0.0, 0.0507],
            [0.0507, 0.0, 0.0507],
            [0.0507, 0.0, 0.0507],
        ],
        [
            [0.0962, 0.0, 0.0962],
            [0.0455, 0.1000, 0.0962],
            [0.0962, 0.0, 0.0962],
        ],
        [
            [0.0863, 0.0507, 0.1371],
            [0.0408, 0.1405, 0.1371],
            [0.1770, 0.0, 0.1371],
        ],
        [
            [0.0774, 0.0962, 0.1739],
            [0.0367, 0.1770, 0.1739],
            [0.1579, 0.0507, 0.1739],
        ],
        [
            [0.0694, 0.1371, 0.2069],
            [0.0329, 0.2097, 0.2069],
            [0.1411, 0.0962, 0.2069],
        ],
        [
            [0.0623, 0.1739, 0.2366],
            [0.0296, 0.2391, 0.2366],
            [0.1263, 0.1371, 0.2366],
        ],
    ];
    let dividends = [
        [0.8000, 0.1000, 0.1000, 0.0, 0.0, 0.0],
        [0.8226, 0.0745, 0.1028, 0.0, 0.0, 0.0],
        [0.7750, 0.1685, 0.0565, 0.0, 0.0, 0.0],
        [0.7864, 0.1372, 0.0764, 0.0, 0.0, 0.0],
        [0.7912, 0.1241, 0.0847, 0.0, 0.0, 0.0],
        [0.7937, 0.1173, 0.0890, 0.0, 0.0, 0.0],
    ];
    let h = MAX / 2;
    for e in 0..6 {
        let rows: Option<[[u16; 3]; 3]> = match e {
            0 => Some([[h, 0, h]; 3]),
            1 => Some([[h, 0, h], [0, h, h], [h, 0, h]]),
            2 => Some([[0, h, h], [0, h, h], [h, 0, h]]),
            3 => Some([[0, h, h]; 3]),
            _ => None,
        };
        if let Some(rows) = rows {
            for (uid, r) in rows.iter().enumerate() {
                sim.set_weights(uid, &[3, 4, 5], r);
            }
        }
        let b: Vec<Vec<f64>> = bonds[e].iter().map(|r| r.to_vec()).collect();
        step(&mut sim, &b, &dividends[e], &format!("epoch {e}"));
    }
}

/// Port of `test_bonds` (original Yuma: `add_network_disable_commit_reveal` turns Yuma 3
/// off; bonds penalty 1, α 0.1, 8 validator permits). Exact u16 bonds.
#[test]
fn original_yuma_bonds() {
    let params = YumaParams {
        tempo: 1,
        bonds_penalty: u16::MAX,
        yuma3: false,
        max_allowed_validators: 8,
        ..YumaParams::default()
    };
    let mut sim = Sim::new(params, vec![1, 2, 3, 4, 0, 0, 0, 0], 1, 1);
    sim.epoch(1_000_000_000); // hands out permits
    sim.next_block();
    for uid in 0..4 {
        sim.set_weights(uid, &[4, 5, 6, 7], &[MAX / 4, MAX / 2, (MAX / 4) * 3, MAX]);
    }
    sim.epoch(1_000_000_000);
    let col = |sim: &Sim, j: u16| (0..4).map(|i| sim.bond(i, j)).collect::<Vec<u16>>();
    assert_eq!(col(&sim, 4), vec![16383, 32767, 49151, 65535]);

    sim.set_weights(0, &[0], &[MAX]); // self-weight only on val1
    sim.next_block();
    sim.epoch(1_000_000_000);
    assert_eq!(col(&sim, 4), vec![14582, 32767, 49151, 65535]);

    sim.set_weights(1, &[1], &[MAX]); // self-weight only on val2
    sim.next_block();
    sim.epoch(1_000_000_000);
    assert_eq!(col(&sim, 4), vec![12603, 28321, 49151, 65535]);

    sim.set_weights(2, &[2], &[MAX]); // self-weight only on val3
    sim.next_block();
    sim.epoch(1_000_000_000);
    assert_eq!(col(&sim, 7), vec![12602, 28320, 49150, 65535]);

    sim.set_weights(2, &[7], &[MAX]); // val3 -> srv4: 1
    sim.next_block();
    sim.epoch(1_000_000_000);
    assert_eq!(col(&sim, 7), vec![10951, 24609, 49150, 65535]);

    sim.next_block();
    sim.epoch(1_000_000_000);
    assert_eq!(col(&sim, 7), vec![9559, 21482, 49150, 65535]);

    sim.next_block();
    sim.epoch(1_000_000_000);
    assert_eq!(col(&sim, 7), vec![8376, 18824, 49150, 65535]);
}

/// Port of `test_10_graph`: 10 neurons with stake 1 and self weights only; no permits,
/// so emission falls back to stake: 1e9/10 each, truncated in fixed point to 99999999.
#[test]
fn ten_self_weighting_neurons_get_stake_proportional_emission() {
    let params = YumaParams {
        tempo: u16::MAX as u64 - 1,
        ..YumaParams::default()
    };
    let mut sim = Sim::new(params, vec![1; 10], 0, 1);
    for i in 0..10 {
        sim.set_weights(i, &[i as u16], &[MAX]);
    }
    sim.epoch(1_000_000_000);
    for i in 0..10 {
        assert_eq!(sim.incentive[i], 0);
        assert_eq!(sim.dividends[i], 0);
        assert_eq!(sim.consensus[i], 0);
        assert_eq!(sim.emission[i], 99_999_999, "uid {i}");
    }
}

/// Port of `test_1_graph`: one staked neuron weighting itself earns no incentive,
/// consensus or dividends.
#[test]
fn one_self_weighting_neuron_earns_nothing_but_its_stake_share() {
    let params = YumaParams {
        tempo: u16::MAX as u64 - 1,
        ..YumaParams::default()
    };
    let mut sim = Sim::new(params, vec![1_000_000_000], 0, 1);
    sim.set_weights(0, &[0], &[MAX]);
    sim.epoch(1_000_000_000);
    assert_eq!(
        (sim.incentive[0], sim.dividends[0], sim.consensus[0]),
        (0, 0, 0)
    );
    assert_eq!(sim.server_emission[0], 0);
}

/// Port of `test_zero_weights` (original Yuma, tempo u16::MAX − 1): with no usable weights
/// the emission follows (active) stake; weights set in the block a uid re-registered are
/// outdated; once they are newer, miner and validator split the emission.
#[test]
fn zero_weights_fall_back_to_stake() {
    let params = YumaParams {
        tempo: u64::from(u16::MAX - 1),
        yuma3: false,
        ..YumaParams::default()
    };
    let mut sim = Sim::new(params, vec![1, 0], 0, 0);
    sim.epoch(1_000_000_000);
    assert_eq!(sim.emission, vec![1_000_000_000, 0]);

    sim.next_block(); // block 1: the server weights itself
    sim.set_weights(1, &[1], &[MAX]);
    sim.epoch(1_000_000_000);
    assert_eq!(sim.emission, vec![1_000_000_000, 0]);

    sim.next_block(); // block 2: the validator weights uid 1, which is then replaced
    sim.set_weights(0, &[1], &[MAX]);
    sim.registered[1] = 2;
    sim.last_update[1] = 0;
    sim.weights[1].clear();
    sim.epoch(1_000_000_000);
    assert_eq!(sim.emission, vec![1_000_000_000, 0]);

    sim.next_block(); // block 3: the weights are now newer than the registration
    sim.set_weights(0, &[1], &[MAX]);
    sim.epoch(1_000_000_000);
    assert_eq!(sim.emission, vec![500_000_000, 500_000_000]);
}
