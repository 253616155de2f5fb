//! Bytes the chain agrees on: hotkeys as 32-byte AccountIds (hex and SS58, prefix 42), the
//! hand-written SCALE encoding of the commit-reveal v2 payload and its blake2_256 hash
//! (SPEC §6), as subtensor's `get_commit_hash` computes
//! `BlakeTwo256::hash_of(&(hotkey, netuid, uids, values, salt, version_key))`.
//!
//! SCALE: fixed-width integers little endian; a `Vec<T>` is a compact length prefix then
//! its items; an AccountId32 is its 32 raw bytes. Compact integers: `n < 2^6` one byte
//! `n<<2`; `n < 2^14` two bytes `(n<<2)|1`; `n < 2^30` four bytes `(n<<2)|2`; otherwise a
//! byte `((len−4)<<2)|3` then the `len` minimal little-endian bytes.
//! The test vectors come from tools/commit_hash_vector.py (Python hashlib over bytes built
//! by hand), so this file and that script check each other.
//!
//! Neighbours: chain/local/weights.rs stores and verifies commits with [`commit_hash`].

use std::fmt;

use blake2::{Blake2b256, Blake2b512, Digest};

use super::ChainError;

/// SS58 address-format prefix of the generic Substrate / Bittensor network.
pub const SS58_PREFIX: u8 = 42;

/// A 32-byte account id (a hotkey's sr25519 public key on the real chain).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId(pub [u8; 32]);

impl AccountId {
    /// A deterministic development key from a name: `blake2_256(name)` (like a dev seed;
    /// there is no private key behind it).
    pub fn from_name(name: &str) -> AccountId {
        AccountId(blake2_256(name.as_bytes()))
    }

    /// Parse 64 hex digits (optionally `0x`-prefixed) or an SS58 address.
    pub fn parse(s: &str) -> Result<AccountId, ChainError> {
        let t = s.strip_prefix("0x").unwrap_or(s);
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut out = [0u8; 32];
            hex::decode_to_slice(t, &mut out)
                .map_err(|e| ChainError::input("hotkey", format!("`{s}`: {e}")))?;
            return Ok(AccountId(out));
        }
        from_ss58(s)
    }

    /// Lowercase hex of the 32 bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// SS58 address with prefix 42 (`5…`).
    pub fn to_ss58(&self) -> String {
        let mut data = Vec::with_capacity(35);
        data.push(SS58_PREFIX);
        data.extend_from_slice(&self.0);
        let sum = ss58_checksum(&data);
        data.extend_from_slice(&sum[..2]);
        base58_encode(&data)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", self.to_ss58())
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_ss58())
    }
}

/// blake2b with a 32-byte digest (Substrate's `blake2_256` / `BlakeTwo256`).
pub fn blake2_256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Blake2b256::digest(bytes));
    out
}

fn ss58_checksum(data: &[u8]) -> [u8; 64] {
    let mut h = Blake2b512::new();
    h.update(b"SS58PRE");
    h.update(data);
    let mut out = [0u8; 64];
    out.copy_from_slice(&h.finalize());
    out
}

const B58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

