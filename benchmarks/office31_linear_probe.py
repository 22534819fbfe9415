"""Reference for the Office-31 tables: a logistic regression on frozen ImageNet EfficientNet-Lite0 features.

The calibration the ImageNet-transfer issue quotes (about 90% on webcam) is of this kind. Here the regression
is fitted on every photo of the source domain and scored on every photo of the target domain (source-only
transfer with the best-converged head the features allow), at each `--image-size`: what a source-only run
can expect from the features alone, beside `benchmarks/office31_da.py`.

    python benchmarks/office31_linear_probe.py --image-size 112 224
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "office31"


def features(net: torch.nn.Module, folder: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Frozen features of every `folder/<class>/*.jpg`, resized to a `size` square, and the class indices."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((folder / c).glob("*.jpg"))]
    out = []
    for start in range(0, len(files), 64):
        images = [np.array(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f, _ in files[start:start + 64]]
        with torch.no_grad():
            out.append(net(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255).numpy())
    return np.concatenate(out), np.array([i for _, i in files])


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from lightning_modules.components.backbones import create_backbone

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=["amazon:webcam", "webcam:amazon"], help="source:target")
    parser.add_argument("--image-size", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    net = create_backbone(name="tf_efficientnet_lite0", pretrained=True, in_chans=3).eval()  # normalises its input
    print("| source -> target | image size | target accuracy (%) |\n|---|---|---|")
    for size in args.image_size:
        cached = {}
        for pair in args.pairs:
            source, target = pair.split(":")
            for domain in (source, target):
                if domain not in cached:
                    cached[domain] = features(net, args.data / domain, size)
            (xs, ys), (xt, yt) = cached[source], cached[target]
            scaler = StandardScaler().fit(xs)
            head = LogisticRegression(max_iter=2000, C=0.1).fit(scaler.transform(xs), ys)
            print(f"| {source} -> {target} | {size} | {100 * head.score(scaler.transform(xt), yt):.1f} |", flush=True)


if __name__ == "__main__":
    main()
