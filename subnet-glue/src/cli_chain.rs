//! `gradients chain`: drive the embedded chain (gradients_subnet::chain::LocalChain) stored in
//! an SQLite file: create it, register hotkeys with stake, set weights, move the block clock,
//! run Yuma epochs and show the metagraph.
//!
//! Hotkeys are given as 64 hex digits, an SS58 address, or a development name (`alice`),
//! which becomes `blake2_256(name)`. Extrinsics (`register`, `stake`, `set-weights`) are
//! included in the current block and the clock then moves one block, as on a real chain.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use gradients_subnet::chain::{
    u16_fraction, AccountId, Chain, ChainParams, EpochRecord, LocalChain,
};
use gradients_subnet::weights::quantize_u16;

/// Flags of `gradients chain`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Create a chain (or show an existing one's parameters).
    Init {
        /// The SQLite file (shared with the other subnet components).
        #[arg(long)]
        db: PathBuf,
        /// Parameters as a JSON file (fields of ChainParams; missing ones take defaults).
        #[arg(long)]
        params: Option<PathBuf>,
        /// Blocks per epoch.
        #[arg(long)]
        tempo: Option<u64>,
        /// Take weights only through commit-reveal.
        #[arg(long)]
        commit_reveal: bool,
    },
    /// Register a hotkey with stake.
    Register {
        /// The SQLite file.
        #[arg(long)]
        db: PathBuf,
        /// Hex, SS58 or a development name.
        #[arg(long)]
        hotkey: String,
        /// Stake in rao.
        #[arg(long, default_value_t = 0)]
        stake: u64,
    },
    /// Set the stake of a registered hotkey.
    Stake {
        /// The SQLite file.
        #[arg(long)]
        db: PathBuf,
        /// Hex, SS58 or a development name.
        #[arg(long)]
        hotkey: String,
        /// Stake in rao.
        #[arg(long)]
        stake: u64,
    },
    /// Set weights (`uid:weight,...`, any non-negative numbers; quantised as the SDK does).
    SetWeights {
        /// The SQLite file.
        #[arg(long)]
        db: PathBuf,
        /// Hex, SS58 or a development name (must be registered).
        #[arg(long)]
        hotkey: String,
        /// `uid:weight` pairs, comma separated.
        #[arg(long)]
        weights: String,
        /// Version key sent with the weights.
        #[arg(long, default_value_t = 0)]
        version_key: u64,
    },
    /// Move the block clock, running the epochs that fall due.
    Advance {
        /// The SQLite file.
        #[arg(long)]
        db: PathBuf,
        /// Number of blocks.
        #[arg(long)]
        blocks: u64,
    },
    /// Advance to the next epoch and run it; print per-uid results.
    Epoch {
        /// The SQLite file.
        #[arg(long)]
        db: PathBuf,
        /// How many epochs to run.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Show uid, hotkey, stake, permit, incentive, dividends and emission.
    Metagraph {
        /// The SQLite file.
        #[arg(long)]
        db: PathBuf,
    },
}

/// Parse a hotkey: hex or SS58 when it looks like one, else a development name.
fn hotkey(s: &str) -> anyhow::Result<AccountId> {
    let t = s.strip_prefix("0x").unwrap_or(s);
    let looks_hex = t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit());
    let looks_ss58 = s.starts_with('5') && (46..=48).contains(&s.len());
    if looks_hex || looks_ss58 {
        return Ok(AccountId::parse(s)?);
    }
    if s.is_empty() {
        bail!("--hotkey: empty");
    }
    Ok(AccountId::from_name(s))
}

fn open(db: &Path) -> anyhow::Result<LocalChain> {
    LocalChain::open(db).with_context(|| format!("opening chain in {}", db.display()))
}

fn parse_weights(s: &str) -> anyhow::Result<Vec<(u16, f64)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .enumerate()
        .map(|(i, p)| {
            let (u, w) = p
                .split_once(':')
                .with_context(|| format!("--weights item {i} `{p}`: expected uid:weight"))?;
            let uid: u16 = u
                .trim()
                .parse()
                .with_context(|| format!("--weights item {i}: uid `{u}`"))?;
            let w: f64 = w
                .trim()
                .parse()
                .with_context(|| format!("--weights item {i}: weight `{w}`"))?;
            Ok((uid, w))
        })
        .collect()
}

