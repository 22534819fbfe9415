"""Map-style datasets of `(image, label)` with images converted to what a method asks for.

Two kinds:
- `TensorImageDataset`: the whole split held as one uint8 tensor (N, C, H, W); conversion to the
  requested size and channel count happens once, in batches. This is the fast path for every
  dataset that fits in memory.
- `ImageFileDataset`: images read from files one by one: a folder over the memory budget or with
  `data.cache=none`; otherwise `decoded_cache` decodes a folder once into a `TensorImageDataset`.

Both return float images normalised to [-1, 1] (the same for every domain) and int labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .errors import DataFormatError

# ITU-R BT.601 luma, the weights PIL uses for "L" conversion.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def to_nchw_uint8(images) -> torch.Tensor:
    """Accept (N,H,W), (N,H,W,C) or (N,C,H,W) arrays, uint8 or floats in [0, 1]; return NCHW uint8."""
    array = np.asarray(images)
    x = torch.as_tensor(array if array.flags.writeable else array.copy())
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    elif x.ndim != 4:
        raise DataFormatError(f"images must have shape (N,H,W), (N,H,W,C) or (N,C,H,W); got {tuple(x.shape)}")
    if x.dtype.is_floating_point:
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise DataFormatError("float images must lie in [0, 1]; store uint8 0-255 otherwise")
        x = (x * 255).round()
    return x.to(torch.uint8).contiguous()


def convert_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Grayscale <-> RGB on a float (N, C, H, W) batch; None keeps the native channels."""
    if channels is None or x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] == 3 and channels == 1:
        return (x * _LUMA.to(x).view(1, 3, 1, 1)).sum(1, keepdim=True)
    raise DataFormatError(f"cannot convert {x.shape[1]}-channel images to {channels} channels (choices: 1, 3)")


def resize_batch(x: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """Resize a float batch to image_size x image_size (antialiased when shrinking)."""
    if image_size is None or tuple(x.shape[-2:]) == (image_size, image_size):
        return x
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)


def convert_uint8(images: torch.Tensor, image_size: int | None, channels: int | None, chunk: int = 4096) -> torch.Tensor:
    """Resize and channel-convert a uint8 NCHW tensor in chunks; returns uint8."""
    out = []
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].float()
        x = resize_batch(convert_channels(x, channels), image_size)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    if not out:
        c = channels or images.shape[1]
        s = image_size or images.shape[-1]
        return torch.empty(0, c, s, s, dtype=torch.uint8)
    return torch.cat(out)


def fetch_items(dataset: Dataset, indices: list[int]) -> list:
    """`[dataset[i] for i in indices]`, in one call when the dataset fetches batches (`__getitems__`)."""
    fetch = getattr(dataset, "__getitems__", None)
    return fetch(indices) if fetch is not None else [dataset[i] for i in indices]


class ItemView(Dataset):
    """A dataset whose items are another's, each passed through `item(original, index)` (one batched fetch
    when the wrapped dataset has one): hide labels, append positions, and the like."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def item(self, original, i: int):
        raise NotImplementedError

    def __getitem__(self, i):
        return self.item(self.dataset[i], i)

    def __getitems__(self, indices: list[int]) -> list:
        return [self.item(original, i) for original, i in zip(fetch_items(self.dataset, indices), indices)]


def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x_uint8.float().div(127.5).sub(1.0)


class TensorImageDataset(Dataset):
    """A split held in memory: `images` uint8 (N, C, H, W), `labels` int64 (N,)."""

    def __init__(self, images: torch.Tensor, labels, image_size: int | None = None, channels: int | None = None):
        self.images = convert_uint8(to_nchw_uint8(images), image_size, channels)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if len(self.images) != len(self.labels):
            raise DataFormatError(f"{len(self.images)} images but {len(self.labels)} labels")

    @classmethod
    def from_uint8(cls, images: torch.Tensor, labels: torch.Tensor) -> "TensorImageDataset":
        """Images already converted (uint8 N, C, H, W), e.g. a decoded image folder: nothing is copied."""
        new = object.__new__(cls)
        new.images, new.labels = images, torch.as_tensor(labels, dtype=torch.long)
        return new

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return normalize(self.images[i]), int(self.labels[i])

    def __getitems__(self, indices: list[int]) -> list:
        """A DataLoader batch in one gather and one normalisation (the DataLoader calls this instead of
        `__getitem__` per index); the same items as `[self[i] for i in indices]`."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(normalize(self.images[idx]).unbind(0), self.labels[idx].tolist()))

    def subset(self, indices) -> "TensorImageDataset":
        new = object.__new__(TensorImageDataset)
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        new.images, new.labels = self.images[idx], self.labels[idx]
        return new

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def _jpeg_decoder() -> str:
    try:
        import simplejpeg  # noqa: F401  (libjpeg-turbo; the extra `fast` installs it)
    except ImportError:
        return "pillow"
    return "simplejpeg"


