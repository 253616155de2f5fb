//! The Llama-family decoder (Llama, Mistral, SmolLM, Qwen2) with LoRA: the public API
//! ([`Llama`]); the block's forward lives in `llama_forward.rs`, its explicit backward in
//! `llama_backward.rs`, the buffers in `plan.rs`, KV-cached decoding (`prefill`,
//! `decode_step`, through the same forward) and the logits of a whole sequence
//! ([`Llama::logits_last`], [`Llama::logits_from`]: full forwards, the cached path's
//! reference) in `decode.rs`, sampling in `generate.rs`.
//!
//! The forward is exactly HF's `LlamaForCausalLM` (+ PEFT LoRA): per block
//! `x → rmsnorm → q,k,v (+bias) → rope(q,k) → causal GQA attention → o_proj → +x →
//! rmsnorm → silu(gate)·up → down_proj → +`, then the final norm and the lm_head (tied to the
//! embedding or not). Every adapted Linear computes `y = x·Wᵀ (+b) + s·(drop(x)·Aᵀ)·Bᵀ`,
//! never forming `B·A`. The loss is HF's: mean cross-entropy over all non-ignored shifted
//! targets of the batch.
//!
//! Gradients: [`Llama::forward_backward`] overwrites every LoRA gradient (`dA`, `dB`), or adds
//! into them with [`StepOptions::accumulate`]; the frozen weights get none. Internally the
//! residual-stream gradient accumulates (`+=`) through the blocks; each Linear's input
//! gradient overwrites on its first contribution and accumulates afterwards (q, k, v and
//! gate, up share their input).

use super::decode::{DecodeState, KvStep};
use super::llama_backward::layer_backward;
use super::llama_forward::{Ctx, DeviceLayer};
use super::plan::{Dims, Plan, PlanKey};
use super::{Batch, Frozen, LayerWeights, ModelConfig, ModelWeights};
use crate::backend::{Backend, RopeTable};
use crate::error::{Error, Result};
use crate::lora::{LoraGrads, LoraState};
use crate::tensor::Tensor;

/// Options of a training step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepOptions {
    /// Gradient checkpointing: keep only each block's input and recompute the block during
    /// the backward (identical gradients, less memory).
    pub recompute: bool,
    /// Seed of the LoRA dropout masks; the key of `(layer, target)` at `step` is
    /// `counter_hash([seed, step, layer, target_index])`.
    pub seed: u64,
    /// Step counter (changes the dropout masks).
    pub step: u64,
    /// Multiplier of the summed token losses in the gradient; `None` = `1/num_targets`
    /// (HF's mean). Set it to `1/total_targets` to accumulate micro-batches.
    pub loss_scale: Option<f32>,
    /// Add this step's gradients into `grads` (`+=`) instead of overwriting them, for
    /// micro-batch accumulation (with `loss_scale` set to `1/total_targets`).
    pub accumulate: bool,
}

/// What a training step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the batch's targets (0 when there are none).
    pub loss: f32,
    /// Sum of the token losses (f64, in token order).
    pub sum_loss: f64,
    /// Number of non-ignored targets.
    pub num_targets: usize,
}

/// A Llama-family model on backend `B`: frozen weights, RoPE table and activation plans.
pub struct Llama<B: Backend> {
    be: B,
    cfg: ModelConfig,
    /// `[vocab, h]`.
    embed: B::Buf,
    layers: Vec<DeviceLayer<B>>,
    /// `[h]`.
    final_norm: B::Buf,
    /// `[vocab, h]`; `None` when tied to `embed`.
    lm_head: Option<B::Buf>,
    rope: Option<RopeTable<B>>,
    train_plan: Option<Plan<B>>,
    eval_plan: Option<Plan<B>>,
    /// The KV cache and decode-step buffers of `decode.rs` (taken out while decoding).
    pub(super) decode: Option<DecodeState<B>>,
}

