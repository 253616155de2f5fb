//! GRPO training: the data, plan, step and test evaluation of a run whose mapping is
//! `task_type = "grpo"`; trainer.rs runs the loop (checkpoints, resume, budgets, metrics) and
//! calls in here, as it does for DPO (dpo.rs).
//!
//! - Data ([`GrpoRun::prepare`]): the file's prompts (data/grpo.rs, errors name the row), the
//!   SPEC §2 split (seed 42); prompts leaving no room for a token within `seq_len` are
//!   dropped. A prompt of `p` tokens generates at most `min(grpo.max_new_tokens, seq_len − p)`.
//! - Plan ([`GrpoRun::plan`]): epoch `e` shuffles the train prompts by
//!   `counter_hash([seed, e])`; a micro-batch is `micro_batch` prompts, a step `grad_accum`
//!   micro-batches. The token budget counts prompt + completion tokens of all
//!   `num_generations` samples, each completion at its maximum length (the plan is fixed
//!   before anything is generated, so the budget is never exceeded; steps record this bound).
//! - Step ([`GrpoRun::step`]): for each prompt, `G = num_generations` completions are sampled
//!   from the current policy (model/generate.rs; temperature/top-k/top-p of the `grpo`
//!   section; draws keyed by `(counter_hash([seed, step]), row, g, position)`), each scored
//!   `r = Σ_k w_k·reward_k` (raw rewards, data/reward.rs), and the group-normalised advantage
//!   is `A = (r − mean) / (std + 1e-4)` (std with Bessel's correction, as TRL) or, with
//!   `scale_rewards = false` (Dr. GRPO), `A = r − mean`. The loss is TRL's GRPO loss with
//!   β = 0 (TRL's default: no KL term, so no reference model is needed in training) and one
//!   update per generation (ratio 1): `L = (1/N) Σ_i A_i · NLL(y_i)/|y_i|` over the step's
//!   `N` completions, `NLL` summed over the completion tokens (and the end token when the
//!   model produced it). Each completion is one `forward_backward` with `loss_scale =
//!   A_i/(|y_i|·N)`, accumulating; completions with `A = 0` (a group whose rewards are all
//!   equal) carry no gradient and are skipped. The reported loss is `L`'s value.
//! - Test evaluation ([`GrpoRun::evaluate`]): eval/grpo.rs on the test prompts (greedy,
//!   `max_new_tokens`), recorded as the loss `−(Σ_k w_k·mean reward_k − 0.5·KL)`: the negated,
//!   unnormalised SPEC §3 score, so lower is better as for SFT and `keep_best` works.
//!
//! Cost: generation is KV-cached (model/decode.rs): per prompt one prefill and at most
//! `max_new_tokens − 1` decode steps of up to `G` rows, on top of the `G` training
//! forward/backwards.

use serde::{Deserialize, Serialize};

use super::config::{resolve_asset, TrainConfig};
use super::plan::{plan_epochs, shuffled_rows, split_by_row, StepPlan};
use super::trainer::StopReason;
use crate::backend::Backend;
use crate::data::grpo::{grpo_prompts, GrpoMapping, GrpoPrompt};
use crate::data::reward::Reward;
use crate::data::{read_records, split_indices, TextTokenizer};
use crate::error::{Error, Result};
use crate::eval::grpo::{evaluate_grpo, GrpoEvalOptions, KL_COEF};
use crate::eval::EvalResult;
use crate::lora::{counter_hash, LoraGrads, LoraState};
use crate::model::batch::IGNORE;
use crate::model::{Batch, Llama, Sample, Sampling, StepOptions};

