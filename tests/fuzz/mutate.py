# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Mutators for fuzzing: raw bytes (truncation, bit flips, garbage blocks, random bytes), tar members
(missing, extra, duplicated, renamed, out of order), JSON documents (torn, or edited at a random node)
and pickled metadata (edited, or asking for classes it must not get). Each takes the good bytes and a
seeded `random.Random` and returns (new bytes, a short description), so example i of a fuzz run is
reproducible from (seed, target, i)."""

from __future__ import annotations

import io
import json
import pickle
import random
import tarfile
from collections.abc import Callable
from typing import Any

Mutator = Callable[[bytes, random.Random], tuple[bytes, str]]


def _span(n: int, rng: random.Random, most: int = 4096) -> tuple[int, int]:
    start = rng.randrange(max(n, 1))
    return start, min(n, start + rng.randint(1, most))


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randrange(len(data)) if data else 0
    return data[:at], f"truncated at {at} of {len(data)}"


def bit_flips(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """1-8 bits flipped, mostly mid-stream (past the header), sometimes anywhere."""
    if not data:
        return data, "empty"
    buf = bytearray(data)
    lo = 0 if rng.random() < 0.3 else len(buf) // 4
    at = sorted(rng.randrange(lo, len(buf)) for _ in range(rng.randint(1, 8)))
    for i in at:
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf), f"bits flipped at {at}"


def garbage_block(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    a, b = _span(len(data), rng)
    return data[:a] + rng.randbytes(b - a) + data[b:], f"garbage over [{a}, {b})"


def insert_block(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at, n = rng.randrange(len(data) + 1), rng.randint(1, 2048)
    return data[:at] + rng.randbytes(n) + data[at:], f"{n} random bytes inserted at {at}"


def delete_block(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    a, b = _span(len(data), rng)
    return data[:a] + data[b:], f"bytes [{a}, {b}) deleted"


def duplicate_block(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    a, b = _span(len(data), rng)
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[a:b] + data[at:], f"bytes [{a}, {b}) copied to {at}"


def random_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = rng.choice([0, 1, 16, 512, rng.randint(0, 64 * 1024)])
    head = data[:rng.choice([0, 4, 8, 64])] if rng.random() < 0.5 else b""  # keep the magic sometimes
    return head + rng.randbytes(n), f"{len(head)} good header bytes + {n} random bytes"


BYTES: tuple[Mutator, ...] = (truncate, bit_flips, garbage_block, insert_block, delete_block, duplicate_block,
                              random_bytes)


def any_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    return rng.choice(BYTES)(data, rng)


# --- tar shards -------------------------------------------------------------------------------------------

def _members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]  # type: ignore[union-attr]


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), 0, 0o444
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def tar_members(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A structural edit of a shard: a member missing, extra, duplicated, renamed, swapped or out of order."""
    ms = _members(data)
    keys = list(dict.fromkeys(n.partition(".")[0] for n, _ in ms))
    i = rng.randrange(len(ms))
    name, payload = ms[i]
    key, _, member = name.partition(".")
    op = rng.choice(["drop", "extra", "extra-known", "duplicate", "rename-key", "bad-key", "swap-samples",
                     "move-member", "swap-payload", "drop-sample", "non-file"])
    if op == "drop":
        del ms[i]
    elif op == "extra":
        ms.insert(i, (f"{key}.{rng.choice(['txt', 'npy', 'jpg', 'road.npy'])}", rng.randbytes(32)))
    elif op == "extra-known":  # a member of another sample's name appended at the end
        ms.append((f"{keys[-1][:-5]}c99999.{member}", payload))
    elif op == "duplicate":
        ms.insert(i + 1, (name, payload))
    elif op == "rename-key":
        ms[i] = (f"{keys[(keys.index(key) + 1) % len(keys)]}.{member}", payload)
    elif op == "bad-key":
        ms[i] = (rng.choice(["../evil", "a.b.c", "", "/abs", "k" * 200]) + f".{member}", payload)
    elif op == "swap-samples" and len(keys) > 1:  # keys out of order
        a, b = rng.sample(keys, 2)
        order = {k: k for k in keys} | {a: b, b: a}
        ms = sorted(ms, key=lambda m: keys.index(order[m[0].partition(".")[0]]))
    elif op == "move-member":  # one member after the next sample: a sample split in two
        ms.append(ms.pop(i))
    elif op == "swap-payload":
        j = rng.randrange(len(ms))
        ms[i], ms[j] = (ms[i][0], ms[j][1]), (ms[j][0], ms[i][1])
    elif op == "drop-sample":
        ms = [m for m in ms if not m[0].startswith(key + ".")]
    elif op == "non-file":
        buf = io.BytesIO(_tar(ms))
        out = io.BytesIO()
        with tarfile.open(fileobj=buf) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as dst:
            for m in src:
                dst.addfile(m, src.extractfile(m))
            link = tarfile.TarInfo(f"{key}.meta.json")
            link.type, link.linkname = rng.choice([tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE]), "/etc/passwd"
            dst.addfile(link)
        return out.getvalue(), "a link or folder member added"
    return _tar(ms), f"tar: {op} at member {name}"


