//! The data pipeline on the real assets: llamafactory's alpaca_en_demo.json (999 instruct
//! rows) and dpo_en_demo.json (300 ShareGPT-style preference rows) with SmolLM2's tokenizer
//! (from the GGUF's metadata). Located by `assets` (scripts/fetch-assets.sh); when an asset
//! cannot be had, each test prints why and returns without checking.

use std::time::Instant;

use gradients_engine::assets;
use gradients_engine::data::split::{split_indices, DEFAULT_SEED};
use gradients_engine::data::{
    packed_batches, read_records, tokenize_dpo, tokenize_sft, ChatMapping, DpoMapping,
    InstructMapping, Mapping, Record, TokenizeOptions, TokenizedSample, Truncation,
};
use gradients_engine::model::batch::IGNORE;
use gradients_engine::model::gguf::GgufFile;
use gradients_engine::tokenizer::Tokenizer;
use serde_json::{json, Value};

fn tokenizer() -> Option<Tokenizer> {
    let path = match assets::smollm2_gguf() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipping: {why}");
            return None;
        }
    };
    let meta = GgufFile::open(&path).expect("open gguf").into_meta();
    Some(Tokenizer::from_gguf(&meta).expect("tokenizer"))
}

fn trained_text(tok: &Tokenizer, s: &TokenizedSample) -> String {
    let ids: Vec<u32> = s
        .labels
        .iter()
        .filter(|&&l| l != IGNORE)
        .map(|&l| l as u32)
        .collect();
    tok.decode(&ids).unwrap()
}

fn opts() -> TokenizeOptions {
    // SPEC §3: 4096 for a model whose max positions (8192 here) are not below 8192
    TokenizeOptions {
        seq_len: 4096,
        truncation: Truncation::TruncateTail,
    }
}

#[test]
fn alpaca_demo_tokenizes_with_output_only_labels() {
    let Some(tok) = tokenizer() else { return };
    let path = match assets::alpaca_en_demo() {
        Ok(p) => p,
        Err(why) => return eprintln!("skipping: {why}"),
    };
    let rows = read_records(&path).unwrap();
    assert_eq!(rows.len(), 999);
    let eos = tok.id_to_token(tok.eos_id().unwrap()).unwrap();
    for chat_template in [false, true] {
        let m = InstructMapping {
            field_instruction: "instruction".into(),
            field_input: Some("input".into()),
            field_output: Some("output".into()),
            chat_template,
            ..Default::default()
        };
        let t = Instant::now();
        let (samples, st) =
            tokenize_sft(&tok, &Mapping::Instruct(m), &rows, &path, opts()).unwrap();
        eprintln!(
            "alpaca_en_demo (chat_template {chat_template}): {st:?} in {:.2?}; mean {:.1} tokens, {:.1} labels per sample",
            t.elapsed(),
            st.tokens as f64 / st.kept as f64,
            st.label_tokens as f64 / st.kept as f64
        );
        assert_eq!(
            (st.rows, st.kept, st.dropped_no_labels, st.truncated),
            (999, 999, 0, 0)
        );
        let mean = st.tokens as f64 / st.kept as f64;
        assert!((40.0..600.0).contains(&mean), "mean length {mean}");
        assert!(
            st.label_tokens * 2 > st.tokens,
            "outputs dominate alpaca samples"
        );
        for s in &samples {
            let out = rows[s.row]["output"].as_str().unwrap();
            assert_eq!(
                trained_text(&tok, s),
                format!("{out}{eos}"),
                "row {}",
                s.row + 1
            );
        }
        if chat_template {
            let full = tok.decode(&samples[0].input_ids).unwrap();
            assert!(full.starts_with("<|im_start|>system\n"), "{full}");
        } else {
            // live-network default: "{instruction} {input}" / "{instruction}", output after
            let s = samples.iter().find(|s| rows[s.row]["input"] != "").unwrap();
            let r = &rows[s.row];
            let full = tok.decode(&s.input_ids).unwrap();
            let want = format!(
                "{} {}{}{eos}",
                r["instruction"].as_str().unwrap(),
                r["input"].as_str().unwrap(),
                r["output"].as_str().unwrap()
            );
            assert_eq!(full, want);
        }
    }

    // the validator's split, then packing of the train split
    let split = split_indices(rows.len(), DEFAULT_SEED).unwrap();
    assert_eq!(
        (split.test.len(), split.train.len(), split.small),
        (99, 900, true)
    );
    let m = Mapping::Instruct(InstructMapping {
        field_instruction: "instruction".into(),
        field_input: Some("input".into()),
        field_output: Some("output".into()),
        ..Default::default()
    });
    let train: Vec<Record> = split.train.iter().map(|&i| rows[i].clone()).collect();
    let (samples, _) = tokenize_sft(&tok, &m, &train, &path, opts()).unwrap();
    let t = Instant::now();
    let batches = packed_batches(&samples, 2048, 4, Some(42), tok.vocab_size()).unwrap();
    let rows_used: usize = batches.iter().map(|b| b.batch.batch).sum();
    let tokens: usize = samples.iter().map(|s| s.len()).sum();
    eprintln!(
        "packed {} samples ({tokens} tokens) into {rows_used} rows of 2048 ({:.1}% full) in {:.2?}",
        samples.len(),
        100.0 * tokens as f64 / (rows_used * 2048) as f64,
        t.elapsed()
    );
    let mut count = vec![0usize; samples.len()];
    batches
        .iter()
        .flat_map(|b| b.samples.iter().flatten())
        .for_each(|&i| count[i] += 1);
    assert!(count.iter().all(|&c| c == 1));
    assert!(
        tokens as f64 / ((rows_used * 2048) as f64) > 0.9,
        "first-fit packs densely"
    );
}

