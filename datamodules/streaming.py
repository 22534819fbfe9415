"""Folders larger than memory, on one machine or many: `data.cache=stream`.

The train split is converted once into WebDataset shards (plain POSIX tar files, one `<key>.npy` image and
one `<key>.cls` label per sample; `tar tf` lists them), written next to the decoded cache in
`data.cache_dir/shards/<key>/` under the same key (file list, sizes, modification times, conversion), so a
changed file gives new shards. The images are stored as decoded at `data.image_size` (uint8), so reading
a shard costs no decoding. `index.json` lists the shards, their sample counts, the labels and the shape.

Every epoch, the shard order is permuted with a seed shared by all processes (`seed`, `epoch`); the
concatenated sequence of N samples is cut into `world_size` contiguous parts of N // world_size samples,
one per DDP rank (node x device), and a rank's part again into one part of whole batches per DataLoader
worker. A rank therefore opens only the shards its part touches (about 1/world_size of them, plus the two
it shares at its borders), the ranks' parts are disjoint, and every rank yields the same number of full
batches, floor(N / world_size / batch_size), whatever its worker count (DDP needs that). Their union is
the whole set less at most world_size - 1 + world_size x (batch_size - 1) samples at the end of that
epoch's order (as `DistributedSampler(drop_last=True)` with `drop_last` batches), a different few each
epoch. Within a part, samples pass a seeded shuffle buffer.

Why WebDataset: tar shards are a standard any tool reads, the package is small (pure Python, needs
numpy, pyyaml and braceexpand) and maintained; LitData (Lightning's) pulls boto3, obstore, requests and
tifffile for the same local-disk use. The rank/worker split above is ours (a few lines), so the
disjointness does not depend on how many shards divide among the ranks.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from .datasets import ImageFileDataset, normalize, resize_batch
from .errors import ConfigError

log = logging.getLogger(__name__)

SHARD_BYTES = 64_000_000  # decoded bytes per shard (a shard is one sequential read)
SHUFFLE_BUFFER = 2048


def _import_webdataset():
    try:
        import webdataset
    except ImportError as err:
        raise ConfigError("data.cache=stream needs the package webdataset: pip install 'transferlab[stream]' "
                          "(or pip install webdataset)") from err
    return webdataset


def _decode(files: ImageFileDataset, i: int) -> np.ndarray:
    x = resize_batch(files.read(files.samples[i][0])[None].float(), files.image_size)
    return x[0].round().clamp(0, 255).to(torch.uint8).numpy()


def write_shards(files: ImageFileDataset, out: Path, samples_per_shard: int | None = None,
                 where: str = "data") -> Path:
    """Convert `files` once into shards under `out` (written to a temporary folder, then renamed, so a
    killed conversion leaves nothing half-written). Returns the path of `index.json`."""
    wds = _import_webdataset()
    index = out / "index.json"
    if index.is_file():
        return index
    c, h, w = files.shape
    per_shard = samples_per_shard or max(1, SHARD_BYTES // (c * h * w))
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sizes = []
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool, \
            tqdm(total=len(files), desc=f"writing shards {where}", unit="img", disable=None, leave=False) as bar:
        for s, start in enumerate(range(0, len(files), per_shard)):
            stop = min(start + per_shard, len(files))
            with wds.TarWriter(str(tmp / f"shard-{s:06d}.tar")) as sink:  # decoded in threads, one shard at a time
                for i, image in zip(range(start, stop), pool.map(lambda i: _decode(files, i), range(start, stop))):
                    sink.write({"__key__": f"{i:09d}", "npy": image, "cls": int(files.samples[i][1])})
                    bar.update()
            sizes.append(stop - start)
    (tmp / "index.json").write_text(json.dumps({
        "shards": [f"shard-{s:06d}.tar" for s in range(len(sizes))], "sizes": sizes, "shape": [c, h, w],
        "labels": [int(label) for _, label in files.samples]}))
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: %d images converted once into %d shards in %s", where, len(files), len(sizes), out)
    return index


def take(ranges: list[tuple[int, int, int]], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """The positions [lo, hi) of the sequence that `ranges` [(shard, start, stop), ...] spells out."""
    out, pos = [], 0
    for shard, start, stop in ranges:
        a, b = max(lo, pos), min(hi, pos + stop - start)
        if a < b:
            out.append((shard, start + a - pos, start + b - pos))
        pos += stop - start
    return out


def epoch_ranges(sizes: list[int], epoch: int, seed: int, rank: int, world_size: int) -> list[tuple[int, int, int]]:
    """The (shard, start, stop) sample ranges of `rank` in `epoch`: the shards in an order every rank
    draws alike, cut into `world_size` contiguous parts of N // world_size samples."""
    order = np.random.default_rng([seed, epoch]).permutation(len(sizes))
    per_rank = sum(sizes) // world_size
    return take([(int(s), 0, sizes[s]) for s in order], rank * per_rank, (rank + 1) * per_rank)


