//! Chunked cross-entropy on the kernel backend, with the semantics of
//! `Backend::cross_entropy` (backend/cpu/xent.rs is the reference): per chunk of rows, the
//! logits GEMM `z = hidden·lm_headᵀ` into a `[rows, vocab]` workspace, `cross_entropy_{dtype}`
//! (kernels/cross_entropy.cu: per-row loss, and the scaled logits gradient in place), then the
//! GEMM `dhidden = dz·lm_head`. A chunk whose targets are all ignored is skipped (losses and
//! dhidden rows zero), as on the CPU. The losses collect in a device buffer downloaded once.
//! Neighbours: ops.rs (the other ops), mod.rs (workspaces, metadata cache).

use super::ops::int;
use super::BLOCK_THREADS;
use super::{meta_buf, scratch, Elem, GemmShape, KArg, KernelBackend, KernelDevice, Launch, Meta};
use crate::backend::cpu::{check_len, checked_size};
use crate::error::{Error, Result};

/// Logit values per chunk: the workspace is at most this many values (16 MiB of f32).
const CHUNK_LOGITS: usize = 1 << 22;
/// The target value that marks an ignored token.
const IGNORE: i32 = -100;

impl<D: KernelDevice> KernelBackend<D> {
    /// `Backend::cross_entropy` (see the module doc).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn xent(
        &self,
        dhidden: Option<&mut D::Buf>,
        hidden: &D::Buf,
        lm_head: &D::Buf,
        targets: &[i32],
        n: usize,
        h: usize,
        vocab: usize,
        loss_scale: f32,
    ) -> Result<Vec<f32>> {
        let op = "cross_entropy";
        let dims = || format!("n={n}, h={h}, vocab={vocab}");
        let nh = checked_size(op, &[n, h])?;
        check_len(op, "hidden", self.dev.len(hidden), nh, dims)?;
        check_len(
            op,
            "lm_head",
            self.dev.len(lm_head),
            checked_size(op, &[vocab, h])?,
            dims,
        )?;
        check_len(op, "targets", targets.len(), n, dims)?;
        let e = self.storage(op, "hidden", hidden)?;
        self.same_elem(op, e, &[("lm_head", lm_head)])?;
        if let Some(d) = dhidden.as_deref() {
            check_len(op, "dhidden", self.dev.len(d), nh, dims)?;
            self.same_elem(op, e, &[("dhidden", d)])?;
        }
        if let Some((i, &t)) = targets
            .iter()
            .enumerate()
            .find(|(_, &t)| t != IGNORE && (t < 0 || t as usize >= vocab))
        {
            return Err(Error::shape(
                op,
                format!(
                    "token {i} has target {t}, outside 0..{vocab} (and not the ignore value -100)"
                ),
            ));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let v32 = int(op, "vocab", vocab)?;
        let rows = (CHUNK_LOGITS / vocab.max(1)).clamp(1, n);
        let mut dhidden = dhidden;
        // A zero loss scale has a zero gradient; the kernel's grad_scale = 0 means "losses
        // only", so that case writes dhidden with zeros instead of running the dz GEMM.
        let grad_scale = if dhidden.is_some() { loss_scale } else { 0.0 };
        let mut guard = self.lock()?;
        let st = &mut *guard;
        let tg = meta_buf(
            &self.dev,
            &mut st.meta[Meta::Targets as usize],
            targets.iter().copied(),
        )?;
        let losses = scratch(&self.dev, &mut st.losses, Elem::F32, n)?;
        let logits = scratch(&self.dev, &mut st.logits, e, rows * vocab)?;
        let mut c0 = 0;
        while c0 < n {
            let r = rows.min(n - c0);
            let skip = targets[c0..c0 + r].iter().all(|&t| t == IGNORE);
            if skip || grad_scale == 0.0 {
                if let Some(dh) = dhidden.as_deref_mut() {
                    self.fill_range(dh, c0 * h, r * h, 0.0)?;
                }
            }
            if skip {
                self.fill_range(losses, c0, r, 0.0)?;
                c0 += r;
                continue;
            }
            let z = GemmShape {
                m: r,
                n: vocab,
                k: h,
                trans_a: false,
                trans_b: true,
            };
            self.dev.gemm(
                (&mut *logits, 0),
                (hidden, c0 * h),
                (lm_head, 0),
                z,
                1.0,
                0.0,
            )?;
            let cfg = Launch::linear(op, r, BLOCK_THREADS)?;
            let args = &mut [
                KArg::Mut(&mut *losses, c0),
                KArg::Mut(&mut *logits, 0),
                KArg::Ref(tg, c0),
                KArg::I32(v32),
                KArg::F32(grad_scale),
            ];
            // SAFETY: losses holds n values and targets n (c0 + r <= n); logits at least
            // rows·vocab >= r·vocab; one block per row of the chunk.
            unsafe { self.launch(&format!("cross_entropy_{}", e.suffix()), cfg, args)? };
            if let (Some(dh), true) = (dhidden.as_deref_mut(), grad_scale != 0.0) {
                let g = GemmShape {
                    m: r,
                    n: h,
                    k: vocab,
                    trans_a: false,
                    trans_b: false,
                };
                self.dev
                    .gemm((dh, c0 * h), (&*logits, 0), (lm_head, 0), g, 1.0, 0.0)?;
            }
            c0 += r;
        }
        let mut out = self.dev.download_f32(losses)?;
        out.truncate(n);
        Ok(out)
    }
}
