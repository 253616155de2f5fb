//! The real test model, SmolLM2-135M-Instruct (Q4_1 GGUF): loading, config, dequantised
//! values against llama.cpp's own Python dequantiser, and tokenizer ids against transformers.
//!
//! The GGUF comes from `assets::smollm2_gguf()` (scripts/fetch-assets.sh); when it cannot be
//! had, every test prints why and passes without checking. The model is loaded once per test
//! binary. Expected values were produced by tools/gguf_reference.py and
//! tools/tokenizer_ids.py (see each constant).

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Instant;

use gradients_engine::assets;
use gradients_engine::model::gguf::GgufMeta;
use gradients_engine::model::{load_gguf, Arch, ModelConfig, ModelWeights};
use gradients_engine::tokenizer::{ChatMessage, Tokenizer};
use gradients_engine::Tensor;

struct Loaded {
    config: ModelConfig,
    weights: ModelWeights,
    meta: GgufMeta,
    tokenizer: Tokenizer,
}

fn model() -> Option<&'static Loaded> {
    static MODEL: OnceLock<Option<Loaded>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = match assets::smollm2_gguf() {
                Ok(p) => p,
                Err(why) => {
                    eprintln!("skipping real-model tests: {why}");
                    return None;
                }
            };
            let t = Instant::now();
            let (config, weights, meta) = load_gguf(&path).expect("load the real gguf");
            eprintln!("loaded {} in {:.2?}", path.display(), t.elapsed());
            let tokenizer = Tokenizer::from_gguf(&meta).expect("build the tokenizer");
            Some(Loaded {
                config,
                weights,
                meta,
                tokenizer,
            })
        })
        .as_ref()
}

#[test]
fn config_matches_the_model_card() {
    let Some(m) = model() else { return };
    let c = &m.config;
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(c.num_layers, 30);
    assert_eq!(c.hidden_size, 576);
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!(c.vocab_size, 49152);
    assert_eq!(c.rope_theta, 100_000.0);
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);
    assert!(c.tie_word_embeddings && m.weights.lm_head.is_none());
    assert!(!c.attention_bias);
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!((c.bos_token_id, c.eos_token_id), (Some(1), Some(2)));
    assert_eq!(m.meta.version, 3);
    assert_eq!(m.meta.tensors.len(), 272);
    assert_eq!(m.weights.layers.len(), 30);
    let l = &m.weights.layers[7];
    assert_eq!(m.weights.embed.shape, vec![49152, 576]);
    assert_eq!(l.wq.shape(), [576, 576]);
    assert_eq!(l.wk.shape(), [192, 576]);
    assert_eq!(l.w_down.shape(), [576, 1536]);
    // the Linear weights stay packed as the file stores them (20 bytes per 32 values)
    assert!(l.wq.is_packed() && l.wq.encoding() == "Q4_1");
    assert_eq!(l.w_down.stored_bytes(), 576 * 1536 / 32 * 20);
    let params = m.weights.num_params();
    assert_eq!(params, 134_515_008);
}

/// From tools/gguf_reference.py (the `gguf` package's dequantiser, numpy unpermute; the q/k
/// values also equal transformers' own GGUF loader's q_proj/k_proj, checked once):
/// (tensor, f64 sum of all values, [(row, col, value)]).
#[allow(clippy::type_complexity)]
const REFERENCE: &[(&str, f64, &[(usize, usize, f64)])] = &[
    (
        "token_embd.weight",
        -15353.04449415207,
        &[
            (0, 0, -0.10654449462890625),
            (1, 5, -0.0079345703125),
            (2, 31, 1.0386962890625),
            (33, 100, 0.1413717269897461),
            (63, 575, 0.020923614501953125),
            (64, 7, -0.095458984375),
        ],
    ),
    (
        "blk.0.attn_q.weight",
        59.22322082519531,
        &[
            (0, 0, -0.0963134765625),
            (1, 5, -0.2984619140625),
            (2, 31, -0.21484375),
            (33, 100, 0.30572509765625),
            (63, 575, -0.061248779296875),
            (64, 7, -0.244384765625),
        ],
    ),
    (
        "blk.0.attn_k.weight",
        26.937057495117188,
        &[
            (0, 0, -0.1552734375),
            (1, 5, 0.4273681640625),
            (2, 31, -0.126953125),
            (33, 100, -0.503173828125),
            (63, 575, 0.043701171875),
            (64, 7, 0.4066162109375),
        ],
    ),
    (
        "blk.0.attn_v.weight",
        4.793846130371094,
        &[
            (0, 0, 0.10547637939453125),
            (1, 5, -0.0072479248046875),
            (2, 31, 0.00763702392578125),
            (33, 100, -0.0100860595703125),
            (63, 575, -0.021820068359375),
            (64, 7, 0.01407623291015625),
        ],
    ),
    (
        "blk.29.ffn_down.weight",
        49.83570861816406,
        &[
            (0, 0, -0.2733154296875),
            (1, 5, 0.02496337890625),
            (2, 31, -0.117889404296875),
            (33, 100, 0.386505126953125),
            (63, 575, -0.114105224609375),
            (64, 7, 0.166473388671875),
        ],
    ),
    (
        "output_norm.weight",
        1038.33203125,
        &[
            (0, 0, 1.7578125),
            (1, 0, 1.8203125),
            (2, 0, 1.78125),
            (33, 0, 1.765625),
            (63, 0, 1.8359375),
            (64, 0, 1.84375),
        ],
    ),
];

