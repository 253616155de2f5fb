//! `impl Backend for KernelBackend<D>`: each op checks its arguments the way the CPU backend
//! does (same lengths, same errors on bad ids and probabilities), picks the `{op}_{dtype}`
//! kernel and its launch shape from the comment above the kernel in kernels/, and launches it
//! on the device. Attention lives in attention.rs, cached decoding in decode.rs, RoPE in
//! rope.rs and cross-entropy in xent.rs; GEMMs go to the device. Neighbours: mod.rs (the device trait, state), the kernels
//! in kernels/{elementwise,rmsnorm,swiglu,embedding,norm,adamw}.cu.

use super::BLOCK_THREADS;
use super::{
    meta_buf, scratch, Elem, GemmShape, KArg, KernelBackend, KernelDevice, KernelWeight, Launch,
    Meta,
};
use crate::backend::attention_dims::AttnDims;
use crate::backend::cpu::adamw::Hyper;
use crate::backend::cpu::{check_len, checked_size, dropout_threshold};
use crate::backend::{Backend, Precision, RopeTable};
use crate::error::{Error, Result};
use crate::model::Frozen;
use crate::tensor::DType;

/// Partial sums of `sumsq_partials_f32`: ceil(len / NORM_CHUNK), at most NORM_MAX_PARTS
/// (kernels/norm.cu).
const NORM_CHUNK: usize = 16384;
const NORM_MAX_PARTS: usize = 1024;

/// The number of partials `sumsq_partials_f32` writes for a tensor of `len > 0` values.
fn norm_parts(len: usize) -> usize {
    len.div_ceil(NORM_CHUNK).clamp(1, NORM_MAX_PARTS)
}

/// `x` as the kernels' `int`, or a shape error of `op` naming `what`.
pub(super) fn int(op: &'static str, what: &str, x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| Error::shape(op, format!("{what} = {x} exceeds the kernels' int")))
}

/// The launch of an element-wise kernel over `len` values of `elem` (kernels/elementwise.cu,
/// swiglu.cu): one 16-byte pack (`16 / size` values) per thread, BLOCK_THREADS per block.
pub(super) fn elementwise(op: &'static str, len: usize, elem: Elem) -> Result<Launch> {
    let per_block = BLOCK_THREADS as usize * (16 / elem.size());
    Launch::linear(op, len.div_ceil(per_block), BLOCK_THREADS)
}

impl<D: KernelDevice> KernelBackend<D> {
    /// `fill_{dtype}` over `len` values of `buf` from element `off`.
    pub(super) fn fill_range(
        &self,
        buf: &mut D::Buf,
        off: usize,
        len: usize,
        v: f32,
    ) -> Result<()> {
        let e = self.storage("fill", "buf", buf)?;
        if len == 0 {
            return Ok(());
        }
        let cfg = elementwise("fill", len, e)?;
        let args = &mut [KArg::Mut(buf, off), KArg::Usize(len), KArg::F32(v)];
        // SAFETY: callers pass off + len <= the buffer's length; the kernel touches [0, len).
        unsafe { self.launch(&format!("fill_{}", e.suffix()), cfg, args) }
    }
}

impl<D: KernelDevice> Backend for KernelBackend<D> {
    type Buf = D::Buf;
    type Weight = KernelWeight<D::Buf>;

    fn upload_weight(&self, w: &Frozen) -> Result<KernelWeight<D::Buf>> {
        let [rows, cols] = *w.shape() else {
            return Err(Error::shape(
                "upload_weight",
                format!("a Linear weight is 2-D, got shape {:?}", w.shape()),
            ));
        };
        let buf = self.upload_compute(&w.dense().data)?;
        Ok(KernelWeight { buf, rows, cols })
    }

    fn weight_dims(&self, w: &KernelWeight<D::Buf>) -> (usize, usize) {
        (w.rows, w.cols)
    }

    fn gemm_weight(
        &self,
        c: &mut D::Buf,
        a: &D::Buf,
        w: &KernelWeight<D::Buf>,
        m: usize,
        trans_w: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let (n, k) = if trans_w {
            (w.rows, w.cols)
        } else {
            (w.cols, w.rows)
        };
        self.gemm(c, a, &w.buf, m, n, k, false, trans_w, alpha, beta)
    }

    fn name(&self) -> String {
        self.dev.name()
    }

    fn alloc(&self, len: usize) -> Result<D::Buf> {
        self.dev.alloc(Elem::F32, len)
    }

