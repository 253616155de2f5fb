//! The subnet layer as a library: tasks, methods, validator evaluation, scoring, tournaments,
//! weights and the chain (SPEC §1–§7). The `gradients` binary (main.rs) drives it from the
//! command line; integration tests in subnet-glue/tests use it directly.
//!
//! Nothing here changes the engine: the subnet runs every method through the engine's own
//! trainer and evaluator (gradients-engine), so hardware can never decide a match.
#![deny(missing_docs)]

pub mod chain;
pub mod tournament; // Entry, select_entries, brackets, boss round, bootstrap gate, runner
pub mod weights; // tournament pools, boost, rank decay, burn; u16 quantisation as the SDK does it // Chain trait; LocalChain (SQLite chain_* tables), commit-reveal v2, Yuma epochs
