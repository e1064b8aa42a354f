"""Tributary's commitments written again from their documentation, independently of the Rust
code: record ids (BLAKE3 of the canonical encoding in engine/src/datanet/record.rs) and the
OpenZeppelin StandardMerkleTree root over bytes32 values."""

import struct
from datetime import datetime

import blake3
from eth_utils import keccak

TAGS = {"string": 1, "int64": 2, "float64": 3, "bool": 4, "timestamp": 5, "list<string>": 6}


def _string(s):
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def _timestamp_micros(v):
    if isinstance(v, int):
        return v
    t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    return int(t.timestamp()) * 1_000_000 + t.microsecond


def record_id(schema, row):
    out = b"tributary/record/v1\x00"
    for field in schema["fields"]:
        value = row.get(field["name"])
        if value is None:
            continue
        kind = field["type"]
        out += _string(field["name"]) + bytes([TAGS[kind]])
        if kind == "string":
            out += _string(value)
        elif kind == "int64":
            out += struct.pack("<q", value)
        elif kind == "float64":
            out += struct.pack("<d", float(value) + 0.0)
        elif kind == "bool":
            out += bytes([1 if value else 0])
        elif kind == "timestamp":
            out += struct.pack("<q", _timestamp_micros(value))
        elif kind == "list<string>":
            out += struct.pack("<I", len(value)) + b"".join(_string(s) for s in value)
    return blake3.blake3(out).digest()


def _hash_pair(a, b):
    return keccak(min(a, b) + max(a, b))


def leaf(value32):
    return keccak(keccak(value32))


def merkle_root(values32):
    """StandardMerkleTree.of(values.map(v => [v]), ["bytes32"]).root, without the library."""
    leaves = sorted(leaf(v) for v in values32)
    if not leaves:
        return b"\x00" * 32
    tree = [None] * (2 * len(leaves) - 1)
    for i, h in enumerate(leaves):
        tree[len(tree) - 1 - i] = h
    for i in range(len(tree) - len(leaves) - 1, -1, -1):
        tree[i] = _hash_pair(tree[2 * i + 1], tree[2 * i + 2])
    return tree[0]