    fn upload(&self, data: &[f32]) -> Result<D::Buf> {
        self.dev.upload_f32(data)
    }

    fn download(&self, buf: &D::Buf) -> Result<Vec<f32>> {
        self.dev.download_f32(buf)
    }

    fn len(&self, buf: &D::Buf) -> usize {
        self.dev.len(buf)
    }

    fn fill(&self, buf: &mut D::Buf, value: f32) -> Result<()> {
        let len = self.dev.len(buf);
        self.fill_range(buf, 0, len, value)
    }

    fn copy(&self, dst: &mut D::Buf, src: &D::Buf) -> Result<()> {
        let len = self.dev.len(src);
        check_len("copy", "dst", self.dev.len(dst), len, || {
            format!("src [{len}]")
        })?;
        let e = self.storage("copy", "src", src)?;
        self.same_elem("copy", e, &[("dst", dst)])?;
        if len == 0 {
            return Ok(());
        }
        let cfg = elementwise("copy", len, e)?;
        let args = &mut [KArg::Mut(dst, 0), KArg::Ref(src, 0), KArg::Usize(len)];
        // SAFETY: both buffers hold len values (checked).
        unsafe { self.launch(&format!("copy_{}", e.suffix()), cfg, args) }
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn device_memory_in_use(&self) -> Option<u64> {
        self.dev.memory_in_use()
    }

    fn alloc_compute(&self, len: usize) -> Result<D::Buf> {
        self.dev.alloc(self.compute_elem(), len)
    }

    fn upload_compute(&self, data: &[f32]) -> Result<D::Buf> {
        match self.precision {
            Precision::F32 => self.dev.upload_f32(data),
            Precision::Bf16 => self.upload_as(DType::BF16, data),
        }
    }

    fn convert(&self, dst: &mut D::Buf, src: &D::Buf) -> Result<()> {
        let op = "convert";
        let len = self.dev.len(src);
        check_len(op, "dst", self.dev.len(dst), len, || format!("src [{len}]"))?;
        let (to, from) = (self.storage(op, "dst", dst)?, self.storage(op, "src", src)?);
        let name = match (to, from) {
            _ if to == from => return self.copy(dst, src),
            (Elem::Bf16, Elem::F32) => "cast_f32_to_bf16",
            _ => "cast_bf16_to_f32",
        };
        if len == 0 {
            return Ok(());
        }
        let cfg = Launch::linear(op, len.div_ceil(BLOCK_THREADS as usize * 8), BLOCK_THREADS)?;
        let args = &mut [KArg::Mut(dst, 0), KArg::Ref(src, 0), KArg::Usize(len)];
        // SAFETY: both buffers hold len values (checked); 8 values per thread.
        unsafe { self.launch(name, cfg, args) }
    }

    fn gemm(
        &self,
        c: &mut D::Buf,
        a: &D::Buf,
        b: &D::Buf,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let s = GemmShape {
            m,
            n,
            k,
            trans_a,
            trans_b,
        };
        let dims = || format!("m={m}, n={n}, k={k}, trans_a={trans_a}, trans_b={trans_b}");
        check_len(
            "gemm",
            "c",
            self.dev.len(c),
            checked_size("gemm", &[m, n])?,
            dims,
        )?;
        check_len(
            "gemm",
            "a",
            self.dev.len(a),
            checked_size("gemm", &[m, k])?,
            dims,
        )?;
        check_len(
            "gemm",
            "b",
            self.dev.len(b),
            checked_size("gemm", &[k, n])?,
            dims,
        )?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            // An empty sum: C = beta·C (cuBLASLt does not take k = 0).
            return if beta == 0.0 {
                self.fill(c, 0.0)
            } else {
                self.scale(c, beta)
            };
        }
        self.dev.gemm((c, 0), (a, 0), (b, 0), s, alpha, beta)
    }

    fn axpy(&self, x: &mut D::Buf, alpha: f32, y: &D::Buf) -> Result<()> {
        let len = self.dev.len(x);
        check_len("axpy", "y", self.dev.len(y), len, || format!("x [{len}]"))?;
        let e = self.storage("axpy", "x", x)?;
        self.same_elem("axpy", e, &[("y", y)])?;
        if len == 0 {
            return Ok(());
        }
        let cfg = elementwise("axpy", len, e)?;
        let args = &mut [
            KArg::Mut(x, 0),
            KArg::Ref(y, 0),
            KArg::Usize(len),
            KArg::F32(alpha),
        ];
        // SAFETY: x and y hold len values (checked).
        unsafe { self.launch(&format!("axpy_{}", e.suffix()), cfg, args) }
    }

