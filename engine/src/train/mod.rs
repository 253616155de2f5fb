//! LoRA fine-tuning runs (SFT, DPO through dpo.rs, GRPO through grpo.rs): a validated [`TrainConfig`]
//! (config.rs) drives the loop in trainer.rs, which writes `metrics.jsonl` (metrics.rs), its
//! picture `loss.svg` (plot.rs) and atomic, resumable checkpoints (checkpoint.rs) into the
//! run's output directory. Evaluation lives in `crate::eval`.

pub mod checkpoint; // TrainerState, save/load/latest_checkpoint, BestRecord, save_best, read_best
pub mod config; // TrainConfig (TOML/JSON, validated), resolve_asset
pub mod dpo; // DpoRun (data, plan, cached reference), dpo_backward: DPO training
pub mod grpo; // GrpoRun (prompts, plan, sampled groups, advantages), GrpoSection: GRPO training
pub mod metrics; // Metrics: metrics.jsonl appends, trimmed on resume
pub mod plan; // prepare_data (split + tokens), epoch_rows, plan_steps, micro_batch
pub mod plot; // LossPoints, render_svg, write_loss_curve: loss.svg beside metrics.jsonl
pub mod trainer; // train, RunOptions, TrainSummary, StepRecord, Event, install_signal_flag

pub use config::TrainConfig;
pub use trainer::{
    install_signal_flag, train, train_model, train_model_on, train_on, Event, RunOptions,
    StepRecord, StopReason, TrainSummary,
};
