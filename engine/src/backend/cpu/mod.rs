//! The CPU backend: the engine's reference semantics. GEMMs through faer, rayon elsewhere.
//! Results are bit-identical for any rayon thread count.

/// The CPU backend (f32 storage).
#[derive(Clone, Debug, Default)]
pub struct CpuBackend;
