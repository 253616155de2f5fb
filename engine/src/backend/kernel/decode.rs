//! Cached decoding on the kernel backend, with the semantics of `Backend::copy_rows` and
//! `Backend::attention_decode` (the CPU backend is the reference: cpu/elementwise.rs and
//! cpu/attention.rs): the checks both backends share (backend/decode_check.rs), the row lists
//! uploaded through the metadata cache, then one launch each: `copy_rows_{dtype}`
//! (kernels/elementwise.cu, one 16-byte pack per thread) and `attention_decode_{dtype}`
//! (kernels/attention.cu, one warp per query and head). Neighbours: ops.rs (the `Backend`
//! impl that calls these), attention.rs (the training attention and its constants).

use super::attn_tiles::{ATTN_FORWARD_MAX_HD, ATTN_WARPS};
use super::ops::{elementwise, int};
use super::{meta_buf, KArg, KernelBackend, KernelDevice, Launch, Meta};
use crate::backend::decode_check::{check_copy_rows, DecodeDims};
use crate::error::{Error, Result};

impl<D: KernelDevice> KernelBackend<D> {
    /// `Backend::copy_rows`: `dst[rows[t], :] = src[t, :]`.
    pub(super) fn copy_rows_op(
        &self,
        dst: &mut D::Buf,
        src: &D::Buf,
        rows: &[u32],
        width: usize,
    ) -> Result<()> {
        let op = "copy_rows";
        let m = check_copy_rows(self.dev.len(dst), self.dev.len(src), rows, width)?;
        let e = self.storage(op, "src", src)?;
        self.same_elem(op, e, &[("dst", dst)])?;
        let len = self.dev.len(src);
        if len == 0 {
            return Ok(());
        }
        int(op, "dst rows", m)?;
        let w = int(op, "width", width)?;
        let cfg = elementwise(op, len, e)?;
        let mut guard = self.lock()?;
        let slot = &mut guard.meta[Meta::Rows as usize];
        let rows = meta_buf(&self.dev, slot, rows.iter().map(|&r| r as i32))?;
        let args = &mut [
            KArg::Mut(dst, 0),
            KArg::Ref(src, 0),
            KArg::Ref(rows, 0),
            KArg::Usize(len),
            KArg::I32(w),
        ];
        // SAFETY: src holds len = rows·width values, rows one entry per src row, each below
        // dst's m rows of width (checked, and m fits an int); one thread per pack of src.
        unsafe { self.launch(&format!("copy_rows_{}", e.suffix()), cfg, args) }
    }

    /// `Backend::attention_decode`: one query per sequence against its cache rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_decode_op(
        &self,
        out: &mut D::Buf,
        q: &D::Buf,
        k: &D::Buf,
        v: &D::Buf,
        first: &[u32],
        last: &[u32],
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<()> {
        let op = "attention_decode";
        let dev = &self.dev;
        let lens = [dev.len(out), dev.len(q), dev.len(k), dev.len(v)];
        let d = DecodeDims::new(lens, first, last, heads, kv_heads, hd)?;
        if hd > ATTN_FORWARD_MAX_HD {
            return Err(Error::unsupported(format!(
                "{op}: head_dim {hd} exceeds the kernel's {ATTN_FORWARD_MAX_HD}"
            )));
        }
        let e = self.storage(op, "q", q)?;
        self.same_elem(op, e, &[("out", out), ("k", k), ("v", v)])?;
        if d.b == 0 {
            return Ok(());
        }
        let warps = d.b * heads;
        let cfg = Launch {
            grid: [warps.div_ceil(ATTN_WARPS as usize) as u32, 1, 1],
            block: [32 * ATTN_WARPS, 1, 1],
            smem: ATTN_WARPS * hd as u32 * 4,
        };
        let ints = [d.b, heads, kv_heads, hd].map(|x| KArg::I32(x as i32));
        let mut guard = self.lock()?;
        let state = &mut *guard;
        let (lo, hi) = state.meta.split_at_mut(Meta::Last as usize);
        let (f_slot, l_slot) = (&mut lo[Meta::First as usize], &mut hi[0]);
        let f = meta_buf(dev, f_slot, first.iter().map(|&x| x as i32))?;
        let l = meta_buf(dev, l_slot, last.iter().map(|&x| x as i32))?;
        let mut args = vec![
            KArg::Mut(out, 0),
            KArg::Ref(q, 0),
            KArg::Ref(k, 0),
            KArg::Ref(v, 0),
            KArg::Ref(f, 0),
            KArg::Ref(l, 0),
        ];
        args.extend(ints);
        args.push(KArg::F32(d.scale() as f32));
        // SAFETY: out and q hold b·heads·hd values, k and v m rows of kv_heads·hd, and every
        // query's key rows first[i] ..= first[i] + last[i] lie below m (DecodeDims, which also
        // bounds b·heads, m and hd by i32::MAX); one warp per (query, head), the shared memory
        // is ATTN_WARPS queries of hd floats, hd <= ATTN_MAX_HD.
        unsafe { self.launch(&format!("attention_decode_{}", e.suffix()), cfg, &mut args) }
    }
}
