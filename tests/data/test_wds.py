# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The shards in a user's own code (data/wds.py): webdataset's pipelines with the project's decoder give exactly
what the project's own reader gives, every clip once across DataLoader workers, and the README's loop runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset
from torch.utils.data import DataLoader

from spark_distill.data import shards
from spark_distill.data.clips import decode_clip
from spark_distill.data.pairs import read_lockstep, shard_pairs
from spark_distill.data.wds import JoinLabels, decoder, frames_dataset, labelled_dataset
from spark_distill.errors import DatasetError
from spark_distill.openpilot.outputs import parse_outputs

REPO = Path(__file__).resolve().parents[2]
FRAMES_STEMS = ("road", "wide", "desire", "traffic", "car", "pose", "gps", "meta")


def _own_reader(root: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every labelled clip as the training loader decodes it (read_lockstep + decode_clip), in shard order."""
    pairs, manifest = shard_pairs(root, "set", split="train", val_fraction=0)
    return [decode_clip(f, lab) | {"__key__": f["__key__"]} for p in pairs for f, lab in read_lockstep(p)], manifest


def _assert_same(got: Any, want: Any, where: str) -> None:
    """Equal values, arrays of the same dtype and shape and bits (NaN where NaN), dicts recursively."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for k in want:
            _assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape, where
        np.testing.assert_array_equal(got, want, err_msg=where)
    else:
        assert got == want, where


def _heads(clip: dict[str, Any], slices: dict[str, Any]) -> dict[str, Any]:
    return {**parse_outputs(clip["vision"].astype(np.float32), slices["vision"]),
            **parse_outputs(clip["policy"].astype(np.float32), slices["policy"])}


def test_labelled_clips_equal_the_project_reader(labeled: Path) -> None:
    want, manifest = _own_reader(labeled)
    got = list(labelled_dataset(labeled, "set"))
    assert [c["__key__"] for c in got] == [c["__key__"] for c in want]
    assert len(got) == sum(s["samples"] for s in manifest["shards"]) > 10
    for g, w in zip(got, want, strict=True):
        key = w["__key__"]
        assert set(g) == {"__key__", "__url__", *FRAMES_STEMS, "heads"} | ({"modelv2"} & set(w)), key
        for stem in FRAMES_STEMS:
            _assert_same(g[stem], w[stem], f"{key}.{stem}")
        assert g["road"].dtype == np.uint8 and g["road"].shape == (len(w["meta"]["frame_ids"]), 6, 128, 256)
        _assert_same(g["heads"], _heads(w, manifest["output_slices"]), f"{key}.heads")
        assert g["heads"]["plan"]["mean"].shape == (len(w["meta"]["frame_ids"]), 33, 15)
    raw = next(iter(labelled_dataset(labeled, "set", heads=False)))
    assert "heads" not in raw and raw["vision"].dtype == np.float16
    _assert_same(raw["policy"], want[0]["policy"], "raw policy")


def test_frames_dataset_and_plain_webdataset_with_the_handler(labeled: Path) -> None:
    want, manifest = _own_reader(labeled)
    by_key = {w["__key__"]: w for w in want}
    frames = list(frames_dataset(labeled))
    assert [f["__key__"] for f in frames] == list(by_key) and "heads" not in frames[0]
    _assert_same(frames[-1]["road"], want[-1]["road"], "frames_dataset road")
    # the handler alone in webdataset's own WebDataset, over a label shard and its frames shard
    name = manifest["shards"][1]["name"]
    labels = webdataset.WebDataset(str(labeled / "labels" / "set" / name), shardshuffle=False)
    for sample in labels.decode(decoder(manifest)):
        w = by_key[sample["__key__"]]
        _assert_same(sample["vision.npy.zst"], parse_outputs(w["vision"].astype(np.float32),
                                                             manifest["output_slices"]["vision"]), "vision heads")
    camera = next(m for m in webdataset.WebDataset(str(labeled / "frames" / name), shardshuffle=False)
                  .decode(decoder()))
    member = next(m for m in camera if m.startswith("road."))
    assert member == "road.y6d.zst", "the default codec is the lossless one"
    _assert_same(camera[member], by_key[camera["__key__"]]["road"], "road")
    _assert_same(camera["meta.json"], by_key[camera["__key__"]]["meta"], "meta")


def test_two_dataloader_workers_yield_every_clip_once(labeled: Path) -> None:
    listed = shards.read_manifest(labeled / "frames", shards.FRAMES_FORMAT)["shards"]
    keys = Counter(c["__key__"] for c in DataLoader(labelled_dataset(labeled, "set"), batch_size=None,
                                                     num_workers=2))
    expected = [c["__key__"] for c in _own_reader(labeled)[0]]
    assert len(listed) > 2 and len(expected) == sum(e["samples"] for e in listed)
    assert sorted(keys) == sorted(expected) and set(keys.values()) == {1}
    shuffled = [c["__key__"] for c in labelled_dataset(labeled, "set", seed=3)]
    assert sorted(shuffled) == sorted(expected) and shuffled != expected, "seed: the shards in another order"


def test_mismatched_labels_and_manifests_are_refused(labeled: Path, tmp_path: Path) -> None:
    manifest = json.loads((labeled / "labels" / "set" / "manifest.json").read_bytes())
    names = [e["name"] for e in manifest["shards"]]
    other = tmp_path / "labels"
    other.mkdir()
    shutil.copy(labeled / "labels" / "set" / names[1], other / names[0])  # another shard's labels
    joined = JoinLabels(str(other))([{"url": str(labeled / "frames" / names[0])}])
    with pytest.raises(DatasetError, match=r"has label sample .* the label set does not match"):
        next(joined)
    narrow = {**manifest, "widths": {**manifest["widths"], "policy": manifest["widths"]["policy"] + 1}}
    with pytest.raises(DatasetError, match=r"policy.npy.zst is float16 \[10, \d+\]; the label set's manifest says"):
        decoder(narrow)(".policy.npy.zst", _member(other / names[0]))
    with pytest.raises(DatasetError, match="not a label set's manifest"):
        decoder({"output_slices": {"vision": {}}})
    assert decoder()(".txt", b"x") is None, "other members are left to webdataset's handlers"
    with pytest.raises(DatasetError, match="unexpected member 'txt'"):
        decoder(strict=True)(".txt", b"x")


def _member(shard: Path, member: str = "policy.npy.zst") -> bytes:
    return next(s for s in shards.iter_shard(shard, shards.LABEL_MEMBERS))[member]


def test_a_damaged_member_is_one_error_naming_the_sample(labeled: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(labeled / "frames", root / "frames")
    shutil.copytree(labeled / "labels" / "set", root / "labels" / "set")
    manifest = json.loads((root / "labels" / "set" / "manifest.json").read_bytes())
    shard = root / "labels" / "set" / manifest["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    first = next(shards.iter_shard(shard, shards.LABEL_MEMBERS))
    at = bytes(data).index(first["policy.npy.zst"]) + len(first["policy.npy.zst"]) // 2
    data[at] ^= 0xFF  # a flipped bit inside the first clip's policy vectors: the zstd checksum catches it
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=f"sample {first['__key__']}: policy.npy.zst does not decode"):
        list(labelled_dataset(root, "set"))


def test_readme_example_runs(labeled: Path, tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Your own training loop", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 10, "the example stays ten lines"
    assert code.count('"data"') == 1 and code.count('"my-teacher-1a2b3c4d"') == 1
    script = tmp_path / "loop.py"
    script.write_text(code.replace('"data"', repr(str(labeled))).replace('"my-teacher-1a2b3c4d"', '"set"')
                      + "\nprint('steps', optimizer.state[next(iter(model.parameters()))]['step'].item(),"
                        " 'loss', loss.item())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    steps, loss = re.fullmatch(r"steps (\d+)\.0 loss (\S+)\n", run.stdout).groups()
    clips = len(list(labelled_dataset(labeled, "set")))
    assert int(steps) == clips and np.isfinite(float(loss))