    fn scale(&self, x: &mut D::Buf, alpha: f32) -> Result<()> {
        let len = self.dev.len(x);
        let e = self.storage("scale", "x", x)?;
        if len == 0 {
            return Ok(());
        }
        let cfg = elementwise("scale", len, e)?;
        let args = &mut [KArg::Mut(x, 0), KArg::Usize(len), KArg::F32(alpha)];
        // SAFETY: x holds len values.
        unsafe { self.launch(&format!("scale_{}", e.suffix()), cfg, args) }
    }

    fn add_bias(&self, x: &mut D::Buf, bias: &D::Buf, n: usize, d: usize) -> Result<()> {
        let op = "add_bias";
        let dims = || format!("n={n}, d={d}");
        let len = checked_size(op, &[n, d])?;
        check_len(op, "x", self.dev.len(x), len, dims)?;
        check_len(op, "bias", self.dev.len(bias), d, dims)?;
        let e = self.storage(op, "x", x)?;
        self.same_elem(op, e, &[("bias", bias)])?;
        if len == 0 {
            return Ok(());
        }
        let cfg = elementwise(op, len, e)?;
        let d32 = int(op, "d", d)?;
        let args = &mut [
            KArg::Mut(x, 0),
            KArg::Ref(bias, 0),
            KArg::Usize(len),
            KArg::I32(d32),
        ];
        // SAFETY: x holds n·d values and bias d (checked); the kernel reads bias[i % d].
        unsafe { self.launch(&format!("add_bias_{}", e.suffix()), cfg, args) }
    }

    fn sum_squares(&self, x: &D::Buf) -> Result<f64> {
        let op = "sum_squares";
        let len = self.dev.len(x);
        self.same_elem(op, Elem::F32, &[("x", x)])?;
        if len == 0 {
            return Ok(0.0);
        }
        let parts = norm_parts(len);
        let mut guard = self.lock()?;
        let st = &mut *guard;
        let partials = scratch(&self.dev, &mut st.partials, Elem::F64, parts)?;
        let cfg = Launch::linear(op, parts, BLOCK_THREADS)?;
        let args = &mut [
            KArg::Mut(&mut *partials, 0),
            KArg::Ref(x, 0),
            KArg::Usize(len),
        ];
        // SAFETY: x holds len values; partials at least `parts` (the grid size).
        unsafe { self.launch("sumsq_partials_f32", cfg, args)? };
        let mut total = self.dev.alloc(Elem::F64, 1)?;
        let cfg = Launch::linear(op, 1, BLOCK_THREADS)?;
        let args = &mut [
            KArg::Mut(&mut total, 0),
            KArg::Ref(&*partials, 0),
            KArg::I32(int(op, "parts", parts)?),
        ];
        // SAFETY: partials holds `parts` values, total one.
        unsafe { self.launch("sum_partials_f64", cfg, args)? };
        let v = self.dev.download_f64(&total)?;
        v.first()
            .copied()
            .ok_or_else(|| Error::device(self.dev.name(), op, "empty result"))
    }