fn base58_encode(bytes: &[u8]) -> String {
    // Repeated division of the big-endian number by 58, digits little endian.
    let mut digits: Vec<u8> = Vec::with_capacity(bytes.len() * 138 / 100 + 1);
    for &b in bytes {
        let mut carry = u32::from(b);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    let mut s = String::with_capacity(zeros + digits.len());
    s.extend(std::iter::repeat_n('1', zeros));
    s.extend(digits.iter().rev().map(|&d| B58[d as usize] as char));
    s
}

fn base58_decode(s: &str) -> Option<Vec<u8>> {
    let mut bytes: Vec<u8> = Vec::new(); // little endian
    for c in s.bytes() {
        let mut carry = B58.iter().position(|&x| x == c)? as u32;
        for b in bytes.iter_mut() {
            carry += u32::from(*b) * 58;
            *b = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let zeros = s.bytes().take_while(|&c| c == b'1').count();
    bytes.extend(std::iter::repeat_n(0, zeros));
    bytes.reverse();
    Some(bytes)
}

fn from_ss58(s: &str) -> Result<AccountId, ChainError> {
    let bad = |msg: &str| ChainError::input("hotkey", format!("`{s}`: {msg}"));
    let data = base58_decode(s).ok_or_else(|| bad("neither 64 hex digits nor base58"))?;
    if data.len() != 35 {
        return Err(bad("not a 32-byte SS58 address"));
    }
    if data[0] != SS58_PREFIX {
        return Err(bad(&format!(
            "SS58 prefix {} (expected {SS58_PREFIX})",
            data[0]
        )));
    }
    if ss58_checksum(&data[..33])[..2] != data[33..] {
        return Err(bad("SS58 checksum mismatch"));
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&data[1..33]);
    Ok(AccountId(out))
}

/// Append the SCALE compact encoding of `n`.
pub fn encode_compact(n: u64, out: &mut Vec<u8>) {
    if n < 1 << 6 {
        out.push((n as u8) << 2);
    } else if n < 1 << 14 {
        out.extend_from_slice(&(((n as u16) << 2) | 1).to_le_bytes());
    } else if n < 1 << 30 {
        out.extend_from_slice(&(((n as u32) << 2) | 2).to_le_bytes());
    } else {
        let raw = n.to_le_bytes();
        let len = 8 - (n.leading_zeros() as usize / 8);
        out.push((((len - 4) as u8) << 2) | 3);
        out.extend_from_slice(&raw[..len]);
    }
}

/// Append a SCALE `Vec<u16>`: compact length, then each value little endian.
pub fn encode_vec_u16(v: &[u16], out: &mut Vec<u8>) {
    encode_compact(v.len() as u64, out);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// SCALE bytes of `(AccountId32, u16, Vec<u16>, Vec<u16>, Vec<u16>, u64)`.
pub fn commit_payload(
    hotkey: &AccountId,
    netuid: u16,
    uids: &[u16],
    values: &[u16],
    salt: &[u16],
    version_key: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + 2 + 3 * 5 + 2 * (uids.len() * 2 + salt.len()) + 8);
    out.extend_from_slice(&hotkey.0);
    out.extend_from_slice(&netuid.to_le_bytes());
    encode_vec_u16(uids, &mut out);
    encode_vec_u16(values, &mut out);
    encode_vec_u16(salt, &mut out);
    out.extend_from_slice(&version_key.to_le_bytes());
    out
}

/// The commit-reveal v2 hash: `blake2_256(SCALE(hotkey, netuid, uids, values, salt, version_key))`.
pub fn commit_hash(
    hotkey: &AccountId,
    netuid: u16,
    uids: &[u16],
    values: &[u16],
    salt: &[u16],
    version_key: u64,
) -> [u8; 32] {
    blake2_256(&commit_payload(
        hotkey,
        netuid,
        uids,
        values,
        salt,
        version_key,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Both vectors: tools/commit_hash_vector.py (hashlib.blake2b(digest_size=32) over bytes
    // built with struct.pack).
    const SMALL_PAYLOAD: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f38000c0000010002000cffff0080010020010002000300040005000600070008000807060504030201";
    const SMALL_HASH: &str = "3c394271016ff1bdd50f9cf2de0bfc8cc643e63c8a180ba1490de8ba683b591f";
    const TWO_BYTE_LEN_HASH: &str =
        "784dda103971730b0fa9b8ed8dda74d47243794272a8a11f7cae6f001c238364";

    #[test]
    fn commit_payload_and_hash_match_the_python_vector() {
        let hk = AccountId(std::array::from_fn(|i| i as u8));
        let p = commit_payload(
            &hk,
            56,
            &[0, 1, 2],
            &[65535, 32768, 1],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            0x0102030405060708,
        );
        assert_eq!(hex::encode(&p), SMALL_PAYLOAD);
        let h = commit_hash(
            &hk,
            56,
            &[0, 1, 2],
            &[65535, 32768, 1],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            0x0102030405060708,
        );
        assert_eq!(hex::encode(h), SMALL_HASH);
        // Any change of a field changes the hash.
        let h2 = commit_hash(
            &hk,
            56,
            &[0, 1, 2],
            &[65535, 32768, 2],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            0x0102030405060708,
        );
        assert_ne!(h, h2);
    }

    #[test]
    fn two_byte_compact_length_matches_the_python_vector() {
        let hk = AccountId([0xAB; 32]);
        let uids: Vec<u16> = (0..70).collect();
        let values: Vec<u16> = (0..70u32).map(|i| ((7 * i + 3) % 65536) as u16).collect();
        let p = commit_payload(&hk, 1, &uids, &values, &[], 0);
        assert_eq!(&p[34..36], &[0x19, 0x01]); // (70<<2)|1 little endian
        assert_eq!(hex::encode(blake2_256(&p)), TWO_BYTE_LEN_HASH);
    }

    #[test]
    fn compact_modes() {
        let enc = |n: u64| {
            let mut v = Vec::new();
            encode_compact(n, &mut v);
            v
        };
        assert_eq!(enc(0), vec![0x00]);
        assert_eq!(enc(63), vec![0xfc]);
        assert_eq!(enc(64), vec![0x01, 0x01]);
        assert_eq!(enc(16383), vec![0xfd, 0xff]);
        assert_eq!(enc(16384), vec![0x02, 0x00, 0x01, 0x00]);
        assert_eq!(enc((1 << 30) - 1), vec![0xfe, 0xff, 0xff, 0xff]);
        assert_eq!(enc(1 << 30), vec![0x03, 0x00, 0x00, 0x00, 0x40]);
        assert_eq!(enc(u64::MAX), [vec![0x13], vec![0xff; 8]].concat());
    }

    #[test]
    fn ss58_of_the_well_known_dev_key_alice() {
        // Substrate's //Alice sr25519 public key and its generic (prefix 42) address.
        let alice =
            AccountId::parse("d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d")
                .unwrap();
        assert_eq!(
            alice.to_ss58(),
            "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
        );
        assert_eq!(AccountId::parse(&alice.to_ss58()).unwrap(), alice);
        // A flipped character fails the checksum.
        assert!(AccountId::parse("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQZ").is_err());
        assert!(AccountId::parse("not a key").is_err());
    }
}
