//! Kernel tests through the CPU emulator (kernels/emu): the exact kernels/*.cu sources,
//! compiled with g++ by build.rs, run on small random shapes (ragged ones included) and are
//! compared with plain f64 references written here, with tolerance `atol + |ref|·rtol`
//! (rtol 1e-2 for bf16 storage, 1e-5 for f32). Outputs start as NaN so unwritten elements
//! fail. This file holds the emulator self-tests and the ptxas report check (`--features
//! cuda`); kernels_emu/ops.rs and attention.rs the per-family tests, mma.rs the tensor-core
//! collectives (mma.sync, ldmatrix) against the PTX fragment layouts, paths.rs pack-vs-scalar
//! bit identity, vs_cpu.rs the kernels against the CPU backend, ffi.rs the FFI and helpers.
//! Run: `cargo test --test kernels_emu` (add `--features cuda` for the ptxas check).

#[path = "kernels_emu/attention.rs"]
mod attention;
#[path = "kernels_emu/ffi.rs"]
mod ffi;
#[path = "kernels_emu/mma.rs"]
mod mma;
#[path = "kernels_emu/ops.rs"]
mod ops;
#[path = "kernels_emu/paths.rs"]
mod paths;
#[path = "kernels_emu/vs_cpu.rs"]
mod vs_cpu;

use ffi::{dims, raw, Rng};

#[test]
fn selftest_block_reduce_matches_exact_sums() {
    let mut rng = Rng::new(1);
    for n in [32usize, 64, 96, 256, 1024] {
        // Small integers: every summation order gives the exact same float.
        let input: Vec<f32> = (0..n).map(|_| rng.below(100) as f32 - 50.0).collect();
        let want: f32 = input.iter().sum();
        let mut out = vec![f32::NAN; 3];
        let mut d = dims(1, n as u32);
        d.smem = n * 4;
        ffi::both_schedules(|| {
            raw::emu_launch_selftest_block_reduce(d, out.as_mut_ptr(), input.as_ptr()).unwrap();
            assert_eq!(out, vec![want; 3], "block of {n}");
            out.fill(f32::NAN);
        });
    }
}

#[test]
fn selftest_warp_shuffles_and_votes_follow_ptx_rules() {
    let mut rng = Rng::new(2);
    let blocks = 2usize;
    let threads = 64usize;
    let n = blocks * threads;
    let input: Vec<i32> = (0..n).map(|_| rng.below(9) as i32).collect();
    let mut out = vec![i32::MIN; n * 8];
    raw::emu_launch_selftest_warp(
        dims(blocks, threads as u32),
        out.as_mut_ptr(),
        input.as_ptr(),
    )
    .unwrap();
    for i in 0..n {
        let lane = i % 32;
        let warp0 = i - lane;
        let at = |l: usize| input[warp0 + l];
        let seg8 = lane / 8 * 8;
        let ballot = (0..32)
            .filter(|&l| at(l) & 1 == 1)
            .fold(0u32, |b, l| b | (1 << l));
        let want = [
            at(5),
            at(lane ^ 3),
            if lane + 4 < 32 {
                at(lane + 4)
            } else {
                at(lane)
            },
            if lane >= 2 { at(lane - 2) } else { at(lane) },
            if lane - seg8 + 1 < 8 {
                at(lane + 1)
            } else {
                at(lane)
            },
            ballot as i32,
            (0..32).all(|l| at(l) > 0) as i32,
            (0..32).any(|l| at(l) == 7) as i32,
        ];
        assert_eq!(&out[i * 8..i * 8 + 8], &want, "thread {i}");
    }
}

#[test]
fn selftest_atomics_count_every_thread() {
    let mut rng = Rng::new(3);
    let n = 3 * 128;
    let input: Vec<i32> = (0..n).map(|_| rng.below(1000) as i32).collect();
    let mut counter = [0i32, i32::MIN];
    let mut fsum = [0f32];
    raw::emu_launch_selftest_atomics(
        dims(3, 128),
        counter.as_mut_ptr(),
        fsum.as_mut_ptr(),
        input.as_ptr(),
    )
    .unwrap();
    assert_eq!(counter[0] as usize, n);
    assert_eq!(counter[1], *input.iter().max().unwrap());
    assert_eq!(fsum[0], input.iter().sum::<i32>() as f32);
}

#[test]
fn selftest_divergent_barrier_is_an_error_not_a_hang() {
    let mut out = vec![0i32; 64];
    let err =
        raw::emu_launch_selftest_divergent_barrier(dims(1, 64), out.as_mut_ptr()).unwrap_err();
    assert!(err.contains("divergent __syncthreads"), "{err}");
}