    /// One `sumsq_partials_f32` launch per non-empty tensor into one partials buffer (the
    /// tensors' partials side by side), one `sum_segments_f64` launch for every tensor's
    /// total, one download.
    fn sum_squares_each(&self, xs: &[&D::Buf]) -> Result<Vec<f64>> {
        let op = "sum_squares_each";
        let mut offsets = Vec::with_capacity(xs.len() + 1);
        let mut at = 0usize;
        offsets.push(0);
        for (i, x) in xs.iter().enumerate() {
            self.same_elem(op, Elem::F32, &[(&format!("xs[{i}]"), x)])?;
            let len = self.dev.len(x);
            at += if len == 0 { 0 } else { norm_parts(len) };
            offsets.push(int(op, "partials", at)?);
        }
        if at == 0 {
            return Ok(vec![0.0; xs.len()]);
        }
        let segments = int(op, "tensors", xs.len())?;
        let mut guard = self.lock()?;
        let st = &mut *guard;
        let partials = scratch(&self.dev, &mut st.partials, Elem::F64, at)?;
        for (x, w) in xs.iter().zip(offsets.windows(2)) {
            let (lo, parts) = (w[0] as usize, (w[1] - w[0]) as usize);
            if parts == 0 {
                continue;
            }
            let cfg = Launch::linear(op, parts, BLOCK_THREADS)?;
            let args = &mut [
                KArg::Mut(&mut *partials, lo),
                KArg::Ref(*x, 0),
                KArg::Usize(self.dev.len(x)),
            ];
            // SAFETY: x holds len values; partials holds `parts` values past `lo` (it holds
            // the last offset's count, `at`).
            unsafe { self.launch("sumsq_partials_f32", cfg, args)? };
        }
        let slot = &mut st.meta[Meta::NormOffsets as usize];
        let offs = meta_buf(&self.dev, slot, offsets.iter().copied())?;
        let sums = scratch(&self.dev, &mut st.sums, Elem::F64, xs.len())?;
        let cfg = Launch::linear(op, xs.len(), BLOCK_THREADS)?;
        let args = &mut [
            KArg::Mut(&mut *sums, 0),
            KArg::Ref(&*partials, 0),
            KArg::Ref(offs, 0),
            KArg::I32(segments),
        ];
        // SAFETY: offsets holds segments + 1 ascending values up to `at`, the partials
        // written above; sums holds at least `segments` values; one block per segment.
        unsafe { self.launch("sum_segments_f64", cfg, args)? };
        let mut v = self.dev.download_f64(sums)?;
        if v.len() < xs.len() {
            return Err(Error::device(self.dev.name(), op, "short result"));
        }
        v.truncate(xs.len());
        Ok(v)
    }

