# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Dataset roots on object storage, against real servers on localhost (tests/remote.py): the CLI chain on an
S3-API server with byte-identity to a local root, publishing that a failure cannot half-finish, a read-only HTTP
root whose connection drops mid-shard, a missing object, the cache's sha256 checks and its size bound, and two
"machines" (own caches, gloo on localhost): a label pass and an ingest equal to one process's (a killed one finished
by one process), and a DDP run equal to the local one, each machine fetching only its share."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spark_distill.cli import app
from spark_distill.data import shards, store
from spark_distill.errors import DatasetError
from tests.remote import http_server, s3_server, tree_digest, use_s3

runner = CliRunner()
pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def endpoint() -> str:
    with s3_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request) -> str:
    """A fresh bucket on the server, this process pointed at it, and a cache of its own."""
    name = "b" + request.node.name.replace("_", "-")[-40:].lower().strip("-")
    use_s3(monkeypatch, endpoint, name)
    monkeypatch.setenv("SPARK_DISTILL_CACHE", str(tmp_path / "cache"))
    store.reset_cache_stats()
    return name


def _ok(*args: str) -> str:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, f"{args}: {r.output}"
    return r.output


def _objects(bucket: str) -> dict[str, int]:
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    return {p[len(bucket) + 1:]: int(i["size"]) for p, i in fs.find(bucket, detail=True).items()}


def test_the_cli_chain_on_an_s3_bucket_writes_what_a_local_root_holds(tici_route, bucket: str, tmp_path: Path
                                                                       ) -> None:
    from spark_distill.synth.teacher import write_teacher

    route, url = str(tici_route[0]), f"s3://{bucket}/ds"
    write_teacher(tmp_path / "teacher", seed=1)
    teacher = str(tmp_path / "teacher")
    for root in (url, str(tmp_path / "local")):
        _ok("ingest", route, "--out", root, "--clip-len", "10", "--shard-clips", "3")
        out = _ok("label", root, "--teacher", teacher, "--name", "set", "--backend", "onnxruntime")
        assert f"next: spark-distill train {root} --labels set" in out
    objects = _objects(bucket)
    assert not [k for k in objects if ".partial-" in k or k.endswith(".tmp") or "/.parts" in k], objects
    mirror = store.attach(url)
    remote = {k: v for k, v in tree_digest(mirror).items() if k.endswith(".tar")}
    local = {k: v for k, v in tree_digest(tmp_path / "local").items() if k.endswith(".tar")}
    assert remote == local and len(remote) >= 4  # frames and labels, byte for byte
    assert {k for k in objects if k.startswith("ds/")} == {f"ds/{k}" for k in tree_digest(tmp_path / "local")}
    manifest = json.loads(_get(bucket, "ds/labels/set/manifest.json"))
    local_labels = shards.read_manifest(tmp_path / "local" / "labels" / "set", shards.LABELS_FORMAT)
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in local_labels["shards"]]

    # a second machine (an empty cache) trains, evaluates and exports from the bucket
    shutil.rmtree(tmp_path / "cache")
    store.reset_cache_stats()
    runs = tmp_path / "runs"
    _ok("train", url, "--labels", "set", "--max-steps", "2", "--batch-size", "2", "--runs-dir", str(runs),
        "--run", "r")
    spec = json.loads((runs / "r" / "student.json").read_text())
    assert spec["root"] == url and "root: " + url in (runs / "r" / "config.yaml").read_text()
    fetched = store.cache_stats()
    assert fetched["misses"] >= 2 and fetched["fetched_bytes"] > 0
    out = _ok("eval", url, "--labels", "set", "--run", str(runs / "r"), "--out", str(tmp_path / "eval"))
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["root"] == url, out
    _ok("export", str(runs / "r"), "-o", str(tmp_path / "export"))
    assert store.cache_stats()["misses"] == fetched["misses"]  # eval and export read the cached shards
    assert "verified" in _ok("inspect", url, "--verify")