/// The `grpo` section of a [`TrainConfig`] (used by `grpo` runs only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoSection {
    /// Completions sampled per prompt (2..=64).
    pub num_generations: usize,
    /// Most new tokens per completion (1..=4096), in training and in the test evaluation.
    pub max_new_tokens: usize,
    /// Sampling temperature in training (in (0, 10]).
    pub temperature: f64,
    /// Top-k in training (0: all).
    pub top_k: usize,
    /// Top-p in training (in (0, 1]).
    pub top_p: f64,
    /// Divide advantages by the group's reward std (GRPO); false: Dr. GRPO's `r − mean`.
    pub scale_rewards: bool,
}

impl Default for GrpoSection {
    fn default() -> Self {
        GrpoSection {
            num_generations: 4,
            max_new_tokens: 32,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            scale_rewards: true,
        }
    }
}

impl GrpoSection {
    /// Check the bounds; errors name `grpo.<field>`.
    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |f: &str, msg: String| Err(Error::config(source, format!("grpo.{f}"), msg));
        if !(2..=64).contains(&self.num_generations) {
            return err(
                "num_generations",
                format!("must be in 2..=64, got {}", self.num_generations),
            );
        }
        if !(1..=4096).contains(&self.max_new_tokens) {
            return err(
                "max_new_tokens",
                format!("must be in 1..=4096, got {}", self.max_new_tokens),
            );
        }
        let t = self.temperature;
        if !(t.is_finite() && t > 0.0 && t <= 10.0) {
            return err("temperature", format!("must be in (0, 10], got {t}"));
        }
        let p = self.top_p;
        if !(p.is_finite() && p > 0.0 && p <= 1.0) {
            return err("top_p", format!("must be in (0, 1], got {p}"));
        }
        Ok(())
    }
}

/// Group-normalised advantages of one prompt's rewards: `(r − mean)/(std + 1e-4)` with the
/// sample std (Bessel's correction), or `r − mean` without `scale`.
pub fn group_advantages(rewards: &[f64], scale: bool) -> Vec<f64> {
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let var = if rewards.len() > 1 {
        rewards.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let div = if scale { var.sqrt() + 1e-4 } else { 1.0 };
    rewards.iter().map(|r| (r - mean) / div).collect()
}

/// One sampled completion of a step: the prompt and completion ids (with the end token
/// when the model produced it) and its advantage.
#[derive(Clone, Debug, PartialEq)]
pub struct GrpoSequence {
    /// Prompt tokens at the head of `ids` (not trained).
    pub prompt_len: usize,
    /// Prompt + completion ids.
    pub ids: Vec<u32>,
    /// The completion's advantage `A`.
    pub advantage: f64,
}

/// The gradient of `L = (1/N) Σ_i A_i · NLL(y_i)/|y_i|` over the `N` sequences `seqs` w.r.t.
/// every LoRA `A` and `B`, written into `grads` (overwritten), and `(L, trained targets)`.
/// Sequence `j`'s dropout key is `opts.step + j`; `opts.loss_scale` and `opts.accumulate`
/// are ignored. Sequences with `A = 0` or no completion token are skipped.
pub fn grpo_backward<B: Backend>(
    model: &mut Llama<B>,
    lora: &LoraState<B>,
    grads: &mut LoraGrads<B>,
    seqs: &[GrpoSequence],
    opts: &StepOptions,
) -> Result<(f64, usize)> {
    for g in grads.bufs_mut() {
        model.backend().fill(g, 0.0)?;
    }
    let n = seqs.len() as f64;
    let vocab = model.config().vocab_size;
    let (mut loss, mut targets) = (0.0f64, 0usize);
    for (j, s) in seqs.iter().enumerate() {
        if s.prompt_len > s.ids.len() {
            return Err(Error::shape(
                "grpo step",
                format!(
                    "a prompt of {} tokens in a sequence of {}",
                    s.prompt_len,
                    s.ids.len()
                ),
            ));
        }
        let len = s.ids.len() - s.prompt_len;
        if s.advantage == 0.0 || len == 0 {
            continue;
        }
        let labels: Vec<i32> = s
            .ids
            .iter()
            .enumerate()
            .map(|(t, &id)| if t < s.prompt_len { IGNORE } else { id as i32 })
            .collect();
        let sample = Sample {
            input_ids: &s.ids,
            labels: &labels,
        };
        let batch = Batch::unpacked(&[sample], s.ids.len(), vocab)?;
        let scale = s.advantage / (len as f64 * n);
        let so = StepOptions {
            step: opts.step + j as u64,
            loss_scale: Some(scale as f32),
            accumulate: true,
            ..*opts
        };
        let st = model.forward_backward(&batch, lora, grads, &so)?;
        loss += scale * st.sum_loss;
        targets += st.num_targets;
    }
    Ok((loss, targets))
}

/// What one GRPO step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrpoStepStats {
    /// The surrogate loss `L` (see the module doc).
    pub loss: f64,
    /// Mean weighted reward `Σ w·r` of the step's completions.
    pub mean_reward: f64,
    /// Completions generated.
    pub completions: usize,
    /// Completion tokens trained (those with a non-zero advantage).
    pub targets: usize,
}