/// Return the heap pages freed by [`Llama::from_weights`] to the OS. glibc serves the layer
/// tensors (a few MiB each) from the heap once its dynamic mmap threshold has risen, and keeps
/// freed chunks below the top of the heap resident: without this, ≈ 90 MiB of the freed host
/// copy of SmolLM2-135M stays in the peak RSS of a training run (BENCHMARKS.md, Predictions 4).
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim takes no pointers, only walks the allocator's own arenas
        // under their locks (thread-safe), and frees nothing that is still allocated.
        unsafe {
            malloc_trim(0);
        }
    }
}

fn check(name: &str, got: &[usize], shape: &[usize]) -> Result<()> {
    if got != shape {
        return Err(Error::shape(
            "llama weights",
            format!("{name}: expected {shape:?}, got {got:?}"),
        ));
    }
    Ok(())
}

/// Check the config and the model-wide tensors of `w` (the layers are checked one by one as
/// they are uploaded).
fn check_top(cfg: &ModelConfig, w: &ModelWeights) -> Result<()> {
    cfg.validate("model config")?;
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    if w.layers.len() != cfg.num_layers {
        return Err(Error::shape(
            "llama weights",
            format!(
                "{} layers for a config of {}",
                w.layers.len(),
                cfg.num_layers
            ),
        ));
    }
    check("embed_tokens", &w.embed.shape, &[v, h])?;
    check("norm", &w.final_norm.shape, &[h])?;
    match &w.lm_head {
        Some(lm) => check("lm_head", &lm.shape, &[v, h]),
        None if !cfg.tie_word_embeddings => Err(Error::shape(
            "llama weights",
            "lm_head: missing, and tie_word_embeddings is false",
        )),
        None => Ok(()),
    }
}

/// Check block `i`'s weights against `cfg` and upload them to `be`.
fn upload_layer<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    i: usize,
    l: &LayerWeights,
) -> Result<DeviceLayer<B>> {
    let (h, qd, kv, f) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
    );
    let up = |t: &Tensor| be.upload_compute(&t.data);
    let LayerWeights {
        attn_norm,
        wq,
        wk,
        wv,
        wo,
        bq,
        bk,
        bv,
        mlp_norm,
        w_gate,
        w_up,
        w_down,
    } = l;
    let p = |s: &str| format!("layers.{i}.{s}");
    check(&p("input_layernorm"), &attn_norm.shape, &[h])?;
    check(&p("self_attn.q_proj"), wq.shape(), &[qd, h])?;
    check(&p("self_attn.k_proj"), wk.shape(), &[kv, h])?;
    check(&p("self_attn.v_proj"), wv.shape(), &[kv, h])?;
    check(&p("self_attn.o_proj"), wo.shape(), &[h, qd])?;
    check(&p("post_attention_layernorm"), &mlp_norm.shape, &[h])?;
    check(&p("mlp.gate_proj"), w_gate.shape(), &[f, h])?;
    check(&p("mlp.up_proj"), w_up.shape(), &[f, h])?;
    check(&p("mlp.down_proj"), w_down.shape(), &[h, f])?;
    let bias = match (bq, bk, bv) {
        (Some(bq), Some(bk), Some(bv)) => {
            check(&p("self_attn.q_proj.bias"), &bq.shape, &[qd])?;
            check(&p("self_attn.k_proj.bias"), &bk.shape, &[kv])?;
            check(&p("self_attn.v_proj.bias"), &bv.shape, &[kv])?;
            Some([up(bq)?, up(bk)?, up(bv)?])
        }
        (None, None, None) if !cfg.attention_bias => None,
        _ => {
            return Err(Error::shape(
                "llama weights",
                format!(
                    "{}: q/k/v biases must all be present (attention_bias)",
                    p("self_attn")
                ),
            ))
        }
    };
    let lin = |w: &Frozen| be.upload_weight(w);
    Ok(DeviceLayer {
        attn_norm: up(attn_norm)?,
        wq: lin(wq)?,
        wk: lin(wk)?,
        wv: lin(wv)?,
        wo: lin(wo)?,
        bias,
        mlp_norm: up(mlp_norm)?,
        w_gate: lin(w_gate)?,
        w_up: lin(w_up)?,
        w_down: lin(w_down)?,
    })
}

