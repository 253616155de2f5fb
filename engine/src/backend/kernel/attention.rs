//! Attention on the kernel backend: causal GQA attention over packed rows with the semantics
//! of `Backend::attention_forward` / `attention_backward` (the CPU backend's
//! backend/cpu/attention.rs is the reference). The launch shapes of kernels/attention.cu,
//! attention_backward.cu (CUDA cores, f32 accumulation) and attention_mma.cu,
//! attention_mma_backward.cu (tensor cores: mma.sync on bf16 operands, f32 accumulation) live
//! here once, their tile tables in attn_tiles.rs. bf16 buffers with head_dim 64 or 128 take
//! the tensor-core kernels both ways; otherwise the forward takes the tiled kernel for head_dim
//! 64 and 128 and the one-warp-per-query kernel for any other head_dim up to 256 (f32 buffers:
//! the CPU-comparable reference mode). The backward runs `attention_backward_dot` (D =
//! rowsum(dout∘out) into an f32 workspace kept by the backend), then `dkdv`, then `dq` (head_dim
//! 32, 64 or 128). Neighbours: attn_tiles.rs, ops.rs (the other ops), mod.rs (state, devices).

use super::attn_tiles::{
    backward_smem_bytes, backward_tiles, forward_tiled, mma_tiles, uses_tensor_cores,
    ATTN_FORWARD_MAX_HD, ATTN_TILE_THREADS, ATTN_WARPS, MMA_ROWS,
};
use super::{meta_buf, scratch, Elem, KArg, KernelBackend, KernelDevice, Launch, Meta};
use crate::backend::attention_dims::AttnDims;
use crate::error::{Error, Result};

/// CUDA's grid y/z limit.
const GRID_YZ_MAX: usize = 65_535;

/// Checked dims of one attention call: the checks every backend shares, plus the kernels'
/// int32 indexing limits.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims(AttnDims);

impl std::ops::Deref for Dims {
    type Target = AttnDims;

    fn deref(&self) -> &AttnDims {
        &self.0
    }
}

impl Dims {
    /// The shared checks' dims `d`, checked against the kernels' indexing: byte sizes fit a
    /// `usize`, `n·heads`, `seq` and `hd` an `i32` (`n·heads·hd` fits a `usize` by
    /// [`AttnDims::new`]).
    pub(super) fn new(d: AttnDims) -> Result<Self> {
        let int = |x: usize| x <= i32::MAX as usize;
        let fits =
            d.n * d.heads * d.hd <= usize::MAX / 4 && int(d.n * d.heads) && int(d.seq) && int(d.hd);
        if !fits {
            return Err(Error::shape(
                d.op,
                format!("{} exceed the kernels' int32 indexing", d.describe()),
            ));
        }
        Ok(Dims(d))
    }

    fn grid_yz(&self) -> Result<()> {
        if self.batch > GRID_YZ_MAX || self.heads > GRID_YZ_MAX {
            return Err(Error::shape(
                self.op,
                format!(
                    "batch and heads must be at most {GRID_YZ_MAX} (grid y/z) for {}",
                    self.describe()
                ),
            ));
        }
        Ok(())
    }

    /// Grid of one warp per (token, head) with [`ATTN_WARPS`] warps per block.
    fn warp_grid(&self, smem: u32) -> Launch {
        Launch {
            grid: [
                (self.n * self.heads).div_ceil(ATTN_WARPS as usize) as u32,
                1,
                1,
            ],
            block: [32 * ATTN_WARPS, 1, 1],
            smem,
        }
    }

    /// Grid of the tiled kernels: `ceil(seq / rows)` tiles × batch rows × `heads` heads, 128
    /// threads, the CUDA-core kernels' shared memory for hd.
    fn tile_grid(&self, rows: usize, heads: usize) -> Launch {
        let smem = backward_smem_bytes(self.hd).unwrap_or(0);
        self.rows_grid(rows, heads, smem)
    }

    /// Grid of the tensor-core kernels: 64-row blocks, `smem` bytes of dynamic shared memory.
    fn mma_grid(&self, heads: usize, smem: usize) -> Launch {
        self.rows_grid(MMA_ROWS, heads, smem)
    }

    /// `ceil(seq / rows)` blocks × batch rows × `heads` heads of 128 threads.
    fn rows_grid(&self, rows: usize, heads: usize, smem: usize) -> Launch {
        Launch {
            grid: [
                self.seq.div_ceil(rows) as u32,
                self.batch as u32,
                heads as u32,
            ],
            block: [ATTN_TILE_THREADS, 1, 1],
            smem: smem as u32,
        }
    }

