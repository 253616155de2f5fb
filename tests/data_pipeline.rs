//! The data pipeline end to end on in-code data: column mappings → tokens → labels, with a
//! small byte-level tokenizer (ids 0–255 are bytes; ChatML's specials are whole tokens), so
//! every check decodes the labelled tokens and compares them with the text that must train.
//! The real tokenizer and datasets are exercised in tests/data_real.rs.

use std::path::Path;

use gradients_engine::data::chat::{chat_segments, CHATML_TEMPLATE};
use gradients_engine::data::mapping::fill;
use gradients_engine::data::{
    packed_batches, tokenize_dpo, tokenize_sft, ChatMapping, DpoMapping, InstructMapping, Mapping,
    Record, TextTokenizer, TokenizeOptions, TokenizedSample, Truncation,
};
use gradients_engine::model::batch::IGNORE;
use gradients_engine::tokenizer::ChatMessage;
use gradients_engine::Result;
use serde_json::json;

const SPECIALS: [&str; 3] = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"];

/// Bytes as ids 0–255, specials as 256.. matched whole; eos = `<|im_end|>`.
struct ByteTok {
    template: Option<String>,
}

impl ByteTok {
    fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            match id {
                0..=255 => bytes.push(id as u8),
                _ => bytes.extend_from_slice(SPECIALS[id as usize - 256].as_bytes()),
            }
        }
        String::from_utf8(bytes).unwrap()
    }
}

impl TextTokenizer for ByteTok {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut rest = text;
        'outer: while !rest.is_empty() {
            for (k, s) in SPECIALS.iter().enumerate() {
                if let Some(r) = rest.strip_prefix(s) {
                    ids.push(256 + k as u32);
                    rest = r;
                    continue 'outer;
                }
            }
            let c = rest.chars().next().unwrap();
            let mut buf = [0u8; 4];
            ids.extend(c.encode_utf8(&mut buf).bytes().map(u32::from));
            rest = &rest[c.len_utf8()..];
        }
        Ok(ids)
    }
    fn eos_id(&self) -> Option<u32> {
        Some(257)
    }
    fn bos_id(&self) -> Option<u32> {
        None
    }
    fn token_text(&self, id: u32) -> Option<String> {
        (256..259)
            .contains(&id)
            .then(|| SPECIALS[id as usize - 256].to_string())
    }
    fn chat_template(&self) -> Option<&str> {
        self.template.as_deref()
    }
}

fn rows(v: serde_json::Value) -> Vec<Record> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_object().unwrap().clone())
        .collect()
}

fn opts(seq_len: usize) -> TokenizeOptions {
    TokenizeOptions {
        seq_len,
        truncation: Truncation::TruncateTail,
    }
}

/// (masked text, trained text) of a sample.
fn split_text(tok: &ByteTok, s: &TokenizedSample) -> (String, String) {
    let masked: Vec<u32> = s
        .input_ids
        .iter()
        .zip(&s.labels)
        .filter(|(_, &l)| l == IGNORE)
        .map(|(&i, _)| i)
        .collect();
    let trained: Vec<u32> = s
        .labels
        .iter()
        .filter(|&&l| l != IGNORE)
        .map(|&l| l as u32)
        .collect();
    for (&i, &l) in s.input_ids.iter().zip(&s.labels) {
        assert!(l == IGNORE || l as u32 == i, "labels are unshifted ids");
    }
    (tok.decode(&masked), tok.decode(&trained))
}

fn path() -> &'static Path {
    Path::new("train.jsonl")
}

#[test]
fn instruct_default_format_masks_the_prompt() {
    let tok = ByteTok { template: None };
    let data = rows(json!([
        {"q": "Add 2 and 3.", "ctx": "numbers", "a": "5", "sys": ""},
        {"q": "Say hi.", "ctx": "", "a": "hi there", "sys": "Be brief. "},
        {"q": "Count", "ctx": null, "a": 7, "sys": null},
    ]));
    let m = InstructMapping {
        field_instruction: "q".into(),
        field_input: Some("ctx".into()),
        field_output: Some("a".into()),
        field_system: Some("sys".into()),
        ..Default::default()
    };
    let (s, stats) = tokenize_sft(&tok, &Mapping::Instruct(m), &data, path(), opts(512)).unwrap();
    assert_eq!((stats.rows, stats.kept, stats.truncated), (3, 3, 0));
    let want = [
        ("Add 2 and 3. numbers", "5<|im_end|>"),
        ("Be brief. Say hi.", "hi there<|im_end|>"),
        ("Count", "7<|im_end|>"),
    ];
    for (sample, (p, c)) in s.iter().zip(want) {
        assert_eq!(split_text(&tok, sample), (p.to_string(), c.to_string()));
        // the prompt comes first, then only completion tokens
        let first = sample.labels.iter().position(|&l| l != IGNORE).unwrap();
        assert!(sample.labels[first..].iter().all(|&l| l != IGNORE));
    }
    assert_eq!(stats.label_tokens, 2 + 9 + 2);
}

