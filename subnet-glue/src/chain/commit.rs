//! Commit-reveal v2 from the validator's side: make a commit and keep what its reveal needs
//! ([`PendingReveal`], saved as JSON via temp + rename so a crash never leaves half a
//! file), reveal it later, and "set or commit according to the chain's settings"
//! ([`submit_weights`], [`weights_into_epoch`]) for callers that should not care whether
//! the subnet runs commit-reveal.
//!
//! A commit is `blake2_256(SCALE(hotkey, netuid, uids, values, salt, version_key))`
//! (scale.rs); the chain (local/weights.rs) keeps only the hash, tagged with the epoch counter, and
//! takes the reveal only in epoch `commit_epoch + reveal_period`. The salt is 8 random u16
//! (as the Bittensor SDK draws it), or given by the caller for reproducible commits.
//!
//! The validator keeps each reveal in the same file (table `chain_saved_reveals`, created
//! with the chain's tables in local/) from just before its commit until it is revealed.
//!
//! Neighbours: local/weights.rs (commit_weights/reveal_weights checks), cli_chain.rs (`gradients
//! chain commit|reveal|commits`), tournament/settle.rs (a tournament's weights).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::path::Path;

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::scale::{blake2_256, commit_hash, AccountId};
use super::{Chain, ChainError, EpochRecord, LocalChain, Result};

/// Number of u16 in a random salt (the SDK's `get_random_bytes(8)` as u16s).
pub const SALT_LEN: usize = 8;

/// Everything a reveal needs, as saved at commit time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingReveal {
    /// The committing hotkey, 64 hex digits.
    pub hotkey: String,
    /// The subnet.
    pub netuid: u16,
    /// Target uids.
    pub uids: Vec<u16>,
    /// Their u16 weights.
    pub values: Vec<u16>,
    /// The salt.
    pub salt: Vec<u16>,
    /// The version key.
    pub version_key: u64,
    /// The commit hash, 64 hex digits.
    pub hash: String,
    /// The epoch counter when committed.
    pub commit_epoch: u64,
    /// The only epoch in which the reveal is taken.
    pub reveal_epoch: u64,
    /// The block of the commit.
    pub commit_block: u64,
}

impl PendingReveal {
    /// The hotkey as an account.
    pub fn account(&self) -> Result<AccountId> {
        AccountId::parse(&self.hotkey)
    }

    /// The commit hash as bytes.
    pub fn hash_bytes(&self) -> Result<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.hash, &mut out)
            .map_err(|e| ChainError::input("hash", format!("`{}`: {e}", self.hash)))?;
        Ok(out)
    }

    /// Write as pretty JSON to `path` atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| ChainError::input(path.display().to_string(), e.to_string()))?;
        gradients_engine::io::write_atomic(path, json.as_bytes())
            .map_err(|e| ChainError::input(path.display().to_string(), e.to_string()))
    }

    /// Read a saved reveal, checking that its hash is the hash of its own contents (a
    /// hand-edited or corrupt file is refused here, naming the field).
    pub fn load(path: &Path) -> Result<PendingReveal> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ChainError::input(&name, format!("reading the reveal file: {e}")))?;
        let p: PendingReveal = serde_json::from_str(&text)
            .map_err(|e| ChainError::input(&name, format!("not a reveal file: {e}")))?;
        let hk = p
            .account()
            .map_err(|e| ChainError::input(format!("{name}: hotkey"), e.to_string()))?;
        let want = commit_hash(&hk, p.netuid, &p.uids, &p.values, &p.salt, p.version_key);
        if hex::encode(want) != p.hash.to_ascii_lowercase() {
            return Err(ChainError::input(
                format!("{name}: hash"),
                format!(
                    "{} is not the hash of the file's hotkey, netuid, uids, values, salt and \
                     version_key ({})",
                    p.hash,
                    hex::encode(want)
                ),
            ));
        }
        Ok(p)
    }
}

