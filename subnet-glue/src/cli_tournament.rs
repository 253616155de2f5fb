//! `gradients tournament run` and `gradients library list|show`: a whole local tournament
//! (SPEC §5–§6) on one machine, and the method library it fills.
//!
//! `tournament run` reads method files (examples/methods by default), trains and evaluates
//! them through the validator on tasks made from one dataset per task kind (instruct: the
//! cached alpaca demo; dpo: the cached dpo_en_demo, read as-is through the ShareGPT DPO
//! mapping; grpo: examples/grpo-prompts.json with the mapping of examples/grpo-smollm2.toml
//! and short generations; `--task-kinds` picks the kinds, by default all three, dpo and grpo
//! each when its data resolves)
//! with the cached SmolLM2 model, prints every match as it is decided (the
//! bracket, per-task losses), the winner, then the weights (tournament pools, u16) set on the
//! database's local chain and the emission of the epoch that follows. Killed, it resumes
//! from the same `--db` with the same flags. Library code: tournament/ and library.rs.

use std::path::PathBuf;

use anyhow::Context;
use gradients_engine::data::{DpoMapping, Mapping};
use gradients_engine::train::config::resolve_asset;
use gradients_engine::train::grpo::GrpoSection;
use gradients_subnet::chain::LocalChain;
use gradients_subnet::library;
use gradients_subnet::store::Store;
use gradients_subnet::tournament::bootstrap::GateConfig;
use gradients_subnet::tournament::run::{
    run_tournament, submissions_from_paths, Event, Outcome, TaskSource, TournamentConfig,
};
use gradients_subnet::tournament::settle::{register_neurons, settle, Settlement};
use gradients_subnet::tournament::store::{MatchRecord, Stage};
use gradients_subnet::tournament::TaskKind;
use gradients_subnet::validator::{BaseModel, ValidatorOptions};

/// `gradients tournament …`
#[derive(clap::Subcommand)]
pub enum TournamentCmd {
    /// Run (or resume) a local tournament among method files and set the weights.
    Run(RunArgs),
}

/// `gradients library …`
#[derive(clap::Subcommand)]
pub enum LibraryCmd {
    /// Every archived winning method.
    List(DbArg),
    /// One archived method (hash or a prefix of ≥ 6 hex digits): recipe, wins, lineage.
    Show {
        #[command(flatten)]
        db: DbArg,
        /// The method hash or a prefix of it.
        hash: String,
    },
}

