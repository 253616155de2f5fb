//! The one list of kernels: every `extern "C"` kernel of kernels/*.cu with its parameters
//! (buffers written `W<T>`, buffers read `R<T>`, scalars), in declaration order. From it the
//! [`kernel!`] macro generates, per kernel, the parameter list that `check_args` checks every
//! launch against (on every device) and the emulator's call: the `extern "C"
//! emu_launch_<kernel>` declaration of kernels/emu/launchers.cpp with matching C types and a
//! thunk that passes a checked argument list to it. A kernel added to kernels/ needs one line
//! here (and its `EMU_LAUNCHER` line); the CUDA side finds it in the fatbin by name (a test
//! checks every name here is in the ptxas report). Neighbours: mod.rs (`check_args`), emu.rs.

use std::ffi::{c_char, c_void};
use std::ptr;
use std::sync::OnceLock;

use super::emu::EmuBuf;
use super::{Elem, KArg, Launch};

/// One kernel parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// A buffer of this element type the kernel writes (`T*`).
    Out(Elem),
    /// A buffer of this element type the kernel only reads (`const T*`).
    In(Elem),
    /// `int`.
    I32,
    /// `unsigned`.
    U32,
    /// `float`.
    F32,
    /// `unsigned long long`.
    U64,
    /// `size_t`.
    Usize,
}

