"""Seconds per image of ``daskdict.decompose`` against the model's plain forward pass.

A randomly initialised ViT-Base (``ViTConfig()``: 12 layers, width 768, 12 heads, 224 px, patch
16; ``--quick``: 6 layers, width 384, 6 heads) is saved with a ``ViTImageProcessor`` to a
temporary folder; N random 224 x 224 RGB arrays are the images. Both sides run the model with
eager attention, in float32, on the CPU (or ``--device``), with the same batch size:

1. plain forward: the images are preprocessed beforehand (not timed); the timed part is the
   model's forward passes, ``model(pixel_values=batch)`` under ``torch.inference_mode``, batch
   after batch (after one untimed warm-up batch);
2. decompose: ``daskdict.decompose(images, store, model, batch_size=B)`` (the last ten blocks,
   ``1 + 10 * 13`` components), timed end to end: loading the model, preprocessing (in its
   loader threads), the forward pass and the decomposition, and writing the store. Loading the
   model is also timed on its own, and reported as the fixed cost of a call.

Each is run three times, alternately; the median is reported, as seconds per image, and the ratio
decompose / plain forward, end to end and without the fixed cost. Bar: ratio <= 2 (without the
fixed cost, which does not grow with the images).

    python benchmarks/bench_decompose.py            # 24 images, ViT-Base (a few minutes)
    python benchmarks/bench_decompose.py --quick    # 8 images, a 6-layer width-384 ViT
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import table, verdict, wait_until_idle, write_json

BAR = 2.0
REPEATS = 3


def save_model(folder: Path, quick: bool) -> None:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                       intermediate_size=1536) if quick else ViTConfig()
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": config.image_size, "width": config.image_size}) \
        .save_pretrained(folder)


def plain_forward(model_dir: Path, images: list[np.ndarray], batch_size: int, device: str):
    """A function timing the forward passes alone (eager attention) over the preprocessed
    batches, after one untimed warm-up batch."""
    import torch
    from transformers import AutoImageProcessor, ViTModel

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = ViTModel.from_pretrained(model_dir, attn_implementation="eager").to(device).eval()
    batches = [processor(images=images[s:s + batch_size], return_tensors="pt")["pixel_values"]
               .to(device) for s in range(0, len(images), batch_size)]
    with torch.inference_mode():
        model(pixel_values=batches[0])

    def seconds() -> float:
        with torch.inference_mode():
            _synchronize(device)
            start = time.perf_counter()
            for pixels in batches:
                model(pixel_values=pixels).last_hidden_state[:, 0].cpu()
            _synchronize(device)
            return time.perf_counter() - start

    return seconds


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load_seconds(model_dir: Path, device: str) -> float:
    """Loading the model as decompose does (the fixed cost of a call)."""
    import torch
    from transformers import AutoConfig

    from daskdict.decomposition.vision import load_vision

    start = time.perf_counter()
    load_vision(model_dir, AutoConfig.from_pretrained(model_dir).model_type,
                torch.device(device), torch)
    return time.perf_counter() - start


def decompose_seconds(model_dir: Path, images: list[np.ndarray], batch_size: int,
                      device: str, store: Path) -> tuple[float, int]:
    """Wall time of a whole decompose call; and the components it wrote."""
    import daskdict

    start = time.perf_counter()
    written = daskdict.decompose(images, store, model_dir, batch_size=batch_size, device=device,
                                 verbose=False)
    seconds = time.perf_counter() - start
    assert written.n_items == len(images) and written.attrs["embed"]["n_failed"] == 0
    n_components = len(daskdict.decomposition.component_layers(written))
    shutil.rmtree(store)
    return seconds, n_components


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="8 images, a 6-layer width-384 ViT")
    p.add_argument("--n-images", type=int, default=None, help="default 24 (8 with --quick)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--wait-idle", type=float, default=30.0,
                   help="seconds to wait for other processes to leave the CPU")
    args = p.parse_args(argv)

    import torch

    n_images = args.n_images or (8 if args.quick else 24)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(n_images)]
    root = Path(tempfile.mkdtemp(prefix="daskdict-bench-decompose-"))
    try:
        save_model(root / "model", args.quick)
        busy = wait_until_idle(max_wait=args.wait_idle)
        timed_plain = plain_forward(root / "model", images, args.batch_size, args.device)
        plain, whole = [], []
        # alternated, so that both sides meet the same load on a shared machine
        for repeat in range(REPEATS):
            plain.append(timed_plain())
            seconds, n_components = decompose_seconds(root / "model", images, args.batch_size,
                                                      args.device, root / f"d{repeat}.zarr")
            whole.append(seconds)
            print(f"run {repeat + 1}: plain forward {plain[-1]:.2f} s, decompose "
                  f"{whole[-1]:.2f} s", flush=True)
        fixed = statistics.median(load_seconds(root / "model", args.device)
                                  for _ in range(REPEATS))
        plain_s = statistics.median(plain) / n_images
        whole_s = statistics.median(whole) / n_images
        steady_s = (statistics.median(whole) - fixed) / n_images
        ratio, ratio_whole = steady_s / plain_s, whole_s / plain_s
        config = "ViT 6 x 384 (quick)" if args.quick else "ViT-Base 12 x 768"
        table(["model", "images", "batch", "device", "torch threads", "components",
               "plain s/img", "decompose s/img", "model load s", "ratio (no load)",
               "ratio (end to end)", f"<= {BAR}"],
              [[config, n_images, args.batch_size, args.device, torch.get_num_threads(),
                n_components, plain_s, whole_s, fixed, ratio, ratio_whole,
                verdict(ratio <= BAR)]],
              title="daskdict.decompose against the plain forward pass (medians of 3)")
        write_json("bench_decompose" + ("_quick" if args.quick else ""), {
            "config": config, "n_images": n_images, "batch_size": args.batch_size,
            "device": args.device, "torch_threads": torch.get_num_threads(),
            "n_components": n_components, "plain_forward_seconds": plain,
            "decompose_seconds": whole, "model_load_seconds": fixed,
            "plain_seconds_per_image": plain_s, "decompose_seconds_per_image": whole_s,
            "decompose_seconds_per_image_without_load": steady_s, "ratio": ratio,
            "ratio_end_to_end": ratio_whole, "bar": BAR, "passed": ratio <= BAR,
            "cpu_busy_percent_before": busy, "torch": torch.__version__})
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
