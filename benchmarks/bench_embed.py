"""Throughput of ``daskdict.embed`` against the model's bare forward passes.

A randomly initialised ViT-Base (``ViTConfig()``: 12 layers, width 768, 224 px, patch 16;
``--config small`` for a 6-layer width-384 one) is saved with a ``ViTImageProcessor`` to a
temporary folder, and N synthetic JPEGs (smooth random content, random sizes 256-512 px) are
written to another. Then, in the same process and on the same batches:

1. bare forward: every image is decoded and preprocessed beforehand (not timed); the timed part
   is only the model's forward passes, ``model(pixel_values=batch, output_hidden_states=True)``
   under ``torch.inference_mode`` in the run's precision, batch after batch (after one untimed
   warm-up batch);
2. embed: ``daskdict.embed(folder, store, model=folder, batch_size=B, layers="all")`` timed end
   to end: loading the model, decoding and preprocessing (in its loader threads), the forward
   passes, and writing 13 hidden layers + final to the store.

Reported: images per second of the whole ``embed`` run, and the ratio embed time / bare forward
time. Bar: ratio <= 1.25 (decoding, preprocessing and writing overlap the forward passes).

    python benchmarks/bench_embed.py                      # 256 images, ViT-Base
    python benchmarks/bench_embed.py --n-images 64 --config small   # quick check
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import table, verdict, wait_until_idle, write_json

BAR = 1.25


def write_jpegs(folder: Path, n_images: int, seed: int = 0) -> None:
    """``n_images`` smooth random JPEGs of random sizes (256-512 px per side)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        small = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        size = tuple(int(s) for s in rng.integers(256, 513, 2))
        Image.fromarray(small).resize(size, Image.BICUBIC).save(folder / f"{i:05d}.jpg",
                                                                quality=90)


def save_model(folder: Path, config_name: str) -> None:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig() if config_name == "base" else ViTConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536)
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": config.image_size, "width": config.image_size}) \
        .save_pretrained(folder)


def bare_forward_seconds(model_dir: Path, images: list[Path], batch_size: int, device: str,
                         precision: str) -> float:
    """Wall time of the forward passes alone, over the batches ``embed`` uses."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, ViTModel

    processor = AutoImageProcessor.from_pretrained(model_dir)
    dtype = getattr(torch, precision)
    model = ViTModel.from_pretrained(model_dir).to(device=device, dtype=dtype).eval()
    batches = []
    for start in range(0, len(images), batch_size):
        pictures = []
        for path in images[start:start + batch_size]:
            with Image.open(path) as image:
                pictures.append(image.convert("RGB"))
        pixels = processor(images=pictures, return_tensors="pt")["pixel_values"]
        batches.append(pixels.to(device=device, dtype=dtype))
    with torch.inference_mode():
        model(pixel_values=batches[0], output_hidden_states=True)  # warm-up
        _synchronize(device)
        start = time.perf_counter()
        for pixels in batches:
            out = model(pixel_values=pixels, output_hidden_states=True)
            # what embed takes from each batch, so both wait for the same results
            torch.stack([h[:, 0] for h in out.hidden_states], 1).float().cpu()
        _synchronize(device)
        return time.perf_counter() - start


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def preprocess_seconds(model_dir: Path, images: list[Path]) -> float:
    """Decoding and preprocessing alone, one thread (the work the loader overlaps)."""
    from transformers import AutoImageProcessor

    from daskdict.embedding.items import to_rgb

    processor = AutoImageProcessor.from_pretrained(model_dir)
    start = time.perf_counter()
    for path in images:
        processor(images=to_rgb(path), return_tensors="np")
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--config", choices=("base", "small"), default="base")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None, help="embed's loader threads")
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help="seconds to wait for other processes to leave the CPU")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)

    import torch

    import daskdict

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = "float16" if device.startswith("cuda") else "float32"
    root = Path(tempfile.mkdtemp(prefix="daskdict-bench-embed-"))
    try:
        print(f"writing {args.n_images} JPEGs and a random ViT-{args.config} to {root}",
              flush=True)
        write_jpegs(root / "images", args.n_images)
        save_model(root / "model", args.config)
        images = sorted((root / "images").glob("*.jpg"))
        busy = wait_until_idle(max_wait=args.wait_idle)

        bare = bare_forward_seconds(root / "model", images, args.batch_size, device, precision)
        print(f"bare forward passes: {bare:.2f} s", flush=True)
        start = time.perf_counter()
        store = daskdict.embed(root / "images", root / "embeddings.zarr", model=root / "model",
                               batch_size=args.batch_size, device=device, precision=precision,
                               num_workers=args.workers, verbose=False)
        whole = time.perf_counter() - start
        print(f"embed: {whole:.2f} s", flush=True)
        assert store.n_items == args.n_images and store.attrs["embed"]["n_failed"] == 0
        prep = preprocess_seconds(root / "model", images)

        ratio = whole / bare
        workers = args.workers or min(8, max(1, (os.cpu_count() or 2) - 1))
        rows = [[args.n_images, args.batch_size, f"{device} ({precision})",
                 torch.get_num_threads(), workers, bare, whole, args.n_images / whole,
                 args.n_images / bare, prep, ratio, verdict(ratio <= BAR)]]
        table(["images", "batch", "device", "torch threads", "loader threads",
               "bare forward s", "embed s", "embed img/s", "bare img/s",
               "decode+preprocess s (1 thread)", "embed / bare", f"<= {BAR}"], rows,
              title=f"daskdict.embed, random ViT-{args.config}, {len(store.layer_names)} "
                    "layers stored")
        write_json("bench_embed", {
            "n_images": args.n_images, "batch_size": args.batch_size, "config": args.config,
            "device": device, "precision": precision, "torch_threads": torch.get_num_threads(),
            "loader_threads": workers, "bare_forward_seconds": bare, "embed_seconds": whole,
            "embed_images_per_second": args.n_images / whole,
            "bare_images_per_second": args.n_images / bare,
            "decode_preprocess_seconds_one_thread": prep, "ratio": ratio, "bar": BAR,
            "passed": ratio <= BAR, "cpu_busy_percent_before": busy,
            "torch": torch.__version__})
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
