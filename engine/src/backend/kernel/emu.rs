//! [`EmuDevice`]: the kernel emulator (kernels/emu, bundled with the engine by build.rs) as a
//! [`KernelDevice`], so `KernelBackend<EmuDevice>` runs the exact kernels/*.cu sources on the
//! CPU — the CUDA backend's op logic exercised in CI without a GPU. Buffers are 16-byte
//! aligned host memory ([`EmuBuf`]); launches go through the generated FFI table
//! (`table.rs`); GEMMs run on the CPU backend's faer GEMM (bf16 operands widened to f32,
//! a bf16 C rounded back). One launch at a time (the emulator's global lock); slow by design
//! (GPU threads are fibers on one core): keep problem sizes tiny.
//! Neighbours: table.rs (kernel list, FFI), mod.rs (the trait), ../cpu/gemm.rs.

use std::ffi::c_void;

use half::bf16;

use super::table::emu_call;
use super::{Elem, GemmShape, KArg, KernelDevice, Launch};
use crate::backend::cpu::gemm::Gemm;
use crate::error::{Error, Result};

/// A host buffer of `len` values of one [`Elem`], 16-byte aligned (so the kernels' packed
/// paths run as they do on the GPU).
#[derive(Clone, Debug)]
pub struct EmuBuf {
    elem: Elem,
    len: usize,
    store: Vec<u128>,
}

impl EmuBuf {
    fn zeros(elem: Elem, len: usize) -> Self {
        EmuBuf {
            elem,
            len,
            store: vec![0u128; (len * elem.size()).div_ceil(16).max(1)],
        }
    }
    fn from_bytes(elem: Elem, len: usize, bytes: &[u8]) -> Self {
        let mut b = Self::zeros(elem, len);
        bytemuck::cast_slice_mut::<u128, u8>(&mut b.store)[..bytes.len()].copy_from_slice(bytes);
        b
    }
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u128, u8>(&self.store)[..self.len * self.elem.size()]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        let n = self.len * self.elem.size();
        &mut bytemuck::cast_slice_mut::<u128, u8>(&mut self.store)[..n]
    }
    /// Pointer to element `off` (at most `len`) for a launch that may write.
    pub(super) fn ptr_mut(&mut self, off: usize) -> *mut c_void {
        let at = off.min(self.len) * self.elem.size();
        self.bytes_mut()[at..].as_mut_ptr().cast()
    }
    /// Pointer to element `off` (at most `len`) for a launch that only reads.
    pub(super) fn ptr(&self, off: usize) -> *const c_void {
        let at = off.min(self.len) * self.elem.size();
        self.bytes()[at..].as_ptr().cast()
    }
    fn f32s(&self) -> Result<Vec<f32>> {
        match self.elem {
            Elem::F32 => Ok(bytemuck::cast_slice::<u8, f32>(self.bytes()).to_vec()),
            Elem::Bf16 => Ok(bytemuck::cast_slice::<u8, u16>(self.bytes())
                .iter()
                .map(|&b| bf16::from_bits(b).to_f32())
                .collect()),
            e => Err(Error::device(
                "emu",
                "download",
                format!("a {e:?} buffer has no f32 values"),
            )),
        }
    }
}

/// The kernel emulator as a device (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
pub struct EmuDevice;

impl KernelDevice for EmuDevice {
    type Buf = EmuBuf;

    fn name(&self) -> String {
        "emu".to_string()
    }

    fn alloc(&self, elem: Elem, len: usize) -> Result<EmuBuf> {
        Ok(EmuBuf::zeros(elem, len))
    }

    fn upload_f32(&self, data: &[f32]) -> Result<EmuBuf> {
        Ok(EmuBuf::from_bytes(
            Elem::F32,
            data.len(),
            bytemuck::cast_slice(data),
        ))
    }

    fn upload_bf16(&self, data: &[bf16]) -> Result<EmuBuf> {
        Ok(EmuBuf::from_bytes(
            Elem::Bf16,
            data.len(),
            bytemuck::cast_slice(data),
        ))
    }

    fn upload_i32(&self, data: &[i32]) -> Result<EmuBuf> {
        Ok(EmuBuf::from_bytes(
            Elem::I32,
            data.len(),
            bytemuck::cast_slice(data),
        ))
    }

    fn download_f32(&self, buf: &EmuBuf) -> Result<Vec<f32>> {
        buf.f32s()
    }

    fn download_f64(&self, buf: &EmuBuf) -> Result<Vec<f64>> {
        if buf.elem != Elem::F64 {
            return Err(Error::device(
                "emu",
                "download",
                format!("a {:?} buffer has no f64 values", buf.elem),
            ));
        }
        Ok(bytemuck::cast_slice::<u8, f64>(buf.bytes()).to_vec())
    }

    fn len(&self, buf: &EmuBuf) -> usize {
        buf.len
    }

    fn elem(&self, buf: &EmuBuf) -> Elem {
        buf.elem
    }

    unsafe fn launch(&self, name: &str, cfg: &Launch, args: &mut [KArg<'_, EmuBuf>]) -> Result<()> {
        // SAFETY: the caller checked the arguments against the kernel table and guarantees
        // the buffer lengths.
        unsafe { emu_call(name, cfg, args) }.map_err(|why| {
            Error::device(
                "emu",
                format!("launch {name} grid {:?} block {:?}", cfg.grid, cfg.block),
                why,
            )
        })
    }

    fn gemm(
        &self,
        c: (&mut EmuBuf, usize),
        a: (&EmuBuf, usize),
        b: (&EmuBuf, usize),
        s: GemmShape,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let (cb, c0) = c;
        let ((ab, a0), (bb, b0)) = (a, b);
        let avail = |buf: &EmuBuf, off: usize| buf.len.saturating_sub(off);
        let [cn, an, bn] = s.check(avail(cb, c0), avail(ab, a0), avail(bb, b0))?;
        let float = |e| e == Elem::F32 || e == Elem::Bf16;
        if ab.elem != bb.elem || !float(ab.elem) || !(cb.elem == Elem::F32 || cb.elem == ab.elem) {
            return Err(Error::shape(
                "gemm",
                format!(
                    "a, b, c are {:?}, {:?}, {:?}; a and b must share f32 or bf16 and c be f32 or that type",
                    ab.elem, bb.elem, cb.elem
                ),
            ));
        }
        let g = Gemm {
            m: s.m,
            n: s.n,
            k: s.k,
            trans_a: s.trans_a,
            trans_b: s.trans_b,
        };
        let av = ab.f32s()?;
        let bv = bb.f32s()?;
        let (a, b) = (&av[a0..a0 + an], &bv[b0..b0 + bn]);
        if cb.elem == Elem::F32 {
            let cs = &mut bytemuck::cast_slice_mut::<u8, f32>(cb.bytes_mut())[c0..c0 + cn];
            g.run(cs, a, b, alpha, beta);
        } else {
            let mut cv = cb.f32s()?[c0..c0 + cn].to_vec();
            g.run(&mut cv, a, b, alpha, beta);
            let cs = &mut bytemuck::cast_slice_mut::<u8, u16>(cb.bytes_mut())[c0..c0 + cn];
            for (d, v) in cs.iter_mut().zip(cv) {
                *d = bf16::from_f32(v).to_bits();
            }
        }
        Ok(())
    }
}
