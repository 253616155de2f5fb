//! The emulator's tensor-core collectives (kernels/emu/emu.cpp, wrapped by common.cuh's
//! `mma_bf16_16816` and `ldmatrix_b16`) against the PTX ISA's fragment layouts, spelled here
//! in the ISA's own per-element form ("Matrix Fragments for mma.m16n8k16 with floating point
//! type": a_i, b_i, c_i with groupID = lane >> 2, threadID_in_group = lane % 4), so a layout
//! mistake in the emulator fails. Every lane's every register is checked, for several warps
//! at once; plus the errors (a partial warp, a misaligned or non-shared ldmatrix address).
//! Neighbours: ../kernels_emu.rs (crate root), ffi.rs (launchers, RNG).

use super::ffi::{dims, raw, Rng};
use half::bf16;

/// (row, col) of A element a_i (i < 8) held by `lane` (PTX: row groupID for i ∈ {0,1,4,5},
/// else groupID + 8; col 2·threadID_in_group + (i & 1), + 8 for i >= 4).
fn a_at(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    let row = if matches!(i, 0 | 1 | 4 | 5) { g } else { g + 8 };
    let col = 2 * t + (i & 1) + if i >= 4 { 8 } else { 0 };
    (row, col)
}

/// (row, col) of B element b_i (i < 4): row 2·threadID_in_group + (i & 1), + 8 for i >= 2;
/// col groupID.
fn b_at(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (2 * t + (i & 1) + if i >= 2 { 8 } else { 0 }, g)
}

/// (row, col) of C/D element c_i (i < 4): row groupID, + 8 for i >= 2; col 2·tig + (i & 1).
fn c_at(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (g + if i >= 2 { 8 } else { 0 }, 2 * t + (i & 1))
}

/// Per warp: A 16×16, B 16×8 (bf16) and C 16×8 (f32), row-major.
struct Warp {
    a: Vec<bf16>,
    b: Vec<bf16>,
    c: Vec<f32>,
}

/// Runs `selftest_mma` on the warps' matrices (2 warps per block) and checks every lane's four
/// results against D = A·B + C in f64: bit-exact when `exact` (every sum is then exact in
/// f32), else within 2e-6·(Σ|a·b| + |c|) (17 terms summed in f32).
fn check_mma(warps: &[Warp], exact: bool) {
    let lanes = 32 * warps.len();
    let (mut a, mut b, mut c) = (
        vec![0u32; 4 * lanes],
        vec![0u32; 2 * lanes],
        vec![0f32; 4 * lanes],
    );
    for (w, m) in warps.iter().enumerate() {
        for lane in 0..32 {
            let at = 32 * w + lane;
            for i in 0..8 {
                let (r, col) = a_at(lane, i);
                a[4 * at + i / 2] |= (m.a[16 * r + col].to_bits() as u32) << (16 * (i % 2));
            }
            for i in 0..4 {
                let (r, col) = b_at(lane, i);
                b[2 * at + i / 2] |= (m.b[8 * r + col].to_bits() as u32) << (16 * (i % 2));
            }
            for i in 0..4 {
                let (r, col) = c_at(lane, i);
                c[4 * at + i] = m.c[8 * r + col];
            }
        }
    }
    let mut d = vec![f32::NAN; 4 * lanes];
    let blocks = warps.len().div_ceil(2);
    assert_eq!(lanes % 64, 0, "whole blocks of two warps");
    raw::emu_launch_selftest_mma(
        dims(blocks, 64),
        d.as_mut_ptr(),
        a.as_ptr(),
        b.as_ptr(),
        c.as_ptr(),
    )
    .unwrap();
    for (w, m) in warps.iter().enumerate() {
        for lane in 0..32 {
            for i in 0..4 {
                let (r, col) = c_at(lane, i);
                let terms: Vec<f64> = (0..16)
                    .map(|k| m.a[16 * r + k].to_f64() * m.b[8 * k + col].to_f64())
                    .collect();
                let want = terms.iter().sum::<f64>() + m.c[8 * r + col] as f64;
                let got = d[4 * (32 * w + lane) + i];
                let what = format!("warp {w} lane {lane} d{i} (row {r}, col {col})");
                if exact {
                    assert_eq!(got as f64, want, "{what}");
                } else {
                    let scale =
                        terms.iter().map(|x| x.abs()).sum::<f64>() + m.c[8 * r + col].abs() as f64;
                    let err = (got as f64 - want).abs();
                    assert!(
                        err <= 2e-6 * scale,
                        "{what}: got {got}, want {want} (err {err:.3e})"
                    );
                }
            }
        }
    }
}

