# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Dataset roots on object storage (`s3://`, `gs://`, read-only `http(s)://`) behind a bounded local cache.

A URL root is *attached* to a mirror folder under the cache (`SPARK_DISTILL_CACHE`, default
`~/.cache/spark-distill`): its manifests are downloaded there and its shards are fetched on first read
(`ensure_local`, called by the one shard reader), each checked against the sha256 its manifest records (a
corrupted or truncated download is fetched again, never read). Every pass then works on the mirror as on a local
folder. Writes go the other way: after a manifest is written in a mirror, `publish` uploads each shard it lists
under a temporary key, moves it into place, and uploads the manifest last, so a killed run leaves nothing a reader
takes for a finished shard and a rerun resumes from the remote manifest.

Libraries, no hand-written clients: fsspec (s3fs / gcsfs / HTTP) for listing, manifests and writes, and
webdataset's `gopen` (curl with its retries for HTTP; fsspec for the object stores, registered as gopen schemes so
`webdataset.WebDataset("s3://…")` works in a user's own code too) for shard streams. Credentials come only from the
standard places (environment, the libraries' config files); a URL's user-info and query are never logged or
written anywhere.

The cache is shared by every process of a machine (loader workers, ranks): a lock file serialises its bookkeeping,
a per-shard lock its downloads; shards beyond the size bound (`SPARK_DISTILL_CACHE_SIZE`, e.g. `200GB`; default
half the cache disk's free space, at least 2 GB) are evicted least recently used first, never one that is not yet
published. Entry points: `is_url`, `local_root`, `attach`, `ensure_local`, `publish`, `push_files`/`pull_files`
(the ranks' part files), `is_mirrored`, `source_of`, `cache_stats`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from spark_distill.errors import DatasetError, MissingDependencyError, first_line

SCHEMES = ("s3", "gs", "gcs", "http", "https")
READ_ONLY = ("http", "https")
MARKER = ".remote.json"  # in a mirror's top folder: the URL it mirrors
STATE = ".remote-shards.json"  # in each mirrored folder: {shard name: sha256} of shards that are on the remote
MANIFEST = "manifest.json"
SIZE_SETTING = ".size.json"  # in the cache: the SPARK_DISTILL_CACHE_SIZE of the last attach
ATTEMPTS = 4  # downloads of one shard before giving up (a dropped connection, a wrong sha256)


def is_url(root: str | os.PathLike[str]) -> bool:
    """Whether `root` is an object-store or HTTP URL (as opposed to a local path)."""
    text = str(root)
    return "://" in text and text.split("://", 1)[0].lower() in SCHEMES


def local_root(root: str | os.PathLike[str], *, write: bool = False) -> Path:
    """A dataset root as given: a local folder as it is, a URL attached to its mirror (`attach`)."""
    return attach(str(root), write=write) if is_url(root) else Path(root)


def public_url(url: str) -> str:
    """`url` without user-info, query or fragment: what may be printed or recorded."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def cache_dir() -> Path:
    env = os.environ.get("SPARK_DISTILL_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spark-distill"


_SIZE = re.compile(r"^\s*([0-9.]+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'200GB', '1.5T', '500M', '1048576' -> bytes (powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise DatasetError(f"SPARK_DISTILL_CACHE_SIZE={text!r}: give a size such as 200GB or 500MB")
    return int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))


def cache_limit(cache: Path | None = None) -> int:
    """The size bound in bytes of `cache` (default: this process's): SPARK_DISTILL_CACHE_SIZE as the last `attach`
    into it saw it (so workers started earlier agree with the pass), else half of what the cache's disk has free
    (counting what the cache holds already), at least 2 GB."""
    root = cache_dir() if cache is None else cache
    text = os.environ.get("SPARK_DISTILL_CACHE_SIZE")
    if cache is not None and (root / SIZE_SETTING).is_file():
        text = _read_json(root / SIZE_SETTING, {}).get("size")
    if text:
        return parse_size(text)
    root.mkdir(parents=True, exist_ok=True)
    return max(2 << 30, (shutil.disk_usage(root).free + _cached_bytes(root)) // 2)


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) of an object-store URL; credentials from the standard places."""
    try:
        import fsspec
    except ImportError as e:  # pragma: no cover - fsspec is a dependency
        raise MissingDependencyError("fsspec is missing: pip install fsspec") from e
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        extra = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}.get(urlsplit(url).scheme, "aiohttp")
        raise MissingDependencyError(f"{public_url(url)}: reading it needs {extra} (pip install {extra})") from e


def _join(url: str, rel: str) -> str:
    return url.rstrip("/") + "/" + rel if rel else url.rstrip("/")


def _slug(url: str) -> str:
    pub = public_url(url).rstrip("/")
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", pub.split("://", 1)[1])[-48:].strip("_")
    return f"{tail}-{hashlib.sha256(pub.encode()).hexdigest()[:10]}"


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return default


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remote_error(url: str, e: BaseException) -> DatasetError:
    if isinstance(e, FileNotFoundError):
        return DatasetError(f"{public_url(url)}: not found")
    if isinstance(e, PermissionError):
        return DatasetError(f"{public_url(url)}: access denied (credentials come from the environment or the "
                            f"storage library's config files)")
    return DatasetError(f"{public_url(url)}: {first_line(e)}")


# ---- attaching a URL root -------------------------------------------------------------------------------------


def attach(url: str, *, write: bool = False) -> Path:
    """The local mirror of the dataset root at `url`, with its manifests as they are on the remote now (and the
    names of the shards the remote holds, so resuming passes know what is published). `write`: the pass will
    write into it (refused for read-only HTTP roots). A root with nothing at it is an empty mirror when
    writing, and a DatasetError (not found) when reading."""
    scheme = urlsplit(url).scheme.lower()
    if write and scheme in READ_ONLY:
        raise DatasetError(f"{public_url(url)}: http(s) roots are read-only; write to s3://, gs:// or a local folder")
    fs, base = filesystem(url)
    mirror = cache_dir() / "roots" / _slug(url)
    mirror.mkdir(parents=True, exist_ok=True)
    _write_json(cache_dir() / SIZE_SETTING, {"size": os.environ.get("SPARK_DISTILL_CACHE_SIZE")})
    _write_json(mirror / MARKER, {"url": _bare(url)})
    with _locked(cache_dir() / ".lock"):
        listing = _listing(fs, base, url)
        if not listing and not write:
            raise DatasetError(f"{public_url(url)}: no dataset there (no frames/{MANIFEST}; ingest --out writes one)")
        _sync_small_files(fs, base, mirror, listing)
    return mirror


def _bare(url: str) -> str:
    """The URL to fetch from, without user-info (credentials come from the standard places)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def _listing(fs: Any, base: str, url: str) -> dict[str, int]:
    """Relative path -> size of every object under the root. Roots whose server lists nothing (plain HTTP
    without directory pages) fall back to the manifests at their known places."""
    try:
        fs.invalidate_cache()
        found = fs.find(base, detail=True)
    except FileNotFoundError:
        found = {}
    except Exception as e:  # a listing the server does not offer
        if urlsplit(url).scheme.lower() not in READ_ONLY:
            raise _remote_error(url, e) from e
        found = {}
    prefix = base.rstrip("/") + "/"
    out = {p[len(prefix):]: int(info.get("size") or 0) for p, info in found.items()
           if p.startswith(prefix) and info.get("type", "file") != "directory"}
    if not out and urlsplit(url).scheme.lower() in READ_ONLY:
        try:
            out[f"frames/{MANIFEST}"] = int(fs.info(_join(base, f"frames/{MANIFEST}")).get("size") or 0)
        except FileNotFoundError:
            pass
        except Exception as e:
            raise _remote_error(_join(url, f"frames/{MANIFEST}"), e) from e
    return out


def _sync_small_files(fs: Any, base: str, mirror: Path, listing: dict[str, int]) -> None:
    """Download every manifest (and other small file) the remote holds; forget local ones it no longer holds;
    record per folder which shards the remote holds with the size its manifest gives."""
    remote = {rel for rel in listing if not rel.endswith(".tar") and "/." not in f"/{rel}"}
    for rel in sorted(remote):
        dest = mirror / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = _get(fs, _join(base, rel))
        if not dest.exists() or dest.read_bytes() != data:
            tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
    for path in mirror.rglob(MANIFEST):
        rel = path.relative_to(mirror).as_posix()
        if rel not in remote and not rel.startswith("."):
            path.unlink()  # gone from the remote (or never published): what is there now is the truth
    for path in mirror.rglob(MANIFEST):
        folder = path.parent
        rel_folder = folder.relative_to(mirror).as_posix()
        entries = _read_json(path, {}).get("shards", [])
        held = {e["name"]: e["sha256"] for e in entries if isinstance(e, dict)
                and listing.get(f"{rel_folder}/{e.get('name')}") == e.get("bytes")}
        _write_json(folder / STATE, held)


def _get(fs: Any, path: str) -> bytes:
    last: BaseException | None = None
    for attempt in range(ATTEMPTS):
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            raise
        except Exception as e:  # a dropped connection: try again
            last = e
            time.sleep(0.25 * 2 ** attempt)
    raise _remote_error(path, last or OSError("failed"))


# ---- mirrors -----------------------------------------------------------------------------------------------------


def _mirror_of(path: Path) -> tuple[Path, str] | None:
    """(mirror folder, its URL) when `path` lies in a mirror: a folder `<cache>/roots/<slug>` holding the marker.
    Found from the path alone, not from this process's SPARK_DISTILL_CACHE: a worker started before the variable
    changed (a forkserver's child inherits the server's environment) still knows a mirror's file."""
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        if folder.parent.name == "roots" and (folder / MARKER).is_file():
            marker = _read_json(folder / MARKER, None)
            return (folder, marker["url"]) if isinstance(marker, dict) and "url" in marker else None
    return None


def is_mirrored(path: Path) -> bool:
    """Whether `path` lies in a mirror of a remote root (its files reach other machines only through `push_files`)."""
    return _mirror_of(path) is not None


def source_of(path: Path) -> str:
    """What to show or record for a path: its public URL when it lies in a mirror, else the path."""
    remote = _remote_url(path)
    return str(path) if remote is None else public_url(remote)


def _remote_url(path: Path) -> str | None:
    """The URL (without credentials) a path of a mirror stands for; None for a local path."""
    found = _mirror_of(path)
    if found is None:
        return None
    mirror, url = found
    rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(mirror)).as_posix()
    return _join(url, "" if rel == "." else rel)


def in_words(text: str) -> str:
    """`text` with every path into a mirror written as the URL it mirrors (for messages: a user gave the URL)."""
    roots = os.path.abspath(cache_dir() / "roots")
    if roots not in text:
        return text

    def url(m: re.Match[str]) -> str:
        marker = _read_json(Path(roots) / m.group(1) / MARKER, None)
        return public_url(marker["url"]).rstrip("/") if isinstance(marker, dict) and "url" in marker else m.group(0)

    return re.sub(re.escape(roots) + r"/([A-Za-z0-9._-]+)", url, text)


def _expected(folder: Path, name: str) -> dict[str, Any] | None:
    for e in _read_json(folder / MANIFEST, {}).get("shards", []):
        if isinstance(e, dict) and e.get("name") == name:
            return e
    return None


def remote_intact(folder: Path, entries: list[dict[str, Any]]) -> set[str]:
    """Names of `entries` (manifest entries of a mirrored folder) that the remote holds with that sha256."""
    if _mirror_of(folder) is None:
        return set()
    held = _read_json(folder / STATE, {})
    return {e["name"] for e in entries if held.get(e["name"]) == e["sha256"]}


def ensure_local(path: Path) -> Path:
    """`path` itself for a local file; for a shard of a mirror, the cached copy, fetched first if it is not
    there (checked against its manifest's sha256; fetched again after a dropped connection or a wrong hash)."""
    if path.exists():
        if (held := _mirror_of(path)) is not None:
            _touch(path, held[0].parent.parent)
        return path
    found = _mirror_of(path)
    if found is None:
        return path
    mirror, url = found
    cache = mirror.parent.parent
    entry = _expected(path.parent, path.name)
    rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(mirror)).as_posix()
    remote = _join(url, rel)
    with _locked(path.parent / f".{path.name}.lock"):
        if path.exists():  # another process fetched it meanwhile
            _count(cache, hits=1)
            return path
        nbytes = _download(remote, path, None if entry is None else entry.get("sha256"))
        _count(cache, misses=1, fetched=nbytes)
    if entry is not None:
        with _locked(cache / ".lock"):
            held = _read_json(path.parent / STATE, {})
            held[path.name] = entry["sha256"]
            _write_json(path.parent / STATE, held)
    evict(keep=path, cache=cache)
    return path


def _touch(path: Path, cache: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)
    _count(cache, hits=1)


def _download(url: str, dest: Path, sha256: str | None) -> int:
    """Stream `url` into `dest` through a temporary name, hashing as it comes; retried."""
    from webdataset.gopen import gopen

    register_gopen()
    fs, path = filesystem(url)
    try:
        fs.info(path)
    except FileNotFoundError as e:
        raise _remote_error(url, e) from e
    except Exception:
        pass  # a server without HEAD: the download says what is wrong
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    problem = ""
    for attempt in range(ATTEMPTS):
        h, n = hashlib.sha256(), 0
        try:
            with gopen(url, "rb") as src, open(tmp, "wb") as out:
                while block := src.read(1 << 22):
                    h.update(block)
                    out.write(block)
                    n += len(block)
            if sha256 is None or h.hexdigest() == sha256:
                os.replace(tmp, dest)
                return n
            problem = f"its sha256 is not the manifest's after {n} bytes (truncated or changed)"
        except FileNotFoundError as e:
            tmp.unlink(missing_ok=True)
            raise _remote_error(url, e) from e
        except Exception as e:  # a dropped connection, a server error
            problem = first_line(e)
        tmp.unlink(missing_ok=True)
        time.sleep(0.25 * 2 ** attempt)
    raise DatasetError(f"{public_url(url)}: download failed {ATTEMPTS} times ({problem}); nothing was read from it")


def _count(cache: Path, *, hits: int = 0, misses: int = 0, fetched: int = 0) -> None:
    stats = cache / ".stats.json"
    with _locked(cache / ".stats.lock"):
        s = _read_json(stats, {})
        s["hits"], s["misses"] = s.get("hits", 0) + hits, s.get("misses", 0) + misses
        s["fetched_bytes"] = s.get("fetched_bytes", 0) + fetched
        _write_json(stats, s)


def cache_stats() -> dict[str, int]:
    """Shard reads served from the cache (hits), fetched (misses) and bytes fetched, by every process, since the
    cache was made (or since `reset_cache_stats`)."""
    s = _read_json(cache_dir() / ".stats.json", {})
    return {k: int(s.get(k, 0)) for k in ("hits", "misses", "fetched_bytes")}


def reset_cache_stats() -> None:
    (cache_dir() / ".stats.json").unlink(missing_ok=True)


def _shard_files(root: Path) -> Iterator[Path]:
    for folder, _dirs, names in os.walk(root / "roots"):
        for name in names:
            if name.endswith(".tar"):
                yield Path(folder) / name


def _cached_bytes(root: Path) -> int:
    total = 0
    for p in _shard_files(root):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def evict(*, keep: Path | None = None, limit: int | None = None, cache: Path | None = None) -> int:
    """Delete cached shards, least recently used first, until the cache is within its bound; only shards the
    remote holds (never one waiting to be published), never `keep`. Returns the bytes freed. A reader that has
    the file open keeps reading it (its data stays until closed)."""
    root = cache_dir() if cache is None else cache
    limit = cache_limit(root) if limit is None else limit
    freed = 0
    with _locked(root / ".lock"):
        files = []
        for p in _shard_files(root):
            with contextlib.suppress(OSError):
                st = p.stat()
                files.append((max(st.st_atime, st.st_mtime), st.st_size, p))
        total = sum(size for _, size, _ in files)
        held_by_folder: dict[Path, dict[str, str]] = {}
        for _, size, p in sorted(files):
            if total <= limit:
                break
            if keep is not None and p == keep:
                continue
            held = held_by_folder.setdefault(p.parent, _read_json(p.parent / STATE, {}))
            if p.name not in held:
                continue  # not on the remote yet
            p.unlink(missing_ok=True)
            total -= size
            freed += size
    return freed


# ---- publishing ------------------------------------------------------------------------------------------------


def publish(folder: Path) -> None:
    """Upload what the manifest of mirrored `folder` lists and the remote lacks: each shard under a temporary
    key, moved into place, then the manifest itself (one PUT: a reader sees the old manifest or the new one).
    Nothing for a local folder."""
    found = _mirror_of(folder)
    if found is None:
        return
    mirror, url = found
    if urlsplit(url).scheme.lower() in READ_ONLY:
        raise DatasetError(f"{public_url(url)}: http(s) roots are read-only")
    rel = folder.relative_to(mirror).as_posix() if folder != mirror else ""
    fs, base = filesystem(_join(url, rel))
    manifest = _read_json(folder / MANIFEST, {})
    held = _read_json(folder / STATE, {})
    for e in manifest.get("shards", []):
        if held.get(e["name"]) == e["sha256"]:
            continue
        _put_atomic(fs, folder / e["name"], _join(base, e["name"]), _join(_join(url, rel), e["name"]))
        held[e["name"]] = e["sha256"]
    _put_atomic(fs, folder / MANIFEST, _join(base, MANIFEST), _join(_join(url, rel), MANIFEST), direct=True)
    with _locked(mirror.parent.parent / ".lock"):
        _write_json(folder / STATE, held)


def _put_atomic(fs: Any, src: Path, dest: str, shown: str, *, direct: bool = False) -> None:
    """Upload `src` to `dest`: a single PUT (`direct`, for small files) or under a temporary key that is then
    moved into place (a killed upload leaves only a `.partial-*` key, which no reader looks at)."""
    last: BaseException | None = None
    for attempt in range(ATTEMPTS):
        tmp = f"{dest}.partial-{uuid.uuid4().hex[:12]}"
        try:
            if direct:
                fs.pipe_file(dest, src.read_bytes())
            else:
                fs.put_file(str(src), tmp)
                fs.mv(tmp, dest)
            return
        except Exception as e:
            last = e
            with contextlib.suppress(Exception):
                fs.rm(tmp)
            time.sleep(0.25 * 2 ** attempt)
    raise _remote_error(shown, last or OSError("upload failed"))


def push_files(paths: list[Path]) -> None:
    """Upload files of a mirror as they are (a rank's part shards and its summary, for rank 0 on another
    machine). Nothing for local files."""
    for path in paths:
        remote = _remote_url(path)
        if remote is None:
            continue
        fs, dest = filesystem(remote)
        _put_atomic(fs, path, dest, remote)


def pull_files(folder: Path) -> None:
    """Download every file under mirrored `folder` from the remote (what other machines pushed there)."""
    remote = _remote_url(folder)
    if remote is None:
        return
    fs, base = filesystem(remote)
    for rel in _listing(fs, base, remote):
        if ".partial-" in rel:
            continue
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            _download(_join(remote, rel), dest, None)


def remove_tree(folder: Path) -> None:
    """Delete mirrored `folder` on the remote too (a multi-machine pass's parts once assembled)."""
    remote = _remote_url(folder)
    if remote is None:
        return
    fs, base = filesystem(remote)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(base, recursive=True)


# ---- webdataset ------------------------------------------------------------------------------------------------


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> Any:
    fs, path = filesystem(url)
    return fs.open(path, mode)


def register_gopen() -> None:
    """Let webdataset's gopen (and so `webdataset.WebDataset(url)`) open s3:// and gs:// URLs through fsspec;
    http(s) stays with webdataset's own curl reader and its retries."""
    from webdataset.gopen import gopen_schemes

    for scheme in ("s3", "gs", "gcs"):
        gopen_schemes[scheme] = _gopen_fsspec
