//! GRPO reward functions (SPEC §1 `grpo`): declarative, bounded, and run by validators on
//! untrusted task specs, so there is no script or code, only a fixed set of kinds with
//! checked parameters. Every reward of a completion is a number in `[0, 1]`.
//!
//! A task lists its rewards as `rewards = [{kind = ..., weight = ..., ...}]` ([`RewardSpec`],
//! one flat struct so an error can name `rewards[i].field`); [`RewardSpec::compile`] checks
//! it and gives a [`Reward`]. Kinds:
//! - `length`: closeness to `target` characters (`unit = "chars"`, the default) or
//!   whitespace-separated words (`unit = "words"`): `max(0, 1 − |n − target| / target)`.
//! - `contains`: 1 when the completion contains `text` (≤ 256 chars), case-insensitively
//!   unless `case_sensitive = true`.
//! - `regex_match`: 1 when `pattern` (≤ 256 chars, the `regex` crate: linear-time matching,
//!   no back-references or look-around, compiled program ≤ 1 MiB) matches somewhere
//!   (`mode = "search"`, default) or matches the whole trimmed completion (`mode = "full"`).
//! - `reference_match`: 1 when the completion contains (`mode = "contains"`, default) or
//!   equals (`mode = "equals"`) the row's `column` (e.g. an answer field), both normalised:
//!   lower-cased unless `case_sensitive`, whitespace runs collapsed to one space, trimmed,
//!   trailing `.`, `!`, `?` removed.
//! - `format`: `format = "json"` (the trimmed completion parses as a JSON object or array),
//!   `"sentence_end"` (it ends with `.`, `!` or `?` after trimming) or `"non_empty"`.
//!
//! `weight` (default 1) is finite, in `[0, 1000]`; a task has 1..=16 rewards and a positive
//! total weight. grpo.rs holds the mapping that carries these; eval/grpo.rs scores them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most reward functions per task.
pub const MAX_REWARDS: usize = 16;
/// Longest `text` / `pattern` (characters).
pub const MAX_PATTERN_CHARS: usize = 256;
/// Largest `weight`.
pub const MAX_WEIGHT: f64 = 1000.0;
/// Largest `length` target.
pub const MAX_LENGTH_TARGET: u64 = 100_000;
/// Compiled-regex size limit (bytes): bounds the memory and time of building a pattern.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One reward function as written in a task (TOML or JSON); see the module doc.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    /// `length`, `contains`, `regex_match`, `reference_match` or `format`.
    pub kind: String,
    /// Weight in the score (finite, 0..=1000; default 1).
    #[serde(default = "one")]
    pub weight: f64,
    /// `length`: the target count (1..=100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// `length`: `chars` (default) or `words`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `contains`: the text to look for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `contains`, `reference_match`: compare case-sensitively (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_sensitive: Option<bool>,
    /// `regex_match`: the pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// `reference_match`: the dataset column holding the reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// `regex_match`: `search` (default) or `full`; `reference_match`: `contains` (default)
    /// or `equals`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `format`: `json`, `sentence_end` or `non_empty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

fn one() -> f64 {
    1.0
}

/// What `length` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LengthUnit {
    /// Unicode scalar values.
    Chars,
    /// Whitespace-separated words.
    Words,
}

/// The check of a `format` reward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatCheck {
    /// The trimmed completion is a JSON object or array.
    Json,
    /// The trimmed completion ends with `.`, `!` or `?`.
    SentenceEnd,
    /// The trimmed completion is not empty.
    NonEmpty,
}

/// A checked reward function.
#[derive(Clone, Debug)]
pub enum Reward {
    /// Closeness to a target length.
    Length {
        /// Target count (≥ 1).
        target: u64,
        /// What is counted.
        unit: LengthUnit,
    },
    /// Contains a fixed text.
    Contains {
        /// The text (lower-cased when not case-sensitive).
        text: String,
        /// Case-sensitive comparison.
        case_sensitive: bool,
    },
    /// Matches a regular expression (anchored to the trimmed completion when `full`).
    RegexMatch {
        /// The compiled pattern.
        regex: regex::Regex,
    },
    /// Contains or equals the row's reference column (normalised).
    ReferenceMatch {
        /// The column.
        column: String,
        /// Equality instead of containment.
        equals: bool,
        /// Case-sensitive comparison.
        case_sensitive: bool,
    },
    /// A format check.
    Format(FormatCheck),
}

