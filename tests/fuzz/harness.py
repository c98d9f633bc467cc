# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Fuzz targets over every reader of outside bytes, shared by the suite (hypothesis, few examples) and
`benchmarks/fuzz.py` (the long run). Entry points: `build_corpus(folder)`, `TARGETS`, `run_example`.

An example copies the good corpus, replaces one file with mutated bytes and calls the reader under a
time limit. It passes when the reader returns (keeping what is readable, recording what it skipped) or
raises a SparkDistillError with a one-line message, within the limit, and every file that existed
before — other than the one it was handed — still has the same bytes. Anything else is a finding.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import shutil
import signal
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spark_distill.data import files, shards
from spark_distill.errors import SparkDistillError
from tests.fuzz import mutate as M

SEGMENTS = ("0123456789abcdef_2026-11-26--12-00-00--0", "0123456789abcdef_2026-11-26--12-00-00--1")
SHARD = "shard-000000.tar"


def build_corpus(folder: Path) -> Path:
    """Good data made by the real pipeline, as small as it goes: a 2-segment 1 s route (segment 0 ingested
    into `ds/`, segment 1 left to ingest), a tiny teacher, its label set `set`, and a 2-step run `runs/r`."""
    from spark_distill.ingest.run import IngestConfig, ingest
    from spark_distill.label.run import LabelConfig, label
    from spark_distill.synth.route import SynthConfig, write_route
    from spark_distill.synth.teacher import write_teacher
    from spark_distill.train.config import TrainConfig
    from spark_distill.train.loop import train

    write_route(folder / "route", SynthConfig(segments=2, seconds=1.0, device="eon", log_format="zst",
                                              dongle="0123456789abcdef", start="2026-11-26--12-00-00"))  # SEGMENTS
    ingest(IngestConfig(inputs=(str(folder / "route" / SEGMENTS[0]),), out=folder / "ds", workers=1, clip_len=5,
                        shard_clips=2, cameras=("road",)))
    write_teacher(folder / "teacher", seed=1)
    label(LabelConfig(root=folder / "ds", teacher=(folder / "teacher",), backend="onnxruntime", batch=1, workers=1,
                      name="set"))
    train(TrainConfig(root=folder / "ds", labels="set", run="r", runs_dir=folder / "runs", student="compact-xs",
                      batch_size=1, workers=1, burn_in=1, mask_warmup=False, max_steps=2, checkpoint_every=1,
                      val_fraction=0.0, adapter_rank=2, adapter_alpha=4.0, device="cpu"))
    _write_members(folder)
    return folder


def _write_members(folder: Path) -> None:
    """`members/road.<ext>`: the dataset's first clip stored with each lossy codec (what `--codec` writes)."""
    from spark_distill.data import codecs

    raw = next(shards.iter_shard(folder / "ds" / "frames" / SHARD, shards.FRAMES_MEMBERS))
    clip = shards.decode_sample(raw)["road"]
    (folder / "members").mkdir()
    for name, codec in codecs.CODECS.items():
        if codec.lossy:
            ext, data = codecs.encode_clip(clip, name)
            (folder / "members" / f"road.{ext}").write_bytes(data)