    fn embedding(&self, out: &mut D::Buf, table: &D::Buf, ids: &[u32], h: usize) -> Result<()> {
        let op = "embedding";
        let n = ids.len();
        let dims = || format!("{n} ids, h={h}");
        check_len(
            op,
            "out",
            self.dev.len(out),
            checked_size(op, &[n, h])?,
            dims,
        )?;
        let tlen = self.dev.len(table);
        if h == 0 || !tlen.is_multiple_of(h) {
            return Err(Error::shape(
                op,
                format!("table has {tlen} values, not a multiple of h={h}"),
            ));
        }
        let vocab = tlen / h;
        if let Some((t, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            return Err(Error::shape(
                op,
                format!("token {t} has id {id}, past the table's {vocab} rows"),
            ));
        }
        let e = self.storage(op, "table", table)?;
        self.same_elem(op, e, &[("out", out)])?;
        if n == 0 {
            return Ok(());
        }
        let (h32, v32) = (int(op, "h", h)?, int(op, "vocab", vocab)?);
        let mut guard = self.lock()?;
        let ids = meta_buf(
            &self.dev,
            &mut guard.meta[Meta::Ids as usize],
            ids.iter().map(|&i| i as i32),
        )?;
        let cfg = Launch::linear(op, n, BLOCK_THREADS)?;
        let args = &mut [
            KArg::Mut(out, 0),
            KArg::Ref(table, 0),
            KArg::Ref(ids, 0),
            KArg::I32(h32),
            KArg::I32(v32),
        ];
        // SAFETY: out holds n·h values, table vocab·h, ids n (all < vocab, checked); one block
        // per token.
        unsafe { self.launch(&format!("embedding_{}", e.suffix()), cfg, args) }
    }

    fn rmsnorm_forward(
        &self,
        out: &mut D::Buf,
        rstd: &mut D::Buf,
        x: &D::Buf,
        w: &D::Buf,
        n: usize,
        h: usize,
        eps: f32,
    ) -> Result<()> {
        let op = "rmsnorm_forward";
        let nh = checked_size(op, &[n, h])?;
        let dims = || format!("n={n}, h={h}");
        check_len(op, "out", self.dev.len(out), nh, dims)?;
        check_len(op, "x", self.dev.len(x), nh, dims)?;
        check_len(op, "w", self.dev.len(w), h, dims)?;
        check_len(op, "rstd", self.dev.len(rstd), n, dims)?;
        let e = self.storage(op, "x", x)?;
        self.same_elem(op, e, &[("out", out), ("w", w)])?;
        self.same_elem(op, Elem::F32, &[("rstd", rstd)])?;
        if n == 0 || h == 0 {
            return Ok(());
        }
        let cfg = Launch::linear(op, n, BLOCK_THREADS)?;
        let args = &mut [
            KArg::Mut(out, 0),
            KArg::Mut(rstd, 0),
            KArg::Ref(x, 0),
            KArg::Ref(w, 0),
            KArg::I32(int(op, "h", h)?),
            KArg::F32(eps),
        ];
        // SAFETY: lengths checked for n rows of h values; one block per row.
        unsafe { self.launch(&format!("rmsnorm_forward_{}", e.suffix()), cfg, args) }
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut D::Buf,
        dout: &D::Buf,
        x: &D::Buf,
        w: &D::Buf,
        rstd: &D::Buf,
        n: usize,
        h: usize,
    ) -> Result<()> {
        let op = "rmsnorm_backward";
        let nh = checked_size(op, &[n, h])?;
        let dims = || format!("n={n}, h={h}");
        check_len(op, "dx", self.dev.len(dx), nh, dims)?;
        check_len(op, "dout", self.dev.len(dout), nh, dims)?;
        check_len(op, "x", self.dev.len(x), nh, dims)?;
        check_len(op, "w", self.dev.len(w), h, dims)?;
        check_len(op, "rstd", self.dev.len(rstd), n, dims)?;
        let e = self.storage(op, "x", x)?;
        self.same_elem(op, e, &[("dx", dx), ("dout", dout), ("w", w)])?;
        self.same_elem(op, Elem::F32, &[("rstd", rstd)])?;
        if n == 0 || h == 0 {
            return Ok(());
        }
        let cfg = Launch::linear(op, n, BLOCK_THREADS)?;
        let args = &mut [
            KArg::Mut(dx, 0),
            KArg::Ref(dout, 0),
            KArg::Ref(x, 0),
            KArg::Ref(w, 0),
            KArg::Ref(rstd, 0),
            KArg::I32(int(op, "h", h)?),
        ];
        // SAFETY: lengths checked for n rows of h values; one block per row.
        unsafe { self.launch(&format!("rmsnorm_backward_{}", e.suffix()), cfg, args) }
    }

    fn rope(
        &self,
        x: &mut D::Buf,
        table: &RopeTable<Self>,
        positions: &[u32],
        n: usize,
        heads: usize,
        inverse: bool,
    ) -> Result<()> {
        self.rope_op(x, table, positions, n, heads, inverse)
    }

    fn attention_forward(
        &self,
        out: &mut D::Buf,
        lse: &mut D::Buf,
        q: &D::Buf,
        k: &D::Buf,
        v: &D::Buf,
        starts: &[u32],
        batch: usize,
        seq: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<()> {
        let d = AttnDims::new("attention_forward", starts, batch, seq, heads, kv_heads, hd)?;
        let d = super::attention::Dims::new(d)?;
        self.attn_forward(&d, out, lse, q, k, v, starts)
    }

    fn attention_backward(
        &self,
        dq: &mut D::Buf,
        dk: &mut D::Buf,
        dv: &mut D::Buf,
        dout: &D::Buf,
        q: &D::Buf,
        k: &D::Buf,
        v: &D::Buf,
        out: &D::Buf,
        lse: &D::Buf,
        starts: &[u32],
        batch: usize,
        seq: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<()> {
        let d = AttnDims::new(
            "attention_backward",
            starts,
            batch,
            seq,
            heads,
            kv_heads,
            hd,
        )?;
        let d = super::attention::Dims::new(d)?;
        let grads = super::attention::Grads { dq, dk, dv };
        let saved = super::attention::Saved {
            dout,
            q,
            k,
            v,
            out,
            lse,
        };
        self.attn_backward(&d, grads, saved, starts)
    }

    fn copy_rows(&self, dst: &mut D::Buf, src: &D::Buf, rows: &[u32], width: usize) -> Result<()> {
        self.copy_rows_op(dst, src, rows, width)
    }

    fn attention_decode(
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
        self.attention_decode_op(out, q, k, v, first, last, heads, kv_heads, hd)
    }

    fn swiglu_forward(&self, out: &mut D::Buf, gate: &D::Buf, up: &D::Buf) -> Result<()> {
        let op = "swiglu_forward";
        let len = self.dev.len(gate);
        let dims = || format!("gate [{len}]");
        check_len(op, "out", self.dev.len(out), len, dims)?;
        check_len(op, "up", self.dev.len(up), len, dims)?;
        let e = self.storage(op, "gate", gate)?;
        self.same_elem(op, e, &[("out", out), ("up", up)])?;
        if len == 0 {
            return Ok(());
        }
        let cfg = elementwise(op, len, e)?;
        let args = &mut [
            KArg::Mut(out, 0),
            KArg::Ref(gate, 0),
            KArg::Ref(up, 0),
            KArg::Usize(len),
        ];
        // SAFETY: all three buffers hold len values (checked).
        unsafe { self.launch(&format!("swiglu_forward_{}", e.suffix()), cfg, args) }
    }

    fn swiglu_backward(
        &self,
        dgate: &mut D::Buf,
        dup: &mut D::Buf,
        dout: &D::Buf,
        gate: &D::Buf,
        up: &D::Buf,
    ) -> Result<()> {
        let op = "swiglu_backward";
        let len = self.dev.len(gate);
        let dims = || format!("gate [{len}]");
        check_len(op, "dgate", self.dev.len(dgate), len, dims)?;
        check_len(op, "dup", self.dev.len(dup), len, dims)?;
        check_len(op, "dout", self.dev.len(dout), len, dims)?;
        check_len(op, "up", self.dev.len(up), len, dims)?;
        let e = self.storage(op, "gate", gate)?;
        self.same_elem(
            op,
            e,
            &[("dgate", dgate), ("dup", dup), ("dout", dout), ("up", up)],
        )?;
        if len == 0 {
            return Ok(());
        }
        let cfg = elementwise(op, len, e)?;
        let args = &mut [
            KArg::Mut(dgate, 0),
            KArg::Mut(dup, 0),
            KArg::Ref(dout, 0),
            KArg::Ref(gate, 0),
            KArg::Ref(up, 0),
            KArg::Usize(len),
        ];
        // SAFETY: all five buffers hold len values (checked).
        unsafe { self.launch(&format!("swiglu_backward_{}", e.suffix()), cfg, args) }
    }

    fn dropout(&self, out: &mut D::Buf, x: &D::Buf, p: f32, key: u64) -> Result<()> {
        let op = "dropout";
        let len = self.dev.len(x);
        check_len(op, "out", self.dev.len(out), len, || format!("x [{len}]"))?;
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::shape(
                op,
                format!("probability {p} is outside [0, 1]"),
            ));
        }
        if p == 0.0 {
            return self.copy(out, x);
        }
        if p == 1.0 {
            return self.fill(out, 0.0);
        }
        let e = self.storage(op, "x", x)?;
        self.same_elem(op, e, &[("out", out)])?;
        if len == 0 {
            return Ok(());
        }
        let cfg = elementwise(op, len, e)?;
        let args = &mut [
            KArg::Mut(out, 0),
            KArg::Ref(x, 0),
            KArg::Usize(len),
            KArg::U64(key),
            KArg::U32(dropout_threshold(p)),
            KArg::F32(1.0 / (1.0 - p)),
        ];
        // SAFETY: out and x hold len values (checked).
        unsafe { self.launch(&format!("dropout_{}", e.suffix()), cfg, args) }
    }

    fn cross_entropy(
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
        self.xent(dhidden, hidden, lm_head, targets, n, h, vocab, loss_scale)
    }

    fn adamw(
        &self,
        param: &mut D::Buf,
        grad: &D::Buf,
        m: &mut D::Buf,
        v: &mut D::Buf,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        step: u32,
    ) -> Result<()> {
        let op = "adamw";
        let len = self.dev.len(param);
        let dims = || format!("param [{len}]");
        check_len(op, "grad", self.dev.len(grad), len, dims)?;
        check_len(op, "m", self.dev.len(m), len, dims)?;
        check_len(op, "v", self.dev.len(v), len, dims)?;
        if step == 0 {
            return Err(Error::shape(op, "step is 1-based; got 0"));
        }
        self.same_elem(
            op,
            Elem::F32,
            &[("param", param), ("grad", grad), ("m", m), ("v", v)],
        )?;
        if len == 0 {
            return Ok(());
        }
        let hy = Hyper::new(lr, beta1, beta2, eps, weight_decay, step);
        let cfg = Launch::linear(op, len.div_ceil(BLOCK_THREADS as usize * 4), BLOCK_THREADS)?;
        let s = |x: f64| KArg::F32(x as f32);
        let args = &mut [
            KArg::Mut(param, 0),
            KArg::Ref(grad, 0),
            KArg::Mut(m, 0),
            KArg::Mut(v, 0),
            KArg::Usize(len),
            s(hy.lerp_w),
            s(hy.beta2),
            s(hy.one_minus_beta2),
            s(hy.eps),
            s(hy.decay),
            s(hy.neg_step_size),
            s(hy.bc2_sqrt),
        ];
        // SAFETY: the four buffers hold len values (checked); 4 values per thread.
        unsafe { self.launch("adamw_f32", cfg, args) }
    }
}