impl<B: Backend> Llama<B> {
    /// Upload `w` (checked against `cfg`) to `be`.
    pub fn new(be: B, cfg: &ModelConfig, w: &ModelWeights) -> Result<Self> {
        check_top(cfg, w)?;
        let up = |t: &Tensor| be.upload_compute(&t.data);
        let layers = w
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| upload_layer(&be, cfg, i, l))
            .collect::<Result<Vec<_>>>()?;
        Ok(Llama {
            embed: up(&w.embed)?,
            final_norm: up(&w.final_norm)?,
            lm_head: w.lm_head.as_ref().map(up).transpose()?,
            layers,
            rope: None,
            train_plan: None,
            eval_plan: None,
            decode: None,
            cfg: cfg.clone(),
            be,
        })
    }

    /// Like [`Llama::new`], but takes the host weights and frees each tensor once it is on the
    /// backend, so the host and backend copies of the model never coexist (on the CPU backend
    /// this halves the weights' share of the peak memory).
    pub fn from_weights(be: B, cfg: &ModelConfig, w: ModelWeights) -> Result<Self> {
        check_top(cfg, &w)?;
        let ModelWeights {
            embed,
            layers: host_layers,
            final_norm,
            lm_head,
        } = w;
        let embed = be.upload_compute(&embed.data)?; // the host tensor is dropped here
        let mut layers = Vec::with_capacity(host_layers.len());
        for (i, l) in host_layers.into_iter().enumerate() {
            layers.push(upload_layer(&be, cfg, i, &l)?);
        }
        let final_norm = be.upload_compute(&final_norm.data)?;
        let lm_head = lm_head.map(|t| be.upload_compute(&t.data)).transpose()?;
        release_freed_heap();
        Ok(Llama {
            embed,
            final_norm,
            lm_head,
            layers,
            rope: None,
            train_plan: None,
            eval_plan: None,
            decode: None,
            cfg: cfg.clone(),
            be,
        })
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.be
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub(super) fn dims(&self, batch: usize, seq: usize) -> Dims {
        let c = &self.cfg;
        Dims {
            batch,
            seq,
            n: batch * seq,
            h: c.hidden_size,
            qd: c.q_dim(),
            kv: c.kv_dim(),
            f: c.intermediate_size,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            hd: c.head_dim,
            vocab: c.vocab_size,
        }
    }

    /// The lm_head `[vocab, h]` (the embedding when tied).
    pub(super) fn lm_head(&self) -> &B::Buf {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// The RoPE table (made by [`Llama::ensure_rope`]).
    pub(super) fn rope(&self) -> Result<&RopeTable<B>> {
        self.rope
            .as_ref()
            .ok_or_else(|| Error::unsupported("llama: rope table missing"))
    }

    /// Make the RoPE table cover positions `0..max_pos`.
    pub(super) fn ensure_rope(&mut self, max_pos: usize) -> Result<()> {
        if self.rope.as_ref().is_none_or(|r| r.max_pos < max_pos) {
            let len = max_pos.next_power_of_two().max(256);
            self.rope = Some(RopeTable::new(&self.be, &self.cfg, len)?);
        }
        Ok(())
    }

    pub(super) fn check_lora(&self, lora: Option<&LoraState<B>>) -> Result<()> {
        if let Some(l) = lora {
            if l.num_layers() != self.cfg.num_layers {
                return Err(Error::shape(
                    "llama lora",
                    format!(
                        "adapter has {} layers, model {}",
                        l.num_layers(),
                        self.cfg.num_layers
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Run embedding, all blocks and the final norm of `batch` into a plan (the stored
    /// residuals, `plan.acts` per block or the single recompute slot, `plan.xf`). A forward-only
    /// pass runs in the training plan when that one fits (no second set of buffers), else in
    /// the eval plan. With `kv`, each block also writes its keys and values into the KV cache
    /// (the prefill of `decode.rs`). Returns whether the training plan was used.
    pub(super) fn forward_into(
        &mut self,
        train: bool,
        batch: &Batch,
        lora: Option<&LoraState<B>>,
        opts: &StepOptions,
        kv: Option<KvStep<'_, B>>,
    ) -> Result<bool> {
        batch.validate(self.cfg.vocab_size)?;
        self.check_lora(lora)?;
        self.ensure_rope(batch.max_position())?;
        let d = self.dims(batch.batch, batch.seq);
        let p = if train {
            lora.map_or(0.0, |l| l.config.dropout)
        } else {
            0.0
        };
        let saved = if train && !opts.recompute {
            self.cfg.num_layers
        } else {
            1
        };
        let key = PlanKey {
            dims: d,
            lora: lora.map(|l| (l.config.rank, l.config.targets.clone())),
            dropout: p > 0.0,
            saved,
            grads: train,
        };
        let fits = |pl: &Option<Plan<B>>| pl.as_ref().is_some_and(|pl| pl.key.serves(&key));
        let use_train = train || fits(&self.train_plan);
        let slot = if use_train {
            &mut self.train_plan
        } else {
            &mut self.eval_plan
        };
        if !fits(slot) {
            *slot = None; // free the old plan before allocating the new one
            *slot = Some(Plan::new(&self.be, key, self.cfg.num_layers)?);
        }
        // out of its slot while the blocks run (they borrow the model), put back after
        let mut plan = slot
            .take()
            .ok_or_else(|| Error::unsupported("llama: plan missing"))?;
        let cx = Ctx {
            be: &self.be,
            d,
            eps: self.cfg.rms_norm_eps,
            rope: self.rope()?,
            positions: &batch.positions,
            starts: &batch.starts,
            lora,
            p,
            seed: opts.seed,
            step: opts.step,
            accumulate: opts.accumulate,
        };
        let run = self.forward_rows(&mut plan, &cx, &batch.input_ids, saved, kv);
        let slot = if use_train {
            &mut self.train_plan
        } else {
            &mut self.eval_plan
        };
        *slot = Some(plan);
        run.map(|()| use_train)
    }

    /// Embedding, every block and the final norm of the `cx.d.n` tokens `ids` in `plan`
    /// (`saved`: the number of [`super::plan::LayerActs`] the step keeps, 1 or all blocks),
    /// writing keys and values into the KV cache when `kv` is given. Shared by
    /// [`Llama::forward_into`] and the decode step of `decode.rs`.
    pub(super) fn forward_rows(
        &self,
        plan: &mut Plan<B>,
        cx: &Ctx<'_, B>,
        ids: &[u32],
        saved: usize,
        mut kv: Option<KvStep<'_, B>>,
    ) -> Result<()> {
        let d = cx.d;
        self.be
            .embedding(&mut plan.residual[0], &self.embed, ids, d.h)?;
        for (l, w) in self.layers.iter().enumerate() {
            let (i, o) = (plan.res(l), plan.res(l + 1));
            // the input and output residuals of the block: two distinct buffers
            let (x_in, x_out) = if i < o {
                let (lo, hi) = plan.residual.split_at_mut(o);
                (&lo[i], &mut hi[0])
            } else {
                let (lo, hi) = plan.residual.split_at_mut(i);
                (&hi[0], &mut lo[o])
            };
            // `saved` is what this step needs (the plan may hold more)
            let acts = &mut plan.acts[if saved == 1 { 0 } else { l }];
            cx.layer_forward(
                Some(x_out),
                acts,
                &mut plan.recomp,
                &mut plan.proj,
                plan.drop.as_mut(),
                x_in,
                w,
                l,
                kv.as_mut().map(|kv| kv.layer(l)),
            )?;
        }
        let last = &plan.residual[plan.res(self.cfg.num_layers)];
        self.be.rmsnorm_forward(
            &mut plan.xf,
            &mut plan.rstd_f,
            last,
            &self.final_norm,
            d.n,
            d.h,
            cx.eps,
        )
    }

    /// The plan the last [`Llama::forward_into`] ran in.
    pub(super) fn used_plan(&self, train: bool) -> Result<&Plan<B>> {
        let plan = if train {
            self.train_plan.as_ref()
        } else {
            self.eval_plan.as_ref()
        };
        plan.ok_or_else(|| Error::unsupported("llama: plan missing"))
    }

    /// One training step's forward and backward: returns the mean loss and overwrites (or, with
    /// `opts.accumulate`, adds into) `grads` with the gradients of `loss_scale · Σ token losses`
    /// w.r.t. every LoRA `A` and `B`.
    pub fn forward_backward(
        &mut self,
        batch: &Batch,
        lora: &LoraState<B>,
        grads: &mut LoraGrads<B>,
        opts: &StepOptions,
    ) -> Result<StepStats> {
        self.forward_into(true, batch, Some(lora), opts, None)?;
        let targets = batch.targets();
        let num_targets = targets.iter().filter(|&&t| t >= 0).count();
        let scale = opts.loss_scale.unwrap_or(if num_targets > 0 {
            1.0 / num_targets as f32
        } else {
            0.0
        });
        let d = self.dims(batch.batch, batch.seq);
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let (Some(plan), Some(rope)) = (self.train_plan.as_mut(), self.rope.as_ref()) else {
            return Err(Error::unsupported("llama: plan or rope table missing"));
        };
        let Some(g) = plan.grads.as_mut() else {
            return Err(Error::unsupported(
                "llama: training plan without gradient scratch",
            ));
        };
        let losses = self.be.cross_entropy(
            Some(&mut g.dxn),
            &plan.xf,
            lm_head,
            &targets,
            d.n,
            d.h,
            d.vocab,
            scale,
        )?;
        let sum_loss: f64 = losses.iter().map(|&l| l as f64).sum();
        let nl = self.cfg.num_layers;
        self.be.fill(&mut g.dres, 0.0)?;
        self.be.rmsnorm_backward(
            &mut g.dres,
            &g.dxn,
            &plan.residual[nl],
            &self.final_norm,
            &plan.rstd_f,
            d.n,
            d.h,
        )?;
        let cx = Ctx {
            be: &self.be,
            d,
            eps: self.cfg.rms_norm_eps,
            rope,
            positions: &batch.positions,
            starts: &batch.starts,
            lora: Some(lora),
            p: lora.config.dropout,
            seed: opts.seed,
            step: opts.step,
            accumulate: opts.accumulate,
        };
        for (l, w) in self.layers.iter().enumerate().rev() {
            let idx = if opts.recompute { 0 } else { l };
            if opts.recompute {
                cx.layer_forward(
                    None,
                    &mut plan.acts[0],
                    &mut plan.recomp,
                    &mut plan.proj,
                    plan.drop.as_mut(),
                    &plan.residual[l],
                    w,
                    l,
                    None,
                )?;
            }
            layer_backward(
                &cx,
                g,
                grads,
                plan.drop.as_mut(),
                &mut plan.recomp,
                &plan.acts[idx],
                &plan.residual[l],
                w,
                l,
            )?;
        }
        let loss = if num_targets > 0 {
            (sum_loss / num_targets as f64) as f32
        } else {
            0.0
        };
        Ok(StepStats {
            loss,
            sum_loss,
            num_targets,
        })
    }

    /// Per-token losses `[batch*seq]` of `batch` (0 where the target is ignored), without
    /// dropout and without keeping per-block activations.
    pub fn forward_loss(&mut self, batch: &Batch, lora: Option<&LoraState<B>>) -> Result<Vec<f32>> {
        let used = self.forward_into(false, batch, lora, &StepOptions::default(), None)?;
        let targets = batch.targets();
        let d = self.dims(batch.batch, batch.seq);
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let plan = self.used_plan(used)?;
        self.be
            .cross_entropy(None, &plan.xf, lm_head, &targets, d.n, d.h, d.vocab, 1.0)
    }
}
