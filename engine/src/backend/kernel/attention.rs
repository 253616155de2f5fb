//! Attention on the kernel backend: causal GQA attention over packed rows with the semantics
//! of `Backend::attention_forward` / `attention_backward` (the CPU backend's
//! backend/cpu/attention.rs is the reference). The tile table of kernels/attention_tiles.cuh
//! and the launch shapes of kernels/attention.cu and attention_backward.cu live here once:
//! the forward takes the tiled kernel for head_dim 64 and 128 and the one-warp-per-query kernel
//! for any other head_dim up to 256; the backward runs `attention_backward_dot` (D =
//! rowsum(dout∘out) into an f32 workspace kept by the backend), then `dkdv`, then `dq` for
//! head_dim 32, 64 or 128. Neighbours: ops.rs (the other ops), mod.rs (state, devices).

use super::{meta_buf, scratch, Elem, KArg, KernelBackend, KernelDevice, Launch, Meta};
use crate::error::{Error, Result};

/// Warps (token × head pairs) per block of `attention_forward_*` (ATTN_WARPS in attention.cu)
/// and of `attention_backward_dot_*` (ATTN_BWD_DOT_WARPS).
pub(super) const ATTN_WARPS: u32 = 4;
/// Largest head_dim of the forward kernel (ATTN_MAX_HD in attention.cu).
pub(super) const ATTN_FORWARD_MAX_HD: usize = 256;
/// Threads per block of the tiled kernels (ATTN_TILE_THREADS in attention_tiles.cuh).
const ATTN_TILE_THREADS: u32 = 128;
/// CUDA's grid y/z limit.
const GRID_YZ_MAX: usize = 65_535;

/// Query and key tile rows `(BQ, BK)` of the backward kernels for `hd`, or `None` when no
/// backward kernel exists for it (the table in attention_tiles.cuh and the instantiations in
/// attention_backward.cu; a test checks they agree).
pub fn backward_tiles(hd: usize) -> Option<(usize, usize)> {
    match hd {
        32 | 64 => Some((32, 32)),
        128 => Some((16, 16)),
        _ => None,
    }
}

/// True when the forward has a tiled kernel for `hd` (64 and 128; other head dims up to 256
/// take the one-warp-per-query kernel). It uses the tiles and shared memory of
/// [`backward_tiles`] / [`backward_smem_bytes`].
pub fn forward_tiled(hd: usize) -> bool {
    hd == 64 || hd == 128
}

/// Dynamic shared memory bytes of the tiled forward and of the backward's dkdv and dq kernels
/// for `hd` (`AttnTiles::WORDS`·4 of attention_tiles.cuh: K, V, Q, dO tiles with one padding
/// word per row, P, dS, lse, D, starts).
pub fn backward_smem_bytes(hd: usize) -> Option<usize> {
    let (bq, bk) = backward_tiles(hd)?;
    Some(4 * ((2 * bk + 2 * bq) * (hd + 1) + 2 * bq * (bk + 1) + 3 * bq))
}

/// Checks per-token sample starts the way the CPU backend does: one per token of `batch` rows
/// of `seq`, each the in-row index of its sample's first token, so `starts[t] <= t % seq`.
pub fn check_starts(op: &'static str, starts: &[u32], batch: usize, seq: usize) -> Result<()> {
    let n = batch
        .checked_mul(seq)
        .ok_or_else(|| Error::shape(op, format!("batch {batch} × seq {seq} overflows")))?;
    if starts.len() != n {
        return Err(Error::shape(
            op,
            format!(
                "starts has {} values, expected {n} for batch={batch}, seq={seq}",
                starts.len()
            ),
        ));
    }
    if let Some((t, &s)) = starts
        .iter()
        .enumerate()
        .find(|(t, &s)| s as usize > t % seq)
    {
        return Err(Error::shape(
            op,
            format!(
                "token {t} (index {} in its row) has sample start {s}, after itself",
                t % seq
            ),
        ));
    }
    Ok(())
}

