#!/usr/bin/env python3
"""Independent vectors for the commit-reveal v2 hash (SPEC §6), checked by
subnet-glue/src/chain/scale.rs tests.

commit = blake2_256(SCALE(AccountId32 hotkey, u16 netuid, Vec<u16> uids, Vec<u16> values,
                          Vec<u16> salt, u64 version_key))

The SCALE bytes are built by hand here (struct.pack little endian, compact length prefix
written out per mode) and hashed with hashlib.blake2b(digest_size=32): no substrate library.
Run: python3 tools/commit_hash_vector.py   (prints the payload hex and the hash per case)
"""
import hashlib
import struct


def compact(n):
    if n < 1 << 6:
        return bytes([n << 2])
    if n < 1 << 14:
        return struct.pack("<H", (n << 2) | 1)
    if n < 1 << 30:
        return struct.pack("<I", (n << 2) | 2)
    raw = n.to_bytes((n.bit_length() + 7) // 8, "little")
    return bytes([((len(raw) - 4) << 2) | 3]) + raw


def vec_u16(v):
    return compact(len(v)) + b"".join(struct.pack("<H", x) for x in v)


def payload(hotkey, netuid, uids, values, salt, version_key):
    assert len(hotkey) == 32
    return (
        hotkey
        + struct.pack("<H", netuid)
        + vec_u16(uids)
        + vec_u16(values)
        + vec_u16(salt)
        + struct.pack("<Q", version_key)
    )


CASES = [
    # name, hotkey, netuid, uids, values, salt, version_key
    ("small", bytes(range(32)), 56, [0, 1, 2], [65535, 32768, 1], [1, 2, 3, 4, 5, 6, 7, 8],
     0x0102030405060708),
    ("two_byte_len", bytes([0xAB] * 32), 1, list(range(70)), [(7 * i + 3) % 65536 for i in range(70)],
     [], 0),
]

for name, hk, netuid, uids, values, salt, vk in CASES:
    p = payload(hk, netuid, uids, values, salt, vk)
    h = hashlib.blake2b(p, digest_size=32).hexdigest()
    print(f"{name}: payload {p.hex()}")
    print(f"{name}: hash {h}")
