"""`data.cache=stream`: a folder converted once into WebDataset shards; under DDP (gloo, 2 processes) each
rank reads a disjoint part of every epoch and the parts together are the whole set."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

pytest.importorskip("webdataset")

from datamodules.datasets import ImageFileDataset  # noqa: E402
from datamodules.errors import ConfigError  # noqa: E402
from datamodules.registry import load_dataset  # noqa: E402
from datamodules.streaming import ShardStream, epoch_ranges, take  # noqa: E402

N, WORLD, EPOCHS = 40, 2, 2


def write_numbered_folder(root, n=N):
    """Image i carries its number i in its first pixel, so a batch says which files it holds."""
    for i in range(n):
        (root / str(i % 2)).mkdir(parents=True, exist_ok=True)
        pixels = np.full((8, 8, 3), 200, np.uint8)
        pixels[0, 0, 0] = i
        Image.fromarray(pixels).save(root / str(i % 2) / f"{i:03d}.png")


def ids(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].add(1).mul(127.5).round().long().tolist()


def stream_options(tmp_path, **extra):
    return {**dict(image_size=8, channels=3, val_fraction=0.0, test_fraction=0.0, cache="stream",
                   cache_dir=str(tmp_path / "cache")), **extra}


def test_take_and_epoch_ranges_cut_the_shards_into_equal_disjoint_parts():
    assert take([(3, 0, 4), (1, 0, 4)], 2, 6) == [(3, 2, 4), (1, 0, 2)]
    sizes = [4] * 10 + [1]  # 41 samples, 3 ranks: 13 each, 2 left out this epoch
    for epoch in range(3):
        parts = [epoch_ranges(sizes, epoch, 0, r, 3) for r in range(3)]
        samples = [{(s, i) for s, a, b in part for i in range(a, b)} for part in parts]
        assert [len(s) for s in samples] == [13, 13, 13]
        assert not (samples[0] & samples[1] or samples[0] & samples[2] or samples[1] & samples[2])
        assert all(len({s for s, _, _ in part}) <= 13 // 4 + 2 for part in parts)  # a rank opens ~1/3 of the shards
    assert epoch_ranges(sizes, 0, 0, 0, 3) != epoch_ranges(sizes, 1, 0, 0, 3)  # a new shard order each epoch


def test_streamed_split_holds_the_folder_values_and_only_train_is_streamed(tmp_path):
    write_numbered_folder(tmp_path / "data")
    spec = {"name": "imagefolder", "root": str(tmp_path / "data")}
    splits = load_dataset(spec, **stream_options(tmp_path))
    stream = splits.train
    assert isinstance(stream, ShardStream) and len(stream) == N and stream.shape == (3, 8, 8)
    items = list(stream)
    files = ImageFileDataset(
        sorted(((p, int(p.parent.name)) for p in (tmp_path / "data").glob("*/*.png")), key=lambda s: s[0].name),
        image_size=8, channels=3)
    expected = {ids(files[i][0][None])[0]: (files[i][0], files[i][1]) for i in range(N)}
    assert sorted(ids(torch.stack([x for x, _ in items]))) == list(range(N))
    for x, y in items:
        x_file, y_file = expected[ids(x[None])[0]]
        assert y == y_file and torch.equal(x, x_file)
    with pytest.raises(ConfigError, match="data.num_labels"):
        stream.subset([0, 1])
    # val/test follow `auto` (decoded once); a second load reuses the shards
    split = load_dataset(spec, **stream_options(tmp_path, test_fraction=0.25))
    assert not isinstance(split.test, ShardStream) and len(split.test) == 10
    assert len(list((tmp_path / "cache" / "shards").iterdir())) == 2  # another split of the files: another key


def _rank(rank, port, root, cache_dir, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), NODE_RANK="0", RANK=str(rank))  # as Lightning's launcher sets them
    torch.set_num_threads(1)
    import pytorch_lightning as pl

    from datamodules.labeled import LabeledDataModule

    class Record(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, list[int]] = {}

        def training_step(self, batch, _):
            self.seen.setdefault(self.current_epoch, []).extend(ids(batch[0]))
            return (self.w * batch[0].mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    pl.seed_everything(0)
    dm = LabeledDataModule(dataset={"name": "imagefolder", "root": root}, image_size=8, channels=3, batch_size=4,
                           val_fraction=0.0, test_fraction=0.0, cache="stream", cache_dir=cache_dir,
                           num_workers=2 if rank == 0 else 0)  # worker split on one rank, none on the other
    model = Record()
    trainer = pl.Trainer(accelerator="cpu", devices=WORLD, strategy="ddp", max_epochs=EPOCHS, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    torch.save(model.seen, os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_ranks_read_disjoint_parts_whose_union_is_the_whole_set(tmp_path):
    write_numbered_folder(tmp_path / "data")
    # shards of 6: a rank's 20 samples span shard borders, so a rank reads parts of shards too
    from datamodules.decoded_cache import cache_key
    from datamodules import streaming

    files = load_dataset({"name": "imagefolder", "root": str(tmp_path / "data")},
                         **stream_options(tmp_path, cache="none")).train
    streaming.write_shards(files, tmp_path / "cache" / "shards" / cache_key(files), samples_per_shard=6)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path / "data"), str(tmp_path / "cache"), str(tmp_path)), nprocs=WORLD,
             join=True)
    seen = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for epoch in range(EPOCHS):
        a, b = seen[0][epoch], seen[1][epoch]
        assert len(a) == len(b) == N // WORLD  # the same number of batches on every rank
        assert len(set(a)) == len(a) and len(set(b)) == len(b)
        assert not set(a) & set(b)
        assert set(a) | set(b) == set(range(N))
    assert set(seen[0][0]) != set(seen[0][1])  # each epoch deals the shards anew