def _get(bucket: str, key: str) -> bytes:
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True).cat_file(f"{bucket}/{key}")


def test_a_failed_publish_leaves_nothing_a_reader_takes_for_a_shard_and_a_rerun_publishes(
        tici_route, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import s3fs

    url = f"s3://{bucket}/ds"
    monkeypatch.setattr(store, "ATTEMPTS", 1)

    def broken_move(self, *args, **kwargs):
        raise OSError("connection reset by peer")

    with monkeypatch.context() as m:
        m.setattr(s3fs.S3FileSystem, "mv", broken_move)
        r = runner.invoke(app, ["ingest", str(tici_route[0]), "--out", url, "--clip-len", "10"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and f"s3://{bucket}/ds/frames/shard-000000.tar" in r.output
    assert _objects(bucket) == {}  # no shard under its name, no manifest, no temporary key left
    _ok("ingest", str(tici_route[0]), "--out", url, "--clip-len", "10")
    _ok("ingest", str(tici_route[0]), "--out", str(tmp_path / "local"), "--clip-len", "10")
    local = shards.read_manifest(tmp_path / "local" / "frames", shards.FRAMES_FORMAT)
    remote = json.loads(_get(bucket, "ds/frames/manifest.json"))
    assert [s["sha256"] for s in remote["shards"]] == [s["sha256"] for s in local["shards"]]
    assert set(_objects(bucket)) == {"ds/frames/manifest.json"} | {f"ds/frames/{s['name']}" for s in local["shards"]}


@pytest.fixture
def served(labeled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A copy of the labeled dataset served over plain HTTP, with a cache of this test's own."""
    root = tmp_path / "www" / "ds"
    shutil.copytree(labeled, root, ignore=shutil.ignore_patterns("teacher", ".*"))
    monkeypatch.setenv("SPARK_DISTILL_CACHE", str(tmp_path / "cache"))
    store.reset_cache_stats()
    with http_server(tmp_path / "www") as (base, cut, requests):
        yield root, f"{base}/ds", cut, requests


def test_an_http_root_is_read_with_a_dropped_connection_retried(served) -> None:
    root, url, cut, requests = served
    cut.add("/ds/frames/shard-000001.tar")
    out = _ok("inspect", url, "--verify")
    assert "verified frames" in out and "verified labels/set" in out
    assert requests.count("/ds/frames/shard-000001.tar") == 2  # cut halfway, fetched again, then checked
    mirror = store.attach(url)
    assert (mirror / "frames" / "shard-000001.tar").read_bytes() == (root / "frames" / "shard-000001.tar").read_bytes()
    assert store.cache_stats()["misses"] == len(list(root.rglob("shard-*.tar")))
    r = runner.invoke(app, ["ingest", str(root), "--out", url])
    assert r.exit_code == 2 and "read-only" in r.output and r.output.count("\n") == 1


def test_a_missing_object_is_one_line_and_exit_2(served, tmp_path: Path) -> None:
    root, url, _, _ = served
    (root / "labels" / "set" / "shard-000000.tar").unlink()
    r = runner.invoke(app, ["train", url, "--labels", "set", "--max-steps", "1", "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [f"error: {url}/labels/set/shard-000000.tar: not found"]
    r = runner.invoke(app, ["train", "http://127.0.0.1:9/nothing", "--labels", "set"])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output


def test_a_download_that_does_not_match_its_sha256_is_never_read(served, monkeypatch: pytest.MonkeyPatch) -> None:
    root, url, _, requests = served
    monkeypatch.setattr(store, "ATTEMPTS", 2)
    mirror = store.attach(url)
    shard = root / "frames" / "shard-000002.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))  # changed on the server after its manifest
    with pytest.raises(DatasetError, match=r"download failed 2 times .*sha256"):
        list(shards.iter_shard(mirror / "frames" / "shard-000002.tar", shards.FRAMES_MEMBERS))
    assert requests.count("/ds/frames/shard-000002.tar") == 2
    assert not (mirror / "frames" / "shard-000002.tar").exists()
    assert not [p for p in (mirror / "frames").iterdir() if p.name.endswith(".part")]


def test_a_process_whose_environment_names_another_cache_still_reads_a_mirror_into_its_own_cache(
        served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loader worker forked from a server started before SPARK_DISTILL_CACHE changed sees the old value: the
    mirror's path alone decides where a shard goes, which cache counts it and which bound applies."""
    root, url, _, _ = served
    monkeypatch.setenv("SPARK_DISTILL_CACHE_SIZE", "1")  # the bound this pass starts with
    mirror = store.attach(url)
    cache = mirror.parent.parent
    names = [e["name"] for e in shards.read_manifest(mirror / "frames", shards.FRAMES_FORMAT)["shards"]]
    monkeypatch.setenv("SPARK_DISTILL_CACHE", str(tmp_path / "elsewhere"))
    monkeypatch.delenv("SPARK_DISTILL_CACHE_SIZE")
    for n in names[:2]:
        assert len(list(shards.iter_shard(mirror / "frames" / n, shards.FRAMES_MEMBERS))) > 0
    assert not (tmp_path / "elsewhere").exists()
    assert [p.name for p in (mirror / "frames").glob("shard-*.tar")] == [names[1]]  # bound 1 byte: all but the last
    monkeypatch.setenv("SPARK_DISTILL_CACHE", str(cache))
    assert store.cache_stats() == {"hits": 0, "misses": 2,
                                   "fetched_bytes": sum((root / "frames" / n).stat().st_size for n in names[:2])}


def test_the_cache_keeps_to_its_bound_least_recently_used_first_and_never_drops_unpublished(
        served, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import time

    root, url, _, _ = served
    names = [e["name"] for e in shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)["shards"]]
    size = max((root / "frames" / n).stat().st_size for n in names)
    monkeypatch.setenv("SPARK_DISTILL_CACHE_SIZE", str(2 * size + 1))  # the bound the pass attaching sees
    mirror = store.attach(url)
    for i, n in enumerate(names[:3]):
        store.ensure_local(mirror / "frames" / n)
        os.utime(mirror / "frames" / n, (time.time() - 100 + i, time.time() - 100 + i))
    on_disk = {p.name for p in (mirror / "frames").glob("shard-*.tar")}
    assert on_disk == set(names[1:3])  # the least recently used one went first
    unpublished = mirror / "frames" / "shard-999999.tar"
    unpublished.write_bytes(bytes(3 * size))  # as a pass writes one before it is published
    os.utime(unpublished, (1, 1))
    store.ensure_local(mirror / "frames" / names[0])
    assert unpublished.exists() and (mirror / "frames" / names[0]).exists()
    assert store.parse_size("1.5GB") == 3 << 29 and store.parse_size("200") == 200


def _label_machine(rank: int, url: str, teacher: str, caches: list[str], init: str, env: dict[str, str]) -> None:
    import os

    os.environ.update(env, SPARK_DISTILL_CACHE=caches[rank])  # each "machine" has a cache of its own
    from spark_distill.label.run import LabelConfig, label

    label(LabelConfig(root=store.attach(url, write=True), teacher=(Path(teacher),), backend="onnxruntime", batch=4,
                      workers=1, name="two", process_rank=rank, world=2, init_method=init))


def test_two_machines_label_a_bucket_as_one_process_does(labeled: Path, bucket: str, tmp_path: Path) -> None:
    import os

    import fsspec
    import torch.multiprocessing as mp

    url = f"s3://{bucket}/ds"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.put(str(labeled / "frames"), f"{bucket}/ds/frames", recursive=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: os.environ[k] for k in os.environ if k.startswith("AWS_")}
    caches = [str(tmp_path / "machine-0"), str(tmp_path / "machine-1")]
    mp.spawn(_label_machine, args=(url, str(labeled / "teacher"), caches, f"tcp://127.0.0.1:{port}", env), nprocs=2)
    one = {k: v for k, v in tree_digest(labeled / "labels" / "set").items() if k.endswith(".tar")}
    objects = _objects(bucket)
    assert not [k for k in objects if "/.parts" in k or ".partial-" in k], objects
    two = {k[len("ds/labels/two/"):]: _get(bucket, k) for k in objects
           if k.startswith("ds/labels/two/") and k.endswith(".tar")}
    assert two == one and len(two) >= 3
    assert json.loads(_get(bucket, "ds/labels/two/manifest.json"))["throughput"]["ranks"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ingest_machine(rank: int, init: str, env: dict[str, str], url: str, route: str, caches: list[str],
                    killed_after: int | None = None) -> None:
    """One "machine" of a two-machine ingest; `killed_after`: rank 0 dies (as from kill -9) once it has published
    that many shards."""
    import os

    os.environ.update(env, SPARK_DISTILL_CACHE=caches[rank])  # each "machine" has a cache of its own
    from spark_distill.ingest import run

    if killed_after is not None and rank == 0:
        close = run._ShardSink.close_shard

        def close_then_die(self) -> None:
            close(self)
            if len(self.written) >= killed_after:
                os._exit(9)

        run._ShardSink.close_shard = close_then_die
    run.ingest(run.IngestConfig(inputs=(route,), out=store.attach(url, write=True), clip_len=10, shard_clips=3,
                                workers=1, process_rank=rank, world=2, init_method=init))


def _two_machines(target, *args) -> None:
    import os

    import torch.multiprocessing as mp

    env = {k: os.environ[k] for k in os.environ if k.startswith("AWS_")}
    mp.spawn(target, args=(f"tcp://127.0.0.1:{_free_port()}", env, *args), nprocs=2)


@pytest.fixture(scope="module")
def one_process_frames(tici_route, tmp_path_factory) -> dict[str, bytes]:
    """tici_route ingested by one process to a local folder (10-frame clips, 3 per shard): what byte-identity
    compares with."""
    from spark_distill.ingest.run import IngestConfig, ingest

    root = tmp_path_factory.mktemp("one-process")
    ingest(IngestConfig(inputs=(str(tici_route[0]),), out=root, clip_len=10, shard_clips=3, workers=1))
    return {f"ds/{k}": v for k, v in tree_digest(root).items()}


def test_two_machines_ingest_to_a_bucket_as_one_process_does(tici_route, one_process_frames: dict[str, bytes],
                                                             bucket: str, tmp_path: Path) -> None:
    url = f"s3://{bucket}/ds"
    _two_machines(_ingest_machine, url, str(tici_route[0]), [str(tmp_path / "m0"), str(tmp_path / "m1")])
    objects = _objects(bucket)
    assert set(objects) == set(one_process_frames), objects  # no staging key, no temporary key left
    assert {k: _get(bucket, k) for k in objects} == one_process_frames and len(objects) >= 3
    manifest = json.loads(one_process_frames["ds/frames/manifest.json"])
    assert len(manifest["segments"]) == 2 and len(manifest["shards"]) == 3  # a shard spans the two segments
    staged = [p for p in (tmp_path / "m1").rglob("*") if p.is_file() and ".staging" in p.parts]
    assert not staged  # rank 1 kept no copy of what it pushed


def test_a_killed_two_machine_ingest_resumes_on_two_machines_or_one_as_if_never_killed(
        tici_route, one_process_frames: dict[str, bytes], bucket: str, tmp_path: Path) -> None:
    url, caches = f"s3://{bucket}/ds", [str(tmp_path / "m0"), str(tmp_path / "m1")]
    for shards_before, partial_clips in ((1, 3), (2, 2)):  # killed, resumed by two machines and killed again
        with pytest.raises(Exception, match="exit code 9"):
            _two_machines(_ingest_machine, url, str(tici_route[0]), caches, 1)
        partial = json.loads(_get(bucket, "ds/frames/manifest.json"))
        assert len(partial["shards"]) == shards_before and partial["partial"]["clips"] == partial_clips
        assert [k for k in _objects(bucket) if "/.staging/rank-1/" in k]  # what rank 1 pushed is still there
    r = runner.invoke(app, ["ingest", str(tici_route[0]), "--out", url, "--clip-len", "10", "--shard-clips", "3",
                            "--workers", "1"], env={"SPARK_DISTILL_CACHE": str(tmp_path / "m2")})
    assert r.exit_code == 0, r.output
    objects = _objects(bucket)
    assert set(objects) == set(one_process_frames), objects
    assert {k: _get(bucket, k) for k in objects} == one_process_frames


def _train_machine(rank: int, init: str, env: dict[str, str], url: str, local: str, runs: str, caches: list[str]
                   ) -> None:
    """One "machine" of a two-machine DDP run (gloo): the same run on the local copy, then on the bucket."""
    import os

    os.environ.update(env, SPARK_DISTILL_CACHE=caches[rank])
    import torch.distributed as dist

    from spark_distill.train.config import TrainConfig
    from spark_distill.train.loop import train

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        for name, root in (("local", Path(local)), ("bucket", store.attach(url))):
            train(TrainConfig(root=root, labels="set", run="r", runs_dir=Path(runs) / name, student="compact-xs",
                              adapter="dora", batch_size=2, max_steps=2, lr=3e-3, warmup_steps=1, burn_in=4,
                              val_fraction=0.0, mask_warmup=False, workers=1, adapter_rank=4, adapter_alpha=8.0,
                              device="cpu", process_rank=rank, world=2, init_method=init))
    finally:
        dist.destroy_process_group()


def test_two_machines_train_from_a_bucket_each_reading_its_share(labeled: Path, bucket: str, tmp_path: Path) -> None:
    import fsspec
    from safetensors.torch import load_file

    from spark_distill.data.pairs import shard_pairs
    from spark_distill.models.checkpoint import latest_checkpoint
    from spark_distill.train.loader import deal_shards

    url = f"s3://{bucket}/ds"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for part in ("frames", "labels/set"):
        fs.put(str(labeled / part), f"{bucket}/ds/{part}", recursive=True)
    caches = [tmp_path / "m0", tmp_path / "m1"]
    _two_machines(_train_machine, url, str(labeled), str(tmp_path / "runs"), [str(c) for c in caches])
    local, remote = (load_file(str(latest_checkpoint(tmp_path / "runs" / name / "r" / "checkpoints")
                                   / "adapter.safetensors")) for name in ("local", "bucket"))
    assert local.keys() == remote.keys() and all(local[k].equal(remote[k]) for k in local)
    pairs, _ = shard_pairs(labeled, "set", split="train", val_fraction=0.0)
    for rank, cache in enumerate(caches):  # each "machine" fetched the frames (the video) of its own share only
        share = deal_shards(pairs, seed=0, epoch=0, process_rank=rank, world=2, worker=0, workers=1)
        mirror = next((cache / "roots").iterdir())
        fetched = {p.relative_to(mirror).as_posix() for p in mirror.rglob("shard-*.tar")}
        assert {f for f in fetched if f.startswith("frames/")} == {f"frames/{p.frames.name}" for p in share}
        labels = {f for f in fetched if f.startswith("labels/")}
        mine = {f"labels/set/{p.labels.name}" for p in share}
        # the first rank also starts the student's heads at the labels' mean (head_init), read from label shards
        assert labels == mine if rank else labels == {f"labels/set/{p.labels.name}" for p in pairs}