#[test]
fn instruct_custom_formats_system_and_chat_template_mode() {
    let tok = ByteTok { template: None };
    let data = rows(json!([{"i": "Q1", "x": "X", "o": "A1"}, {"i": "Q2", "x": "", "o": "A2"}]));
    let m = InstructMapping {
        field_instruction: "i".into(),
        field_input: Some("x".into()),
        field_output: Some("o".into()),
        system_prompt: Some("SYS".into()),
        system_format: Some("[{system}]\n".into()),
        format: Some("### {instruction}\n{input}\n### {{answer}}: ".into()),
        no_input_format: Some("### {instruction}\n### {{answer}}: ".into()),
        ..Default::default()
    };
    let (s, _) = tokenize_sft(
        &tok,
        &Mapping::Instruct(m.clone()),
        &data,
        path(),
        opts(512),
    )
    .unwrap();
    assert_eq!(
        split_text(&tok, &s[0]).0,
        "[SYS]\n### Q1\nX\n### {answer}: "
    );
    assert_eq!(split_text(&tok, &s[1]).0, "[SYS]\n### Q2\n### {answer}: ");
    assert_eq!(split_text(&tok, &s[1]).1, "A2<|im_end|>");

    let chat = InstructMapping {
        chat_template: true,
        ..m
    };
    let (s, _) = tokenize_sft(&tok, &Mapping::Instruct(chat), &data, path(), opts(512)).unwrap();
    let (p, c) = split_text(&tok, &s[0]);
    assert_eq!(
        p,
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nQ1\nX<|im_end|>\n<|im_start|>assistant\n\n"
    );
    assert_eq!(c, "A1<|im_end|>");
}

#[test]
fn chat_masks_all_but_assistant_turns_over_many_turns() {
    for template in [None, Some(CHATML_TEMPLATE.to_string())] {
        let tok = ByteTok { template };
        let data = rows(json!([{ "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "hello"},
            {"from": "gpt", "value": "hi, how can I help?"},
            {"from": "human", "value": "2+2?"},
            {"from": "gpt", "value": "4"},
        ]}]));
        let m = ChatMapping {
            chat_user_reference: "human".into(),
            chat_assistant_reference: "gpt".into(),
            ..Default::default()
        };
        let (s, stats) = tokenize_sft(&tok, &Mapping::Chat(m), &data, path(), opts(4096)).unwrap();
        assert_eq!(stats.kept, 1);
        let (masked, trained) = split_text(&tok, &s[0]);
        assert_eq!(trained, "hi, how can I help?<|im_end|>4<|im_end|>");
        let full = tok.decode(&s[0].input_ids);
        assert_eq!(
            full,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nhi, how can I help?<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        );
        assert!(masked.contains("<|im_start|>user\n2+2?<|im_end|>"));
        // exactly two trained runs, one per assistant turn
        let runs = s[0]
            .labels
            .windows(2)
            .filter(|w| w[0] == IGNORE && w[1] != IGNORE)
            .count();
        assert_eq!(runs, 2);
    }
}

#[test]
fn chat_segments_concatenate_to_the_render() {
    let tok = ByteTok { template: None };
    let msgs = vec![
        ChatMessage::new("user", "a"),
        ChatMessage::new("assistant", "b"),
        ChatMessage::new("user", "c"),
    ];
    let seg = chat_segments(&tok, CHATML_TEMPLATE, &msgs).unwrap();
    let joined: String = seg.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        joined,
        gradients_engine::tokenizer::render_chat(CHATML_TEMPLATE, &msgs, false).unwrap()
    );
    assert_eq!(seg.iter().filter(|(_, t)| *t).count(), 1);
}

