//! Tests of the GGUF parser (gguf.rs), dequantisers (gguf_quant.rs) and llama loader
//! (gguf_load.rs) on tiny files written in code by the test-only writer (gguf_writer.rs).
//!
//! Expected values are written out by hand from the block formats (see gguf_quant.rs), not
//! recomputed by the code under test. The real model is tested in tests/gguf_real.rs.

use std::path::Path;

use half::{bf16, f16};

use super::gguf::{GgufFile, GgufMeta, GgufValue};
use super::gguf_load::{load_gguf, unpermute_rows};
use super::gguf_quant::GgmlType;
use super::gguf_writer::GgufWriter;
use super::{Arch, ModelConfig};
use crate::error::ErrorKind;
use crate::tensor::Tensor;

fn h16(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// The metadata of the round-trip file: one value of every type.
fn all_metadata() -> Vec<(&'static str, GgufValue)> {
    use GgufValue::*;
    vec![
        ("general.architecture", String("llama".into())),
        ("t.u8", U8(200)),
        ("t.i8", I8(-100)),
        ("t.u16", U16(60000)),
        ("t.i16", I16(-30000)),
        ("t.u32", U32(4_000_000_000)),
        ("t.i32", I32(-2_000_000_000)),
        ("t.f32", F32(1.5e-5)),
        ("t.bool", Bool(true)),
        ("t.string", String("héllo ✓".into())),
        (
            "t.strings",
            Array(vec![
                String("a b".into()),
                String("".into()),
                String("Ġx".into()),
            ]),
        ),
        ("t.ints", Array(vec![I32(3), I32(-1), I32(1)])),
        (
            "t.nested",
            Array(vec![Array(vec![U8(1), U8(2)]), Array(vec![U8(3)])]),
        ),
        ("t.u64", U64(u64::MAX)),
        ("t.i64", I64(i64::MIN)),
        ("t.f64", F64(-2.25e300)),
    ]
}

/// A tensor's name, HF shape and expected values.
type Expected = (&'static str, Vec<usize>, Vec<f32>);

/// Tensors of every supported type with hand-derived expected values.
fn quant_file() -> (GgufWriter, Vec<Expected>) {
    let mut w = GgufWriter::new();
    w.alignment = 64;
    for (k, v) in all_metadata() {
        w.kv(k, v);
    }
    let mut expect = Vec::new();

    // F32, file dims [3, 2] -> HF [2, 3].
    let f = [1.5f32, -2.0, 0.25, 8.0, 1e-3, -0.0];
    w.tensor(
        "f32",
        &[3, 2],
        0,
        f.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    expect.push(("f32", vec![2, 3], f.to_vec()));

    // F16 and BF16: exactly representable values.
    let h = [0.5f32, -1.25, 65504.0, 6.103_515_6e-5];
    w.tensor("f16", &[4], 1, h.iter().flat_map(|&v| h16(v)).collect());
    expect.push(("f16", vec![4], h.to_vec()));
    let b = [1.0f32, -3.5, 256.0, 0.007_812_5];
    let bb = b
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    w.tensor("bf16", &[2, 2], 30, bb);
    expect.push(("bf16", vec![2, 2], b.to_vec()));

    // Q8_0, two blocks: d = 0.5 then -0.25; q_i = i - 16 then 2(i - 16).
    let mut q8 = Vec::new();
    let mut v8 = Vec::new();
    for (blk, d) in [(1i32, 0.5f32), (2, -0.25)] {
        q8.extend(h16(d));
        for i in 0..32i32 {
            q8.push(((i - 16) * blk) as i8 as u8);
            v8.push(((i - 16) * blk) as f32 * d);
        }
    }
    assert_eq!((v8[0], v8[31], v8[32], v8[63]), (-8.0, 7.5, 8.0, -7.5));
    w.tensor("q8_0", &[32, 2], 8, q8);
    expect.push(("q8_0", vec![2, 32], v8));

    // Q4_0: d = 0.25; byte j = j | (15 - j) << 4: element j = (j - 8)d, 16 + j = (7 - j)d.
    let mut q4 = h16(0.25).to_vec();
    q4.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let mut v4: Vec<f32> = (0..16).map(|j| (j as f32 - 8.0) * 0.25).collect();
    v4.extend((0..16).map(|j| (7.0 - j as f32) * 0.25));
    assert_eq!((v4[0], v4[15], v4[16], v4[31]), (-2.0, 1.75, 1.75, -2.0));
    w.tensor("q4_0", &[32], 2, q4);
    expect.push(("q4_0", vec![32], v4));

    // Q4_1, two blocks: (d, m) = (0.5, -1) then (2, 0.5); same nibbles as Q4_0.
    let mut q41 = Vec::new();
    let mut v41 = Vec::new();
    for (d, m) in [(0.5f32, -1.0f32), (2.0, 0.5)] {
        q41.extend(h16(d));
        q41.extend(h16(m));
        q41.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        v41.extend((0..16).map(|j| j as f32 * d + m));
        v41.extend((0..16).map(|j| (15 - j) as f32 * d + m));
    }
    assert_eq!((v41[0], v41[15], v41[16], v41[31]), (-1.0, 6.5, 6.5, -1.0));
    assert_eq!((v41[32], v41[47], v41[63]), (0.5, 30.5, 0.5));
    w.tensor("q4_1", &[32, 1, 2], 3, q41);
    expect.push(("q4_1", vec![2, 1, 32], v41));
    (w, expect)
}

#[test]
fn round_trip_metadata_tensors_and_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let (w, expect) = quant_file();
    let path = w.write(dir.path(), "q.gguf");
    let file = GgufFile::open(&path).unwrap();
    let meta = file.meta();
    assert_eq!((meta.version, meta.alignment), (3, 64));
    assert_eq!(meta.data_offset % 64, 0);
    for (k, v) in all_metadata() {
        assert_eq!(meta.get(k), Some(&v), "{k}");
    }
    assert_eq!(meta.get_u64("t.u32").unwrap(), Some(4_000_000_000));
    assert!(meta.get_u64("t.i8").is_err(), "negative is not a u64");
    assert_eq!(
        meta.get_str_array("t.strings").unwrap().unwrap(),
        ["a b", "", "Ġx"]
    );
    assert_eq!(meta.get_int_array("t.ints").unwrap().unwrap(), [3, -1, 1]);
    assert!(meta
        .get_str("t.u8")
        .unwrap_err()
        .to_string()
        .contains("t.u8"));
    assert_eq!(meta.architecture(), Some("llama"));
    for t in &meta.tensors {
        assert_eq!(t.offset % 64, 0, "{}", t.name);
    }
    for (name, shape, values) in expect {
        let t = file.tensor(name).unwrap();
        assert_eq!(t.shape, shape, "{name}");
        assert_eq!(t.data, values, "{name}");
        assert_eq!(meta.tensor(name).unwrap().shape(), shape);
    }
    assert_eq!(meta.tensor("q4_1").unwrap().ty, GgmlType::Q4_1);
}

#[test]
fn version_2_and_default_alignment_parse() {
    let (mut w, _) = quant_file();
    w.version = 2;
    w.alignment = 32;
    let bytes = w.to_bytes();
    let meta = GgufMeta::parse(Path::new("v2.gguf"), &bytes).unwrap();
    assert_eq!((meta.version, meta.alignment), (2, 32));
    assert_eq!(meta.data_offset % 32, 0);
}

fn parse_err(bytes: &[u8]) -> String {
    match GgufMeta::parse(Path::new("/m/bad.gguf"), bytes) {
        Ok(_) => panic!("parsed a corrupt file"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("/m/bad.gguf"), "{msg}");
            msg
        }
    }
}

#[test]
fn every_truncation_is_an_error_naming_the_file() {
    let (w, _) = quant_file();
    let bytes = w.to_bytes();
    let full = GgufMeta::parse(Path::new("ok.gguf"), &bytes).unwrap();
    for cut in 0..bytes.len() {
        let msg = parse_err(&bytes[..cut]);
        if msg.contains("beyond the end") {
            // Data cut short: the first tensor that does not fit is named.
            let first = full
                .tensors
                .iter()
                .find(|t| full.data_offset + t.offset + t.n_bytes.unwrap() > cut as u64)
                .unwrap();
            assert!(
                msg.contains(&format!("`{}`", first.name)),
                "cut {cut}: {msg}"
            );
        } else {
            assert!(msg.contains("truncated"), "cut {cut}: {msg}");
            assert!((cut as u64) < full.data_offset, "cut {cut}: {msg}");
        }
    }
}

#[test]
fn corrupt_headers_give_clear_errors() {
    let (w, _) = quant_file();
    let good = w.to_bytes();
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(parse_err(&bad).contains("not a gguf file"));
    for v in [1u32, 4] {
        bad = good.clone();
        bad[4..8].copy_from_slice(&v.to_le_bytes());
        assert!(parse_err(&bad).contains(&format!("unsupported gguf version {v}")));
    }
    bad = good.clone();
    bad[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(parse_err(&bad).contains("big-endian"));
    // A string length far beyond the file is an error, not an allocation.
    bad = good.clone();
    bad[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(parse_err(&bad).contains("truncated"));

    let mut w = GgufWriter::new();
    w.kv("x", GgufValue::U8(1));
    let mut b = w.to_bytes();
    let ty_at = 24 + 8 + 1; // after the header and the key "x"
    b[ty_at..ty_at + 4].copy_from_slice(&13u32.to_le_bytes());
    assert!(parse_err(&b).contains("unknown value type 13"));
    b[ty_at..ty_at + 4].copy_from_slice(&7u32.to_le_bytes());
    b[ty_at + 4] = 2;
    assert!(parse_err(&b).contains("not 0 or 1"));

    let mut w = GgufWriter::new();
    w.alignment = 48;
    assert!(parse_err(&w.to_bytes()).contains("general.alignment"));
    let mut w = GgufWriter::new();
    w.tensor("t", &[4], 0, vec![0; 16])
        .tensor("t", &[4], 0, vec![0; 16]);
    assert!(parse_err(&w.to_bytes()).contains("`t`: appears twice"));
    let mut w = GgufWriter::new();
    w.tensor("rows16", &[16, 4], 8, vec![0; 68]);
    let msg = parse_err(&w.to_bytes());
    assert!(
        msg.contains("`rows16`") && msg.contains("multiple of 32"),
        "{msg}"
    );
}

#[test]
fn unsupported_types_name_the_tensor_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::new();
    w.tensor("k4", &[256], 12, vec![0; 144]);
    w.tensor("iq", &[256], 20, vec![0; 136]);
    let path = w.write(dir.path(), "u.gguf");
    let file = GgufFile::open(&path).unwrap();
    let msg = file.tensor("k4").unwrap_err().to_string();
    assert!(
        msg.contains("u.gguf") && msg.contains("`k4`") && msg.contains("Q4_K"),
        "{msg}"
    );
    let msg = file.tensor("iq").unwrap_err().to_string();
    assert!(msg.contains("`iq`") && msg.contains("type20"), "{msg}");
    let msg = file.tensor("nope").unwrap_err().to_string();
    assert!(msg.contains("`nope`: not found"), "{msg}");
}

/// llama.cpp's `permute` (convert_hf_to_gguf.py), written from its definition:
/// `w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2).reshape(w.shape)`.
fn llama_cpp_permute(t: &Tensor, n_head: usize) -> Tensor {
    let rows = t.shape[0];
    let cols = t.len() / rows;
    let (hd, half) = (rows / n_head, rows / n_head / 2);
    let mut out = vec![0f32; t.len()];
    // out[h][a][b] = in[h][b][a] with in: [n_head, 2, half], out: [n_head, half, 2].
    for h in 0..n_head {
        for a in 0..half {
            for b in 0..2 {
                let (o, i) = (h * hd + a * 2 + b, h * hd + b * half + a);
                out[o * cols..(o + 1) * cols].copy_from_slice(&t.data[i * cols..(i + 1) * cols]);
            }
        }
    }
    Tensor::new(t.shape.clone(), out).unwrap()
}

fn rows(n: usize) -> Tensor {
    Tensor::new(vec![n], (0..n).map(|i| i as f32).collect()).unwrap()
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    // By hand: one head of width 6 is stored as rows [0, 3, 1, 4, 2, 5].
    assert_eq!(
        llama_cpp_permute(&rows(6), 1).data,
        [0., 3., 1., 4., 2., 5.]
    );
    assert_eq!(
        unpermute_rows(&rows(6), 1).unwrap().data,
        [0., 2., 4., 1., 3., 5.]
    );
    let two_heads = llama_cpp_permute(&rows(8), 2).data;
    assert_eq!(two_heads, [0., 2., 1., 3., 4., 6., 5., 7.]);
    let mut seed = 7u32;
    for (n_head, hd, cols) in [(9, 64, 5), (3, 64, 3), (4, 8, 1), (1, 2, 2)] {
        let n = n_head * hd * cols;
        let data = (0..n).map(|_| next(&mut seed)).collect();
        let t = Tensor::new(vec![n_head * hd, cols], data).unwrap();
        let back = unpermute_rows(&llama_cpp_permute(&t, n_head), n_head).unwrap();
        assert_eq!(back, t, "n_head {n_head} hd {hd}");
    }
    assert!(unpermute_rows(&rows(6), 4).is_err());
    assert!(unpermute_rows(&rows(6), 2).is_err(), "odd head width");
}

/// xorshift32 → [-1, 1).
fn next(s: &mut u32) -> f32 {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    (*s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
}

fn tiny_config(tied: bool) -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        vocab_size: 10,
        hidden_size: 8,
        intermediate_size: 12,
        num_layers: 2,
        num_heads: 2,
        num_kv_heads: 1,
        head_dim: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 5e4,
        rope_scaling: None,
        tie_word_embeddings: tied,
        attention_bias: false,
        max_position_embeddings: 64,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// A tiny llama GGUF with random f32 weights; returns the writer and the HF tensors by GGUF name.
fn tiny_model(c: &ModelConfig) -> (GgufWriter, Vec<(String, Tensor)>) {
    use GgufValue::*;
    let mut w = GgufWriter::new();
    w.kv("general.architecture", String("llama".into()));
    w.kv("llama.block_count", U32(c.num_layers as u32));
    w.kv(
        "llama.context_length",
        U32(c.max_position_embeddings as u32),
    );
    w.kv("llama.embedding_length", U32(c.hidden_size as u32));
    w.kv("llama.feed_forward_length", U32(c.intermediate_size as u32));
    w.kv("llama.attention.head_count", U32(c.num_heads as u32));
    w.kv("llama.attention.head_count_kv", U32(c.num_kv_heads as u32));
    w.kv("llama.rope.freq_base", F32(c.rope_theta));
    w.kv(
        "llama.attention.layer_norm_rms_epsilon",
        F32(c.rms_norm_eps),
    );
    let tokens = (0..c.vocab_size).map(|i| String(format!("t{i}"))).collect();
    w.kv("tokenizer.ggml.tokens", Array(tokens));
    w.kv("tokenizer.ggml.bos_token_id", U32(1));
    w.kv("tokenizer.ggml.eos_token_id", U32(2));
    let (h, q, kv, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let mut shapes = vec![("token_embd.weight".to_string(), vec![c.vocab_size, h])];
    shapes.push(("output_norm.weight".into(), vec![h]));
    if !c.tie_word_embeddings {
        shapes.push(("output.weight".into(), vec![c.vocab_size, h]));
    }
    for l in 0..c.num_layers {
        for (s, shape) in [
            ("attn_norm", vec![h]),
            ("attn_q", vec![q, h]),
            ("attn_k", vec![kv, h]),
            ("attn_v", vec![kv, h]),
            ("attn_output", vec![h, q]),
            ("ffn_norm", vec![h]),
            ("ffn_gate", vec![ff, h]),
            ("ffn_up", vec![ff, h]),
            ("ffn_down", vec![h, ff]),
        ] {
            shapes.push((format!("blk.{l}.{s}.weight"), shape));
        }
    }
    let mut seed = 12345u32;
    let mut hf = Vec::new();
    for (name, shape) in shapes {
        let n = shape.iter().product();
        let t = Tensor::new(shape, (0..n).map(|_| next(&mut seed)).collect()).unwrap();
        let stored = if name.ends_with("attn_q.weight") {
            llama_cpp_permute(&t, c.num_heads)
        } else if name.ends_with("attn_k.weight") {
            llama_cpp_permute(&t, c.num_kv_heads)
        } else {
            t.clone()
        };
        w.f32_tensor(&name, &stored);
        hf.push((name, t));
    }
    (w, hf)
}

#[test]
fn tiny_llama_loads_in_hf_layout() {
    let dir = tempfile::tempdir().unwrap();
    for tied in [true, false] {
        let want = tiny_config(tied);
        let (w, hf) = tiny_model(&want);
        let path = w.write(dir.path(), "tiny.gguf");
        let (config, weights, meta) = load_gguf(&path).unwrap();
        assert_eq!(config, want);
        assert_eq!(meta.path, path);
        let get = |n: &str| &hf.iter().find(|(k, _)| k == n).unwrap().1;
        assert_eq!(&weights.embed, get("token_embd.weight"));
        assert_eq!(&weights.final_norm, get("output_norm.weight"));
        assert_eq!(
            weights.lm_head.as_ref(),
            (!tied).then(|| get("output.weight"))
        );
        assert_eq!(weights.layers.len(), 2);
        for (l, lw) in weights.layers.iter().enumerate() {
            let g = |s: &str| get(&format!("blk.{l}.{s}.weight"));
            assert_eq!(&lw.attn_norm, g("attn_norm"));
            assert_eq!(&lw.wq.to_tensor(), g("attn_q"), "layer {l} q unpermuted");
            assert_eq!(&lw.wk.to_tensor(), g("attn_k"), "layer {l} k unpermuted");
            assert_eq!(&lw.wv.to_tensor(), g("attn_v"));
            assert_eq!(&lw.wo.to_tensor(), g("attn_output"));
            assert_eq!(&lw.mlp_norm, g("ffn_norm"));
            assert_eq!(&lw.w_gate.to_tensor(), g("ffn_gate"));
            assert_eq!(&lw.w_up.to_tensor(), g("ffn_up"));
            assert_eq!(&lw.w_down.to_tensor(), g("ffn_down"));
            assert!(lw.bq.is_none() && lw.bk.is_none() && lw.bv.is_none());
        }
    }
}

#[test]
fn model_errors_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let c = tiny_config(true);
    let (w, _) = tiny_model(&c);

    let mut missing = GgufWriter::new();
    missing.kv = w.kv.clone();
    missing.tensors = w.tensors.clone();
    missing.tensors.retain(|t| t.0 != "blk.1.ffn_up.weight");
    let path = missing.write(dir.path(), "missing.gguf");
    let msg = load_gguf(&path).unwrap_err().to_string();
    assert!(
        msg.contains("missing.gguf") && msg.contains("`blk.1.ffn_up.weight`: not found"),
        "{msg}"
    );

    let mut wrong = GgufWriter::new();
    wrong.kv = w.kv.clone();
    wrong.tensors = w.tensors.clone();
    for t in wrong
        .tensors
        .iter_mut()
        .filter(|t| t.0 == "blk.0.attn_v.weight")
    {
        t.1 = vec![4, 2]; // [kv=4, hidden=8] swapped
    }
    let path = wrong.write(dir.path(), "shape.gguf");
    let err = load_gguf(&path).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Tensor { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("shape.gguf")
            && msg.contains("`blk.0.attn_v.weight`")
            && msg.contains("[2, 4]"),
        "{msg}"
    );

    let mut other = GgufWriter::new();
    other.kv = w.kv.clone();
    other.kv[0].1 = GgufValue::String("qwen3".into());
    let path = other.write(dir.path(), "arch.gguf");
    let err = load_gguf(&path).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unsupported(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("arch.gguf") && msg.contains("qwen3"), "{msg}");

    for (key, value, what) in [
        (
            "llama.expert_count",
            GgufValue::U32(8),
            "mixture-of-experts",
        ),
        (
            "llama.rope.dimension_count",
            GgufValue::U32(2),
            "partial rotary",
        ),
    ] {
        let mut moe = GgufWriter::new();
        moe.kv = w.kv.clone();
        moe.kv.push((key.into(), value));
        let path = moe.write(dir.path(), "moe.gguf");
        let err = load_gguf(&path).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Unsupported(_)), "{err}");
        assert!(err.to_string().contains(what), "{err}");
    }

    let mut huge = GgufWriter::new();
    huge.kv = w.kv.clone();
    huge.tensors = w.tensors.clone();
    for (k, v) in huge.kv.iter_mut() {
        if k == "llama.block_count" {
            *v = GgufValue::U64(1 << 60);
        }
    }
    let path = huge.write(dir.path(), "huge.gguf");
    let msg = load_gguf(&path).unwrap_err().to_string();
    assert!(
        msg.contains("huge.gguf") && msg.contains("llama.block_count"),
        "{msg}"
    );

    let mut no_heads = GgufWriter::new();
    no_heads.kv = w.kv.clone();
    no_heads
        .kv
        .retain(|(k, _)| k != "llama.attention.head_count");
    let path = no_heads.write(dir.path(), "heads.gguf");
    let msg = load_gguf(&path).unwrap_err().to_string();
    assert!(
        msg.contains("heads.gguf") && msg.contains("llama.attention.head_count"),
        "{msg}"
    );
}

#[test]
fn values_display_for_listings() {
    let long = GgufValue::Array((0..20).map(GgufValue::U32).collect());
    assert_eq!(long.to_string(), "[0, 1, 2, 3, 4, 5, 6, 7, … (20 items)]");
    let short = GgufValue::Array(vec![
        GgufValue::String("a\"b".into()),
        GgufValue::Bool(true),
    ]);
    assert_eq!(short.to_string(), r#"["a\"b", true]"#);
    let text = GgufValue::String("x".repeat(200));
    assert!(text.to_string().ends_with("… (200 bytes)"));
    assert_eq!(GgufValue::F32(1.5).to_string(), "1.5");
    assert_eq!(GgufValue::I64(-3).type_name(), "i64");
}
