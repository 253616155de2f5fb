//! RoPE on the kernel backend, with the semantics of `Backend::rope` (backend/cpu/rope.rs
//! is the reference): the same checks (even head_dim, lengths, every position inside the
//! table), the positions uploaded once per step (the metadata cache), then one
//! `rope_{forward|backward}_{dtype}` launch (kernels/rope.cu: one thread per rotated pair).
//! Neighbours: ops.rs (the `Backend` impl that calls it), mod.rs.

use super::ops::int;
use super::{meta_buf, Elem, KArg, KernelBackend, KernelDevice, Launch, Meta, BLOCK_THREADS};
use crate::backend::cpu::checked_size;
use crate::backend::rope_table::check_rope;
use crate::backend::RopeTable;
use crate::error::Result;

impl<D: KernelDevice> KernelBackend<D> {
    /// `Backend::rope`: rotate `x [n, heads, head_dim]` in place by the table's angles.
    pub(super) fn rope_op(
        &self,
        x: &mut D::Buf,
        table: &RopeTable<Self>,
        positions: &[u32],
        n: usize,
        heads: usize,
        inverse: bool,
    ) -> Result<()> {
        let op = "rope";
        let (d, half) = (table.head_dim, table.head_dim / 2);
        check_rope(
            self.dev.len(x),
            self.dev.len(&table.cos),
            self.dev.len(&table.sin),
            d,
            table.max_pos,
            positions,
            n,
            heads,
        )?;
        let e = self.storage(op, "x", x)?;
        self.same_elem(
            op,
            Elem::F32,
            &[("table.cos", &table.cos), ("table.sin", &table.sin)],
        )?;
        let pairs = checked_size(op, &[n, heads, half])?;
        if pairs == 0 {
            return Ok(());
        }
        let ints = [
            int(op, "n", n)?,
            int(op, "heads", heads)?,
            int(op, "head_dim", d)?,
            int(op, "max_pos", table.max_pos)?,
        ];
        let mut guard = self.lock()?;
        let slot = &mut guard.meta[Meta::Positions as usize];
        let pos = meta_buf(&self.dev, slot, positions.iter().map(|&p| p as i32))?;
        let cfg = Launch::linear(op, pairs.div_ceil(BLOCK_THREADS as usize), BLOCK_THREADS)?;
        let dir = if inverse { "backward" } else { "forward" };
        let args = &mut [
            KArg::Mut(x, 0),
            KArg::Ref(&table.cos, 0),
            KArg::Ref(&table.sin, 0),
            KArg::Ref(pos, 0),
            KArg::I32(ints[0]),
            KArg::I32(ints[1]),
            KArg::I32(ints[2]),
            KArg::I32(ints[3]),
        ];
        // SAFETY: x holds n·heads·d values, the tables max_pos·d/2, positions n (each below
        // max_pos, checked); one thread per rotated pair.
        unsafe { self.launch(&format!("rope_{dir}_{}", e.suffix()), cfg, args) }
    }
}