JPEG_DECODER = _jpeg_decoder()


def _simplejpeg_read(path: Path, image_size: int, channels: int | None) -> np.ndarray | None:
    """A JPEG decoded by libjpeg-turbo at the smallest DCT scale >= image_size (Pillow's draft mode does
    the same, slower); None when simplejpeg cannot read it, so Pillow gives the error or reads the rare
    format (CMYK, arithmetic coding)."""
    import simplejpeg

    data = Path(path).read_bytes()
    try:
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
        grey = channels == 1 or (channels is None and colorspace == "Gray")
        arr = simplejpeg.decode_jpeg(data, colorspace="GRAY" if grey else "RGB", min_height=image_size,
                                     min_width=image_size)
    except ValueError:
        return None
    return arr[..., 0] if grey else arr


class ImageFileDataset(Dataset):
    """Images read from files on access: `samples` is a list of (path, label)."""

    def __init__(self, samples: list[tuple[Path, int]], image_size: int | None, channels: int | None):
        self.samples = list(samples)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)
        self.image_size, self.channels = image_size, channels
        first = self.read(self.samples[0][0]) if self.samples else None
        self.native_channels = None if first is None else first.shape[0]

    def read(self, path: Path) -> torch.Tensor:
        """One file as uint8 (C, H, W) at its own size (a JPEG: at the smallest DCT scale still at least
        data.image_size), in the requested channels."""
        if JPEG_DECODER == "simplejpeg" and self.image_size is not None and Path(path).suffix.lower() in (".jpg", ".jpeg"):
            arr = _simplejpeg_read(path, self.image_size, self.channels)
            if arr is not None:
                return to_nchw_uint8(arr[None])[0]
        try:
            with Image.open(path) as img:
                if self.image_size is not None and img.format == "JPEG":
                    # Decode at the smallest DCT scale (1/2, 1/4, 1/8) still >= the target size: a large
                    # photo decodes several times faster; the resize below does the rest.
                    img.draft("RGB" if self.channels != 1 else "L", (self.image_size, self.image_size))
                img.load()
                mode = {1: "L", 3: "RGB"}.get(self.channels) or ("L" if img.mode in ("1", "L", "I", "I;16") else "RGB")
                arr = np.asarray(img.convert(mode))
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataFormatError(f"cannot read image {path}: {err}. Remove or replace the file.") from err
        return to_nchw_uint8(arr[None])[0]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        x = resize_batch(self.read(path)[None].float(), self.image_size)
        return x[0].round().clamp(0, 255).div(127.5).sub(1.0), label

    def subset(self, indices) -> "ImageFileDataset":
        new = object.__new__(ImageFileDataset)
        new.__dict__.update(self.__dict__)
        new.samples = [self.samples[i] for i in indices]
        new.labels = self.labels[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
        return new

    @property
    def shape(self) -> tuple[int, int, int]:
        x, _ = self[0]
        return tuple(x.shape)