/// The database flag.
#[derive(clap::Args)]
pub struct DbArg {
    /// The SQLite database (tasks, results, tournaments, library, local chain).
    #[arg(long, default_value = "gradients.db")]
    db: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Flags of `gradients tournament run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The SQLite database (created if missing); rerun with it to resume.
    #[arg(long, default_value = "gradients.db")]
    db: PathBuf,
    /// Method files (.toml/.json) or directories of them; each is one miner, hotkey
    /// `miner-<file stem>`, registered on the local chain in the order given.
    #[arg(long, num_args = 1.., default_value = "examples/methods")]
    methods: Vec<PathBuf>,
    /// Base model (GGUF file or HF directory, or `asset:smollm2`).
    #[arg(long, default_value = "asset:smollm2")]
    model: PathBuf,
    /// Instruct dataset the tasks are made from (or `asset:alpaca_en_demo`).
    #[arg(long, default_value = "asset:alpaca_en_demo")]
    data: PathBuf,
    /// The instruct mapping as JSON (default: alpaca's instruction/input/output).
    #[arg(long)]
    mapping: Option<String>,
    /// DPO dataset the dpo tasks are made from (or `asset:dpo_en_demo`).
    #[arg(long, default_value = "asset:dpo_en_demo")]
    dpo_data: PathBuf,
    /// The DPO mapping as JSON (default: dpo_en_demo's `conversations` prompt and
    /// `chosen`/`rejected` `{from, value}` answers, roles human/gpt).
    #[arg(long)]
    dpo_mapping: Option<String>,
    /// GRPO prompts the grpo tasks are made from (used when `--task-kinds` names grpo).
    #[arg(long, default_value = "examples/grpo-prompts.json")]
    grpo_data: PathBuf,
    /// The GRPO mapping as JSON (default: examples/grpo-smollm2.toml's: the `question`
    /// prompt, reference_match on `answer` (weight 2) and length 4 (weight 0.5)).
    #[arg(long)]
    grpo_mapping: Option<String>,
    /// The grpo tasks' generation settings as JSON (the engine's `[grpo]` section:
    /// num_generations, max_new_tokens, temperature, top_k, top_p, scale_rewards).
    #[arg(
        long,
        default_value = r#"{"num_generations": 4, "max_new_tokens": 12}"#
    )]
    grpo_settings: String,
    /// Task kinds matches are drawn from (comma-separated: instruct, dpo, grpo); default all
    /// three, dpo and grpo each when its data resolves (the reason is printed otherwise).
    #[arg(long, value_delimiter = ',')]
    task_kinds: Option<Vec<String>>,
    /// Training tokens each method may spend per task.
    #[arg(long, default_value_t = 4096)]
    token_budget: u64,
    /// Seed of the bracket, the task splits and the training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CPU threads (0: all cores). Results do not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Boss-round tasks (the live network plays 6).
    #[arg(long, default_value_t = 2)]
    boss_tasks: usize,
    /// Test and synthetic samples scored per task (CI-sized runs; 0: all).
    #[arg(long, default_value_t = 16)]
    eval_samples: usize,
    /// Evaluation sequence length (default SPEC §3's 4096/2048).
    #[arg(long)]
    eval_seq_len: Option<usize>,
    /// Tournament id (default: derived from the settings and the methods).
    #[arg(long)]
    id: Option<String>,
    /// Where train splits, runs and adapters go (default: `<db>.work/`).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Skip setting weights on the local chain.
    #[arg(long)]
    no_chain: bool,
    /// Print the outcome as one JSON object at the end too.
    #[arg(long)]
    json: bool,
}

const GRPO_MAPPING: &str = r#"{"task_type": "grpo", "field_prompt": "question", "rewards": [
    {"kind": "reference_match", "column": "answer", "weight": 2.0},
    {"kind": "length", "target": 4, "weight": 0.5}]}"#;

const ALPACA_MAPPING: &str = r#"{"task_type": "instruct", "field_instruction": "instruction",
    "field_input": "input", "field_output": "output"}"#;

/// A mapping flag's JSON, tagged `task_type` = `kind` when the tag is left out; it must be
/// of that kind.
fn parse_mapping(flag: &str, text: &str, kind: &str) -> anyhow::Result<Mapping> {
    let mut v: serde_json::Value = serde_json::from_str(text)
        .with_context(|| format!("{flag}: expected a {kind} mapping as JSON"))?;
    let obj = v
        .as_object_mut()
        .with_context(|| format!("{flag}: expected a JSON object"))?;
    obj.entry("task_type").or_insert_with(|| kind.into());
    let m: Mapping = serde_json::from_value(v).with_context(|| format!("{flag}: bad mapping"))?;
    let ok = match &m {
        Mapping::Dpo(_) => kind == "dpo",
        Mapping::Instruct(_) | Mapping::Chat(_) => kind == "instruct",
        Mapping::Grpo(_) => kind == "grpo",
    };
    anyhow::ensure!(ok, "{flag}: expected a {kind} mapping");
    m.validate().context(flag.to_string())?;
    Ok(m)
}

/// The task sources of `a`: instruct from `--data`, dpo from `--dpo-data`, grpo from
/// `--grpo-data`, for the kinds asked (default: all three, dpo and grpo only when their data
/// resolves; the reason is printed otherwise).
fn task_sources(a: &RunArgs) -> anyhow::Result<Vec<TaskSource>> {
    let kinds: Vec<TaskKind> = match &a.task_kinds {
        Some(names) => {
            let mut k = Vec::new();
            for n in names {
                let kind = TaskKind::parse(n.trim()).context("--task-kinds")?;
                if !k.contains(&kind) {
                    k.push(kind);
                }
            }
            anyhow::ensure!(!k.is_empty(), "--task-kinds: name at least one kind");
            k
        }
        None => vec![TaskKind::Instruct, TaskKind::Dpo, TaskKind::Grpo],
    };
    let mut out = Vec::new();
    for kind in kinds {
        let (flag, data, mapping) = match kind {
            TaskKind::Instruct => (
                "--data",
                &a.data,
                parse_mapping(
                    "--mapping",
                    a.mapping.as_deref().unwrap_or(ALPACA_MAPPING),
                    "instruct",
                )?,
            ),
            TaskKind::Grpo => (
                "--grpo-data",
                &a.grpo_data,
                parse_mapping(
                    "--grpo-mapping",
                    a.grpo_mapping.as_deref().unwrap_or(GRPO_MAPPING),
                    "grpo",
                )?,
            ),
            TaskKind::Dpo => {
                let dm = match &a.dpo_mapping {
                    Some(t) => parse_mapping("--dpo-mapping", t, "dpo")?,
                    None => Mapping::Dpo(DpoMapping::sharegpt()),
                };
                ("--dpo-data", &a.dpo_data, dm)
            }
        };
        let found = resolve_asset(data)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(format!("{} is not a file", p.display()))
                }
            });
        let dataset = match found {
            Ok(p) => p,
            Err(e) if a.task_kinds.is_none() && kind != TaskKind::Instruct => {
                println!("{kind} tasks off: {flag} {}: {e}", data.display());
                continue;
            }
            Err(e) => anyhow::bail!("{flag}: {e}"),
        };
        let grpo = match kind {
            TaskKind::Grpo => {
                let g: GrpoSection = serde_json::from_str(&a.grpo_settings)
                    .context("--grpo-settings: expected the [grpo] section as JSON")?;
                g.validate("--grpo-settings")?;
                Some(g)
            }
            _ => None,
        };
        out.push(TaskSource {
            kind,
            dataset: std::path::absolute(&dataset).unwrap_or(dataset),
            mapping,
            grpo,
        });
    }
    Ok(out)
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

fn fmt_loss(l: Option<f64>) -> String {
    l.map_or("failed".to_string(), |l| format!("{l:.4}"))
}

/// One line (or a few) per decided match.
pub fn print_match(m: &MatchRecord, replayed: bool) {
    let tag = if replayed { " (recorded earlier)" } else { "" };
    let head = match m.stage {
        Stage::Group => format!("group {}", m.idx),
        Stage::Knockout => format!("knockout round {} match {}", m.round, m.idx),
        Stage::Boss => format!("boss task {}", m.idx),
    };
    let task = m.task_id.as_deref().unwrap_or("-");
    println!(
        "match {head}: task {task} [{}]{tag}",
        if m.kind.is_empty() { "bye" } else { &m.kind }
    );
    for s in &m.players {
        let who = if s.champion { " (champion)" } else { "" };
        // A bye (no task) is not a failure: the player advances without playing.
        if m.task_id.is_none() {
            println!(
                "    uid {:>3} {}{who}: bye, advances without playing",
                s.uid,
                short(&s.method_hash)
            );
            continue;
        }
        let won = if m.winners.contains(&s.method_hash) {
            "  <- wins"
        } else {
            ""
        };
        let test = s
            .test_loss
            .map(|t| format!(" (test {t:.4})"))
            .unwrap_or_default();
        // grpo: the score normalised over the match, as a regret (tournament/grpo.rs)
        let what = if m.kind == "grpo" {
            "grpo regret"
        } else {
            "loss"
        };
        println!(
            "    uid {:>3} {}{who}: {what} {}{test}{won}",
            s.uid,
            short(&s.method_hash),
            fmt_loss(s.loss)
        );
    }
    let mut rule = format!("    decided by: {}", m.rule);
    if let Some(t) = m.margin {
        rule += &format!(", margin t = {t:.4}");
    }
    if let Some(g) = &m.gate {
        rule += &format!(
            ", gate: {} decided of {} samples, win share {:.3} (lb {}), lead {:.4} (lb {}, needs {:.4}) -> {}",
            g.decided,
            g.samples,
            g.win_share,
            g.win_share_lb.map_or("-".into(), |v| format!("{v:.3}")),
            g.lead,
            g.lead_lb.map_or("-".into(), |v| format!("{v:.4}")),
            g.required_lead,
            if g.skipped { "skipped" } else if g.passed { "passed" } else { "failed" }
        );
    }
    println!("{rule}");
}

fn print_outcome(o: &Outcome) {
    println!(
        "tournament {}: {} entries",
        o.tournament_id,
        o.entries.len()
    );
    if let Some(b) = &o.boss {
        println!(
            "boss round: challenger {} took {} of {} tasks -> {:?} wins",
            short(&o.bracket_winner),
            b.challenger_tasks,
            b.challenger_tasks + b.champion_tasks,
            b.winner
        );
    }
    let c = &o.champion_after;
    println!(
        "winner: uid {} {} ({}), champion with {} defence(s)",
        c.uid, c.method_hash, c.hotkey, c.defences
    );
    println!("ranking (uids): {:?}", o.ranked_uids);
}

fn print_settlement(s: &Settlement, burn_uid: u16) {
    println!(
        "weights: perf_diff {:.4}, boost {:.4}, text pool {:.4}, burn {:.4} (uid {burn_uid})",
        s.pools.perf_diff, s.pools.boost, s.pools.text_weight, s.pools.burn
    );
    for ((uid, w), v) in s.pools.weights.iter().zip(&s.values) {
        println!("    uid {uid:>3}: weight {w:.6}  u16 {v}");
    }
    match &s.epoch {
        None => println!("(weights were already set on the chain for this tournament)"),
        Some(e) => {
            println!(
                "epoch {} at block {}: emission {} rao ({} owner cut)",
                e.epoch, e.block, e.total_emission, e.owner_cut
            );
            for n in &e.neurons {
                println!(
                    "    uid {:>3}: incentive {:>5} dividends {:>5} emission {} (server) + {} (validator)",
                    n.uid, n.incentive, n.dividends, n.server_emission, n.validator_emission
                );
            }
        }
    }
}

/// Run `gradients tournament run`.
pub fn run(cmd: TournamentCmd) -> anyhow::Result<()> {
    let TournamentCmd::Run(a) = cmd;
    if a.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(a.threads)
            .build_global()
            .context("setting the rayon thread count")?;
    }
    let mut subs = submissions_from_paths(&a.methods, 1).context("reading the methods")?;
    let sources = task_sources(&a)?;
    for src in &sources {
        println!("{} tasks from {}", src.kind, src.dataset.display());
    }
    let model = resolve_asset(&a.model).context("--model")?;
    let store = Store::open(&a.db).with_context(|| format!("opening {}", a.db.display()))?;
    let mut chain = LocalChain::open(&a.db)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("opening the local chain in {}", a.db.display()))?;
    let burn_uid = register_neurons(&mut chain, &mut subs)?;
    let work_dir = a
        .work_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.work", a.db.display())));
    let mut validator = ValidatorOptions::new(&work_dir, a.seed, a.token_budget);
    validator.threads = 0;
    validator.max_eval_samples = (a.eval_samples > 0).then_some(a.eval_samples);
    validator.eval_seq_len = a.eval_seq_len;
    let cfg = TournamentConfig {
        tournament_id: a.id.clone(),
        seed: a.seed,
        base_model: std::path::absolute(&model).unwrap_or(model.clone()),
        sources,
        boss_tasks: a.boss_tasks,
        gate: GateConfig::default(),
        validator,
        hours_to_complete: 1.0,
    };
    println!("loading {}", model.display());
    let base = BaseModel::load(&model).with_context(|| format!("loading {}", model.display()))?;
    let mut on_event = |e: Event<'_>| match e {
        Event::Start {
            tournament_id,
            entries,
            champion,
            resumed,
        } => {
            println!(
                "tournament {tournament_id}{}: {} entries, champion {}",
                if resumed { " (resuming)" } else { "" },
                entries.len(),
                champion.map_or("none yet".to_string(), |c| format!(
                    "uid {} {} ({} defences)",
                    c.uid,
                    short(&c.method_hash),
                    c.defences
                ))
            );
            for e in entries {
                println!(
                    "    entry uid {:>3} {} {}",
                    e.uid,
                    short(&e.method_hash),
                    e.hotkey
                );
            }
        }
        Event::Evaluating {
            task_id,
            method_hash,
        } => println!("  evaluating {} on {task_id}", short(method_hash)),
        Event::Match { record, replayed } => print_match(record, replayed),
    };
    let outcome = run_tournament(&store, &base, &cfg, &subs, &mut on_event)
        .context("running the tournament")?;
    print_outcome(&outcome);
    if !a.no_chain {
        let s = settle(&store, &mut chain, &outcome, burn_uid).context("setting weights")?;
        print_settlement(&s, burn_uid);
    }
    if a.json {
        println!("{}", serde_json::to_string(&outcome)?);
    }
    Ok(())
}

/// Run `gradients library list|show`.
pub fn library(cmd: LibraryCmd) -> anyhow::Result<()> {
    let open = |db: &DbArg| -> anyhow::Result<Store> {
        let s = Store::open(&db.db).with_context(|| format!("opening {}", db.db.display()))?;
        gradients_subnet::tournament::store::migrate(&s)?;
        Ok(s)
    };
    match cmd {
        LibraryCmd::List(db) => {
            let store = open(&db)?;
            let all = library::list(&store)?;
            if db.json {
                println!("{}", serde_json::to_string(&all)?);
                return Ok(());
            }
            if all.is_empty() {
                println!(
                    "the library is empty (no tournament has finished in {})",
                    db.db.display()
                );
            }
            for e in all {
                println!(
                    "{}  {:<20} won {} tournament(s), {} defence(s), {} task(s); first uid {}{}",
                    e.method_hash,
                    e.name,
                    e.tournaments_won,
                    e.defences,
                    e.tasks_won,
                    e.first_uid,
                    e.parent_hash
                        .map(|p| format!("; parent {}", short(&p)))
                        .unwrap_or_default()
                );
            }
        }
        LibraryCmd::Show { db, hash } => {
            let store = open(&db)?;
            let d = library::show(&store, &hash)?;
            if db.json {
                println!("{}", serde_json::to_string(&d)?);
                return Ok(());
            }
            let e = &d.entry;
            println!("method {} ({})", e.method_hash, e.name);
            println!(
                "won {} tournament(s) ({} defence(s)), {} task(s); first by uid {} {} in {}, last in {}",
                e.tournaments_won, e.defences, e.tasks_won, e.first_uid, e.first_hotkey,
                e.first_tournament, e.last_tournament
            );
            println!(
                "lineage: {}",
                if d.lineage.is_empty() {
                    "none".to_string()
                } else {
                    d.lineage.join(" <- ")
                }
            );
            if !d.children.is_empty() {
                println!("children: {}", d.children.join(", "));
            }
            println!("tasks won:");
            for w in &d.wins {
                println!(
                    "    {} {} [{}] loss {} vs {} {}",
                    w.stage,
                    w.task_id,
                    w.kind,
                    fmt_loss(w.loss),
                    w.opponent_hash.as_deref().map(short).unwrap_or("-"),
                    fmt_loss(w.opponent_loss)
                );
            }
            println!("recipe: {}", e.recipe);
        }
    }
    Ok(())
}