/// [`SALT_LEN`] random u16: the OS's random bytes mixed (blake2_256) with the time, the
/// process id and std's per-process random hasher keys, so a missing /dev/urandom still
/// gives an unpredictable salt.
pub fn random_salt() -> Vec<u16> {
    let mut seed = vec![0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut seed);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    seed.extend_from_slice(&now.to_le_bytes());
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    seed.extend_from_slice(&RandomState::new().build_hasher().finish().to_le_bytes());
    let h = blake2_256(&seed);
    h.chunks_exact(2)
        .take(SALT_LEN)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Parse a salt given as comma-separated u16 (`1,2,3,4`); at least one value.
pub fn parse_salt(s: &str) -> Result<Vec<u16>> {
    let salt = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
        .map(|(i, p)| {
            p.parse::<u16>().map_err(|_| {
                ChainError::input(
                    "salt",
                    format!("item {i} `{p}` is not an integer in 0..=65535"),
                )
            })
        })
        .collect::<Result<Vec<u16>>>()?;
    if salt.is_empty() {
        return Err(ChainError::input(
            "salt",
            "empty: give comma-separated u16 values",
        ));
    }
    Ok(salt)
}

impl LocalChain {
    /// What committing `(uids, values)` with `salt` from `hotkey` now would record (hash,
    /// epochs, block), without committing.
    pub fn prepare_commit(
        &self,
        hotkey: &AccountId,
        uids: &[u16],
        values: &[u16],
        salt: &[u16],
        version_key: u64,
    ) -> Result<PendingReveal> {
        let netuid = self.params().netuid;
        let hash = commit_hash(hotkey, netuid, uids, values, salt, version_key);
        let commit_epoch = self.epoch_index()?;
        let commit_block = self.current_block()?;
        Ok(PendingReveal {
            hotkey: hotkey.to_hex(),
            netuid,
            uids: uids.to_vec(),
            values: values.to_vec(),
            salt: salt.to_vec(),
            version_key,
            hash: hex::encode(hash),
            commit_epoch,
            reveal_epoch: commit_epoch + self.params().reveal_period,
            commit_block,
        })
    }

    /// Keep `p` (the validator's side of a commit: what its reveal needs) in the file, so a
    /// process killed between commit and reveal can still reveal (see commit.rs).
    pub fn save_reveal(&mut self, p: &PendingReveal) -> Result<()> {
        let hash = p.hash_bytes()?;
        let hk = p.account()?;
        let json =
            serde_json::to_string(p).map_err(|e| self.store_err(format!("saved reveal: {e}")))?;
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO chain_saved_reveals (hash, hotkey, reveal)
                 VALUES (?1, ?2, ?3)",
                params![&hash[..], &hk.0[..], json],
            )
            .map(|_| ())
        })
    }

    /// The saved reveals of `hotkey`, oldest first.
    pub fn saved_reveals(&self, hotkey: &AccountId) -> Result<Vec<PendingReveal>> {
        let mut st = self
            .conn()
            .prepare("SELECT reveal FROM chain_saved_reveals WHERE hotkey = ?1 ORDER BY rowid")
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map(params![&hotkey.0[..]], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql(e))?
            .collect::<rusqlite::Result<Vec<String>>>()
            .map_err(|e| self.sql(e))?;
        rows.iter()
            .map(|j| {
                serde_json::from_str(j)
                    .map_err(|e| self.store_err(format!("chain_saved_reveals: {e}")))
            })
            .collect()
    }

    /// Forget the saved reveal of commit `hash` (revealed, refused or expired).
    pub fn drop_saved_reveal(&mut self, hash: &[u8; 32]) -> Result<()> {
        let hash = *hash;
        self.write(|tx| {
            tx.execute(
                "DELETE FROM chain_saved_reveals WHERE hash = ?1",
                params![&hash[..]],
            )
            .map(|_| ())
        })
    }

    /// Commit `(uids, values)` with `salt` from `hotkey`; returns what the reveal needs.
    pub fn commit(
        &mut self,
        hotkey: &AccountId,
        uids: &[u16],
        values: &[u16],
        salt: &[u16],
        version_key: u64,
    ) -> Result<PendingReveal> {
        let p = self.prepare_commit(hotkey, uids, values, salt, version_key)?;
        self.commit_weights(hotkey, p.hash_bytes()?)?;
        Ok(p)
    }

    /// Reveal a saved commit (the chain's checks decide: too early, expired, no match).
    pub fn reveal(&mut self, p: &PendingReveal) -> Result<()> {
        if p.netuid != self.params().netuid {
            return Err(ChainError::input(
                "netuid",
                format!(
                    "the commit is for netuid {}, this chain is netuid {}",
                    p.netuid,
                    self.params().netuid
                ),
            ));
        }
        let hk = p.account()?;
        self.reveal_weights(&hk, &p.uids, &p.values, &p.salt, p.version_key)
    }

    /// The first block of epoch counter value `epoch` (the block the epoch before it runs
    /// at), assuming the clock is only moved forward; the current block if it has begun.
    pub fn epoch_start_block(&self, epoch: u64) -> Result<u64> {
        let now = self.epoch_index()?;
        if epoch <= now {
            return self.current_block();
        }
        Ok(self.next_epoch_block()? + (epoch - now - 1) * self.params().tempo)
    }
}

/// What [`submit_weights`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Set directly (commit-reveal off).
    Set,
    /// Committed (commit-reveal on): reveal it in its reveal epoch.
    Committed(PendingReveal),
}