#[test]
fn selftest_mma_matches_the_ptx_fragment_layout() {
    let mut rng = Rng::new(21);
    let random = |rng: &mut Rng| Warp {
        a: (0..256)
            .map(|_| bf16::from_f32(rng.uniform(-2.0, 2.0)))
            .collect(),
        b: (0..128)
            .map(|_| bf16::from_f32(rng.uniform(-2.0, 2.0)))
            .collect(),
        c: (0..128).map(|_| rng.uniform(-4.0, 4.0)).collect(),
    };
    let warps: Vec<Warp> = (0..4).map(|_| random(&mut rng)).collect();
    check_mma(&warps, false);
    // Small integers: every order of summation is exact, so the result is bit-exact, and each
    // element is distinct enough that any misplaced fragment changes it.
    let int = |rng: &mut Rng, n: usize, r: u64| -> Vec<f32> {
        (0..n)
            .map(|_| rng.below(2 * r + 1) as f32 - r as f32)
            .collect()
    };
    let warps: Vec<Warp> = (0..2)
        .map(|_| Warp {
            a: int(&mut rng, 256, 15)
                .into_iter()
                .map(bf16::from_f32)
                .collect(),
            b: int(&mut rng, 128, 15)
                .into_iter()
                .map(bf16::from_f32)
                .collect(),
            c: int(&mut rng, 128, 1000),
        })
        .collect();
    check_mma(&warps, true);
}

#[test]
fn selftest_ldmatrix_matches_the_ptx_layout() {
    let mut rng = Rng::new(22);
    let nrows = 40usize;
    let words = nrows * 8;
    let input: Vec<u16> = (0..words).map(|_| rng.next_u64() as u16).collect();
    // Each lane addresses a random row, so a lane ↔ matrix-row mix-up shows.
    let rows: Vec<i32> = (0..32).map(|_| rng.below(nrows as u64) as i32).collect();
    let mut out = vec![0u32; 32 * 14];
    let mut d = dims(1, 32);
    d.smem = words * 2;
    raw::emu_launch_selftest_ldmatrix(
        d,
        out.as_mut_ptr(),
        input.as_ptr(),
        rows.as_ptr(),
        words as i32,
    )
    .unwrap();
    // Element (row rr, column cc) of matrix j: column cc of the row lane 8j + rr addressed.
    let el = |j: usize, rr: usize, cc: usize| input[rows[8 * j + rr] as usize * 8 + cc] as u32;
    for lane in 0..32 {
        let (g, t) = (lane >> 2, lane % 4);
        let plain = |j: usize| el(j, g, 2 * t) | el(j, g, 2 * t + 1) << 16;
        let trans = |j: usize| el(j, 2 * t, g) | el(j, 2 * t + 1, g) << 16;
        let want = [
            plain(0),
            plain(0),
            plain(1),
            plain(0),
            plain(1),
            plain(2),
            plain(3),
            trans(0),
            trans(0),
            trans(1),
            trans(0),
            trans(1),
            trans(2),
            trans(3),
        ];
        assert_eq!(out[14 * lane..14 * lane + 14], want, "lane {lane}");
    }
}

#[test]
fn selftest_tensor_core_collectives_report_misuse() {
    let mut out = vec![0f32; 32];
    let e = raw::emu_launch_selftest_mma_partial_warp(dims(1, 32), out.as_mut_ptr()).unwrap_err();
    assert!(e.contains("mma.sync") && e.contains("all 32 lanes"), "{e}");
    // A block of 48 threads: the second warp has 16 lanes.
    let mut d = dims(1, 48);
    d.smem = 512;
    let global = [0u16; 8];
    let mut words = vec![0u32; 48];
    let e = raw::emu_launch_selftest_ldmatrix_bad(d, words.as_mut_ptr(), global.as_ptr().cast(), 2)
        .unwrap_err();
    assert!(
        e.contains("all 32 lanes") && e.contains("0x0000ffff"),
        "{e}"
    );
    let mut d = dims(1, 32);
    d.smem = 512;
    let e = raw::emu_launch_selftest_ldmatrix_bad(d, words.as_mut_ptr(), global.as_ptr().cast(), 0)
        .unwrap_err();
    assert!(
        e.contains("lane 3") && e.contains("not 16-byte aligned"),
        "{e}"
    );
    let e = raw::emu_launch_selftest_ldmatrix_bad(d, words.as_mut_ptr(), global.as_ptr().cast(), 1)
        .unwrap_err();
    assert!(
        e.contains("lane 5") && e.contains("not in the dynamic shared memory"),
        "{e}"
    );
}