/// dpo_en_demo rows: `conversations` (turns), `chosen` / `rejected` ({from, value}).
#[test]
fn dpo_demo_reads_and_tokenizes() {
    let Some(tok) = tokenizer() else { return };
    let path = match assets::dpo_en_demo() {
        Ok(p) => p,
        Err(why) => return eprintln!("skipping: {why}"),
    };
    let rows = read_records(&path).unwrap();
    assert_eq!(rows.len(), 300);
    let value = |v: &Value| v["value"].as_str().unwrap().to_string();
    // single-turn rows flattened to prompt/chosen/rejected columns
    let flat: Vec<Record> = rows
        .iter()
        .filter(|r| r["conversations"].as_array().unwrap().len() == 1)
        .map(|r| {
            json!({
                "prompt": value(&r["conversations"][0]),
                "chosen": value(&r["chosen"]),
                "rejected": value(&r["rejected"]),
            })
            .as_object()
            .unwrap()
            .clone()
        })
        .collect();
    assert!(flat.len() > 100, "{} single-turn rows", flat.len());
    let d = tokenize_dpo(&tok, &DpoMapping::default(), &flat, &path).unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    for (t, r) in d.iter().zip(&flat) {
        assert_eq!(t.chosen.last(), Some(&im_end));
        assert_eq!(
            tok.decode(&t.rejected).unwrap(),
            format!("{}<|im_end|>", r["rejected"].as_str().unwrap())
        );
        assert!(tok
            .decode(&t.prompt)
            .unwrap()
            .ends_with("<|im_start|>assistant\n"));
    }
    let lens: usize = d
        .iter()
        .map(|t| t.prompt.len() + t.chosen.len() + t.rejected.len())
        .sum();
    eprintln!("dpo_en_demo: {} single-turn pairs, {lens} tokens", d.len());

    // the full conversations + chosen answer as multi-turn chat SFT with SmolLM2's template
    let chats: Vec<Record> = rows
        .iter()
        .map(|r| {
            let mut turns = r["conversations"].as_array().unwrap().clone();
            turns.push(r["chosen"].clone());
            json!({ "conversations": turns })
                .as_object()
                .unwrap()
                .clone()
        })
        .collect();
    let m = Mapping::Chat(ChatMapping {
        chat_user_reference: "human".into(),
        chat_assistant_reference: "gpt".into(),
        ..Default::default()
    });
    let (samples, st) = tokenize_sft(&tok, &m, &chats, &path, opts()).unwrap();
    eprintln!("dpo_en_demo as chat: {st:?}");
    assert_eq!(st.rows, 300);
    for s in samples.iter().filter(|s| s.len() < 4096) {
        let want: String = chats[s.row]["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["from"] == "gpt")
            .map(|t| format!("{}<|im_end|>", t["value"].as_str().unwrap()))
            .collect();
        assert_eq!(trained_text(&tok, s), want, "row {}", s.row + 1);
    }
}