/// Checked dims of one attention call (all fit the kernels' int32 indexing).
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    op: &'static str,
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    n: usize,
}

impl Dims {
    pub(super) fn new(
        op: &'static str,
        starts: &[u32],
        batch: usize,
        seq: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<Self> {
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || hd == 0 {
            return Err(Error::shape(
                op,
                format!("heads={heads} must be a positive multiple of kv_heads={kv_heads}, hd={hd} positive"),
            ));
        }
        check_starts(op, starts, batch, seq)?;
        let n = batch * seq;
        let fits = n
            .checked_mul(heads)
            .and_then(|x| x.checked_mul(hd))
            .is_some_and(|x| x <= usize::MAX / 4)
            && n.checked_mul(heads).is_some_and(|x| x <= i32::MAX as usize)
            && seq <= i32::MAX as usize
            && hd <= i32::MAX as usize;
        if !fits {
            return Err(Error::shape(
                op,
                format!("batch={batch}, seq={seq}, heads={heads}, hd={hd} exceed the kernels' int32 indexing"),
            ));
        }
        Ok(Dims {
            op,
            batch,
            seq,
            heads,
            kv_heads,
            hd,
            n,
        })
    }

    fn describe(&self) -> String {
        format!(
            "batch={}, seq={}, heads={}, kv_heads={}, hd={}",
            self.batch, self.seq, self.heads, self.kv_heads, self.hd
        )
    }

    fn check(&self, name: &str, len: usize, width: usize) -> Result<()> {
        let want = self.n * width;
        if len == want {
            Ok(())
        } else {
            Err(Error::shape(
                self.op,
                format!(
                    "{name} has {len} values, expected {want} for {}",
                    self.describe()
                ),
            ))
        }
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

    /// Grid of the tiled kernels: `ceil(seq / rows)` tiles × batch rows × `heads` heads.
    fn tile_grid(&self, rows: usize, heads: usize) -> Launch {
        Launch {
            grid: [
                self.seq.div_ceil(rows) as u32,
                self.batch as u32,
                heads as u32,
            ],
            block: [ATTN_TILE_THREADS, 1, 1],
            smem: backward_smem_bytes(self.hd).unwrap_or(0) as u32,
        }
    }

    fn scale(&self) -> f32 {
        (1.0 / (self.hd as f64).sqrt()) as f32
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
        let (qw, kw) = (d.heads * d.hd, d.kv_heads * d.hd);
        d.check("out", self.dev.len(out), qw)?;
        d.check("q", self.dev.len(q), qw)?;
        d.check("k", self.dev.len(k), kw)?;
        d.check("v", self.dev.len(v), kw)?;
        d.check("lse", self.dev.len(lse), d.heads)?;
        let e = self.storage(op, "q", q)?;
        self.same_elem(op, e, &[("out", out), ("k", k), ("v", v)])?;
        self.same_elem(op, Elem::F32, &[("lse", lse)])?;
        if d.n == 0 {
            return Ok(());
        }
        let tiled = forward_tiled(d.hd);
        if tiled {
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
        let (name, cfg) = if tiled {
            let (bq, _) = backward_tiles(d.hd).unwrap_or((16, 16));
            args.extend([d.seq, d.heads, d.kv_heads].map(iarg));
            let name = format!("attention_forward_tiled_hd{}_{}", d.hd, e.suffix());
            (name, d.tile_grid(bq, d.heads))
        } else {
            args.extend([d.n, d.seq, d.heads, d.kv_heads, d.hd].map(iarg));
            let name = format!("attention_forward_{}", e.suffix());
            (name, d.warp_grid(ATTN_WARPS * d.hd as u32 * 4))
        };
        args.push(KArg::F32(d.scale()));
        // SAFETY: lengths checked for batch·seq tokens of heads (kv_heads) × hd values; the
        // starts were validated (each token's key range is non-empty and in its row); the grid
        // covers exactly batch rows and heads query heads (tiled) or n·heads warps, and the
        // shared memory is the kernel's documented size for hd.
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
        let (qw, kw) = (d.heads * d.hd, d.kv_heads * d.hd);
        let dev = &self.dev;
        for (name, len, w) in [
            ("dq", dev.len(g.dq), qw),
            ("dk", dev.len(g.dk), kw),
            ("dv", dev.len(g.dv), kw),
            ("dout", dev.len(s.dout), qw),
            ("q", dev.len(s.q), qw),
            ("k", dev.len(s.k), kw),
            ("v", dev.len(s.v), kw),
            ("out", dev.len(s.out), qw),
            ("lse", dev.len(s.lse), d.heads),
        ] {
            d.check(name, len, w)?;
        }
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
        args.push(KArg::F32(d.scale()));
        let name = format!("attention_backward_dkdv_hd{}_{sfx}", d.hd);
        // SAFETY: lengths checked for batch·seq tokens; the grid covers batch rows and
        // kv_heads heads; hd selects the kernel compiled for it and smem is its tile size.
        unsafe { self.launch(&name, d.tile_grid(bk, d.kv_heads), &mut args)? };

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
        args.push(KArg::F32(d.scale()));
        let name = format!("attention_backward_dq_hd{}_{sfx}", d.hd);
        // SAFETY: as the dkdv launch, with the grid covering batch rows and heads query heads.
        unsafe { self.launch(&name, d.tile_grid(bq, d.heads), &mut args) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_table_matches_the_kernel_file() {
        let src = include_str!("../../../../kernels/attention_backward.cu");
        let mut seen = Vec::new();
        for line in src.lines() {
            let Some(rest) = line.trim().strip_prefix("ATTENTION_BACKWARD_HD(T, S, ") else {
                continue;
            };
            let nums: Vec<usize> = rest
                .trim_end_matches([')', '\\', ' '])
                .split(',')
                .map(|x| x.trim().parse().expect("a number"))
                .collect();
            assert_eq!(backward_tiles(nums[0]), Some((nums[1], nums[2])), "{line}");
            assert!(backward_smem_bytes(nums[0]).unwrap() <= 48 * 1024);
            seen.push(nums[0]);
        }
        assert_eq!(seen, [32, 64, 128]);
        assert_eq!(backward_tiles(96), None);
        let fwd = include_str!("../../../../kernels/attention.cu");
        assert!(fwd.contains(&format!("#define ATTN_MAX_HD {ATTN_FORWARD_MAX_HD}")));
        assert!(fwd.contains(&format!("#define ATTN_WARPS {ATTN_WARPS}")));
        let tiles = include_str!("../../../../kernels/attention_tiles.cuh");
        assert!(tiles.contains(&format!("#define ATTN_TILE_THREADS {ATTN_TILE_THREADS}")));
        for hd in [64, 128] {
            assert!(forward_tiled(hd));
            let (bq, bk) = backward_tiles(hd).unwrap();
            let line = format!("ATTENTION_FORWARD_TILED(bf16, bf16, {hd}, {bq}, {bk})");
            assert!(fwd.contains(&line), "{line}");
        }
        assert!(!forward_tiled(32) && !forward_tiled(96));
        assert!(src.contains(&format!("#define ATTN_BWD_DOT_WARPS {ATTN_WARPS}")));
    }

    #[test]
    fn starts_are_checked_like_the_cpu_backend() {
        check_starts("t", &[0, 0, 2, 0, 1, 1], 2, 3).unwrap();
        let e = check_starts("t", &[0, 0, 2, 0, 2, 1], 2, 3).unwrap_err();
        assert!(
            e.to_string().contains("token 4 (index 1 in its row)"),
            "{e}"
        );
        let e = check_starts("t", &[0, 0], 1, 3).unwrap_err();
        assert!(
            e.to_string().contains("starts has 2 values, expected 3"),
            "{e}"
        );
    }
}