class Hang(BaseException):
    """An example ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise Hang in the main thread after `seconds` (SIGALRM; Python code only, see benchmarks/fuzz.py)."""

    def fire(*_: Any) -> None:
        raise Hang(f"no result after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Outcome:
    """What one example did: 'ok' (returned), 'error' (a one-line SparkDistillError), or a finding."""

    target: str
    mutation: str
    kind: str  # ok | error | traceback | multiline | hang | crash | changed | property
    detail: str = ""
    seed: int = -1  # the example number that reproduces it

    @property
    def finding(self) -> bool:
        return self.kind not in ("ok", "error")

    def signature(self) -> str:
        """Findings of the same bug share a signature (exception type and where it was raised)."""
        head = self.detail.splitlines()[0][:160] if self.detail else ""
        return f"{self.target}: {self.kind}: {re.sub(r'[0-9]+', 'N', head)}"


# --- targets -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A reader, the corpus file it is handed mutated, and how to mutate it."""

    name: str
    victim: str  # path inside the corpus
    mutator: M.Mutator
    call: Callable[[Path, Path], Any]  # (work copy of the corpus, victim path) -> anything; raises on bad input
    needs: tuple[str, ...]  # corpus parts to copy
    may_write: tuple[str, ...] = ()  # corpus files the call may legitimately rewrite
    rehash: bool = False  # put the mutated shard's sha256 into the manifests (reach past the sha256 gate)
    prepare: Callable[[Path], None] | None = None  # adapt the work copy before mutating (e.g. other log format)
    slow: bool = False  # seconds per example: the long run only, unless a test picks it


def _read_log(work: Path, victim: Path) -> Any:
    from spark_distill.ingest.logs import load_schema, read_log

    return read_log(victim, load_schema())


def _log_as(fmt: str) -> Callable[[Path], None]:
    def prepare(work: Path) -> None:
        import bz2

        from spark_distill.ingest.logs import read_log_bytes

        seg = work / "route" / SEGMENTS[1]
        raw, _ = read_log_bytes(seg / "rlog.zst")
        (seg / "rlog.zst").unlink()
        (seg / {"bz2": "rlog.bz2", "raw": "rlog"}[fmt]).write_bytes(bz2.compress(raw) if fmt == "bz2" else raw)

    return prepare


def _decode_video(work: Path, victim: Path) -> int:
    from spark_distill.ingest.video import VideoReport, decode_i420

    report = VideoReport(victim)
    frames = sum(1 for _ in decode_i420(victim, report, threads=1))
    return frames


def _decode_member(work: Path, victim: Path) -> int:
    """A lossy camera member (its codec named by the extension, as shards.decode_sample picks it): a clip of
    packed frames, or a DatasetError."""
    import numpy as np

    from spark_distill.data import codecs
    from spark_distill.openpilot.modelframe import FRAME_SHAPE

    clip = codecs.decode_clip(victim.name.split(".", 1)[1], victim.read_bytes())
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[1:] != FRAME_SHAPE or not len(clip):
        raise AssertionError(f"PROPERTY: a camera member decoded to {clip.dtype} {clip.shape}")
    return len(clip)


def _ingest(work: Path, victim: Path) -> Any:
    """Ingest the damaged segment into the dataset that holds the other: skipped and recorded, or its readable
    frames appended; the shards already there stay listed as they were (their bytes are checked by the caller)."""
    from spark_distill.ingest.run import IngestConfig, ingest

    before = json.loads((work / "ds" / "frames" / shards.MANIFEST).read_bytes())["shards"]
    try:
        return ingest(IngestConfig(inputs=(str(work / "route" / SEGMENTS[1]),), out=work / "ds", workers=1,
                                   clip_len=5, shard_clips=2, cameras=("road",)))
    finally:
        after = json.loads((work / "ds" / "frames" / shards.MANIFEST).read_bytes())["shards"]
        if after[: len(before)] != before:
            raise AssertionError("PROPERTY: ingest changed the manifest entries of shards already written")


def _read_shard(members: dict[str, str | None]) -> Callable[[Path, Path], int]:
    def call(work: Path, victim: Path) -> int:
        from spark_distill.data.dataset import check_frames_sample

        n = 0
        for raw in shards.iter_shard(victim, members):
            sample = shards.decode_sample(raw)
            if members is shards.FRAMES_MEMBERS:
                check_frames_sample(sample, 10)
            n += 1
        return n

    return call


def _verify(work: Path, victim: Path) -> Any:
    """inspect --verify's checks: they report problems, never raise on a bad shard; a changed shard is found."""
    from spark_distill.data.dataset import verify_frames, verify_labels

    problems = verify_frames(work / "ds").problems + verify_labels(work / "ds", "set").problems
    if not problems:
        raise AssertionError("PROPERTY: a changed shard passed inspect --verify")
    return problems


def _train_stream(work: Path, victim: Path) -> int:
    """The training loader over every labeled clip (both splits, in shard order)."""
    from spark_distill.data.pairs import shard_pairs
    from spark_distill.train.loader import ClipStream

    pairs, manifest = shard_pairs(work / "ds", "set", split="train", val_fraction=0.0)
    stream = ClipStream(pairs, manifest, batch=1, clip_len=5, burn_in=1, seed=0, workers=1, train=False)
    return sum(1 for _ in stream)


def _label(work: Path, victim: Path) -> Any:
    """The label pass: a shard that fails its sha256 is skipped and recorded, the others are labeled; past the
    sha256 gate (rehashed) a shard that does not decode is a DatasetError."""
    from spark_distill.label.run import LabelConfig, label

    r = label(LabelConfig(root=work / "ds", teacher=(work / "teacher",), backend="onnxruntime", batch=1, workers=1,
                          name="fuzz"))
    manifest = shards.read_manifest(work / "ds" / "frames", shards.FRAMES_FORMAT)
    if victim.name not in [s["name"] for s in manifest["shards"] if s["sha256"] == files.sha256_file(victim)]:
        labeled = {s["name"] for s in shards.read_manifest(r.folder, shards.LABELS_FORMAT)["shards"]}
        if r.skipped_shards != [victim.name] or labeled != {s["name"] for s in manifest["shards"]} - {victim.name}:
            raise AssertionError(f"PROPERTY: skipped {r.skipped_shards}, labeled {sorted(labeled)}")
    return r


def _manifest_readers(work: Path, victim: Path) -> None:
    """Everything that reads a manifest without running a model: inspect (summary, --verify), the label
    planner, the training loader's set-up and one clip."""
    from spark_distill.data.dataset import summarize, verify_frames, verify_labels
    from spark_distill.data.index import plan_segments

    root = work / "ds"
    summarize(root)
    verify_frames(root)
    verify_labels(root, "set")
    plan_segments(shards.read_manifest(root / "frames", shards.FRAMES_FORMAT))
    _train_stream(work, victim)


def _teacher(work: Path, victim: Path) -> Any:
    """Load the teacher as the label pass does and run one frame through both graphs (ONNX Runtime)."""
    import torch

    from spark_distill.label.backends import get_backend
    from spark_distill.openpilot.teachers import load_teacher, random_inputs

    teacher, vision, policy = load_teacher([work / "teacher"])
    backend = get_backend("onnxruntime", teacher, vision, policy, batch=1)
    for role, mf in (("vision", teacher.vision), ("policy", teacher.policy)):
        getattr(backend, role)({k: torch.from_numpy(v) for k, v in random_inputs(mf.inputs, 1).items()})
    return teacher


def _metadata_as_json(work: Path) -> None:
    import pickle

    for role in ("vision", "policy"):
        pkl = work / "teacher" / f"driving_{role}_metadata.pkl"
        meta = pickle.loads(pkl.read_bytes())
        pkl.unlink()
        plain = json.loads(json.dumps(meta, default=lambda s: [s.start, s.stop] if isinstance(s, slice) else str(s)))
        (work / "teacher" / f"driving_{role}_metadata.json").write_text(json.dumps(plain))


def _load_trained(work: Path, victim: Path) -> Any:
    from spark_distill.models.restore import load_trained

    return load_trained(work / "runs" / "r")


def _export(work: Path, victim: Path) -> Any:
    """export of the run (combined ONNX, checked against torch on random inputs and two dataset frames)."""
    from spark_distill.export.run import ExportConfig, export

    spec = json.loads((work / "runs" / "r" / "student.json").read_bytes()) if victim.name != "student.json" else None
    if spec is not None:  # the run points at the corpus it was trained on; point it at this copy
        spec["root"] = str(work / "ds")
        (work / "runs" / "r" / "student.json").write_text(json.dumps(spec))
    return export(ExportConfig(source=work / "runs" / "r", output=work / "out", verify_frames=2))


_RUN_FILES = ("student.json", "student.safetensors", "checkpoints/step-00000002/meta.json",
              "checkpoints/step-00000002/weights.safetensors", "checkpoints/step-00000002/state.pt")


def _run_file(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    return (M.json_doc if data[:1] == b"{" else M.any_bytes)(data, rng)


def _targets() -> dict[str, Target]:
    seg1 = f"route/{SEGMENTS[1]}"
    frames, labels = f"ds/frames/{SHARD}", f"ds/labels/set/{SHARD}"
    ds_manifest = ("ds/frames/manifest.json", "ds/frames/.verified.json")  # what ingest may rewrite
    ts = [
        Target("rlog-zst", f"{seg1}/rlog.zst", M.any_bytes, _read_log, ("route",)),
        Target("rlog-bz2", f"{seg1}/rlog.bz2", M.any_bytes, _read_log, ("route",), prepare=_log_as("bz2")),
        Target("rlog-raw", f"{seg1}/rlog", M.any_bytes, _read_log, ("route",), prepare=_log_as("raw")),
        Target("rlog-ingest", f"{seg1}/rlog.zst", M.any_bytes, _ingest, ("route", "ds"), ds_manifest),
        Target("hevc", f"{seg1}/fcamera.hevc", M.any_bytes, _decode_video, ("route",)),
        Target("hevc-ingest", f"{seg1}/fcamera.hevc", M.any_bytes, _ingest, ("route", "ds"), ds_manifest),
        Target("member-hevc", "members/road.hevc", M.any_bytes, _decode_member, ("members",)),
        Target("member-av1", "members/road.av1", M.any_bytes, _decode_member, ("members",)),
        Target("frames-shard", frames, M.shard, _read_shard(shards.FRAMES_MEMBERS), ("ds",)),
        Target("frames-verify", frames, M.shard, _verify, ("ds",)),
        Target("frames-train", frames, M.shard, _train_stream, ("ds",), rehash=True),
        Target("frames-label", frames, M.shard, _label, ("ds", "teacher"), slow=True),
        Target("frames-label-rehashed", frames, M.shard, _label, ("ds", "teacher"), rehash=True, slow=True),
        Target("labels-shard", labels, M.shard, _read_shard(shards.LABEL_MEMBERS), ("ds",)),
        Target("labels-verify", labels, M.shard, _verify, ("ds",)),
        Target("labels-train", labels, M.shard, _train_stream, ("ds",), rehash=True),
        Target("frames-manifest", "ds/frames/manifest.json", M.json_doc, _manifest_readers, ("ds",)),
        Target("labels-manifest", "ds/labels/set/manifest.json", M.json_doc, _manifest_readers, ("ds",)),
        Target("metadata-pkl", "teacher/driving_policy_metadata.pkl", M.pickle_doc, _teacher, ("teacher",)),
        Target("metadata-json", "teacher/driving_vision_metadata.json", M.json_doc, _teacher, ("teacher",),
               prepare=_metadata_as_json),
        Target("onnx-vision", "teacher/driving_vision.onnx", M.any_bytes, _teacher, ("teacher",)),
        Target("onnx-policy", "teacher/driving_policy.onnx", M.any_bytes, _teacher, ("teacher",)),
        Target("onnx-graph", "teacher/driving_policy.onnx", None, _teacher, ("teacher",)),  # type: ignore[arg-type]
    ]
    ts += [Target(f"run-{Path(f).name}", f"runs/r/{f}", _run_file, _load_trained, ("runs",), rehash=True)
           for f in _RUN_FILES]
    ts.append(Target("run-export", "runs/r/student.json", _run_file, _export, ("runs", "ds"), slow=True))
    return {t.name: t for t in ts}


TARGETS = _targets()


# --- running one example ---------------------------------------------------------------------------------------

def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rehash(work: Path, target: Target, victim: Path) -> None:
    """Record the mutated file's sha256 where a checksum covers it, so the reader gets past that gate."""
    digest = files.sha256_file(victim)
    if target.victim.startswith("runs/"):
        meta_path = victim.parent / "meta.json"
        if victim.name in ("weights.safetensors", "adapter.safetensors", "state.pt"):
            meta = json.loads(meta_path.read_text())
            meta["sha256"][victim.name] = digest
            meta_path.write_text(json.dumps(meta))
        return
    manifest_path = victim.parent / shards.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    for s in manifest["shards"]:
        if s["name"] == victim.name:
            s["sha256"], s["bytes"] = digest, victim.stat().st_size
    manifest_path.write_text(json.dumps(manifest))
    if "frames" in target.victim:  # the label set is bound to the frames shards' hashes
        lpath = work / "ds" / "labels" / "set" / shards.MANIFEST
        lman = json.loads(lpath.read_text())
        for s in lman["frames_shards"]:
            if s["name"] == victim.name:
                s["sha256"] = digest
        lpath.write_text(json.dumps(lman))


def graph_edit(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A well-formed ONNX model with wrong inputs/outputs: renamed, reshaped, retyped, dropped or added."""
    import onnx

    model = onnx.load_from_string(data)
    g = model.graph
    op = rng.choice(["rename-input", "dim", "dtype", "drop-input", "add-input", "drop-output", "add-output",
                     "output-dim", "drop-node", "bad-opset", "drop-props"])
    i = rng.randrange(len(g.input))
    if op == "rename-input":
        old = g.input[i].name
        g.input[i].name = rng.choice(["x", "input_imgs", "desire_pulse", old + "_2"])
        for n in g.node:
            n.input[:] = [g.input[i].name if x == old else x for x in n.input]
    elif op == "dim":
        dims = g.input[i].type.tensor_type.shape.dim
        if dims:
            dims[rng.randrange(len(dims))].dim_value = rng.choice([0, 2, 7, 1000])
    elif op == "dtype":
        g.input[i].type.tensor_type.elem_type = rng.choice([2, 6, 7, 10, 11, 9])
    elif op == "drop-input":
        del g.input[i]
    elif op == "add-input":
        g.input.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1, 3]))
    elif op == "drop-output":
        del g.output[0]
    elif op == "add-output":
        g.output.append(onnx.helper.make_tensor_value_info(g.node[0].output[0], onnx.TensorProto.FLOAT, None))
    elif op == "output-dim":
        dims = g.output[0].type.tensor_type.shape.dim
        if dims:
            dims[-1].dim_value = rng.choice([1, 5, 10**6])
    elif op == "drop-node":
        del g.node[rng.randrange(len(g.node))]
    elif op == "bad-opset":
        model.opset_import[0].version = rng.choice([1, 99])
    else:
        del model.metadata_props[:]
    return model.SerializeToString(), f"onnx graph: {op}"


def run_example(target: Target, corpus: Path, seed: int, *, timeout: float = 30.0,
                keep: Path | None = None) -> Outcome:
    """Example `seed` of `target` on a fresh copy of `corpus`; `keep` saves the mutated input of a finding."""
    rng = random.Random(f"{target.name}:{seed}")
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target.name}-") as tmp:
        work = Path(tmp)
        for part in target.needs:
            shutil.copytree(corpus / part, work / part)
        if target.prepare is not None:
            target.prepare(work)
        victim = work / target.victim
        good = victim.read_bytes()
        mutator = target.mutator or graph_edit
        data, what = mutator(good, rng)
        for _ in range(5):  # a mutation that changed nothing is no example
            if data != good:
                break
            data, what = mutator(good, rng)
        victim.write_bytes(data)
        marker = work / "pwned"
        if target.name == "metadata-pkl" and rng.random() < 0.15:
            data, what = rng.choice(M.evil_pickles(str(marker)))
            victim.write_bytes(data)
        if target.rehash:
            rehash(work, target, victim)
        before = _hashes(work)
        outcome = _call(target, work, victim, what, timeout)
        outcome.seed = seed
        after = _hashes(work)
        changed = [f for f, h in before.items() if f != target.victim and f not in target.may_write
                   and after.get(f) != h]
        if marker.exists():
            outcome = Outcome(target.name, what, "property", "the metadata pickle ran code", seed)
        elif changed and not outcome.finding:
            outcome = Outcome(target.name, what, "changed", f"files changed: {changed[:3]}", seed)
        if outcome.finding and keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"{target.name}-{seed}-{Path(target.victim).name}").write_bytes(data)
        return outcome


def _call(target: Target, work: Path, victim: Path, what: str, timeout: float) -> Outcome:
    try:
        with time_limit(timeout):
            target.call(work, victim)
    except Hang as e:
        return Outcome(target.name, what, "hang", str(e))
    except SparkDistillError as e:
        text = str(e)
        if "\n" in text or not text.strip():
            return Outcome(target.name, what, "multiline", f"{type(e).__name__}: {text!r}"[:400])
        return Outcome(target.name, what, "error", f"{type(e).__name__}: {text}")
    except AssertionError as e:
        if str(e).startswith("PROPERTY"):
            return Outcome(target.name, what, "property", str(e))
        return Outcome(target.name, what, "traceback", _where(e))
    except Exception as e:
        return Outcome(target.name, what, "traceback", _where(e))
    return Outcome(target.name, what, "ok")


def _where(e: BaseException) -> str:
    """Exception type, message head and the innermost frame inside spark_distill (the finding's signature)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "spark_distill" in f.filename]
    at = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}{at}: {str(e).splitlines()[0][:120] if str(e) else ''}"


@dataclass
class Tally:
    """Per-target counts of a fuzz run."""

    examples: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    findings: dict[str, Outcome] = field(default_factory=dict)  # signature -> first example

    def add(self, o: Outcome) -> None:
        self.examples += 1
        self.kinds[o.kind] = self.kinds.get(o.kind, 0) + 1
        if o.finding:
            self.findings.setdefault(o.signature(), o)
