//! FFI of the attention kernels in the emulator (kernels/emu/launchers.cpp) for
//! ../kernels_emu_attention.rs: the raw `emu_launch_*` declarations, their function types and
//! the per-dtype tables of launchers (`Elem`). Neighbours: ../kernels_emu_attention.rs (the
//! tests), kernels/attention*.cu (the kernels).
#![allow(dead_code)]

use std::ffi::{c_void, CStr};

use half::bf16;

pub type VP = *mut c_void;
pub type CP = *const c_void;

pub mod sys {
    use super::{CP, VP};
    extern "C" {
        pub fn emu_last_error() -> *const std::ffi::c_char;
        pub fn emu_set_schedule(reverse: i32);
    }
    /// The one-warp-per-query forward and the backward's dot kernel of one dtype.
    macro_rules! simple {
        ($fwd:ident, $dot:ident) => {
            extern "C" {
                pub fn $fwd(
                    gx: u32,
                    gy: u32,
                    gz: u32,
                    bx: u32,
                    by: u32,
                    bz: u32,
                    smem: usize,
                    out: VP,
                    lse: *mut f32,
                    q: CP,
                    k: CP,
                    v: CP,
                    starts: *const i32,
                    n: i32,
                    seq: i32,
                    heads: i32,
                    kv_heads: i32,
                    hd: i32,
                    scale: f32,
                ) -> i32;
                pub fn $dot(
                    gx: u32,
                    gy: u32,
                    gz: u32,
                    bx: u32,
                    by: u32,
                    bz: u32,
                    smem: usize,
                    dsum: *mut f32,
                    dout: CP,
                    out: CP,
                    n: i32,
                    heads: i32,
                    hd: i32,
                ) -> i32;
            }
        };
    }
    /// Forwards with the tiled kernels' parameters (CUDA-core tiled and tensor-core).
    macro_rules! tiled {
        ($($tiled:ident),*) => {
            extern "C" {
                $(
                pub fn $tiled(gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, smem: usize,
                    out: VP, lse: *mut f32, q: CP, k: CP, v: CP, starts: *const i32, seq: i32,
                    heads: i32, kv_heads: i32, scale: f32) -> i32;
                )*
            }
        };
    }
    /// (dkdv, dq) pairs of backward kernels.
    macro_rules! bwd {
        ($(($dkdv:ident, $dq:ident)),*) => {
            extern "C" {
                $(
                pub fn $dkdv(gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, smem: usize,
                    dk: VP, dv: VP, q: CP, k: CP, v: CP, dout: CP, lse: *const f32,
                    dsum: *const f32, starts: *const i32, seq: i32, heads: i32, kv_heads: i32,
                    scale: f32) -> i32;
                pub fn $dq(gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, smem: usize,
                    dq: VP, q: CP, k: CP, v: CP, dout: CP, lse: *const f32, dsum: *const f32,
                    starts: *const i32, seq: i32, heads: i32, kv_heads: i32, scale: f32) -> i32;
                )*
            }
        };
    }
    simple!(
        emu_launch_attention_forward_f32,
        emu_launch_attention_backward_dot_f32
    );
    simple!(
        emu_launch_attention_forward_bf16,
        emu_launch_attention_backward_dot_bf16
    );
    tiled!(
        emu_launch_attention_forward_tiled_hd64_f32,
        emu_launch_attention_forward_tiled_hd128_f32,
        emu_launch_attention_forward_tiled_hd64_bf16,
        emu_launch_attention_forward_tiled_hd128_bf16,
        emu_launch_attention_forward_mma_hd64_bf16,
        emu_launch_attention_forward_mma_hd128_bf16
    );
    bwd!(
        (
            emu_launch_attention_backward_dkdv_hd32_f32,
            emu_launch_attention_backward_dq_hd32_f32
        ),
        (
            emu_launch_attention_backward_dkdv_hd64_f32,
            emu_launch_attention_backward_dq_hd64_f32
        ),
        (
            emu_launch_attention_backward_dkdv_hd128_f32,
            emu_launch_attention_backward_dq_hd128_f32
        ),
        (
            emu_launch_attention_backward_dkdv_hd32_bf16,
            emu_launch_attention_backward_dq_hd32_bf16
        ),
        (
            emu_launch_attention_backward_dkdv_hd64_bf16,
            emu_launch_attention_backward_dq_hd64_bf16
        ),
        (
            emu_launch_attention_backward_dkdv_hd128_bf16,
            emu_launch_attention_backward_dq_hd128_bf16
        ),
        (
            emu_launch_attention_backward_dkdv_mma_hd64_bf16,
            emu_launch_attention_backward_dq_mma_hd64_bf16
        ),
        (
            emu_launch_attention_backward_dkdv_mma_hd128_bf16,
            emu_launch_attention_backward_dq_mma_hd128_bf16
        )
    );
}

/// Panics with the emulator's reason when a launch failed.
pub fn check(rc: i32, what: &str) {
    if rc != 0 {
        // SAFETY: emu_last_error returns a NUL-terminated thread-local string, valid until
        // this thread's next launch.
        let why = unsafe { CStr::from_ptr(sys::emu_last_error()) }.to_string_lossy();
        panic!("{what}: emulator launch failed ({rc}): {why}");
    }
}