impl RewardSpec {
    /// Check this spec (the `i`-th of the task's list; `source` names the mapping in errors)
    /// and build its [`Reward`].
    pub fn compile(&self, i: usize, source: &str) -> Result<Reward> {
        let field = |f: &str| format!("rewards[{i}].{f}");
        let bad = |f: &str, msg: String| Error::config(source, field(f), msg);
        let w = self.weight;
        if !(w.is_finite() && (0.0..=MAX_WEIGHT).contains(&w)) {
            return Err(bad(
                "weight",
                format!("must be a number in [0, {MAX_WEIGHT}], got {w}"),
            ));
        }
        // which optional fields this kind may set
        let allowed: &[&str] = match self.kind.as_str() {
            "length" => &["target", "unit"],
            "contains" => &["text", "case_sensitive"],
            "regex_match" => &["pattern", "mode"],
            "reference_match" => &["column", "mode", "case_sensitive"],
            "format" => &["format"],
            other => {
                return Err(bad(
                    "kind",
                    format!("unknown reward kind `{other}` (expected length, contains, regex_match, reference_match or format)"),
                ))
            }
        };
        let set = [
            ("target", self.target.is_some()),
            ("unit", self.unit.is_some()),
            ("text", self.text.is_some()),
            ("case_sensitive", self.case_sensitive.is_some()),
            ("pattern", self.pattern.is_some()),
            ("column", self.column.is_some()),
            ("mode", self.mode.is_some()),
            ("format", self.format.is_some()),
        ];
        if let Some((f, _)) = set.iter().find(|(f, s)| *s && !allowed.contains(f)) {
            return Err(bad(
                f,
                format!("is not a parameter of a `{}` reward", self.kind),
            ));
        }
        let required = |f: &str, v: Option<&String>| -> Result<String> {
            match v {
                None => Err(bad(f, format!("is required by a `{}` reward", self.kind))),
                Some(s) if s.is_empty() => Err(bad(f, "must not be empty".into())),
                Some(s) if s.chars().count() > MAX_PATTERN_CHARS => Err(bad(
                    f,
                    format!("is longer than {MAX_PATTERN_CHARS} characters"),
                )),
                Some(s) => Ok(s.clone()),
            }
        };
        let case_sensitive = self.case_sensitive.unwrap_or(false);
        Ok(match self.kind.as_str() {
            "length" => {
                let target = self
                    .target
                    .ok_or_else(|| bad("target", "is required by a `length` reward".into()))?;
                if !(1..=MAX_LENGTH_TARGET).contains(&target) {
                    return Err(bad(
                        "target",
                        format!("must be in 1..={MAX_LENGTH_TARGET}, got {target}"),
                    ));
                }
                let unit = match self.unit.as_deref().unwrap_or("chars") {
                    "chars" => LengthUnit::Chars,
                    "words" => LengthUnit::Words,
                    u => {
                        return Err(bad(
                            "unit",
                            format!("unknown unit `{u}` (expected chars or words)"),
                        ))
                    }
                };
                Reward::Length { target, unit }
            }
            "contains" => {
                let text = required("text", self.text.as_ref())?;
                Reward::Contains {
                    text: if case_sensitive {
                        text
                    } else {
                        text.to_lowercase()
                    },
                    case_sensitive,
                }
            }
            "regex_match" => {
                let pattern = required("pattern", self.pattern.as_ref())?;
                let full = match self.mode.as_deref().unwrap_or("search") {
                    "search" => false,
                    "full" => true,
                    m => {
                        return Err(bad(
                            "mode",
                            format!("unknown mode `{m}` (expected search or full)"),
                        ))
                    }
                };
                let source_pattern = if full {
                    format!(r"\A(?:{pattern})\z")
                } else {
                    pattern
                };
                let regex = regex::RegexBuilder::new(&source_pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .nest_limit(32)
                    .build()
                    .map_err(|e| bad("pattern", format!("invalid or too large regex: {e}")))?;
                Reward::RegexMatch { regex }
            }
            "reference_match" => {
                let column = required("column", self.column.as_ref())?;
                let equals = match self.mode.as_deref().unwrap_or("contains") {
                    "contains" => false,
                    "equals" => true,
                    m => {
                        return Err(bad(
                            "mode",
                            format!("unknown mode `{m}` (expected contains or equals)"),
                        ))
                    }
                };
                Reward::ReferenceMatch {
                    column,
                    equals,
                    case_sensitive,
                }
            }
            _ => Reward::Format(match self.format.as_deref() {
                Some("json") => FormatCheck::Json,
                Some("sentence_end") => FormatCheck::SentenceEnd,
                Some("non_empty") => FormatCheck::NonEmpty,
                None => return Err(bad("format", "is required by a `format` reward".into())),
                Some(f) => {
                    return Err(bad(
                        "format",
                        format!("unknown format `{f}` (expected json, sentence_end or non_empty)"),
                    ))
                }
            }),
        })
    }
}

/// Check a task's reward list (1..=16 entries, a positive total weight) and compile it.
pub fn compile_rewards(specs: &[RewardSpec], source: &str) -> Result<Vec<Reward>> {
    if specs.is_empty() || specs.len() > MAX_REWARDS {
        return Err(Error::config(
            source,
            "rewards",
            format!(
                "must list 1..={MAX_REWARDS} reward functions, got {}",
                specs.len()
            ),
        ));
    }
    let rewards = specs
        .iter()
        .enumerate()
        .map(|(i, s)| s.compile(i, source))
        .collect::<Result<Vec<_>>>()?;
    if specs.iter().map(|s| s.weight).sum::<f64>() <= 0.0 {
        return Err(Error::config(
            source,
            "rewards",
            "the weights sum to 0: at least one reward needs a positive weight",
        ));
    }
    Ok(rewards)
}

/// Normalise text for `reference_match`: lower-cased unless `case_sensitive`, whitespace runs
/// collapsed to one space, trimmed, trailing `.`, `!`, `?` (and the spaces before them) removed.
pub fn normalise_answer(s: &str, case_sensitive: bool) -> String {
    let s = if case_sensitive {
        s.to_string()
    } else {
        s.to_lowercase()
    };
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    joined
        .trim_end_matches(|c: char| c == '.' || c == '!' || c == '?' || c.is_whitespace())
        .to_string()
}

impl Reward {
    /// The dataset column this reward reads, if any.
    pub fn column(&self) -> Option<&str> {
        match self {
            Reward::ReferenceMatch { column, .. } => Some(column),
            _ => None,
        }
    }

