//! The subnet layer as a library: tasks, methods, validator evaluation, scoring, tournaments,
//! weights and the chain (SPEC §1–§7). The `gradients` binary (main.rs) drives it from the
//! command line; integration tests in subnet-glue/tests use it directly.
//!
//! Nothing here changes the engine: the subnet runs every method through the engine's own
//! trainer and evaluator (gradients-engine), so hardware can never decide a match.
#![deny(missing_docs)]

pub mod chain; // Chain trait; LocalChain (SQLite chain_* tables), commit-reveal v2, Yuma epochs
pub mod fields; // Fields, parse_text: read TOML/JSON user files key by key, errors name the field
pub mod library; // archive, list, show: winning methods, their task wins and lineage
pub mod method; // Method (recipe + budget/checkpoint/search policies), Method::hash
pub mod runs; // run_method: a method as TrainConfigs: budget split, successive halving, best/last checkpoint
pub mod scoring; // score_task: SPEC §4 per-task scores, duplicates, the re-evaluate rule
pub mod store; // Store: the one SQLite file (WAL, foreign keys), Store::migrate
pub mod task; // Task, TaskSpec, create_task (intake), TaskStatus machine, make_split (SPEC §1–§2)
pub mod tournament; // Entry, select_entries, brackets, boss round, bootstrap gate, runner
pub mod validator;
pub mod weights; // tournament pools, boost, rank decay, burn; u16 quantisation as the SDK does it // evaluate_method, evaluate_task: run a method on a task's train split, score test + synth
