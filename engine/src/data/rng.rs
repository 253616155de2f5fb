//! numpy's `np.random.default_rng(seed).permutation(n)`, bit for bit: `SeedSequence` entropy
//! mixing, the PCG64 (XSL-RR 128/64) generator and `Generator.shuffle`'s Fisher–Yates with
//! masked rejection sampling (`random_interval`).
//!
//! The live network splits a dataset with Hugging Face `datasets`'
//! `train_test_split(test_size=n, shuffle=True, seed=42)`, which takes
//! `np.random.default_rng(42).permutation(len)` and puts its first `n` indices in the test
//! split; split.rs uses [`permutation`] from here to reproduce that exactly, and pack.rs uses
//! [`Pcg64`] as its seeded shuffle. No global state: every generator is a value.

/// SeedSequence constants (numpy/random/bit_generator.pyx).
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;
const POOL_SIZE: usize = 4;

/// PCG64's 128-bit LCG multiplier.
const PCG_MULT: u128 = (2_549_297_995_355_413_924u128 << 64) | 4_865_540_595_714_422_341u128;

/// numpy's `SeedSequence(entropy)` (no spawn key): the pool, from which words are drawn.
fn seed_sequence_pool(entropy: u64) -> [u32; POOL_SIZE] {
    // _coerce_to_uint32_array: little-endian 32-bit words, at least one word.
    let mut words = vec![entropy as u32];
    if entropy >> 32 != 0 {
        words.push((entropy >> 32) as u32);
    }
    let mut hash_const = INIT_A;
    let mut hashmix = |value: u32| -> u32 {
        let mut v = value ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_A);
        v = v.wrapping_mul(hash_const);
        v ^ (v >> XSHIFT)
    };
    let mix = |x: u32, y: u32| -> u32 {
        let r = MIX_MULT_L
            .wrapping_mul(x)
            .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> XSHIFT)
    };
    let mut pool = [0u32; POOL_SIZE];
    for (i, p) in pool.iter_mut().enumerate() {
        *p = hashmix(words.get(i).copied().unwrap_or(0));
    }
    for src in 0..POOL_SIZE {
        for dst in 0..POOL_SIZE {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    // Entropy words beyond the pool size (never more than 2 here, so none).
    pool
}

/// `SeedSequence.generate_state(n, np.uint64)`.
fn generate_state_u64(pool: &[u32; POOL_SIZE], n: usize) -> Vec<u64> {
    let mut hash_const = INIT_B;
    let words: Vec<u32> = (0..2 * n)
        .map(|i| {
            let mut v = pool[i % POOL_SIZE] ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> XSHIFT)
        })
        .collect();
    words
        .chunks_exact(2)
        .map(|w| w[0] as u64 | ((w[1] as u64) << 32))
        .collect()
}

/// numpy's PCG64 bit generator (XSL-RR output), seeded like `np.random.default_rng(seed)`.
#[derive(Clone, Debug)]
pub struct Pcg64 {
    state: u128,
    inc: u128,
    /// The upper half of the last 64-bit draw, served by the next 32-bit draw.
    spare_u32: Option<u32>,
}

impl Pcg64 {
    /// The generator of `np.random.default_rng(seed)`.
    pub fn new(seed: u64) -> Self {
        let s = generate_state_u64(&seed_sequence_pool(seed), 4);
        let initstate = ((s[0] as u128) << 64) | s[1] as u128;
        let initseq = ((s[2] as u128) << 64) | s[3] as u128;
        let mut rng = Pcg64 {
            state: 0,
            inc: (initseq << 1) | 1,
            spare_u32: None,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(initstate);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let hi = (self.state >> 64) as u64;
        let lo = self.state as u64;
        (hi ^ lo).rotate_right((self.state >> 122) as u32)
    }

    /// The next 32-bit output (the low half of a 64-bit draw, then its high half).
    pub fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.spare_u32.take() {
            return v;
        }
        let next = self.next_u64();
        self.spare_u32 = Some((next >> 32) as u32);
        next as u32
    }

    /// A uniform integer in `0..=max` by masked rejection (numpy's `random_interval`).
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = u64::MAX >> max.leading_zeros();
        if max <= u32::MAX as u64 {
            loop {
                let v = self.next_u32() as u64 & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = self.next_u64() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// Shuffle `items` in place like numpy's `Generator.shuffle` on a 1-d array.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.interval(i as u64) as usize;
            items.swap(i, j);
        }
    }
}

/// `np.random.default_rng(seed).permutation(n)`.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    Pcg64::new(seed).shuffle(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values printed by numpy 2.4.6:
    /// `np.random.default_rng(42).permutation(10)` and `.permutation(1000)[:10]`.
    #[test]
    fn matches_numpy_default_rng_permutation() {
        assert_eq!(permutation(10, 42), vec![5, 6, 0, 7, 3, 2, 4, 9, 1, 8]);
        assert_eq!(
            permutation(1000, 42)[..10].to_vec(),
            vec![978, 933, 859, 916, 127, 608, 856, 260, 147, 810]
        );
        // `default_rng(0).permutation(12)`, `default_rng(2**40 + 5).permutation(12)` (two
        // entropy words), `default_rng(42).permutation(5000)[:8]`.
        assert_eq!(
            permutation(12, 0),
            vec![9, 2, 7, 4, 5, 11, 0, 3, 6, 10, 8, 1]
        );
        assert_eq!(
            permutation(12, (1 << 40) + 5),
            vec![9, 5, 1, 2, 8, 3, 0, 10, 7, 4, 6, 11]
        );
        assert_eq!(
            permutation(5000, 42)[..8].to_vec(),
            vec![1535, 1183, 3378, 3825, 643, 90, 2835, 3865]
        );
    }

    /// `np.random.default_rng(42).bit_generator.random_raw(3)` (numpy 2.4.6).
    #[test]
    fn matches_numpy_pcg64_raw_outputs() {
        let mut r = Pcg64::new(42);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(got, RAW_42.to_vec());
    }

    const RAW_42: [u64; 3] = [
        14_276_969_152_011_380_360,
        8_095_878_257_575_067_585,
        15_838_336_090_824_644_132,
    ];

    #[test]
    fn permutation_is_a_permutation() {
        for n in [0usize, 1, 2, 7, 100] {
            let mut p = permutation(n, 7);
            p.sort_unstable();
            assert_eq!(p, (0..n).collect::<Vec<_>>());
        }
        assert_ne!(permutation(50, 1), permutation(50, 2));
    }
}
