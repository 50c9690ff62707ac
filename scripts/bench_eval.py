"""Time kdrun's evaluation at several batch sizes against a plain PyTorch evaluation loop, same run.

    python scripts/bench_eval.py                      # wrn16_2 and resnet8, CIFAR-sized test split
    python scripts/bench_eval.py --models resnet56 --batch-sizes 64 256 1000 --device cuda

kdrun: `kdrun.training.loop.evaluate` (the code path of every epoch's test accuracy) on a CIFAR-100-shaped
synthetic test split (3x32x32, 100 classes, 10,000 images) held on the device. Reference: the same model
in eval mode under no_grad, over the same images already normalised, in batches of 64 (RepDistiller's
test loader uses half the training batch). Prints images/s per batch size and the ratio to the
reference; the default `evaluation_batch_size` of the device is marked.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdrun.data import build_dataset  # noqa: E402
from kdrun.models import build_model  # noqa: E402
from kdrun.training.device import configure_threads, resolve_device  # noqa: E402
from kdrun.training.loop import evaluate, evaluation_batch_size  # noqa: E402
from kdrun.training.speed import Speed  # noqa: E402


def compose(model: str, device: str, images: int):
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdrun.configs import CONFIG_DIR, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return hydra_compose("config", overrides=[
            f"student={model}", "dataset=synthetic", "dataset.channels=3", "dataset.image_size=32",
            "dataset.num_classes=100", "dataset.train_size=256", f"dataset.test_size={images}", f"device={device}"])


def best_of(runs: int, timed) -> float:
    return max(timed() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["wrn16_2", "resnet8"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 128, 256, 500, 1000])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", type=int, default=3, help="best of this many passes per setting")
    args = parser.parse_args()
    device = resolve_device(args.device)
    configure_threads()
    default = evaluation_batch_size(device)
    print(f"device {device}, {torch.get_num_threads()} threads, {args.images} test images; "
          f"kdrun's evaluation batch on this device: {default}")
    for name in args.models:
        cfg = compose(name, args.device, args.images)
        data = build_dataset(cfg.dataset, device)
        model = build_model(cfg.student, data.info).to(device)
        speed = Speed(device=device)
        x = torch.cat([xb for _, xb, _ in data.batches(data.test, 1000, shuffle=False)])

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        @torch.no_grad()
        def reference() -> float:
            model.eval()
            sync()
            t0 = time.perf_counter()
            for xb in torch.split(x, 64):
                model(xb).argmax(1)
            sync()
            return len(x) / (time.perf_counter() - t0)

        def kdrun_at(batch_size: int):
            def timed() -> float:
                sync()
                t0 = time.perf_counter()
                evaluate(model, data, data.test, batch_size=batch_size, speed=speed)
                return len(x) / (time.perf_counter() - t0)
            return timed

        reference()  # warm-up
        ref = best_of(args.runs, reference)
        print(f"\n{name}: reference (plain loop, batch 64) {ref:,.0f} images/s")
        for batch_size in args.batch_sizes:
            rates = [kdrun_at(batch_size)() for _ in range(args.runs)]
            mark = "  <- default" if batch_size == default else ""
            print(f"  kdrun batch {batch_size:>5}: {max(rates):>9,.0f} images/s  "
                  f"(median {statistics.median(rates):,.0f})  x{max(rates) / ref:.2f} the reference{mark}")


if __name__ == "__main__":
    main()