#[test]
fn missing_columns_and_bad_turns_are_named() {
    let tok = ByteTok { template: None };
    let data = rows(json!([{"q": "a", "a": "b"}, {"q": "c"}]));
    let m = InstructMapping {
        field_instruction: "q".into(),
        field_output: Some("a".into()),
        ..Default::default()
    };
    let err = tokenize_sft(&tok, &Mapping::Instruct(m), &data, path(), opts(64))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.jsonl") && err.contains("row 2") && err.contains("`a`"),
        "{err}"
    );
    // rows are tokenised in parallel; the error reported is the first in row order
    let mut many: Vec<Record> = (0..300)
        .map(|i| {
            let mut r = data[0].clone();
            r.insert("i".into(), json!(i));
            r
        })
        .collect();
    for k in [290, 17, 150] {
        many[k].remove("a");
    }
    let m = Mapping::Instruct(InstructMapping {
        field_instruction: "q".into(),
        field_output: Some("a".into()),
        ..Default::default()
    });
    for _ in 0..3 {
        let err = tokenize_sft(&tok, &m, &many, path(), opts(64))
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 18:"), "{err}");
    }

    let chat = Mapping::Chat(ChatMapping::default());
    let bad = rows(json!([{"conversations": [{"from": "user", "value": "x"}]}, {"messages": []}]));
    let err = tokenize_sft(&tok, &chat, &bad, path(), opts(64))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("row 2") && err.contains("`conversations`"),
        "{err}"
    );
    let bad = rows(json!([{"conversations": [{"from": "robot", "value": "x"}]}]));
    let err = tokenize_sft(&tok, &chat, &bad, path(), opts(64))
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 1") && err.contains("robot"), "{err}");
    let bad = rows(json!([{"conversations": [{"from": "user"}]}]));
    let err = tokenize_sft(&tok, &chat, &bad, path(), opts(64))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`value`") && err.contains("turn 1"), "{err}");

    let m = InstructMapping {
        field_instruction: "q".into(),
        format: Some("{instruction} {context}".into()),
        ..Default::default()
    };
    let err = tokenize_sft(&tok, &Mapping::Instruct(m), &data, path(), opts(64))
        .unwrap_err()
        .to_string();
    assert!(err.contains("format") && err.contains("{context}"), "{err}");
    assert!(fill("{a", &[("a", "1")], "f").is_err());
    let err = InstructMapping::default()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("field_instruction"), "{err}");
}

#[test]
fn truncation_policy_and_drop_counts() {
    let tok = ByteTok { template: None };
    let data = rows(json!([
        {"q": "abc", "a": "defgh"},          // 3 + 5 + eos = 9
        {"q": "abcdefghij", "a": "k"},       // prompt alone fills seq 8
        {"q": "ab", "a": "cd"},              // 5, fits
    ]));
    let m = Mapping::Instruct(InstructMapping {
        field_instruction: "q".into(),
        field_output: Some("a".into()),
        no_input_format: Some("{instruction}".into()),
        ..Default::default()
    });
    let (s, st) = tokenize_sft(&tok, &m, &data, path(), opts(8)).unwrap();
    assert_eq!(
        (
            st.kept,
            st.truncated,
            st.dropped_no_labels,
            st.dropped_too_long
        ),
        (2, 1, 1, 0)
    );
    assert_eq!(split_text(&tok, &s[0]), ("abc".into(), "defgh".into()));
    assert_eq!((s[0].row, s[1].row), (0, 2));
    let drop = TokenizeOptions {
        seq_len: 8,
        truncation: Truncation::Drop,
    };
    let (s, st) = tokenize_sft(&tok, &m, &data, path(), drop).unwrap();
    assert_eq!((st.kept, st.truncated, st.dropped_too_long), (1, 0, 2));
    assert_eq!(s[0].row, 2);
    // the samples pack into batches the model accepts
    let b = packed_batches(&s, 8, 2, Some(42), 259).unwrap();
    assert_eq!(b[0].batch.num_targets(), 3); // c, d, eos (each predicted from the token before)
}

