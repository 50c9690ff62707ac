"""Time one KD sweep packed (hydra/launcher=packed) and one job after the other, same script run.

    python scripts/bench_sweep.py                         # 4 jobs: method.T=1,4 method.alpha=0.5,0.9
    python scripts/bench_sweep.py --train-size 1024 --epochs 1 --out /tmp/bench_sweep
    python scripts/bench_sweep.py --device cuda --sweep method.T=1,2,4,8 method.alpha=0.5,0.9   # 8 jobs on a GPU

wrn40_2 -> wrn16_2, Hinton's KD, CIFAR-shaped synthetic data (3x32x32, 100 classes) with crop + flip.
The teacher is trained first (teacher.train.epochs, untimed) into a cache both sweeps read. Each sweep
runs in this process through kdrun's own entry point; prints both wall times, the training images per
second of each job, and the ratio (one after the other / packed). Packed runs with the members taking
turns (hydra.launcher.batch_students=false); on a GPU, or with --batched, also with the students as one
batched computation (batch_students=true).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kdrun(args: list[str]) -> int:
    from hydra.core.global_hydra import GlobalHydra

    from kdrun.cli import main

    sys.argv = ["kdrun", *args]
    GlobalHydra.instance().clear()
    root = logging.getLogger()
    handlers = root.handlers[:]
    try:
        main()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
        root.handlers[:] = handlers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--test-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1, help="the students' epochs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sweep", nargs="+", default=["method.T=1,4", "method.alpha=0.5,0.9"])
    parser.add_argument("--precision", default="fp32", help="train.precision (fp32: the results are bit-identical)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batched", action="store_true",
                        help="also time packed with batch_students=true (on by itself on a GPU)")
    parser.add_argument("--out", default="outputs/bench_sweep", help="sweep directories and the teacher cache")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    out = Path(args.out)
    import torch

    gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    variants = {"one_by_one": [], "packed": ["hydra/launcher=packed", "hydra.launcher.batch_students=false"]}
    if args.batched or gpu:
        variants["batched"] = ["hydra/launcher=packed", "hydra.launcher.batch_students=true"]
    for name in [*variants, "teacher_run"]:  # the teacher itself stays in the cache (out/cache) for the next run
        shutil.rmtree(out / name, ignore_errors=True)
    os.environ.setdefault("KDRUN_CACHE_DIR", str(out / "cache"))
    common = ["teacher=wrn40_2", "student=wrn16_2", "method=kd", "dataset=synthetic", "dataset.channels=3",
              "dataset.image_size=32", "dataset.num_classes=100", f"dataset.train_size={args.train_size}",
              f"dataset.test_size={args.test_size}", "dataset.augment={crop_padding:4,flip:true}",
              "teacher.train.epochs=1", f"teacher.train.batch_size={args.batch_size}", f"train.epochs={args.epochs}",
              f"train.batch_size={args.batch_size}", f"train.precision={args.precision}", f"device={args.device}",
              "progress=false"]
    print("Training the teacher (untimed) ...", flush=True)
    assert kdrun([*common, "train.epochs=1", f"hydra.run.dir={out / 'teacher_run'}"]) == 0
    times = {}
    jobs = 1
    for value in args.sweep:
        jobs *= len(value.split("=", 1)[1].split(","))
    for name, launcher in variants.items():
        started = time.perf_counter()
        code = kdrun(["-m", *launcher, *common, *args.sweep, f"hydra.sweep.dir={out / name}"])
        times[name] = time.perf_counter() - started
        assert code == 0, f"the {name} sweep failed (exit status {code})"
    images = args.train_size * args.epochs
    print(f"\n{jobs} jobs, {args.train_size} training images x {args.epochs} epoch(s) each, batch {args.batch_size}, "
          f"{args.precision}; {os.cpu_count()} CPUs, load average before: {load:.2f}")
    for name, seconds in times.items():
        print(f"{name:>11}: {seconds:7.1f} s wall, {images * jobs / seconds:7.1f} training images/s in all, "
              f"{images / seconds:7.1f} per job")
    for name in [n for n in times if n != "one_by_one"]:
        print(f"ratio (one by one / {name}): {times['one_by_one'] / times[name]:.2f}x")
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
