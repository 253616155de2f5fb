//! FFI to the kernel emulator (kernels/emu, built by build.rs into the engine's static
//! library): one `emu_launch_<kernel>` per kernel, grouped in per-dtype tables, plus aligned
//! host buffers, a seeded RNG and the tolerance check the kernel tests share.
//! Neighbours: ../kernels_emu.rs (the tests), kernels/emu/launchers.cpp (the C side, whose
//! lists these declarations must match).
#![allow(dead_code)]

use std::ffi::{c_void, CStr};

/// Launch geometry: grid, block, dynamic shared memory bytes.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    /// Blocks per grid (x, y, z).
    pub grid: [u32; 3],
    /// Threads per block (x, y, z).
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub smem: usize,
}

/// A 1-D launch.
pub fn dims(grid: usize, block: u32) -> Dims {
    Dims {
        grid: [u32::try_from(grid).expect("grid fits u32"), 1, 1],
        block: [block, 1, 1],
        smem: 0,
    }
}

/// Threads per block of the row-wise and element-wise kernels (BLOCK_THREADS in common.cuh).
pub const BLOCK: u32 = 256;

type VP = *mut c_void;
type CP = *const c_void;

macro_rules! launchers {
    ($($name:ident ( $($arg:ident : $ty:ty),* );)*) => {
        mod sys {
            use super::*;
            extern "C" {
                $(pub fn $name(gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, smem: usize, $($arg: $ty),*) -> i32;)*
                pub fn emu_last_error() -> *const std::ffi::c_char;
                pub fn emu_f32_to_bf16_bits(f: f32) -> u16;
                pub fn emu_set_schedule(reverse: i32);
            }
        }
        $(
            /// Launches the kernel of the same name in the emulator.
            #[allow(clippy::too_many_arguments)]
            pub fn $name(d: Dims, $($arg: $ty),*) -> Result<(), String> {
                // SAFETY: the declaration matches kernels/emu/launchers.cpp; the callers pass
                // buffers at least as long as the kernel's documented layout needs.
                let rc = unsafe {
                    sys::$name(d.grid[0], d.grid[1], d.grid[2], d.block[0], d.block[1], d.block[2], d.smem, $($arg),*)
                };
                check(rc)
            }
        )*
    };
}

/// The launchers, by raw name (`emu_launch_<kernel>`) and as `Result`-returning wrappers.
pub mod raw {
    use super::*;
    launchers! {
        emu_launch_rmsnorm_forward_f32(out: VP, rstd: *mut f32, x: CP, w: CP, h: i32, eps: f32);
        emu_launch_rmsnorm_forward_bf16(out: VP, rstd: *mut f32, x: CP, w: CP, h: i32, eps: f32);
        emu_launch_rmsnorm_backward_f32(dx: VP, dout: CP, x: CP, w: CP, rstd: *const f32, h: i32);
        emu_launch_rmsnorm_backward_bf16(dx: VP, dout: CP, x: CP, w: CP, rstd: *const f32, h: i32);
        emu_launch_rope_forward_f32(x: VP, c: *const f32, s: *const f32, pos: *const i32, n: i32, heads: i32, hd: i32, max_pos: i32);
        emu_launch_rope_forward_bf16(x: VP, c: *const f32, s: *const f32, pos: *const i32, n: i32, heads: i32, hd: i32, max_pos: i32);
        emu_launch_rope_backward_f32(x: VP, c: *const f32, s: *const f32, pos: *const i32, n: i32, heads: i32, hd: i32, max_pos: i32);
        emu_launch_rope_backward_bf16(x: VP, c: *const f32, s: *const f32, pos: *const i32, n: i32, heads: i32, hd: i32, max_pos: i32);
        emu_launch_swiglu_forward_f32(out: VP, gate: CP, up: CP, len: usize);
        emu_launch_swiglu_forward_bf16(out: VP, gate: CP, up: CP, len: usize);
        emu_launch_swiglu_backward_f32(dgate: VP, dup: VP, dout: CP, gate: CP, up: CP, len: usize);
        emu_launch_swiglu_backward_bf16(dgate: VP, dup: VP, dout: CP, gate: CP, up: CP, len: usize);
        emu_launch_cross_entropy_f32(loss: *mut f32, logits: VP, targets: *const i32, vocab: i32, scale: f32);
        emu_launch_cross_entropy_bf16(loss: *mut f32, logits: VP, targets: *const i32, vocab: i32, scale: f32);
        emu_launch_embedding_f32(out: VP, table: CP, ids: *const i32, h: i32, vocab: i32);
        emu_launch_embedding_bf16(out: VP, table: CP, ids: *const i32, h: i32, vocab: i32);
        emu_launch_attention_forward_f32(out: VP, lse: *mut f32, q: CP, k: CP, v: CP, starts: *const i32, n: i32, seq: i32, heads: i32, kv_heads: i32, hd: i32, scale: f32);
        emu_launch_attention_forward_bf16(out: VP, lse: *mut f32, q: CP, k: CP, v: CP, starts: *const i32, n: i32, seq: i32, heads: i32, kv_heads: i32, hd: i32, scale: f32);
        emu_launch_adamw_f32(p: *mut f32, g: *const f32, m: *mut f32, v: *mut f32, len: usize, w: f32, beta2: f32, one_minus_beta2: f32, eps: f32, decay: f32, neg_step_size: f32, bc2_sqrt: f32);
        emu_launch_cast_f32_to_bf16(dst: VP, src: *const f32, len: usize);
        emu_launch_cast_bf16_to_f32(dst: *mut f32, src: CP, len: usize);
        emu_launch_sumsq_partials_f32(partials: *mut f64, x: *const f32, len: usize);
        emu_launch_sum_partials_f64(out: *mut f64, partials: *const f64, count: i32);
        emu_launch_selftest_block_reduce(out: *mut f32, input: *const f32);
        emu_launch_selftest_warp(out: *mut i32, input: *const i32);
        emu_launch_selftest_atomics(counter: *mut i32, fsum: *mut f32, input: *const i32);
        emu_launch_selftest_divergent_barrier(out: *mut i32);
        emu_launch_selftest_bad_mask(out: *mut i32);
        emu_launch_selftest_missing_barrier(out: *mut f32);
        emu_launch_selftest_mma(d: *mut f32, a: *const u32, b: *const u32, c: *const f32);
        emu_launch_selftest_ldmatrix(out: *mut u32, input: *const u16, rows: *const i32, words: i32);
        emu_launch_selftest_mma_partial_warp(out: *mut f32);
        emu_launch_selftest_ldmatrix_bad(out: *mut u32, global: CP, mode: i32);
    }