class ShardStream(IterableDataset):
    """The train split streamed from shards: (normalised image, label) items, as the other datasets give."""

    def __init__(self, index: Path, seed: int = 0, shuffle_buffer: int = SHUFFLE_BUFFER):
        meta = json.loads(Path(index).read_text())
        self.root, self.shards, self.sizes = Path(index).parent, meta["shards"], meta["sizes"]
        self.labels = torch.tensor(meta["labels"], dtype=torch.long)
        self.image_shape = tuple(meta["shape"])
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.rank, self.world_size, self.batch_size = 0, 1, 1
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()  # read by (persistent) workers

    def distributed(self, rank: int, world_size: int, batch_size: int) -> "ShardStream":
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        return self

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return sum(self.sizes) // self.world_size

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image_shape

    def __getitem__(self, i):
        raise ConfigError("data.cache=stream: this method's data module indexes samples one by one; the "
                          "streamed split serves datamodules that read the train split in order "
                          "(supervised, finetune). Use data.cache=auto or none here")

    def subset(self, indices):
        raise ConfigError("data.cache=stream streams the whole train split; data.num_labels (a labeled "
                          "subset) needs data.cache=auto, memory, disk or none")

    def ranges(self) -> list[tuple[int, int, int]]:
        """This process's sample ranges in the current epoch: its rank's part, then its worker's whole
        batches (the last worker also gets the remainder, which the DataLoader's drop_last drops)."""
        mine = epoch_ranges(self.sizes, int(self._epoch), self.seed, self.rank, self.world_size)
        info = get_worker_info()
        if info is None:
            return mine
        n = sum(stop - start for _, start, stop in mine)
        batches, w, workers = n // self.batch_size, info.id, info.num_workers
        stop = n if w == workers - 1 else (w + 1) * batches // workers * self.batch_size
        return take(mine, w * batches // workers * self.batch_size, stop)

    def read(self, shard: int, start: int, stop: int) -> Iterator[tuple[np.ndarray, int]]:
        wds = _import_webdataset()
        samples = wds.tariterators.tarfile_samples([{"url": str(self.root / self.shards[shard])}])
        for i, sample in enumerate(samples):
            if i >= stop:
                break
            if i >= start:
                yield np.load(io.BytesIO(sample["npy"]), allow_pickle=False), int(sample["cls"])

    def __iter__(self):
        info = get_worker_info()
        rng = random.Random(hash((self.seed, int(self._epoch), self.rank, info.id if info else 0)))
        buffer: list = []
        for shard, start, stop in self.ranges():
            for item in self.read(shard, start, stop):
                buffer.append(item)
                if len(buffer) >= self.shuffle_buffer:
                    yield self._item(buffer.pop(rng.randrange(len(buffer))))
        rng.shuffle(buffer)
        for item in buffer:
            yield self._item(item)

    @staticmethod
    def _item(item: tuple[np.ndarray, int]) -> tuple[torch.Tensor, int]:
        return normalize(torch.from_numpy(item[0])), item[1]


class StreamLoader(DataLoader):
    """A DataLoader over a `ShardStream` that tells it the epoch (`epoch_of()`) each time an epoch starts."""

    def __init__(self, dataset: ShardStream, epoch_of: Callable[[], int], **kwargs):
        super().__init__(dataset, **kwargs)
        self.epoch_of = epoch_of

    def __iter__(self):
        self.dataset.set_epoch(self.epoch_of())
        return super().__iter__()