fn by_name<'a>(w: &'a ModelWeights, name: &str) -> Cow<'a, Tensor> {
    match name {
        "token_embd.weight" => Cow::Borrowed(&w.embed),
        "blk.0.attn_q.weight" => w.layers[0].wq.dense(),
        "blk.0.attn_k.weight" => w.layers[0].wk.dense(),
        "blk.0.attn_v.weight" => w.layers[0].wv.dense(),
        "blk.29.ffn_down.weight" => w.layers[29].w_down.dense(),
        "output_norm.weight" => Cow::Borrowed(&w.final_norm),
        other => panic!("no mapping for {other}"),
    }
}

#[test]
fn dequantised_and_unpermuted_values_match_llama_cpp_reference() {
    let Some(m) = model() else { return };
    for &(name, sum, points) in REFERENCE {
        let t = by_name(&m.weights, name);
        let cols = if t.shape.len() == 2 { t.shape[1] } else { 1 };
        for &(r, c, want) in points {
            // The reference values are f32s printed exactly as f64s.
            let got = f64::from(t.data[r * cols + c]);
            assert_eq!(got, want, "{name}[{r}, {c}]");
        }
        let total: f64 = t.data.iter().map(|&v| f64::from(v)).sum();
        assert!(
            (total - sum).abs() <= 1e-9 * sum.abs().max(1.0) + 1e-6,
            "{name}: sum {total} vs {sum}"
        );
    }
}

/// From tools/tokenizer_ids.py (transformers 5.24 loading the GGUF tokenizer).
const TEXT_IDS: &[(&str, &[u32])] = &[
    (
        "What is the capital of France?",
        &[1780, 314, 260, 3575, 282, 4649, 47],
    ),
    (
        "In 2024, naïve café prices rose 12.5% — 東京 🚀!\n\tTabs  and  spaces.",
        &[
            788, 216, 34, 32, 34, 36, 28, 15486, 46494, 37366, 5770, 8739, 216, 33, 34, 30, 37, 21,
            1841, 17097, 247, 126, 16736, 122, 15107, 244, 218, 17, 198, 197, 68, 7366, 216, 284,
            216, 5600, 30,
        ],
    ),
    (
        "<|im_start|>user\nHi<|im_end|>\n",
        &[1, 4093, 198, 26843, 2, 198],
    ),
];

#[test]
fn tokenizer_ids_match_transformers() {
    let Some(m) = model() else { return };
    let tok = &m.tokenizer;
    for &(text, want) in TEXT_IDS {
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
    }
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.id_to_token(0).as_deref(), Some("<|endoftext|>"));
}

#[test]
fn chatml_prompts_render_and_tokenize_like_transformers() {
    let Some(m) = model() else { return };
    let tok = &m.tokenizer;
    // tools/tokenizer_ids.py: apply_chat_template(..., tokenize=False) then encode.
    let user = [ChatMessage::new("user", "What is the capital of France?")];
    let text = tok.render_chat(&user, true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(
        tok.encode(&text).unwrap(),
        [
            1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
            407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1,
            520, 9531, 198
        ]
    );
    let turns = [
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "2+2?"),
        ChatMessage::new("assistant", "4"),
    ];
    let text = tok.render_chat(&turns, false).unwrap();
    assert_eq!(
        tok.encode(&text).unwrap(),
        [
            1, 9690, 198, 2683, 359, 1733, 313, 30, 2, 198, 1, 4093, 198, 34, 27, 34, 47, 2, 198,
            1, 520, 9531, 198, 36, 2, 198
        ]
    );
}

#[test]
fn decode_inverts_encode() {
    let Some(m) = model() else { return };
    let tok = &m.tokenizer;
    for s in [
        "",
        "Digits 0123456789 and 3.14159",
        "unicode: ñ, Ω, 漢字, emoji 👩‍💻, combining e\u{301}",
        "<|im_start|>assistant\nok<|im_end|><|endoftext|>",
        "  leading and trailing spaces  \n\n",
        "\u{0}\u{7f} control bytes \r\n",
    ] {
        let ids = tok.encode(s).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), s, "{ids:?}");
    }
    // Special tokens stay whole.
    let ids = tok.encode("<|im_end|><|endoftext|>").unwrap();
    assert_eq!(ids, [2, 0]);
}