    /// The emulator's float -> bf16 conversion, as bits.
    pub fn f32_to_bf16_bits(f: f32) -> u16 {
        // SAFETY: a pure function of its argument.
        unsafe { sys::emu_f32_to_bf16_bits(f) }
    }

    /// Makes this thread's launches resume a block's threads last-first (`true`) or
    /// first-first (`false`, the default) between barriers.
    pub fn set_reverse_schedule(reverse: bool) {
        // SAFETY: sets a thread-local flag of the emulator.
        unsafe { sys::emu_set_schedule(reverse as i32) }
    }

    pub(super) fn last_error() -> String {
        // SAFETY: emu_last_error returns a pointer to a NUL-terminated thread-local string
        // that stays valid until this thread's next launch.
        unsafe { CStr::from_ptr(sys::emu_last_error()) }
            .to_string_lossy()
            .into_owned()
    }
}

fn check(rc: i32) -> Result<(), String> {
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "emulator launch failed ({rc}): {}",
            raw::last_error()
        ))
    }
}

type RopeFn =
    fn(Dims, VP, *const f32, *const f32, *const i32, i32, i32, i32, i32) -> Result<(), String>;

type AttnFn =
    fn(Dims, VP, *mut f32, CP, CP, CP, *const i32, i32, i32, i32, i32, i32, f32) -> Launched;

/// Every launcher wrapper returns this.
pub type Launched = Result<(), String>;

/// The launchers of the kernels instantiated for one storage dtype.
#[allow(clippy::type_complexity)]
pub struct Typed {
    /// rmsnorm_forward_<T>
    pub rmsnorm_forward: fn(Dims, VP, *mut f32, CP, CP, i32, f32) -> Result<(), String>,
    /// rmsnorm_backward_<T>
    pub rmsnorm_backward: fn(Dims, VP, CP, CP, CP, *const f32, i32) -> Result<(), String>,
    /// rope_forward_<T>
    pub rope_forward: RopeFn,
    /// rope_backward_<T>
    pub rope_backward: RopeFn,
    /// swiglu_forward_<T>
    pub swiglu_forward: fn(Dims, VP, CP, CP, usize) -> Result<(), String>,
    /// swiglu_backward_<T>
    pub swiglu_backward: fn(Dims, VP, VP, CP, CP, CP, usize) -> Result<(), String>,
    /// cross_entropy_<T>
    pub cross_entropy: fn(Dims, *mut f32, VP, *const i32, i32, f32) -> Result<(), String>,
    /// attention_forward_<T>
    pub attention_forward: AttnFn,
    /// embedding_<T>
    pub embedding: fn(Dims, VP, CP, *const i32, i32, i32) -> Result<(), String>,
}

/// Runs `f` with the emulator resuming threads first-to-last, then last-to-first (a missing
/// `__syncthreads` reads unwritten or stale shared memory in one of the two).
pub fn both_schedules(mut f: impl FnMut()) {
    for reverse in [false, true] {
        raw::set_reverse_schedule(reverse);
        f();
    }
    raw::set_reverse_schedule(false);
}