#[test]
fn selftest_shuffle_with_exited_lane_in_mask_is_an_error() {
    let mut out = vec![0i32; 32];
    let err = raw::emu_launch_selftest_bad_mask(dims(1, 32), out.as_mut_ptr()).unwrap_err();
    assert!(err.contains("mask 0xffffffff"), "{err}");
}

#[test]
fn selftest_missing_barrier_shows_in_one_schedule() {
    let n = 64;
    let mut d = dims(1, n as u32);
    d.smem = n * 4;
    let mut results = Vec::new();
    for reverse in [false, true] {
        raw::set_reverse_schedule(reverse);
        let mut out = vec![f32::NAN; n];
        raw::emu_launch_selftest_missing_barrier(d, out.as_mut_ptr()).unwrap();
        results.push(out);
    }
    raw::set_reverse_schedule(false);
    let want: Vec<f32> = (0..n).map(|t| ((t + 1) % n) as f32).collect();
    // First-to-last: threads read their neighbour's slot before it is written (poison, NaN).
    assert!(
        results[0][..n - 1].iter().all(|v| v.is_nan()),
        "{:?}",
        results[0]
    );
    // Last-to-first: every neighbour but thread 0 already wrote; thread n-1 reads poison.
    assert_eq!(results[1][..n - 1], want[..n - 1]);
    assert!(results[1][n - 1].is_nan());
}

#[test]
fn selftest_invalid_launch_is_rejected() {
    let mut out = vec![0i32; 32];
    let err =
        raw::emu_launch_selftest_warp(dims(1, 2048), out.as_mut_ptr(), out.as_ptr()).unwrap_err();
    assert!(err.contains("invalid block"), "{err}");
}

/// Nearest bf16 to `x` by exhaustive comparison in f64, ties to even (an independent check of
/// the bit-twiddling conversion in kernels/emu/emu.h).
fn bf16_nearest_even(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fff;
    }
    let bits = x.to_bits();
    let lo = (bits >> 16) as u16; // truncation toward zero in magnitude
    let hi = lo.wrapping_add(1);
    // Rounding sees the value past the largest finite bf16 as 2^128 (IEEE overflow rule).
    let val = |b: u16| {
        if b & 0x7fff == 0x7f80 {
            2f64.powi(128).copysign(x as f64)
        } else {
            f32::from_bits((b as u32) << 16) as f64
        }
    };
    let (dl, dh) = ((x as f64 - val(lo)).abs(), (val(hi) - x as f64).abs());
    if x.is_infinite() {
        return lo;
    }
    if dl < dh || (dl == dh && lo & 1 == 0) {
        lo
    } else {
        hi
    }
}

#[test]
fn selftest_bf16_conversion_rounds_to_nearest_even() {
    let mut rng = Rng::new(4);
    let special = [
        0.0f32,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40,
        -1e-40,
        f32::from_bits(0x3f80_8000), // tie, rounds down to even
        f32::from_bits(0x3f81_8000), // tie, rounds up to even
        f32::from_bits(0x7f7f_ffff), // rounds to +inf
    ];
    let randoms = (0..200_000).map(|_| f32::from_bits(rng.next_u64() as u32));
    for x in special.into_iter().chain(randoms) {
        let got = raw::f32_to_bf16_bits(x);
        if x.is_nan() {
            assert_eq!(got, 0x7fff, "{x:e}");
        } else {
            assert_eq!(got, bf16_nearest_even(x), "{x:e} ({:#010x})", x.to_bits());
        }
    }
}

#[cfg(feature = "cuda")]
#[test]
fn ptxas_report_lists_every_kernel_without_spills() {
    use gradients_engine::backend::cuda::{KERNELS_FATBIN, PTXAS_REPORT};
    assert_eq!(
        &KERNELS_FATBIN[..4],
        &0xBA55_ED50u32.to_le_bytes(),
        "fatbin magic"
    );
    assert_eq!(KERNELS_FATBIN.as_ptr() as usize % 16, 0, "fatbin alignment");
    let mut entries = 0;
    for line in PTXAS_REPORT.lines() {
        if line.contains("Compiling entry function") {
            entries += 1;
        }
        if line.contains("bytes spill stores") {
            for part in line.split(',').filter(|p| p.contains("spill")) {
                let bytes: u64 = part.split_whitespace().next().unwrap().parse().unwrap();
                assert_eq!(bytes, 0, "spill: {line}");
            }
        }
    }
    for kernel in [
        "rmsnorm_forward_bf16",
        "cross_entropy_f32",
        "adamw_f32",
        "sum_partials_f64",
        "cast_bf16_to_f32",
    ] {
        for arch in ["sm_80", "sm_90"] {
            let entry = format!("Compiling entry function '{kernel}' for '{arch}'");
            assert!(PTXAS_REPORT.contains(&entry), "missing {entry}");
        }
    }
    assert!(entries >= 40, "only {entries} entries in the ptxas report");
}