#[test]
fn dpo_default_and_user_formats() {
    let tok = ByteTok { template: None };
    let data = rows(json!([{"p": "Q", "s": "S", "c": "good", "r": "bad"}]));
    let m = DpoMapping {
        field_prompt: "p".into(),
        field_system: Some("s".into()),
        field_chosen: "c".into(),
        field_rejected: "r".into(),
        ..Default::default()
    };
    let d = tokenize_dpo(&tok, &m, &data, path()).unwrap();
    assert_eq!(
        tok.decode(&d[0].prompt),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(tok.decode(&d[0].chosen), "good<|im_end|>");
    assert_eq!(tok.decode(&d[0].rejected), "bad<|im_end|>");
    let user = DpoMapping {
        prompt_format: Some("{system}|{prompt}|".into()),
        chosen_format: Some("+{chosen}".into()),
        ..m.clone()
    };
    let d = tokenize_dpo(&tok, &user, &data, path()).unwrap();
    assert_eq!(tok.decode(&d[0].prompt), "S|Q|");
    assert_eq!(tok.decode(&d[0].chosen), "+good<|im_end|>");
    assert_eq!(tok.decode(&d[0].rejected), "bad<|im_end|>");
    let missing = rows(json!([{"p": "Q", "c": "good", "r": "bad"}]));
    let err = tokenize_dpo(&tok, &m, &missing, path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 1") && err.contains("`s`"), "{err}");
}

#[test]
fn mappings_deserialize_with_defaults() {
    let m: Mapping = serde_json::from_value(json!({"task_type": "chat"})).unwrap();
    assert_eq!(m, Mapping::Chat(ChatMapping::default()));
    let m: Mapping = serde_json::from_value(json!({
        "task_type": "instruct", "field_instruction": "instruction", "field_output": "output"
    }))
    .unwrap();
    assert!(m.validate().is_ok());
    assert!(serde_json::from_value::<Mapping>(json!({"task_type": "instruct"})).is_err());
    assert!(
        serde_json::from_value::<Mapping>(json!({"task_type": "dpo", "field_promt": "x"})).is_err()
    );
}

#[test]
fn template_names_and_live_network_defaults() {
    use gradients_engine::data::chat::resolve_template;
    let own =
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}{% endfor %}";
    let tok = ByteTok {
        template: Some(own.to_string()),
    };
    assert_eq!(resolve_template(None, &tok).unwrap(), own);
    assert_eq!(
        resolve_template(Some("tokenizer_default"), &tok).unwrap(),
        own
    );
    assert_eq!(
        resolve_template(Some("ChatML"), &tok).unwrap(),
        CHATML_TEMPLATE
    );
    let err = resolve_template(Some("llama9"), &tok)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("chat_template") && err.contains("llama9"),
        "{err}"
    );
    // the tokenizer's own template is used by default; its eos ends the trained span
    let data = rows(json!([{"conversations": [
        {"from": "user", "value": "u"}, {"from": "assistant", "value": "a"}
    ]}]));
    let (s, _) = tokenize_sft(
        &tok,
        &Mapping::Chat(ChatMapping::default()),
        &data,
        path(),
        opts(64),
    )
    .unwrap();
    assert_eq!(
        tok.decode(&s[0].input_ids),
        "[user]u<|im_end|>[assistant]a<|im_end|>"
    );
    assert_eq!(split_text(&tok, &s[0]).1, "a<|im_end|>");

    // G.O.D's DPO type carries "{prompt}"/"{chosen}"/"{rejected}" and still uses chatml.intel
    let m: DpoMapping = serde_json::from_value(json!({
        "field_prompt": "p", "field_chosen": "c", "field_rejected": "r",
        "prompt_format": "{prompt}", "chosen_format": "{chosen}", "rejected_format": "{rejected}"
    }))
    .unwrap();
    let d = tokenize_dpo(
        &tok,
        &m,
        &rows(json!([{"p": "Q", "c": "y", "r": "n"}])),
        path(),
    )
    .unwrap();
    assert!(tok.decode(&d[0].prompt).starts_with("<|im_start|>user\nQ"));
    // G.O.D's instruct type carries `field`; it is accepted
    let m: Mapping = serde_json::from_value(json!({
        "task_type": "instruct", "field_instruction": "q", "field_output": "a", "field": null,
        "system_prompt": "", "system_format": "{system}"
    }))
    .unwrap();
    assert!(m.validate().is_ok());
}

#[test]
fn load_sft_reads_and_tokenizes_a_file() {
    let tok = ByteTok { template: None };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.csv");
    std::fs::write(&p, "instruction,input,output\nQ,,A\nR,ctx,B\n").unwrap();
    let m = Mapping::Instruct(InstructMapping {
        field_instruction: "instruction".into(),
        field_input: Some("input".into()),
        field_output: Some("output".into()),
        ..Default::default()
    });
    let (s, st) = gradients_engine::data::load_sft(&tok, &m, &p, opts(64)).unwrap();
    assert_eq!((st.rows, st.kept), (2, 2));
    assert_eq!(
        split_text(&tok, &s[1]),
        ("R ctx".into(), "B<|im_end|>".into())
    );
    let missing = dir.path().join("none.jsonl");
    let err = gradients_engine::data::load_sft(&tok, &m, &missing, opts(64)).unwrap_err();
    assert!(err.to_string().contains("none.jsonl"), "{err}");
}