/// The data of a GRPO run.
pub struct GrpoRun {
    mapping: GrpoMapping,
    rewards: Vec<Reward>,
    weights: Vec<f64>,
    section: GrpoSection,
    seq_len: usize,
    /// Train prompts (file order).
    pub train: Vec<GrpoPrompt>,
    /// Test prompts (split order; the first `eval_samples`).
    pub test: Vec<GrpoPrompt>,
    /// Prompts dropped for leaving no room to generate within `seq_len`.
    pub dropped: usize,
}

impl GrpoRun {
    /// Read, render and split `cfg`'s dataset with the GRPO `mapping`.
    pub fn prepare(
        cfg: &TrainConfig,
        mapping: &GrpoMapping,
        tok: &dyn TextTokenizer,
    ) -> Result<Self> {
        let path = resolve_asset(&cfg.dataset)?;
        let records = read_records(&path)?;
        let split = split_indices(records.len(), 42)?;
        let prompts = grpo_prompts(tok, mapping, &records, &path)?;
        let mut dropped = 0;
        let mut kept = Vec::new();
        for p in prompts {
            if p.ids.len() < cfg.seq_len {
                kept.push((p.row, p));
            } else {
                dropped += 1;
            }
        }
        let (train, test) = split_by_row(kept, records.len(), &split, cfg.eval_samples);
        if train.is_empty() {
            return Err(Error::config(
                path.display().to_string(),
                "rows",
                "no train prompt left after the split (prompts must be shorter than seq_len)",
            ));
        }
        Ok(GrpoRun {
            rewards: mapping.rewards()?,
            weights: mapping.rewards.iter().map(|s| s.weight).collect(),
            mapping: mapping.clone(),
            section: cfg.grpo.clone().unwrap_or_default(),
            seq_len: cfg.seq_len,
            train,
            test,
            dropped,
        })
    }

    /// Most new tokens for a prompt of `len` tokens.
    fn max_new(&self, len: usize) -> usize {
        self.section
            .max_new_tokens
            .min(self.seq_len.saturating_sub(len))
    }

    /// Plan every step of the run (see the module doc) and say what limits it.
    pub fn plan(&self, cfg: &TrainConfig) -> Result<(Vec<StepPlan>, StopReason)> {
        let g = self.section.num_generations as u64;
        plan_epochs(
            cfg,
            |epoch| Ok(shuffled_rows(self.train.len(), cfg, epoch)),
            |i| {
                let len = self.train[i].ids.len();
                g * (len + self.max_new(len)) as u64
            },
        )
    }