/// The emulator's entry for one kernel: checked arguments in, the launcher's return code out.
type EmuThunk = for<'a, 'b> unsafe fn(&'a Launch, &'a mut [KArg<'b, EmuBuf>]) -> i32;

struct Entry {
    name: String,
    params: Vec<Param>,
    emu: EmuThunk,
}

macro_rules! elem {
    (f32) => {
        Elem::F32
    };
    (bf16) => {
        Elem::Bf16
    };
    (i32) => {
        Elem::I32
    };
    (f64) => {
        Elem::F64
    };
}

macro_rules! param {
    (W $t:ident) => {
        Param::Out(elem!($t))
    };
    (R $t:ident) => {
        Param::In(elem!($t))
    };
    (i32) => {
        Param::I32
    };
    (u32) => {
        Param::U32
    };
    (f32) => {
        Param::F32
    };
    (u64) => {
        Param::U64
    };
    (usize) => {
        Param::Usize
    };
}

macro_rules! ffi_ty {
    (W $t:ident) => { *mut c_void };
    (R $t:ident) => { *const c_void };
    ($s:ident) => { $s };
}

macro_rules! conv {
    ($it:ident, W $t:ident) => {
        ptr_mut($it.next())
    };
    ($it:ident, R $t:ident) => {
        ptr_const($it.next())
    };
    ($it:ident, i32) => {
        scalar_i32($it.next())
    };
    ($it:ident, u32) => {
        scalar_u32($it.next())
    };
    ($it:ident, f32) => {
        scalar_f32($it.next())
    };
    ($it:ident, u64) => {
        scalar_u64($it.next())
    };
    ($it:ident, usize) => {
        scalar_usize($it.next())
    };
}

/// `kernel!(name_literal, (param: KIND<T>, ...))`: the table entry of one kernel.
macro_rules! kernel {
    ($name:expr, ($($arg:ident : $k:ident $(<$t:ident>)?),* $(,)?)) => {{
        extern "C" {
            // The launcher of kernels/emu/launchers.cpp: grid, block, dynamic shared memory,
            // then the kernel's own parameters.
            #[link_name = concat!("emu_launch_", $name)]
            fn launch(
                gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, smem: usize,
                $($arg: ffi_ty!($k $($t)?)),*
            ) -> i32;
        }
        unsafe fn thunk(cfg: &Launch, args: &mut [KArg<'_, EmuBuf>]) -> i32 {
            #[allow(unused_mut, unused_variables)]
            let mut it = args.iter_mut();
            let [gx, gy, gz] = cfg.grid;
            let [bx, by, bz] = cfg.block;
            // SAFETY: the declaration matches the C launcher (generated from the same list as
            // the parameter kinds checked by `check_args` before any call); the caller
            // guarantees the buffers are long enough for the launch.
            unsafe { launch(gx, gy, gz, bx, by, bz, cfg.smem as usize, $(conv!(it, $k $($t)?)),*) }
        }
        Entry {
            name: $name.to_string(),
            params: vec![$(param!($k $($t)?)),*],
            emu: thunk,
        }
    }};
}

/// The kernels instantiated for storage `$T` (`f32` or `bf16`), names suffixed `$s`.
macro_rules! typed_kernels {
    ($s:literal, $T:ident) => {
        vec![
            kernel!(concat!("rmsnorm_forward_", $s), (out: W<$T>, rstd: W<f32>, x: R<$T>, w: R<$T>, h: i32, eps: f32)),
            kernel!(concat!("rmsnorm_backward_", $s), (dx: W<$T>, dout: R<$T>, x: R<$T>, w: R<$T>, rstd: R<f32>, h: i32)),
            kernel!(concat!("rope_forward_", $s), (x: W<$T>, c: R<f32>, s: R<f32>, pos: R<i32>, n: i32, heads: i32, hd: i32, max_pos: i32)),
            kernel!(concat!("rope_backward_", $s), (x: W<$T>, c: R<f32>, s: R<f32>, pos: R<i32>, n: i32, heads: i32, hd: i32, max_pos: i32)),
            kernel!(concat!("swiglu_forward_", $s), (out: W<$T>, gate: R<$T>, up: R<$T>, len: usize)),
            kernel!(concat!("swiglu_backward_", $s), (dgate: W<$T>, dup: W<$T>, dout: R<$T>, gate: R<$T>, up: R<$T>, len: usize)),
            kernel!(concat!("cross_entropy_", $s), (loss: W<f32>, logits: W<$T>, targets: R<i32>, vocab: i32, scale: f32)),
            kernel!(concat!("embedding_", $s), (out: W<$T>, table: R<$T>, ids: R<i32>, h: i32, vocab: i32)),
            kernel!(concat!("fill_", $s), (x: W<$T>, len: usize, value: f32)),
            kernel!(concat!("copy_", $s), (dst: W<$T>, src: R<$T>, len: usize)),
            kernel!(concat!("axpy_", $s), (x: W<$T>, y: R<$T>, len: usize, alpha: f32)),
            kernel!(concat!("scale_", $s), (x: W<$T>, len: usize, alpha: f32)),
            kernel!(concat!("add_bias_", $s), (x: W<$T>, bias: R<$T>, len: usize, d: i32)),
            kernel!(concat!("dropout_", $s), (out: W<$T>, x: R<$T>, len: usize, key: u64, threshold: u32, scale: f32)),
            kernel!(concat!("copy_rows_", $s), (dst: W<$T>, src: R<$T>, rows: R<i32>, len: usize, width: i32)),
            kernel!(concat!("attention_forward_", $s), (out: W<$T>, lse: W<f32>, q: R<$T>, k: R<$T>, v: R<$T>, starts: R<i32>, n: i32, seq: i32, heads: i32, kv_heads: i32, hd: i32, scale: f32)),
            kernel!(concat!("attention_decode_", $s), (out: W<$T>, q: R<$T>, k: R<$T>, v: R<$T>, first: R<i32>, last: R<i32>, b: i32, heads: i32, kv_heads: i32, hd: i32, scale: f32)),
            kernel!(concat!("attention_forward_tiled_hd64_", $s), (out: W<$T>, lse: W<f32>, q: R<$T>, k: R<$T>, v: R<$T>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!(concat!("attention_forward_tiled_hd128_", $s), (out: W<$T>, lse: W<f32>, q: R<$T>, k: R<$T>, v: R<$T>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!(concat!("attention_backward_dot_", $s), (dsum: W<f32>, dout: R<$T>, out: R<$T>, n: i32, heads: i32, hd: i32)),
            kernel!(concat!("attention_backward_dkdv_hd32_", $s), (dk: W<$T>, dv: W<$T>, q: R<$T>, k: R<$T>, v: R<$T>, dout: R<$T>, lse: R<f32>, dsum: R<f32>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!(concat!("attention_backward_dkdv_hd64_", $s), (dk: W<$T>, dv: W<$T>, q: R<$T>, k: R<$T>, v: R<$T>, dout: R<$T>, lse: R<f32>, dsum: R<f32>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!(concat!("attention_backward_dkdv_hd128_", $s), (dk: W<$T>, dv: W<$T>, q: R<$T>, k: R<$T>, v: R<$T>, dout: R<$T>, lse: R<f32>, dsum: R<f32>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!(concat!("attention_backward_dq_hd32_", $s), (dq: W<$T>, q: R<$T>, k: R<$T>, v: R<$T>, dout: R<$T>, lse: R<f32>, dsum: R<f32>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!(concat!("attention_backward_dq_hd64_", $s), (dq: W<$T>, q: R<$T>, k: R<$T>, v: R<$T>, dout: R<$T>, lse: R<f32>, dsum: R<f32>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!(concat!("attention_backward_dq_hd128_", $s), (dq: W<$T>, q: R<$T>, k: R<$T>, v: R<$T>, dout: R<$T>, lse: R<f32>, dsum: R<f32>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
        ]
    };
}

fn table() -> &'static [Entry] {
    static TABLE: OnceLock<Vec<Entry>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = typed_kernels!("f32", f32);
        t.extend(typed_kernels!("bf16", bf16));
        t.extend([
            kernel!("adamw_f32", (p: W<f32>, g: R<f32>, m: W<f32>, v: W<f32>, len: usize, w: f32, beta2: f32, one_minus_beta2: f32, eps: f32, decay: f32, neg_step_size: f32, bc2_sqrt: f32)),
            kernel!("attention_forward_mma_hd64_bf16", (out: W<bf16>, lse: W<f32>, q: R<bf16>, k: R<bf16>, v: R<bf16>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!("attention_forward_mma_hd128_bf16", (out: W<bf16>, lse: W<f32>, q: R<bf16>, k: R<bf16>, v: R<bf16>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!("attention_backward_dkdv_mma_hd64_bf16", (dk: W<bf16>, dv: W<bf16>, q: R<bf16>, k: R<bf16>, v: R<bf16>, dout: R<bf16>, lse: R<f32>, dsum: R<f32>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!("attention_backward_dkdv_mma_hd128_bf16", (dk: W<bf16>, dv: W<bf16>, q: R<bf16>, k: R<bf16>, v: R<bf16>, dout: R<bf16>, lse: R<f32>, dsum: R<f32>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!("attention_backward_dq_mma_hd64_bf16", (dq: W<bf16>, q: R<bf16>, k: R<bf16>, v: R<bf16>, dout: R<bf16>, lse: R<f32>, dsum: R<f32>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!("attention_backward_dq_mma_hd128_bf16", (dq: W<bf16>, q: R<bf16>, k: R<bf16>, v: R<bf16>, dout: R<bf16>, lse: R<f32>, dsum: R<f32>, starts: R<i32>, seq: i32, heads: i32, kv_heads: i32, scale: f32)),
            kernel!("cast_f32_to_bf16", (dst: W<bf16>, src: R<f32>, len: usize)),
            kernel!("cast_bf16_to_f32", (dst: W<f32>, src: R<bf16>, len: usize)),
            kernel!("sumsq_partials_f32", (partials: W<f64>, x: R<f32>, len: usize)),
            kernel!("sum_partials_f64", (out: W<f64>, partials: R<f64>, count: i32)),
            kernel!("sum_segments_f64", (out: W<f64>, partials: R<f64>, offsets: R<i32>, segments: i32)),
        ]);
        t
    })
}

fn entry(name: &str) -> Option<&'static Entry> {
    table().iter().find(|e| e.name == name)
}

/// The parameter list of kernel `name`, or `None` when kernels/ has no such kernel.
pub fn signature(name: &str) -> Option<&'static [Param]> {
    entry(name).map(|e| e.params.as_slice())
}

/// The names of every kernel in the table.
pub fn kernel_names() -> impl Iterator<Item = &'static str> {
    table().iter().map(|e| e.name.as_str())
}

extern "C" {
    fn emu_last_error() -> *const c_char;
}

/// Runs kernel `name` in the emulator; `Err` holds the emulator's reason.
///
/// # Safety
/// `args` must have been checked against the kernel's parameters (`check_args`), and the
/// buffers must be long enough for the launch.
pub(super) unsafe fn emu_call(
    name: &str,
    cfg: &Launch,
    args: &mut [KArg<'_, EmuBuf>],
) -> std::result::Result<(), String> {
    let Some(e) = entry(name) else {
        return Err(format!("no kernel `{name}` in the emulator"));
    };
    // SAFETY: the caller's contract.
    let rc = unsafe { (e.emu)(cfg, args) };
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: emu_last_error returns a NUL-terminated thread-local string valid until this
    // thread's next launch.
    let why = unsafe { std::ffi::CStr::from_ptr(emu_last_error()) };
    Err(format!(
        "emulator launch failed ({rc}): {}",
        why.to_string_lossy()
    ))
}

fn ptr_mut(a: Option<&mut KArg<'_, EmuBuf>>) -> *mut c_void {
    match a {
        Some(KArg::Mut(b, off)) => b.ptr_mut(*off),
        _ => ptr::null_mut(),
    }
}

fn ptr_const(a: Option<&mut KArg<'_, EmuBuf>>) -> *const c_void {
    match a {
        Some(KArg::Ref(b, off)) => b.ptr(*off),
        Some(KArg::Mut(b, off)) => b.ptr(*off),
        _ => ptr::null(),
    }
}

fn scalar_i32(a: Option<&mut KArg<'_, EmuBuf>>) -> i32 {
    match a {
        Some(KArg::I32(v)) => *v,
        _ => 0,
    }
}

fn scalar_u32(a: Option<&mut KArg<'_, EmuBuf>>) -> u32 {
    match a {
        Some(KArg::U32(v)) => *v,
        _ => 0,
    }
}

fn scalar_f32(a: Option<&mut KArg<'_, EmuBuf>>) -> f32 {
    match a {
        Some(KArg::F32(v)) => *v,
        _ => 0.0,
    }
}

fn scalar_u64(a: Option<&mut KArg<'_, EmuBuf>>) -> u64 {
    match a {
        Some(KArg::U64(v)) => *v,
        _ => 0,
    }
}

fn scalar_usize(a: Option<&mut KArg<'_, EmuBuf>>) -> usize {
    match a {
        Some(KArg::Usize(v)) => *v,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_kernel_family_is_listed() {
        let names: Vec<&str> = kernel_names().collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate kernel names");
        // Every `extern "C" __global__` kernel name of a .cu file (spelled out, or built by a
        // macro from a `name_##S` pattern) is in the table.
        let src = [
            include_str!("../../../../kernels/adamw.cu"),
            include_str!("../../../../kernels/cast.cu"),
            include_str!("../../../../kernels/norm.cu"),
            include_str!("../../../../kernels/elementwise.cu"),
            include_str!("../../../../kernels/swiglu.cu"),
            include_str!("../../../../kernels/rope.cu"),
            include_str!("../../../../kernels/rmsnorm.cu"),
            include_str!("../../../../kernels/embedding.cu"),
            include_str!("../../../../kernels/cross_entropy.cu"),
        ];
        for s in src {
            for part in s.split("__global__").skip(1) {
                let mut part = part.to_string();
                while let Some(i) = part.find("__launch_bounds__(") {
                    let j = part[i..].find(')').map_or(part.len(), |j| i + j + 1);
                    part.replace_range(i..j, "");
                }
                let head = part.split('(').next().unwrap_or_default();
                let name = head.split_whitespace().last().unwrap_or_default();
                let name = name.trim_end_matches("##S").trim_end_matches('_');
                let stem_found = names.iter().any(|n| n.starts_with(name));
                assert!(stem_found, "kernel {name} missing from the table");
            }
        }
        assert!(signature("axpy_bf16").is_some());
        assert!(signature("axpy_f16").is_none());
    }
}
