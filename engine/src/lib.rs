//! gradients-engine: a LoRA training engine for the Llama family, written GPU-kernel-first
//! with a fast, deterministic CPU backend as its reference semantics.
//!
//! Data flows one way: loaders (`model`) give a config and frozen weights, the model drives
//! one backend (`backend`), LoRA adapters (`lora`) hold the only trainable parameters, and the
//! optimiser (`optim`) updates them. See ARCHITECTURE.md in the steering repo for the layout.
#![deny(missing_docs)]

pub mod assets; // smollm2_gguf, alpaca_en_demo, dpo_en_demo: cached real test assets
pub mod backend; // Backend trait (the op set), RopeTable, cpu::CpuBackend
pub mod data; // dataset files, column mappings, tokenisation + masking, packing, split
pub mod error; // Error, ErrorKind, Result
pub mod eval; // evaluate (SFT test loss), evaluate_dpo, evaluate_grpo + grpo_scores, eval_seq_len
pub mod io; // write_atomic, write_atomic_with (temp file + fsync + rename)
pub mod lora; // Target, LoraConfig; adapter parameters and PEFT files
pub mod model; // ModelConfig, ModelWeights, loaders, llama forward/backward, KV-cached generation
pub mod optim; // Schedule, clip_grad_norm, AdamW (+ AdamWState for checkpoints)
pub mod tensor; // DType, Tensor (host f32 storage)
pub mod tokenizer;
pub mod train; // TrainConfig, train: the LoRA SFT loop, metrics, checkpoints, resume // Tokenizer (GGUF byte-level BPE), ChatMessage, render_chat

pub use error::{Error, ErrorKind, Result};
pub use tensor::{DType, Tensor};
