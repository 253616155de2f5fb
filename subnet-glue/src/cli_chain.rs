//! `gradients chain`: drive the embedded chain (gradients_subnet::chain::LocalChain) stored in
//! an SQLite file: create it, register hotkeys with stake, set weights, or commit them and
//! reveal them later (commit-reveal v2; the reveal's salt/uids/values are saved to a file by
//! `commit`, listed by `commits`), move the block clock, run Yuma epochs and show the
//! metagraph.
//!
//! Hotkeys are given as 64 hex digits, an SS58 address, or a development name (`alice`),
//! which becomes `blake2_256(name)`. Extrinsics (`register`, `stake`, `set-weights`, `commit`,
//! `reveal`) are included in the current block and the clock then moves one block, as on a
//! real chain.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use gradients_subnet::chain::commit::{parse_salt, random_salt};
use gradients_subnet::chain::{
    commit_hash, u16_fraction, AccountId, Chain, ChainParams, EpochRecord, LocalChain,
    PendingReveal, Reject,
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
    /// Create a chain, or show an existing one's parameters (changed by the flags given).
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
        /// Take weights only through commit-reveal (`chain commit` then `chain reveal`).
        #[arg(long)]
        commit_reveal: bool,
        /// Epochs between a commit and its reveal.
        #[arg(long)]
        reveal_period: Option<u64>,
        /// Blocks between two weight sets (or commits) of one uid.
        #[arg(long)]
        weights_rate_limit: Option<u64>,
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
    /// Commit weights (commit-reveal v2): prints the hash and the reveal epoch, and saves
    /// what the reveal needs (salt, uids, values) to a file.
    Commit {
        /// The SQLite file.
        #[arg(long)]
        db: PathBuf,
        /// Hex, SS58 or a development name (must be registered).
        #[arg(long)]
        hotkey: String,
        /// `uid:weight` pairs, comma separated (quantised as the SDK does).
        #[arg(long)]
        weights: String,
        /// The salt as comma-separated u16 (default: 8 random values).
        #[arg(long)]
        salt: Option<String>,
        /// Version key sent with the weights.
        #[arg(long, default_value_t = 0)]
        version_key: u64,
        /// Where to save the reveal (default: `<db>.commit-<hash prefix>.json`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the reveal as JSON on stdout instead of saving it.
        #[arg(long, conflicts_with = "out")]
        print: bool,
    },
    /// Reveal committed weights, from a saved file or from the same flags as the commit.
    Reveal {
        /// The SQLite file.
        #[arg(long)]
        db: PathBuf,
        /// A file written by `chain commit`.
        #[arg(long, conflicts_with_all = ["hotkey", "weights", "salt"])]
        file: Option<PathBuf>,
        /// Hex, SS58 or a development name (with --weights and --salt).
        #[arg(long, requires_all = ["weights", "salt"])]
        hotkey: Option<String>,
        /// The committed `uid:weight` pairs.
        #[arg(long)]
        weights: Option<String>,
        /// The committed salt, comma-separated u16.
        #[arg(long)]
        salt: Option<String>,
        /// The committed version key.
        #[arg(long, default_value_t = 0)]
        version_key: u64,
    },
    /// List unrevealed commits with their reveal epochs.
    Commits {
        /// The SQLite file.
        #[arg(long)]
        db: PathBuf,
        /// Only this hotkey's commits.
        #[arg(long)]
        hotkey: Option<String>,
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

/// `gradients chain commit`.
fn commit(
    db: &Path,
    h: &str,
    weights: &str,
    salt: Option<&str>,
    version_key: u64,
    out: Option<PathBuf>,
    print: bool,
) -> anyhow::Result<()> {
    let mut chain = open(db)?;
    let hk = hotkey(h)?;
    let (uids, values) = quantize_u16(&parse_weights(weights)?)?;
    if uids.is_empty() {
        bail!("--weights: every weight is zero: nothing to commit");
    }
    let salt = match salt {
        Some(s) => parse_salt(s)?,
        None => random_salt(),
    };
    let p = chain.commit(&hk, &uids, &values, &salt, version_key)?;
    let from = chain.epoch_start_block(p.reveal_epoch)?;
    let tempo = chain.params().tempo;
    let block = chain.current_block()?;
    for r in chain.advance_blocks(1)? {
        print_epoch(&r);
    }
    println!(
        "committed {} for {hk} at block {block} (epoch {}): uids {uids:?} values {values:?}",
        p.hash, p.commit_epoch
    );
    println!(
        "reveal in epoch {} (blocks {from}..{}, until the epoch after it runs)",
        p.reveal_epoch,
        from + tempo
    );
    if print {
        println!("{}", serde_json::to_string(&p)?);
        println!("(not saved: keep the salt above to reveal)");
    } else {
        let path = out.unwrap_or_else(|| {
            PathBuf::from(format!("{}.commit-{}.json", db.display(), &p.hash[..16]))
        });
        p.save(&path)
            .with_context(|| format!("saving the reveal (commit {} is on chain)", p.hash))?;
        println!(
            "saved the reveal to {}; run: gradients chain reveal --db {} --file {}",
            path.display(),
            db.display(),
            path.display()
        );
    }
    Ok(())
}

/// `gradients chain reveal`: the chain's refusals, explained.
fn reveal(chain: &mut LocalChain, p: &PendingReveal) -> anyhow::Result<()> {
    let block = chain.current_block()?;
    let epoch = chain.epoch_index()?;
    match chain.reveal(p) {
        Ok(()) => {}
        Err(e) => {
            let why = match e.reason() {
                Some(Reject::RevealTooEarly) => {
                    let (ep, _) = chain_commit_epoch(chain, p)?;
                    let due = ep + chain.params().reveal_period;
                    let from = chain.epoch_start_block(due)?;
                    format!(
                        "too early: now epoch {epoch} at block {block}; the reveal epoch is {due}, \
                         which starts at block {from} (advance {} blocks)",
                        from.saturating_sub(block)
                    )
                }
                Some(Reject::ExpiredWeightCommit) => format!(
                    "too late: the commit's reveal epoch has passed (now epoch {epoch}); \
                     commit again"
                ),
                Some(Reject::InvalidRevealCommitHashNotMatch) => format!(
                    "hash mismatch: no pending commit of {} has hash {} (wrong weights, salt \
                     or version key?)",
                    p.hotkey, p.hash
                ),
                Some(Reject::NoWeightsCommitFound) => format!(
                    "nothing pending: {} has no unrevealed commit (revealed already, expired, \
                     or never committed)",
                    p.hotkey
                ),
                _ => String::new(),
            };
            let err = anyhow::anyhow!("{e}");
            return Err(if why.is_empty() {
                err
            } else {
                err.context(format!("reveal: {why}"))
            });
        }
    }
    for r in chain.advance_blocks(1)? {
        print_epoch(&r);
    }
    println!(
        "revealed {} at block {block} (epoch {epoch}): uids {:?} values {:?}; the next \
         epoch uses them",
        p.hash, p.uids, p.values
    );
    Ok(())
}

/// The commit epoch of the pending commit matching `p` (and its block).
fn chain_commit_epoch(chain: &LocalChain, p: &PendingReveal) -> anyhow::Result<(u64, u64)> {
    let hash = hex::decode(&p.hash).context("commit hash")?;
    chain
        .pending_commits(&p.account()?)?
        .into_iter()
        .find(|(h, _, _)| h[..] == hash[..])
        .map(|(_, e, b)| (e, b))
        .context("the commit is no longer pending")
}

/// `gradients chain commits`.
fn list_commits(chain: &LocalChain, only: Option<&AccountId>) -> anyhow::Result<()> {
    let epoch = chain.epoch_index()?;
    let period = chain.params().reveal_period;
    let all: Vec<_> = chain
        .all_pending_commits()?
        .into_iter()
        .filter(|c| only.is_none_or(|k| *k == c.hotkey))
        .collect();
    println!(
        "epoch {epoch}, block {}, reveal period {period} epoch(s): {} pending commit(s)",
        chain.current_block()?,
        all.len()
    );
    if all.is_empty() {
        return Ok(());
    }
    println!(
        "{:>4}  {:<48}  {:<64}  {:>12}  {:>12}  {:>12}  status",
        "uid", "hotkey", "hash", "commit_block", "commit_epoch", "reveal_epoch"
    );
    for c in all {
        let (hk, e, b) = (c.hotkey, c.commit_epoch, c.commit_block);
        let due = e + period;
        let status = match epoch.cmp(&due) {
            std::cmp::Ordering::Less => "waiting",
            std::cmp::Ordering::Equal => "revealable now",
            std::cmp::Ordering::Greater => "expired",
        };
        let uid = chain
            .uid_of(&hk)?
            .map_or_else(|| "-".to_string(), |u| u.to_string());
        println!(
            "{uid:>4}  {:<48}  {:<64}  {b:>12}  {e:>12}  {due:>12}  {status}",
            hk.to_ss58(),
            hex::encode(c.hash)
        );
    }
    Ok(())
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
            reveal_period,
            weights_rate_limit,
        } => {
            let from_file = match &params {
                Some(f) => {
                    let text = std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?;
                    Some(
                        serde_json::from_str::<ChainParams>(&text)
                            .with_context(|| format!("{}: chain parameters", f.display()))?,
                    )
                }
                None => None,
            };
            let overrides = |mut p: ChainParams| {
                if let Some(t) = tempo {
                    p.tempo = t;
                }
                p.commit_reveal |= commit_reveal;
                if let Some(r) = reveal_period {
                    p.reveal_period = r;
                }
                if let Some(r) = weights_rate_limit {
                    p.weights_rate_limit = r;
                }
                p
            };
            let new = overrides(from_file.clone().unwrap_or_default());
            let mut chain = LocalChain::open_with(&db, &new)
                .with_context(|| format!("creating chain in {}", db.display()))?;
            // An existing chain keeps its parameters unless flags change them (the owner's
            // hyperparameter calls): e.g. `--commit-reveal` on a tournament's database.
            let flags = from_file.is_some()
                || tempo.is_some()
                || commit_reveal
                || reveal_period.is_some()
                || weights_rate_limit.is_some();
            let want = overrides(from_file.unwrap_or_else(|| chain.params().clone()));
            if flags && chain.params() != &want {
                chain
                    .set_params(want)
                    .with_context(|| format!("updating the chain in {}", db.display()))?;
                println!("updated the parameters of the existing chain:");
            }
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
        Cmd::Commit {
            db,
            hotkey: h,
            weights,
            salt,
            version_key,
            out,
            print,
        } => commit(&db, &h, &weights, salt.as_deref(), version_key, out, print)?,
        Cmd::Reveal {
            db,
            file,
            hotkey: h,
            weights,
            salt,
            version_key,
        } => {
            let mut chain = open(&db)?;
            let p = match (file, h, weights, salt) {
                (Some(f), ..) => PendingReveal::load(&f)?,
                (None, Some(h), Some(w), Some(s)) => {
                    let hk = hotkey(&h)?;
                    let (uids, values) = quantize_u16(&parse_weights(&w)?)?;
                    let salt = parse_salt(&s)?;
                    let netuid = chain.params().netuid;
                    PendingReveal {
                        hotkey: hk.to_hex(),
                        netuid,
                        hash: hex::encode(commit_hash(
                            &hk,
                            netuid,
                            &uids,
                            &values,
                            &salt,
                            version_key,
                        )),
                        uids,
                        values,
                        salt,
                        version_key,
                        commit_epoch: 0,
                        reveal_epoch: 0,
                        commit_block: 0,
                    }
                }
                _ => bail!("reveal: give --file, or --hotkey with --weights and --salt"),
            };
            reveal(&mut chain, &p)?;
        }
        Cmd::Commits { db, hotkey: h } => {
            let chain = open(&db)?;
            let only = h.as_deref().map(hotkey).transpose()?;
            list_commits(&chain, only.as_ref())?;
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