// The launchers' types: grid x, y, z, block x, y, z, dynamic shared memory bytes, then the
// kernel's parameters (one line each, so the lists read against kernels/emu/launchers.cpp).
#[rustfmt::skip]
pub type FwdFn = unsafe extern "C" fn(
    u32, u32, u32, u32, u32, u32, usize, VP, *mut f32, CP, CP, CP, *const i32, i32, i32, i32, i32, i32, f32,
) -> i32;
#[rustfmt::skip]
pub type TiledFn = unsafe extern "C" fn(
    u32, u32, u32, u32, u32, u32, usize, VP, *mut f32, CP, CP, CP, *const i32, i32, i32, i32, f32,
) -> i32;
#[rustfmt::skip]
pub type DotFn = unsafe extern "C" fn(
    u32, u32, u32, u32, u32, u32, usize, *mut f32, CP, CP, i32, i32, i32,
) -> i32;
#[rustfmt::skip]
pub type DkdvFn = unsafe extern "C" fn(
    u32, u32, u32, u32, u32, u32, usize, VP, VP, CP, CP, CP, CP, *const f32, *const f32, *const i32, i32, i32, i32, f32,
) -> i32;
#[rustfmt::skip]
pub type DqFn = unsafe extern "C" fn(
    u32, u32, u32, u32, u32, u32, usize, VP, CP, CP, CP, CP, *const f32, *const f32, *const i32, i32, i32, i32, f32,
) -> i32;

/// A storage dtype of the kernels and its launchers.
pub trait Elem: Copy + bytemuck::Pod {
    const NAME: &'static str;
    /// Relative tolerance of values stored in this dtype.
    const RTOL: f64;
    const FWD: FwdFn;
    /// (hd, tiled forward) per head_dim with a tiled forward.
    const TILED: [(usize, TiledFn); 2];
    const DOT: DotFn;
    /// (hd, dkdv, dq) per supported head_dim.
    const BWD: [(usize, DkdvFn, DqFn); 3];
    /// (hd, forward, dkdv, dq) of the tensor-core kernels (bf16 only).
    const MMA: &'static [(usize, TiledFn, DkdvFn, DqFn)];
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}
impl Elem for f32 {
    const NAME: &'static str = "f32";
    const RTOL: f64 = 1e-4;
    const FWD: FwdFn = sys::emu_launch_attention_forward_f32;
    const TILED: [(usize, TiledFn); 2] = [
        (64, sys::emu_launch_attention_forward_tiled_hd64_f32),
        (128, sys::emu_launch_attention_forward_tiled_hd128_f32),
    ];
    const DOT: DotFn = sys::emu_launch_attention_backward_dot_f32;
    const BWD: [(usize, DkdvFn, DqFn); 3] = [
        (
            32,
            sys::emu_launch_attention_backward_dkdv_hd32_f32,
            sys::emu_launch_attention_backward_dq_hd32_f32,
        ),
        (
            64,
            sys::emu_launch_attention_backward_dkdv_hd64_f32,
            sys::emu_launch_attention_backward_dq_hd64_f32,
        ),
        (
            128,
            sys::emu_launch_attention_backward_dkdv_hd128_f32,
            sys::emu_launch_attention_backward_dq_hd128_f32,
        ),
    ];
    const MMA: &'static [(usize, TiledFn, DkdvFn, DqFn)] = &[];
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl Elem for bf16 {
    const NAME: &'static str = "bf16";
    const RTOL: f64 = 1.6e-2;
    const FWD: FwdFn = sys::emu_launch_attention_forward_bf16;
    const TILED: [(usize, TiledFn); 2] = [
        (64, sys::emu_launch_attention_forward_tiled_hd64_bf16),
        (128, sys::emu_launch_attention_forward_tiled_hd128_bf16),
    ];
    const DOT: DotFn = sys::emu_launch_attention_backward_dot_bf16;
    const BWD: [(usize, DkdvFn, DqFn); 3] = [
        (
            32,
            sys::emu_launch_attention_backward_dkdv_hd32_bf16,
            sys::emu_launch_attention_backward_dq_hd32_bf16,
        ),
        (
            64,
            sys::emu_launch_attention_backward_dkdv_hd64_bf16,
            sys::emu_launch_attention_backward_dq_hd64_bf16,
        ),
        (
            128,
            sys::emu_launch_attention_backward_dkdv_hd128_bf16,
            sys::emu_launch_attention_backward_dq_hd128_bf16,
        ),
    ];
    const MMA: &'static [(usize, TiledFn, DkdvFn, DqFn)] = &[
        (
            64,
            sys::emu_launch_attention_forward_mma_hd64_bf16,
            sys::emu_launch_attention_backward_dkdv_mma_hd64_bf16,
            sys::emu_launch_attention_backward_dq_mma_hd64_bf16,
        ),
        (
            128,
            sys::emu_launch_attention_forward_mma_hd128_bf16,
            sys::emu_launch_attention_backward_dkdv_mma_hd128_bf16,
            sys::emu_launch_attention_backward_dq_mma_hd128_bf16,
        ),
    ];
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
