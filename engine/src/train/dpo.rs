//! DPO training: the data, plan and step of a run whose mapping is `task_type = "dpo"`;
//! trainer.rs runs the loop (checkpoints, resume, budgets, metrics) and calls in here.
//!
//! - Data ([`DpoRun::prepare`]): the whole file is tokenised (tokenize.rs `tokenize_dpo`,
//!   errors name the row), each pair becomes two sequences of at most `seq_len` tokens
//!   (eval/dpo.rs `dpo_samples`: head kept, pairs left without a completion token dropped),
//!   and the SPEC §2 split (seed 42) puts each pair in train or test.
//! - Plan ([`DpoRun::plan`]): epoch `e` shuffles the train pairs by `counter_hash([seed, e])`,
//!   a micro-batch is `micro_batch` pairs, a step `grad_accum` micro-batches; a step's
//!   tokens are both sequences of its pairs, so the token budget counts both (`packing` is
//!   not used: every sequence is its own forward).
//! - Reference: the base model (adapter disabled) is frozen, so each pair's reference
//!   log-probs `ρ_c, ρ_r` are computed once, the first time the pair is met, and cached.
//! - Step ([`dpo_backward`]): the loss is the mean over the step's N pairs of
//!   `−log σ(z)`, `z = β·((π_c − ρ_c) − (π_r − ρ_r))`. With `w = ∂L/∂π_c = −β·σ(−z)/N =
//!   −∂L/∂π_r` and `∂π/∂θ = −∂(Σ CE)/∂θ`, the gradient is `Σ_pairs (β·σ(−z)/N)·(G_c − G_r)`
//!   where `G` is the summed token cross-entropy gradient of one sequence. Per pair, one
//!   `forward_backward` of the chosen sequence (`loss_scale` 1) and one of the rejected
//!   (`loss_scale` −1, accumulating) leave `G_c − G_r` in a scratch gradient and give
//!   `π_c, π_r` (their `sum_loss`); then `grads += β·σ(−z)/N · scratch`. So the policy pass
//!   is the training forward itself (with LoRA dropout, as TRL's is) and nothing in the model
//!   or backend is DPO-specific.

use super::config::{resolve_asset, TrainConfig};
use super::plan::{plan_epochs, shuffled_rows, split_by_row, StepPlan};
use super::trainer::StopReason;
use crate::backend::Backend;
use crate::data::{read_records, split_indices, tokenize_dpo, DpoMapping, TextTokenizer};
use crate::error::{Error, Result};
use crate::eval::dpo::{
    dpo_logit, dpo_samples, log_sigmoid, pair_logps, score_dpo, sigmoid, DpoEvalResult, DpoSample,
};
use crate::lora::{LoraGrads, LoraState};
use crate::model::{Batch, Llama, StepOptions};

/// What one DPO step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpoStepStats {
    /// Mean DPO loss over the step's pairs.
    pub loss: f64,
    /// Pairs in the step.
    pub pairs: usize,
    /// Scored completion tokens of both sequences of every pair.
    pub targets: usize,
    /// Fraction of pairs with `z > 0`.
    pub reward_accuracy: f64,
    /// Mean margin `z`.
    pub mean_margin: f64,
}

/// The gradient of the mean DPO loss of `pairs` w.r.t. every LoRA `A` and `B`, written into
/// `grads` (added with `accumulate`), given each pair's reference log-probs
/// `[chosen, rejected]`. `scratch` is a gradient buffer of the same adapter (overwritten).
/// The dropout key of pair `j`'s chosen / rejected forward is `opts.step + 2j` / `+ 2j + 1`;
/// `opts.loss_scale` and `opts.accumulate` are ignored.
#[allow(clippy::too_many_arguments)]
pub fn dpo_backward<B: Backend>(
    model: &mut Llama<B>,
    lora: &LoraState<B>,
    grads: &mut LoraGrads<B>,
    scratch: &mut LoraGrads<B>,
    pairs: &[&DpoSample],
    reference: &[[f64; 2]],
    beta: f64,
    opts: &StepOptions,
    accumulate: bool,
) -> Result<DpoStepStats> {
    if pairs.is_empty() || pairs.len() != reference.len() {
        return Err(Error::shape(
            "dpo step",
            format!(
                "{} pairs with {} reference log-probs (need equal, non-zero)",
                pairs.len(),
                reference.len()
            ),
        ));
    }
    if !accumulate {
        for g in grads.bufs_mut() {
            model.backend().fill(g, 0.0)?;
        }
    }
    let vocab = model.config().vocab_size;
    let n = pairs.len() as f64;
    let mut stats = DpoStepStats {
        loss: 0.0,
        pairs: pairs.len(),
        targets: 0,
        reward_accuracy: 0.0,
        mean_margin: 0.0,
    };
    let mut wins = 0usize;
    for (j, (p, rho)) in pairs.iter().zip(reference).enumerate() {
        let mut pi = [0.0f64; 2];
        for (k, (s, scale)) in [(&p.chosen, 1.0f32), (&p.rejected, -1.0)]
            .into_iter()
            .enumerate()
        {
            let batch = Batch::unpacked(&[s.as_sample()], s.len(), vocab)?;
            let so = StepOptions {
                step: opts.step + 2 * j as u64 + k as u64,
                loss_scale: Some(scale),
                accumulate: k == 1,
                ..*opts
            };
            let st = model.forward_backward(&batch, lora, scratch, &so)?;
            pi[k] = -st.sum_loss;
            stats.targets += st.num_targets;
        }
        let z = dpo_logit(beta, pi, *rho);
        stats.loss += -log_sigmoid(z);
        stats.mean_margin += z;
        wins += usize::from(z > 0.0);
        // ∂L/∂θ = β·σ(−z)/N · (G_c − G_r), and scratch holds G_c − G_r
        let c = (beta * sigmoid(-z) / n) as f32;
        let be = model.backend();
        for (g, s) in grads.bufs_mut().into_iter().zip(scratch.bufs()) {
            be.axpy(g, c, s)?;
        }
    }
    stats.loss /= n;
    stats.mean_margin /= n;
    stats.reward_accuracy = wins as f64 / n;
    Ok(stats)
}