    /// The test evaluation (greedy, `max_new_tokens`) as an SFT-shaped result whose loss is
    /// the negated unnormalised score `−(Σ w·mean reward − 0.5·KL)` (per prompt likewise).
    pub fn evaluate<B: Backend>(
        &self,
        model: &mut Llama<B>,
        lora: Option<&LoraState<B>>,
        tok: &dyn TextTokenizer,
    ) -> Result<EvalResult> {
        let opts = GrpoEvalOptions {
            max_new_tokens: self.section.max_new_tokens,
            sampling: Sampling::greedy(),
        };
        let r = evaluate_grpo(model, lora, tok, &self.mapping, &self.test, &opts)?;
        let per_prompt: Vec<f64> = r
            .per_prompt
            .iter()
            .map(|p| {
                let w: f64 = self
                    .weights
                    .iter()
                    .zip(&p.rewards)
                    .map(|(w, r)| w * r)
                    .sum();
                KL_COEF * p.kl - w
            })
            .collect();
        Ok(EvalResult {
            mean_loss: KL_COEF * r.mean_kl - r.weighted_reward,
            tokens: r.kl_positions,
            samples: r.prompts,
            per_sample_loss: per_prompt,
            rows: r.per_prompt.iter().map(|p| p.row).collect(),
        })
    }

    /// One optimiser step over the prompts of `sp` (all its micro-batches) into `grads`
    /// (overwritten); `step` is the number of steps done (it keys the draws and dropout).
    #[allow(clippy::too_many_arguments)]
    pub fn step<B: Backend>(
        &self,
        model: &mut Llama<B>,
        lora: &LoraState<B>,
        grads: &mut LoraGrads<B>,
        tok: &dyn TextTokenizer,
        sp: &StepPlan,
        cfg: &TrainConfig,
        step: u64,
    ) -> Result<GrpoStepStats> {
        let s = &self.section;
        let sampling = Sampling {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            seed: counter_hash(&[cfg.seed, step, 0x6772_706f]),
        };
        let eos = tok.eos_id();
        // generate and score every completion of the step
        let mut seqs: Vec<GrpoSequence> = Vec::new();
        let mut reward_sum = 0.0f64;
        for &i in sp.micro.iter().flatten().flatten() {
            let p = self.train.get(i).ok_or_else(|| {
                Error::shape("grpo step", format!("prompt {i} is not in the train set"))
            })?;
            let max_new = self.max_new(p.ids.len());
            let mut group = Vec::with_capacity(s.num_generations);
            let mut rewards = Vec::with_capacity(s.num_generations);
            // the G samples of the prompt decode together (one prefill, one KV cache)
            let keys: Vec<[u64; 2]> = (0..s.num_generations as u64)
                .map(|g| [p.row as u64, g])
                .collect();
            let done = model.generate_many(&p.ids, max_new, eos, Some(lora), &sampling, &keys)?;
            for c in done {
                let text = tok.decode(&c.ids)?;
                let r: f64 = self
                    .rewards
                    .iter()
                    .zip(&p.references)
                    .zip(&self.weights)
                    .map(|((f, refv), w)| w * f.score(&text, refv.as_deref()))
                    .sum();
                rewards.push(r);
                let mut ids: Vec<u32> = p.ids.iter().chain(&c.ids).copied().collect();
                if c.ended {
                    ids.extend(eos);
                }
                group.push(ids);
            }
            reward_sum += rewards.iter().sum::<f64>();
            let adv = group_advantages(&rewards, s.scale_rewards);
            for (ids, advantage) in group.into_iter().zip(adv) {
                seqs.push(GrpoSequence {
                    prompt_len: p.ids.len(),
                    ids,
                    advantage,
                });
            }
        }
        let per_step = (cfg.micro_batch * cfg.grad_accum * s.num_generations) as u64;
        let opts = StepOptions {
            recompute: cfg.recompute,
            seed: cfg.seed,
            step: step * per_step,
            ..StepOptions::default()
        };
        let (loss, targets) = grpo_backward(model, lora, grads, &seqs, &opts)?;
        let n = seqs.len();
        let stats = GrpoStepStats {
            loss,
            mean_reward: reward_sum / n.max(1) as f64,
            completions: n,
            targets,
        };
        Ok(stats)
    }
}
