//! The tile tables of the attention kernels, in one place for the launches (attention.rs):
//! the CUDA-core kernels' (kernels/attention_tiles.cuh, attention.cu, attention_backward.cu)
//! and the tensor-core kernels' (kernels/attention_mma.cuh, attention_mma.cu,
//! attention_mma_backward.cu), with their block sizes and shared-memory bytes and the rule for
//! which family a call takes. Tests check every number against the kernel files.
//! Neighbours: attention.rs (checks, grids, launches).

use super::Elem;

/// Warps (token × head pairs) per block of `attention_forward_*` (ATTN_WARPS in attention.cu)
/// and of `attention_backward_dot_*` (ATTN_BWD_DOT_WARPS).
pub(super) const ATTN_WARPS: u32 = 4;
/// Largest head_dim of the forward kernel (ATTN_MAX_HD in attention.cu).
pub(super) const ATTN_FORWARD_MAX_HD: usize = 256;
/// Threads per block of the tiled kernels (ATTN_TILE_THREADS in attention_tiles.cuh).
pub(super) const ATTN_TILE_THREADS: u32 = 128;

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

/// Rows each block of a tensor-core kernel owns: 16 per warp, 4 warps (ATTN_MMA_ROWS in
/// kernels/attention_mma.cuh).
pub(super) const MMA_ROWS: usize = 64;

/// The tile rows of the tensor-core kernels for one head_dim (the instantiations in
/// kernels/attention_mma.cu and attention_mma_backward.cu; a test checks): every block owns 64
/// rows (query rows in the forward and dq, key rows in dkdv) and walks tiles of the other side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmaTiles {
    /// Key rows per tile of `attention_forward_mma_hd*`.
    pub forward_bk: usize,
    /// Query rows per tile of `attention_backward_dkdv_mma_hd*`.
    pub dkdv_bq: usize,
    /// Key rows per tile of `attention_backward_dq_mma_hd*`.
    pub dq_bk: usize,
}

impl MmaTiles {
    /// Bytes of one bf16 tile row (`hd` values + 8 padding, MmaTile::LD).
    fn row_bytes(hd: usize) -> usize {
        2 * (hd + 8)
    }
    /// Dynamic shared memory of the forward: Q (64 rows), K and V (BK rows each).
    pub fn forward_smem(&self, hd: usize) -> usize {
        (MMA_ROWS + 2 * self.forward_bk) * Self::row_bytes(hd)
    }
    /// Dynamic shared memory of dkdv: K, V (64 rows), Q, dO (BQ rows), lse, D and start per
    /// query row.
    pub fn dkdv_smem(&self, hd: usize) -> usize {
        (2 * MMA_ROWS + 2 * self.dkdv_bq) * Self::row_bytes(hd) + 12 * self.dkdv_bq
    }
    /// Dynamic shared memory of dq: Q, dO (64 rows), K, V (BK rows).
    pub fn dq_smem(&self, hd: usize) -> usize {
        (2 * MMA_ROWS + 2 * self.dq_bk) * Self::row_bytes(hd)
    }
}

/// The tensor-core kernels' tiles for `hd` (64 and 128; bf16 storage only), `None` for other
/// head dims. Sized so every kernel's shared memory stays under the 48 KiB any launch gets and
/// ptxas fits its accumulators in registers without spills.
pub fn mma_tiles(hd: usize) -> Option<MmaTiles> {
    match hd {
        64 => Some(MmaTiles {
            forward_bk: 64,
            dkdv_bq: 64,
            dq_bk: 64,
        }),
        128 => Some(MmaTiles {
            forward_bk: 32,
            dkdv_bq: 16,
            dq_bk: 16,
        }),
        _ => None,
    }
}

/// True when attention on `elem` buffers with head_dim `hd` runs the tensor-core kernels, both
/// ways: bf16 with hd 64 or 128. f32 buffers keep the CUDA-core kernels (the CPU-comparable
/// reference mode).
pub fn uses_tensor_cores(elem: Elem, hd: usize) -> bool {
    elem == Elem::Bf16 && mma_tiles(hd).is_some()
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

    /// The numbers in `MACRO(a, b, …)` instantiation lines of `src`.
    fn instantiations(src: &str, mac: &str) -> Vec<Vec<usize>> {
        src.lines()
            .filter_map(|l| l.strip_prefix(&format!("{mac}(")))
            .map(|rest| {
                rest.trim_end_matches(')')
                    .split(',')
                    .map(|x| x.trim().parse().expect("a number"))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn mma_tile_table_matches_the_kernel_files() {
        let fwd = include_str!("../../../../kernels/attention_mma.cu");
        let bwd = include_str!("../../../../kernels/attention_mma_backward.cu");
        let common = include_str!("../../../../kernels/attention_mma.cuh");
        assert!(common.contains(&format!("#define ATTN_MMA_WARPS {}", MMA_ROWS / 16)));
        assert!(common.contains("#define ATTN_MMA_THREADS (32 * ATTN_MMA_WARPS)"));
        assert_eq!(
            ATTN_TILE_THREADS as usize,
            2 * MMA_ROWS,
            "128 threads, 64 rows"
        );
        let f = instantiations(fwd, "ATTENTION_FORWARD_MMA");
        let b = instantiations(bwd, "ATTENTION_BACKWARD_MMA");
        assert_eq!(f.len(), 2);
        assert_eq!(b.len(), 2);
        for (f, b) in f.iter().zip(&b) {
            let hd = f[0];
            assert_eq!(b[0], hd);
            let t = mma_tiles(hd).expect("tiles for an instantiated head_dim");
            assert_eq!(
                (t.forward_bk, t.dkdv_bq, t.dq_bk),
                (f[1], b[1], b[2]),
                "hd {hd}"
            );
            for smem in [t.forward_smem(hd), t.dkdv_smem(hd), t.dq_smem(hd)] {
                assert!(smem <= 48 * 1024, "hd {hd}: {smem} bytes");
            }
        }
        // The byte counts of the launch comments, for hd 64 and 128.
        let t = mma_tiles(64).unwrap();
        assert_eq!(
            (t.forward_smem(64), t.dkdv_smem(64), t.dq_smem(64)),
            (27_648, 37_632, 36_864)
        );
        let t = mma_tiles(128).unwrap();
        assert_eq!(
            (t.forward_smem(128), t.dkdv_smem(128), t.dq_smem(128)),
            (34_816, 43_712, 43_520)
        );
        assert_eq!(mma_tiles(32), None);
        // bf16 with hd 64/128 takes them; f32 (the reference mode) and other head dims do not.
        assert!(uses_tensor_cores(Elem::Bf16, 64) && uses_tensor_cores(Elem::Bf16, 128));
        assert!(!uses_tensor_cores(Elem::F32, 64) && !uses_tensor_cores(Elem::F32, 128));
        assert!(!uses_tensor_cores(Elem::Bf16, 32) && !uses_tensor_cores(Elem::Bf16, 96));
    }
}
