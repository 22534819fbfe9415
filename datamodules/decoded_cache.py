"""Decode an image folder once: `data.cache=auto|memory|disk|none`.

Reading a PNG or JPEG at every training step costs more than a small network's step on a CPU. A split
whose decoded size fits the memory budget is decoded a single time (threads, a progress bar) into one
uint8 tensor, so it takes the in-memory path of the embedded datasets (batched gathers, batched
augmentation on the device).

- `auto` (default): `disk` when the decoded split fits the budget, else `none`, saying which.
- `memory`: decode once per run, keep nothing on disk.
- `disk`: as `memory`, and keep the decoded tensor in `data.cache_dir` (a `.npy` file, read without
  pickle), keyed by the split's file list, sizes, modification times and the conversion; a second run of
  the same folder loads it in seconds, a changed, added or removed file gives another key (a rebuild).
- `none`: read each image from its file when the DataLoader asks for it (any size of folder).
- `stream`: the train split converted once into shards and streamed, each DDP rank reading its own part
  (`datamodules/streaming.py`); val and test follow `auto`.

The budget is `data.cache_max_gb`, or half of the memory available when the run starts.
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .datasets import JPEG_DECODER, ImageFileDataset, TensorImageDataset, resize_batch
from .errors import ConfigError

log = logging.getLogger(__name__)

CACHE_CHOICES = ("auto", "memory", "disk", "none", "stream")
FORMAT_VERSION = 1  # bump when the decoded values of a file change (resize rule, channel rule)


def check_cache_option(cache: str, cache_max_gb: float | None) -> None:
    if cache not in CACHE_CHOICES:
        raise ConfigError(f"data.cache={cache!r} is not an option; choices: {', '.join(CACHE_CHOICES)}")
    if cache_max_gb is not None and not cache_max_gb > 0:
        raise ConfigError(f"data.cache_max_gb={cache_max_gb} must be > 0 (or null: half the available memory)")


def default_cache_dir() -> Path:
    """$TRANSFERLAB_CACHE_DIR, else $XDG_CACHE_HOME/transferlab, else ~/.cache/transferlab."""
    if os.environ.get("TRANSFERLAB_CACHE_DIR"):
        return Path(os.environ["TRANSFERLAB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transferlab"


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); free physical pages elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def memory_budget_bytes(cache_max_gb: float | None) -> int:
    return int(cache_max_gb * 1e9) if cache_max_gb is not None else available_memory_bytes() // 2


def decoded_bytes(files: ImageFileDataset) -> int:
    """Size of the split once decoded: every image has the first one's converted shape (the loader
    checked that sizes agree, or data.image_size resizes all of them)."""
    c, h, w = files.shape
    return len(files) * c * h * w


def cache_key(files: ImageFileDataset) -> str:
    """Changes when any file of the split changes (path, size, modification time) or the conversion does."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}|{JPEG_DECODER}|{files.image_size}|{files.channels}".encode())
    for path, label in files.samples:
        stat = os.stat(path)
        digest.update(f"|{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{label}".encode())
    return digest.hexdigest()[:32]


def decode_all(files: ImageFileDataset, where: str) -> torch.Tensor:
    """Every image of the split as one uint8 (N, C, H, W) tensor: the values `files[i]` gives, before
    normalisation. Decoding runs in threads (Pillow releases the GIL while it decodes)."""
    c, h, w = files.shape
    out = torch.empty(len(files), c, h, w, dtype=torch.uint8)

    def decode(i: int) -> None:
        x = resize_batch(files.read(files.samples[i][0])[None].float(), files.image_size)
        out[i] = x[0].round().clamp(0, 255).to(torch.uint8)

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(decode, range(len(files))), total=len(files), desc=f"decoding {where}",
                      unit="img", disable=None, leave=False):
            pass
    return out


def _load_cached(path: Path, files: ImageFileDataset) -> torch.Tensor | None:
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:  # truncated or foreign file: rebuild it
        log.warning("decoded cache %s unreadable (%s); decoding again", path, err)
        return None
    if images.dtype != np.uint8 or images.shape != (len(files), *files.shape):
        log.warning("decoded cache %s has shape %s, expected %s; decoding again", path, images.shape,
                    (len(files), *files.shape))
        return None
    return torch.from_numpy(images)


def _save_cached(path: Path, images: torch.Tensor) -> None:
    """Written to a temporary name and renamed, so a killed run or a second process never leaves half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, images.numpy(), allow_pickle=False)
        os.replace(tmp, path)
    except OSError as err:  # a read-only or full cache dir costs the next run a decode, nothing else
        log.warning("could not write the decoded cache %s: %s", path, err)


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def cached_file_dataset(files: ImageFileDataset, cache: str, cache_dir: str | None, cache_max_gb: float | None,
                        where: str, train: bool = False):
    """`files` decoded once (a `TensorImageDataset`) when `cache` and the budget allow, streamed from shards
    (`stream`, the train split), else `files`."""
    check_cache_option(cache, cache_max_gb)
    if cache == "stream" and len(files) and train:
        from .streaming import ShardStream, write_shards

        return ShardStream(write_shards(files, cache_root(cache_dir) / "shards" / cache_key(files), where=where))
    cache = "auto" if cache == "stream" else cache
    if cache == "none" or len(files) == 0:
        return files
    need, budget = decoded_bytes(files), memory_budget_bytes(cache_max_gb)
    if need > budget:
        message = (f"{where}: decoded, the split needs {need / 1e9:.2f} GB, over the cache budget "
                   f"{budget / 1e9:.2f} GB (data.cache_max_gb, default half the available memory)")
        if cache != "auto":
            raise ConfigError(f"data.cache={cache}: {message}; use data.cache=auto or none to read files per step")
        log.info("%s: reading the images from their files at every step (data.cache=auto; data.cache=stream "
                 "converts the train split once into shards instead)", message)
        return files
    path = None
    if cache in ("auto", "disk"):
        path = cache_root(cache_dir) / "decoded" / f"{cache_key(files)}.npy"
        images = _load_cached(path, files) if path.is_file() else None
        if images is not None:
            log.info("%s: %d decoded images from the cache %s", where, len(files), path)
            return TensorImageDataset.from_uint8(images, files.labels)
    images = decode_all(files, where)
    if path is not None:
        _save_cached(path, images)
    log.info("%s: decoded %d images once (%.0f MB in memory, data.cache=%s)", where, len(files), need / 1e6, cache)
    return TensorImageDataset.from_uint8(images, files.labels)
