//! The optimiser side of a training step: learning-rate schedules, global-norm gradient
//! clipping and AdamW, each matching its PyTorch / HF transformers reference.
//!
//! The trainer (train/) asks the [`Schedule`] for the step's learning rate, clips the LoRA
//! gradients with [`clip_grad_norm`], then calls [`AdamW::step`], which runs
//! `Backend::adamw` over the parameters in a fixed order. Only LoRA tensors are ever
//! optimised; the model (model/) and adapters (lora/) own the buffers, this module owns the
//! AdamW moments. Reference values come from tools/make_optim_fixtures.py.

pub mod adamw; // AdamW, AdamWConfig, AdamWState: moments, step counter, checkpoint state
pub mod clip; // global_norm, clip_grad_norm (torch.nn.utils.clip_grad_norm_)
pub mod schedule; // Schedule, ScheduleKind: HF constant/linear/cosine with warmup

pub use adamw::{AdamW, AdamWConfig, AdamWState};
pub use clip::{clip_grad_norm, global_norm};
pub use schedule::{Schedule, ScheduleKind};

#[cfg(test)]
mod tests_support; // JSON fixture loading for the tests of this module