/// Set weights, or commit them with a random salt when the chain runs commit-reveal. The
/// reveal is saved in the file (`chain_saved_reveals`) before the commit, so a process
/// killed after committing can still reveal ([`weights_into_epoch`] picks it up).
pub fn submit_weights(
    chain: &mut LocalChain,
    hotkey: &AccountId,
    uids: &[u16],
    values: &[u16],
    version_key: u64,
) -> Result<Submitted> {
    if !chain.params().commit_reveal {
        chain.set_weights(hotkey, uids, values, version_key)?;
        return Ok(Submitted::Set);
    }
    let p = chain.prepare_commit(hotkey, uids, values, &random_salt(), version_key)?;
    let hash = p.hash_bytes()?;
    chain.save_reveal(&p)?;
    if let Err(e) = chain.commit_weights(hotkey, hash) {
        chain.drop_saved_reveal(&hash)?;
        return Err(e);
    }
    Ok(Submitted::Committed(p))
}

/// A saved reveal of exactly these weights whose commit is still live, if any.
fn resumable(
    chain: &LocalChain,
    hotkey: &AccountId,
    uids: &[u16],
    values: &[u16],
    version_key: u64,
) -> Result<Option<PendingReveal>> {
    let epoch = chain.epoch_index()?;
    let period = chain.params().reveal_period;
    let live: Vec<[u8; 32]> = chain
        .pending_commits(hotkey)?
        .into_iter()
        .filter(|(_, e, _)| epoch <= e + period)
        .map(|(h, _, _)| h)
        .collect();
    for p in chain.saved_reveals(hotkey)? {
        let same = p.uids == uids && p.values == values && p.version_key == version_key;
        if same && live.contains(&p.hash_bytes()?) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Put weights on the chain and run the first epoch that uses them: set them and run the
/// next epoch, or (commit-reveal) commit, run epochs up to the reveal epoch, reveal, and run
/// the next epoch. Returns that epoch. A live commit of the same weights whose reveal was
/// saved by an earlier, interrupted call is revealed instead of committing again. Saved
/// reveals whose commits the chain no longer holds are dropped afterwards. The chain's
/// refusals come back unchanged (so a caller can treat `SettingWeightsTooFast` /
/// `CommittingWeightsTooFast` as "already set").
pub fn weights_into_epoch(
    chain: &mut LocalChain,
    hotkey: &AccountId,
    uids: &[u16],
    values: &[u16],
    version_key: u64,
) -> Result<EpochRecord> {
    let pending = if !chain.params().commit_reveal {
        chain.set_weights(hotkey, uids, values, version_key)?;
        None
    } else if let Some(p) = resumable(chain, hotkey, uids, values, version_key)? {
        Some(p)
    } else {
        match submit_weights(chain, hotkey, uids, values, version_key)? {
            Submitted::Committed(p) => Some(p),
            Submitted::Set => None,
        }
    };
    if let Some(p) = pending {
        while chain.epoch_index()? < p.reveal_epoch {
            chain.run_next_epoch()?;
        }
        chain.reveal(&p)?;
        let held: Vec<[u8; 32]> = chain
            .pending_commits(hotkey)?
            .into_iter()
            .map(|c| c.0)
            .collect();
        for s in chain.saved_reveals(hotkey)? {
            let h = s.hash_bytes()?;
            if !held.contains(&h) {
                chain.drop_saved_reveal(&h)?;
            }
        }
    }
    chain.run_next_epoch()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salts_are_random_and_parse_checks_items() {
        let (a, b) = (random_salt(), random_salt());
        assert_eq!(a.len(), SALT_LEN);
        assert_ne!(a, b, "two salts drawn in a row differ");
        assert_eq!(parse_salt("1, 2,65535").unwrap(), vec![1, 2, 65535]);
        let e = parse_salt("1,70000").unwrap_err().to_string();
        assert!(e.contains("salt") && e.contains("item 1"), "{e}");
        assert!(parse_salt(" , ").is_err());
    }

    #[test]
    fn reveal_file_round_trips_and_refuses_edits() {
        let dir = tempfile::tempdir().unwrap();
        let hk = AccountId::from_name("v");
        let p = PendingReveal {
            hotkey: hk.to_hex(),
            netuid: 56,
            uids: vec![1, 2],
            values: vec![65535, 100],
            salt: vec![9, 8, 7],
            version_key: 3,
            hash: hex::encode(commit_hash(&hk, 56, &[1, 2], &[65535, 100], &[9, 8, 7], 3)),
            commit_epoch: 4,
            reveal_epoch: 5,
            commit_block: 44,
        };
        let f = dir.path().join("r.json");
        p.save(&f).unwrap();
        assert_eq!(PendingReveal::load(&f).unwrap(), p);
        let edited = std::fs::read_to_string(&f).unwrap().replace("100", "101");
        std::fs::write(&f, edited).unwrap();
        let e = PendingReveal::load(&f).unwrap_err().to_string();
        assert!(e.contains("hash"), "{e}");
        assert!(PendingReveal::load(&dir.path().join("none.json")).is_err());
    }
}