def shard(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    return (tar_members if rng.random() < 0.4 else any_bytes)(data, rng)


# --- JSON -------------------------------------------------------------------------------------------------

_ODD_VALUES: tuple[Any, ...] = (None, True, 0, -1, 1.5, 10**30, float("nan"), "", "x", "../escape", [], {}, [1, 2],
                                {"a": 1})


def _nodes(obj: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _nodes(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _nodes(v, (*path, i))
    return out


def edit_json(obj: Any, rng: random.Random) -> tuple[Any, str]:
    """A copy of a JSON value with one node deleted, replaced by an odd value, or its list changed."""
    obj = json.loads(json.dumps(obj))
    path = rng.choice(_nodes(obj)[1:] or [()])
    if not path:
        return rng.choice(_ODD_VALUES), "document replaced"
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    op = rng.choice(["delete", "replace", "replace", "grow", "empty"])
    if op == "delete":
        del parent[last]
    elif op == "grow" and isinstance(parent, list):
        parent.append(parent[last])
    elif op == "empty" and isinstance(parent[last], list | dict):
        parent[last] = type(parent[last])()
    else:
        op = "replace"
        parent[last] = rng.choice(_ODD_VALUES)
    return obj, f"json: {op} at {'/'.join(map(str, path))}"


def json_doc(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Torn (truncated, bytes changed) or edited JSON."""
    if rng.random() < 0.3:
        return any_bytes(data, rng)
    obj, what = edit_json(json.loads(data), rng)
    return json.dumps(obj, indent=rng.choice([None, 1])).encode(), what


# --- pickled metadata -------------------------------------------------------------------------------------

class _Evil:
    """Pickles to a call of `func(*args)`: what a hostile metadata file would ask the unpickler for."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def evil_pickles(marker: str) -> list[tuple[bytes, str]]:
    """Pickles that must be refused: code execution (would create `marker`) and a memory bomb."""
    import builtins
    import os
    import subprocess

    return [
        (pickle.dumps({"output_slices": _Evil(os.system, f"touch {marker}")}), "os.system"),
        (pickle.dumps({"output_slices": _Evil(subprocess.call, ["touch", marker])}), "subprocess.call"),
        (pickle.dumps({"output_slices": _Evil(builtins.eval, f"open({marker!r}, 'w')")}), "builtins.eval"),
        (pickle.dumps({"output_slices": _Evil(builtins.exec, f"open({marker!r}, 'w')")}), "builtins.exec"),
        (pickle.dumps({"output_slices": _Evil(builtins.__import__, "os")}), "builtins.__import__"),
        (pickle.dumps({"output_slices": _Evil(builtins.bytes, 1 << 40)}, protocol=2), "bytes(1 TiB) bomb"),
        (pickle.dumps({"output_slices": _Evil(builtins.bytearray, 1 << 40)}), "bytearray(1 TiB) bomb"),
    ]


def pickle_doc(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Changed bytes, or the metadata unpickled, edited like JSON (slices as [start, stop]) and re-pickled."""
    if rng.random() < 0.5:
        return any_bytes(data, rng)
    meta = pickle.loads(data)
    plain = json.loads(json.dumps(meta, default=lambda s: [s.start, s.stop] if isinstance(s, slice) else str(s)))
    edited, what = edit_json(plain, rng)
    return pickle.dumps(edited, protocol=rng.choice([2, 4, 5])), f"pickle {what}"