    /// The reward of `completion` (in `[0, 1]`); `reference` is the row's value of
    /// [`Reward::column`] (ignored by the other kinds; an absent one scores 0).
    pub fn score(&self, completion: &str, reference: Option<&str>) -> f64 {
        let hit = |b: bool| if b { 1.0 } else { 0.0 };
        match self {
            Reward::Length { target, unit } => {
                let n = match unit {
                    LengthUnit::Chars => completion.chars().count(),
                    LengthUnit::Words => completion.split_whitespace().count(),
                } as f64;
                let t = *target as f64;
                (1.0 - (n - t).abs() / t).max(0.0)
            }
            Reward::Contains {
                text,
                case_sensitive,
            } => {
                if *case_sensitive {
                    hit(completion.contains(text.as_str()))
                } else {
                    hit(completion.to_lowercase().contains(text.as_str()))
                }
            }
            Reward::RegexMatch { regex } => hit(regex.is_match(completion.trim())),
            Reward::ReferenceMatch {
                equals,
                case_sensitive,
                ..
            } => {
                let Some(r) = reference else { return 0.0 };
                let r = normalise_answer(r, *case_sensitive);
                if r.is_empty() {
                    return 0.0;
                }
                let c = normalise_answer(completion, *case_sensitive);
                hit(if *equals { c == r } else { c.contains(&r) })
            }
            Reward::Format(f) => {
                let t = completion.trim();
                hit(match f {
                    FormatCheck::Json => matches!(
                        serde_json::from_str::<serde_json::Value>(t),
                        Ok(serde_json::Value::Object(_) | serde_json::Value::Array(_))
                    ),
                    FormatCheck::SentenceEnd => t.ends_with(['.', '!', '?']),
                    FormatCheck::NonEmpty => !t.is_empty(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str) -> RewardSpec {
        RewardSpec {
            kind: kind.into(),
            weight: 1.0,
            target: None,
            unit: None,
            text: None,
            case_sensitive: None,
            pattern: None,
            column: None,
            mode: None,
            format: None,
        }
    }

    fn err(s: &RewardSpec) -> String {
        s.compile(2, "m").unwrap_err().to_string()
    }

    #[test]
    fn scores_of_each_kind() {
        let len = RewardSpec {
            target: Some(10),
            ..spec("length")
        }
        .compile(0, "m")
        .unwrap();
        assert_eq!(len.score("abcdefghij", None), 1.0);
        assert_eq!(len.score("abcdefgh", None), 0.8);
        assert_eq!(len.score(&"x".repeat(25), None), 0.0);
        let words = RewardSpec {
            target: Some(4),
            unit: Some("words".into()),
            ..spec("length")
        }
        .compile(0, "m")
        .unwrap();
        assert_eq!(words.score(" one  two three ", None), 0.75);
        let c = RewardSpec {
            text: Some("Paris".into()),
            ..spec("contains")
        }
        .compile(0, "m")
        .unwrap();
        assert_eq!(c.score("it is PARIS.", None), 1.0);
        assert_eq!(c.score("it is Lyon", None), 0.0);
        let cs = RewardSpec {
            text: Some("Paris".into()),
            case_sensitive: Some(true),
            ..spec("contains")
        }
        .compile(0, "m")
        .unwrap();
        assert_eq!(cs.score("it is PARIS.", None), 0.0);
        let re = RewardSpec {
            pattern: Some(r"\d+".into()),
            ..spec("regex_match")
        }
        .compile(0, "m")
        .unwrap();
        assert_eq!(re.score("answer: 42", None), 1.0);
        let full = RewardSpec {
            pattern: Some(r"\d+|yes".into()),
            mode: Some("full".into()),
            ..spec("regex_match")
        }
        .compile(0, "m")
        .unwrap();
        assert_eq!(full.score(" 42\n", None), 1.0);
        assert_eq!(full.score("yes", None), 1.0);
        assert_eq!(full.score("answer: 42", None), 0.0);
        let r = RewardSpec {
            column: Some("answer".into()),
            ..spec("reference_match")
        }
        .compile(0, "m")
        .unwrap();
        assert_eq!(r.column(), Some("answer"));
        assert_eq!(
            r.score("The  answer is\nParis, France.", Some("paris,  FRANCE!")),
            1.0
        );
        assert_eq!(r.score("Lyon", Some("Paris")), 0.0);
        assert_eq!(r.score("Paris", None), 0.0);
        let eq = RewardSpec {
            column: Some("answer".into()),
            mode: Some("equals".into()),
            ..spec("reference_match")
        }
        .compile(0, "m")
        .unwrap();
        assert_eq!(eq.score(" Paris. ", Some("paris")), 1.0);
        assert_eq!(eq.score("Paris is it", Some("paris")), 0.0);
        let f = |name: &str| {
            RewardSpec {
                format: Some(name.into()),
                ..spec("format")
            }
            .compile(0, "m")
            .unwrap()
        };
        assert_eq!(f("json").score(" {\"a\": [1, 2]} ", None), 1.0);
        assert_eq!(f("json").score("42", None), 0.0);
        assert_eq!(f("json").score("{\"a\": ", None), 0.0);
        assert_eq!(f("sentence_end").score("Done!  ", None), 1.0);
        assert_eq!(f("sentence_end").score("Done", None), 0.0);
        assert_eq!(f("non_empty").score(" \n", None), 0.0);
        assert_eq!(f("non_empty").score("x", None), 1.0);
    }

    #[test]
    fn bad_specs_name_the_field() {
        assert!(err(&spec("python")).contains("rewards[2].kind"));
        assert!(err(&spec("length")).contains("rewards[2].target"));
        let e = err(&RewardSpec {
            target: Some(0),
            ..spec("length")
        });
        assert!(e.contains("rewards[2].target") && e.contains("1..="), "{e}");
        for w in [-1.0, f64::NAN, f64::INFINITY, 1e6] {
            let e = err(&RewardSpec {
                weight: w,
                text: Some("x".into()),
                ..spec("contains")
            });
            assert!(e.contains("rewards[2].weight"), "{e}");
        }
        let e = err(&RewardSpec {
            pattern: Some("a".repeat(300)),
            ..spec("regex_match")
        });
        assert!(e.contains("rewards[2].pattern") && e.contains("256"), "{e}");
        let e = err(&RewardSpec {
            pattern: Some("(unclosed".into()),
            ..spec("regex_match")
        });
        assert!(e.contains("rewards[2].pattern"), "{e}");
        // a pattern whose compiled program passes the size limit is refused
        let e = err(&RewardSpec {
            pattern: Some(r"\w{200}\w{200}\w{200}".into()),
            ..spec("regex_match")
        });
        assert!(e.contains("rewards[2].pattern"), "{e}");
        let e = err(&RewardSpec {
            text: Some("x".into()),
            pattern: Some("y".into()),
            ..spec("contains")
        });
        assert!(
            e.contains("rewards[2].pattern") && e.contains("not a parameter"),
            "{e}"
        );
        let e = err(&RewardSpec {
            format: Some("xml".into()),
            ..spec("format")
        });
        assert!(e.contains("rewards[2].format"), "{e}");
        let e = compile_rewards(&[], "m").unwrap_err().to_string();
        assert!(e.contains("rewards") && e.contains("1..=16"), "{e}");
        let zero = RewardSpec {
            weight: 0.0,
            format: Some("json".into()),
            ..spec("format")
        };
        let e = compile_rewards(&[zero], "m").unwrap_err().to_string();
        assert!(e.contains("sum to 0"), "{e}");
    }
}