/// The data of a DPO run and its cached reference log-probs.
pub struct DpoRun {
    beta: f64,
    /// Train pairs (file order).
    pub train: Vec<DpoSample>,
    /// Test pairs (split order; the first `eval_samples`).
    pub test: Vec<DpoSample>,
    /// Pairs dropped for having no completion token within `seq_len`.
    pub dropped: usize,
    ref_train: Vec<Option<[f64; 2]>>,
    ref_test: Option<Vec<[f64; 2]>>,
}

impl DpoRun {
    /// Read, tokenise and split `cfg`'s dataset with the DPO `mapping`.
    pub fn prepare(
        cfg: &TrainConfig,
        mapping: &DpoMapping,
        tok: &dyn TextTokenizer,
    ) -> Result<Self> {
        let path = resolve_asset(&cfg.dataset)?;
        let records = read_records(&path)?;
        let split = split_indices(records.len(), 42)?;
        let tokens = tokenize_dpo(tok, mapping, &records, &path)?;
        let (samples, dropped) = dpo_samples(&tokens, cfg.seq_len)?;
        let (train, test) = split_by_row(
            samples.into_iter().map(|s| (s.row, s)),
            records.len(),
            &split,
            cfg.eval_samples,
        );
        if train.is_empty() {
            return Err(Error::config(
                path.display().to_string(),
                "rows",
                "no train pair left after the split and tokenisation",
            ));
        }
        Ok(DpoRun {
            beta: cfg.dpo_beta,
            ref_train: vec![None; train.len()],
            ref_test: None,
            train,
            test,
            dropped,
        })
    }

    /// Plan every step of the run (see the module doc) and say what limits it.
    pub fn plan(&self, cfg: &TrainConfig) -> Result<(Vec<StepPlan>, StopReason)> {
        plan_epochs(
            cfg,
            |epoch| Ok(shuffled_rows(self.train.len(), cfg, epoch)),
            |i| self.train[i].tokens() as u64,
        )
    }

    /// The DPO loss of the test pairs with `lora` (`None`: the base model, every loss ln 2);
    /// the reference log-probs are computed on the first call.
    pub fn evaluate<B: Backend>(
        &mut self,
        model: &mut Llama<B>,
        lora: Option<&LoraState<B>>,
    ) -> Result<DpoEvalResult> {
        let reference = match self.ref_test.take() {
            Some(r) => r,
            None => pair_logps(model, None, &self.test)?,
        };
        let policy = match lora {
            Some(l) => pair_logps(model, Some(l), &self.test),
            None => Ok(reference.clone()),
        };
        let r = policy.and_then(|p| score_dpo(&self.test, &p, &reference, self.beta));
        self.ref_test = Some(reference);
        r
    }

    /// One optimiser step's gradients over the pairs of `sp` (all its micro-batches: the
    /// loss is the mean over the step's pairs) into `grads`; `step` is the number of steps
    /// done (it keys the dropout masks).
    #[allow(clippy::too_many_arguments)]
    pub fn step<B: Backend>(
        &mut self,
        model: &mut Llama<B>,
        lora: &LoraState<B>,
        grads: &mut LoraGrads<B>,
        scratch: &mut LoraGrads<B>,
        sp: &StepPlan,
        cfg: &TrainConfig,
        step: u64,
    ) -> Result<DpoStepStats> {
        let idx: Vec<usize> = sp.micro.iter().flatten().flatten().copied().collect();
        let mut reference = Vec::with_capacity(idx.len());
        for &i in &idx {
            let p = self.train.get(i).ok_or_else(|| {
                Error::shape("dpo step", format!("pair {i} is not in the train set"))
            })?;
            let rho = match self.ref_train[i] {
                Some(r) => r,
                None => {
                    let r = pair_logps(model, None, std::slice::from_ref(p))?[0];
                    self.ref_train[i] = Some(r);
                    r
                }
            };
            reference.push(rho);
        }
        let pairs: Vec<&DpoSample> = idx.iter().map(|&i| &self.train[i]).collect();
        let per_step = 2 * (cfg.micro_batch * cfg.grad_accum) as u64;
        let opts = StepOptions {
            recompute: cfg.recompute,
            seed: cfg.seed,
            step: step * per_step,
            ..StepOptions::default()
        };
        dpo_backward(
            model, lora, grads, scratch, &pairs, &reference, self.beta, &opts, false,
        )
    }
}