    fn scale_f32(&self) -> f32 {
        self.scale() as f32
    }
}

/// An int argument: a dim bounded by i32::MAX in `Dims::new` (n·heads, seq, hd).
fn iarg<'a, B>(x: usize) -> KArg<'a, B> {
    KArg::I32(x as i32)
}

/// The gradient buffers of one backward call (overwritten).
pub(super) struct Grads<'a, B> {
    pub dq: &'a mut B,
    pub dk: &'a mut B,
    pub dv: &'a mut B,
}

/// The forward's inputs and outputs the backward reads.
pub(super) struct Saved<'a, B> {
    pub dout: &'a B,
    pub q: &'a B,
    pub k: &'a B,
    pub v: &'a B,
    pub out: &'a B,
    pub lse: &'a B,
}

impl<D: KernelDevice> KernelBackend<D> {
    /// Causal GQA attention forward (see the module doc for the kernel choice).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attn_forward(
        &self,
        d: &Dims,
        out: &mut D::Buf,
        lse: &mut D::Buf,
        q: &D::Buf,
        k: &D::Buf,
        v: &D::Buf,
        starts: &[u32],
    ) -> Result<()> {
        let op = d.op;
        if d.hd > ATTN_FORWARD_MAX_HD {
            return Err(Error::unsupported(format!(
                "{op}: head_dim {} exceeds the kernel's {ATTN_FORWARD_MAX_HD}",
                d.hd
            )));
        }
        d.check_q("out", self.dev.len(out))?;
        d.check_q("q", self.dev.len(q))?;
        d.check_kv("k", self.dev.len(k))?;
        d.check_kv("v", self.dev.len(v))?;
        d.check_lse("lse", self.dev.len(lse))?;
        let e = self.storage(op, "q", q)?;
        self.same_elem(op, e, &[("out", out), ("k", k), ("v", v)])?;
        self.same_elem(op, Elem::F32, &[("lse", lse)])?;
        if d.n == 0 {
            return Ok(());
        }
        let mma = mma_tiles(d.hd).filter(|_| uses_tensor_cores(e, d.hd));
        let tiled = forward_tiled(d.hd);
        if tiled || mma.is_some() {
            d.grid_yz()?;
        }
        let mut guard = self.lock()?;
        let slot = &mut guard.meta[Meta::Starts as usize];
        let st = meta_buf(&self.dev, slot, starts.iter().map(|&s| s as i32))?;
        let mut args = vec![
            KArg::Mut(out, 0),
            KArg::Mut(lse, 0),
            KArg::Ref(q, 0),
            KArg::Ref(k, 0),
            KArg::Ref(v, 0),
            KArg::Ref(st, 0),
        ];
        let (name, cfg) = if let Some(t) = mma {
            args.extend([d.seq, d.heads, d.kv_heads].map(iarg));
            let name = format!("attention_forward_mma_hd{}_bf16", d.hd);
            (name, d.mma_grid(d.heads, t.forward_smem(d.hd)))
        } else if tiled {
            let (bq, _) = backward_tiles(d.hd).unwrap_or((16, 16));
            args.extend([d.seq, d.heads, d.kv_heads].map(iarg));
            let name = format!("attention_forward_tiled_hd{}_{}", d.hd, e.suffix());
            (name, d.tile_grid(bq, d.heads))
        } else {
            args.extend([d.n, d.seq, d.heads, d.kv_heads, d.hd].map(iarg));
            let name = format!("attention_forward_{}", e.suffix());
            (name, d.warp_grid(ATTN_WARPS * d.hd as u32 * 4))
        };
        args.push(KArg::F32(d.scale_f32()));
        // SAFETY: lengths checked for batch·seq tokens of heads (kv_heads) × hd values; the
        // starts were validated (each token's key range is non-empty and in its row); the grid
        // covers exactly batch rows and heads query heads (tiled, mma) or n·heads warps, and
        // the shared memory is the kernel's documented size for hd.
        unsafe { self.launch(&name, cfg, &mut args) }
    }

    /// Gradients of [`KernelBackend::attn_forward`]: the three launches of the module doc.
    pub(super) fn attn_backward(
        &self,
        d: &Dims,
        g: Grads<'_, D::Buf>,
        s: Saved<'_, D::Buf>,
        starts: &[u32],
    ) -> Result<()> {
        let op = d.op;
        let Some((bq, bk)) = backward_tiles(d.hd) else {
            return Err(Error::unsupported(format!(
                "{op}: head_dim {} (the backward kernels cover 32, 64 and 128)",
                d.hd
            )));
        };
        let dev = &self.dev;
        d.check_q("dq", dev.len(g.dq))?;
        d.check_kv("dk", dev.len(g.dk))?;
        d.check_kv("dv", dev.len(g.dv))?;
        d.check_q("dout", dev.len(s.dout))?;
        d.check_q("q", dev.len(s.q))?;
        d.check_kv("k", dev.len(s.k))?;
        d.check_kv("v", dev.len(s.v))?;
        d.check_q("out", dev.len(s.out))?;
        d.check_lse("lse", dev.len(s.lse))?;
        let e = self.storage(op, "q", s.q)?;
        let same = [
            ("dq", &*g.dq),
            ("dk", &*g.dk),
            ("dv", &*g.dv),
            ("dout", s.dout),
        ];
        self.same_elem(op, e, &same)?;
        self.same_elem(op, e, &[("k", s.k), ("v", s.v), ("out", s.out)])?;
        self.same_elem(op, Elem::F32, &[("lse", s.lse)])?;
        if d.n == 0 {
            return Ok(());
        }
        d.grid_yz()?;
        let sfx = e.suffix();
        let mut guard = self.lock()?;
        let state = &mut *guard;
        let slot = &mut state.meta[Meta::Starts as usize];
        let st = meta_buf(dev, slot, starts.iter().map(|&s| s as i32))?;
        let dsum = scratch(dev, &mut state.dsum, Elem::F32, d.n * d.heads)?;
        let ints = |xs: [usize; 3]| xs.map(iarg::<D::Buf>);

        let mut args = vec![
            KArg::Mut(&mut *dsum, 0),
            KArg::Ref(s.dout, 0),
            KArg::Ref(s.out, 0),
        ];
        args.extend(ints([d.n, d.heads, d.hd]));
        // SAFETY: dsum holds at least n·heads values, dout and out n·heads·hd (checked); one
        // warp per (token, head).
        unsafe {
            self.launch(
                &format!("attention_backward_dot_{sfx}"),
                d.warp_grid(0),
                &mut args,
            )?
        };

        // The tensor-core kernels for bf16 with hd 64 or 128, else the CUDA-core ones; both
        // families take the same arguments.
        let mma = mma_tiles(d.hd).filter(|_| uses_tensor_cores(e, d.hd));
        let ((dkdv, dkdv_cfg), (dq, dq_cfg)) = match mma {
            Some(t) => (
                (
                    format!("attention_backward_dkdv_mma_hd{}_bf16", d.hd),
                    d.mma_grid(d.kv_heads, t.dkdv_smem(d.hd)),
                ),
                (
                    format!("attention_backward_dq_mma_hd{}_bf16", d.hd),
                    d.mma_grid(d.heads, t.dq_smem(d.hd)),
                ),
            ),
            None => (
                (
                    format!("attention_backward_dkdv_hd{}_{sfx}", d.hd),
                    d.tile_grid(bk, d.kv_heads),
                ),
                (
                    format!("attention_backward_dq_hd{}_{sfx}", d.hd),
                    d.tile_grid(bq, d.heads),
                ),
            ),
        };
        let mut args = vec![
            KArg::Mut(g.dk, 0),
            KArg::Mut(g.dv, 0),
            KArg::Ref(s.q, 0),
            KArg::Ref(s.k, 0),
            KArg::Ref(s.v, 0),
            KArg::Ref(s.dout, 0),
            KArg::Ref(s.lse, 0),
            KArg::Ref(&*dsum, 0),
            KArg::Ref(st, 0),
        ];
        args.extend(ints([d.seq, d.heads, d.kv_heads]));
        args.push(KArg::F32(d.scale_f32()));
        // SAFETY: lengths checked for batch·seq tokens; the grid covers batch rows and
        // kv_heads heads; hd selects the kernel compiled for it and smem is its tile size.
        unsafe { self.launch(&dkdv, dkdv_cfg, &mut args)? };

        let mut args = vec![
            KArg::Mut(g.dq, 0),
            KArg::Ref(s.q, 0),
            KArg::Ref(s.k, 0),
            KArg::Ref(s.v, 0),
            KArg::Ref(s.dout, 0),
            KArg::Ref(s.lse, 0),
            KArg::Ref(&*dsum, 0),
            KArg::Ref(st, 0),
        ];
        args.extend(ints([d.seq, d.heads, d.kv_heads]));
        args.push(KArg::F32(d.scale_f32()));
        // SAFETY: as the dkdv launch, with the grid covering batch rows and heads query heads.
        unsafe { self.launch(&dq, dq_cfg, &mut args) }
    }
}