/// A storage dtype of the kernels: f32 or bf16 (half::bf16, the same bits as __nv_bfloat16).
pub trait Elem: Copy + bytemuck::Pod + std::fmt::Debug {
    /// Suffix of the kernel names.
    const NAME: &'static str;
    /// Relative tolerance for outputs stored in this dtype.
    const RTOL: f64;
    /// The kernels instantiated for this dtype.
    const K: Typed;
    /// Round an f32 into this dtype.
    fn from_f32(x: f32) -> Self;
    /// Widen to f32.
    fn to_f32(self) -> f32;
}
impl Elem for f32 {
    const K: Typed = Typed {
        rmsnorm_forward: raw::emu_launch_rmsnorm_forward_f32,
        rmsnorm_backward: raw::emu_launch_rmsnorm_backward_f32,
        rope_forward: raw::emu_launch_rope_forward_f32,
        rope_backward: raw::emu_launch_rope_backward_f32,
        swiglu_forward: raw::emu_launch_swiglu_forward_f32,
        swiglu_backward: raw::emu_launch_swiglu_backward_f32,
        cross_entropy: raw::emu_launch_cross_entropy_f32,
        embedding: raw::emu_launch_embedding_f32,
        attention_forward: raw::emu_launch_attention_forward_f32,
    };
    const NAME: &'static str = "f32";
    const RTOL: f64 = 1e-5;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl Elem for half::bf16 {
    const K: Typed = Typed {
        rmsnorm_forward: raw::emu_launch_rmsnorm_forward_bf16,
        rmsnorm_backward: raw::emu_launch_rmsnorm_backward_bf16,
        rope_forward: raw::emu_launch_rope_forward_bf16,
        rope_backward: raw::emu_launch_rope_backward_bf16,
        swiglu_forward: raw::emu_launch_swiglu_forward_bf16,
        swiglu_backward: raw::emu_launch_swiglu_backward_bf16,
        cross_entropy: raw::emu_launch_cross_entropy_bf16,
        embedding: raw::emu_launch_embedding_bf16,
        attention_forward: raw::emu_launch_attention_forward_bf16,
    };
    const NAME: &'static str = "bf16";
    const RTOL: f64 = 1e-2;
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// A 16-byte aligned host buffer of `len` values of T (so the kernels' pack paths are taken
/// whenever the length allows).
pub struct Buf<T: Elem> {
    store: Vec<u128>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}
impl<T: Elem> Buf<T> {
    /// A buffer holding `vals`.
    pub fn from(vals: &[T]) -> Self {
        let bytes = std::mem::size_of_val(vals);
        let mut store = vec![0u128; bytes.div_ceil(16).max(1)];
        bytemuck::cast_slice_mut::<u128, u8>(&mut store)[..bytes]
            .copy_from_slice(bytemuck::cast_slice(vals));
        Self {
            store,
            len: vals.len(),
            _t: std::marker::PhantomData,
        }
    }
    /// A buffer of `len` NaNs (so unwritten outputs fail any comparison).
    pub fn nan(len: usize) -> Self {
        Self::from(&vec![T::from_f32(f32::NAN); len])
    }
    /// The values.
    pub fn vals(&self) -> &[T] {
        &bytemuck::cast_slice::<u128, T>(&self.store)[..self.len]
    }
    /// The values widened to f32.
    pub fn f32s(&self) -> Vec<f32> {
        self.vals().iter().map(|v| v.to_f32()).collect()
    }
    /// Mutable pointer for a launch.
    pub fn mp(&mut self) -> VP {
        self.store.as_mut_ptr().cast()
    }
    /// Const pointer for a launch.
    pub fn cp(&self) -> CP {
        self.store.as_ptr().cast()
    }
    /// Mutable pointer to element `i` (misaligned for the pack paths when `i` is odd).
    pub fn mp_at(&mut self, i: usize) -> VP {
        assert!(i <= self.len);
        // SAFETY: i is within the buffer (checked above).
        unsafe { self.mp().cast::<T>().add(i).cast() }
    }
    /// Const pointer to element `i`.
    pub fn cp_at(&self, i: usize) -> CP {
        assert!(i <= self.len);
        // SAFETY: i is within the buffer (checked above).
        unsafe { self.cp().cast::<T>().add(i).cast() }
    }
}

/// SplitMix64: a small seeded generator for test data.
pub struct Rng(u64);
impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// `len` values uniform in [lo, hi), rounded to T.
    pub fn vec<T: Elem>(&mut self, len: usize, lo: f32, hi: f32) -> Vec<T> {
        (0..len)
            .map(|_| T::from_f32(self.uniform(lo, hi)))
            .collect()
    }
}

/// Asserts `|got − want| <= atol + |want|·rtol` elementwise (NaN in `got` always fails).
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let tol = atol + w.abs() * rtol;
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (err {err:.3e} > tol {tol:.3e})"
        );
    }
}

/// Values widened to f64.
pub fn f64s<T: Elem>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}