fn print_epoch(r: &EpochRecord) {
    println!(
        "epoch {} at block {}: emission {} rao (owner cut {}, distributed {})",
        r.epoch,
        r.block,
        r.total_emission,
        r.owner_cut,
        r.total_emission - r.owner_cut
    );
    println!(
        "{:>4}  {:<48}  {:>9}  {:>9}  {:>9}  {:>14}  {:>14}",
        "uid", "hotkey", "incentive", "dividends", "consensus", "miner_rao", "validator_rao"
    );
    for n in &r.neurons {
        println!(
            "{:>4}  {:<48}  {:>9.4}  {:>9.4}  {:>9.4}  {:>14}  {:>14}",
            n.uid,
            n.hotkey.to_ss58(),
            u16_fraction(n.incentive),
            u16_fraction(n.dividends),
            u16_fraction(n.consensus),
            n.server_emission,
            n.validator_emission
        );
    }
}

/// Run `gradients chain ...`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Init {
            db,
            params,
            tempo,
            commit_reveal,
        } => {
            let mut p = match params {
                Some(f) => {
                    let text = std::fs::read_to_string(&f)
                        .with_context(|| format!("reading {}", f.display()))?;
                    serde_json::from_str::<ChainParams>(&text)
                        .with_context(|| format!("{}: chain parameters", f.display()))?
                }
                None => ChainParams::default(),
            };
            if let Some(t) = tempo {
                p.tempo = t;
            }
            p.commit_reveal |= commit_reveal;
            let chain = LocalChain::open_with(&db, &p)
                .with_context(|| format!("creating chain in {}", db.display()))?;
            println!("{}", serde_json::to_string_pretty(chain.params())?);
            println!(
                "block {}, next epoch at block {}",
                chain.current_block()?,
                chain.next_epoch_block()?
            );
        }
        Cmd::Register {
            db,
            hotkey: h,
            stake,
        } => {
            let mut chain = open(&db)?;
            let hk = hotkey(&h)?;
            let uid = chain.register(&hk, stake)?;
            let block = chain.current_block()?;
            for r in chain.advance_blocks(1)? {
                print_epoch(&r);
            }
            println!("registered {hk} as uid {uid} at block {block} with stake {stake}");
        }
        Cmd::Stake {
            db,
            hotkey: h,
            stake,
        } => {
            let mut chain = open(&db)?;
            let hk = hotkey(&h)?;
            chain.set_stake(&hk, stake)?;
            for r in chain.advance_blocks(1)? {
                print_epoch(&r);
            }
            println!("stake of {hk} is now {stake}");
        }
        Cmd::SetWeights {
            db,
            hotkey: h,
            weights,
            version_key,
        } => {
            let mut chain = open(&db)?;
            let hk = hotkey(&h)?;
            let w = parse_weights(&weights)?;
            let (uids, values) = quantize_u16(&w)?;
            if uids.is_empty() {
                bail!("--weights: every weight is zero: nothing to set");
            }
            chain.set_weights(&hk, &uids, &values, version_key)?;
            let block = chain.current_block()?;
            for r in chain.advance_blocks(1)? {
                print_epoch(&r);
            }
            println!("set weights of {hk} at block {block}: uids {uids:?} values {values:?}");
        }
        Cmd::Advance { db, blocks } => {
            let mut chain = open(&db)?;
            for r in chain.advance_blocks(blocks)? {
                print_epoch(&r);
            }
            println!("block {}", chain.current_block()?);
        }
        Cmd::Epoch { db, count } => {
            let mut chain = open(&db)?;
            for _ in 0..count {
                print_epoch(&chain.run_next_epoch()?);
            }
        }
        Cmd::Metagraph { db } => {
            let chain = open(&db)?;
            let m = chain.metagraph()?;
            println!(
                "netuid {}  block {}  epochs {}  neurons {}",
                m.netuid,
                m.block,
                m.epoch,
                m.neurons.len()
            );
            println!(
                "{:>4}  {:<48}  {:>16}  {:>6}  {:>9}  {:>9}  {:>14}",
                "uid", "hotkey", "stake", "permit", "incentive", "dividends", "emission"
            );
            for n in &m.neurons {
                println!(
                    "{:>4}  {:<48}  {:>16}  {:>6}  {:>9.4}  {:>9.4}  {:>14}",
                    n.uid,
                    n.hotkey.to_ss58(),
                    n.stake,
                    if n.validator_permit { "yes" } else { "no" },
                    u16_fraction(n.incentive),
                    u16_fraction(n.dividends),
                    n.emission
                );
            }
        }
    }
    Ok(())
}
