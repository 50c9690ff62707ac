"""MNIST, CIFAR-10 and CIFAR-100 from tiny files in their real formats; downloads; batch augmentation."""
import gzip
import hashlib
import pickle
import struct
import subprocess
import sys
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, compose_config, kdrun_cli, read_json
from kdrun.data import build_dataset, cifar, mnist
from kdrun.data.augment import Augmentation, pad, random_flip, random_shift
from kdrun.errors import UserError
from kdrun.training.recipe import Recipe
from kdrun.training.teacher import cache_key
from kdrun.run import run

CPU = torch.device("cpu")
OFFLINE = "http://127.0.0.1:9/"  # the discard port: the connection is refused at once
TINY_RUN = ["method=ce", "student=mlp", "student.hidden=[8]", "train.epochs=1", "train.batch_size=8",
            "progress=false", "device=cpu"]


# ---------------------------------------------------------------- tiny files in the real formats

def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob)
    path.write_bytes(blob)


def write_mnist(root: Path, n_train=6, n_test=4, gz=False, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
        arrays[prefix] = (images, labels)
    return arrays


def dump(path: Path, obj: dict, legacy: bool) -> None:
    # legacy: bytes keys and protocol 2, as old Python-2-era copies hold them
    if legacy:
        obj = {k.encode(): v for k, v in obj.items()}
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2 if legacy else 4)


def write_cifar10(root: Path, per_batch=2, n_test=3, legacy=False, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        dump(folder / f"data_batch_{i}", {"batch_label": f"batch {i}", "data": data, "labels": labels}, legacy)
        train_x.append(data)
        train_y += labels
    test_x = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_y = rng.integers(0, 10, n_test).tolist()
    dump(folder / "test_batch", {"data": test_x, "labels": test_y}, legacy)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dump(folder / "batches.meta", {"label_names": names, "num_vis": 3072}, legacy)
    return {"train": (np.concatenate(train_x), np.array(train_y)), "test": (test_x, np.array(test_y)), "names": names}


def write_cifar100(root: Path, n_train=5, n_test=3, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [99, 0, 57][: n] + rng.integers(0, 100, max(n - 3, 0)).tolist()
        dump(folder / name, {"data": data, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]}, False)
        out[name] = (data, np.array(fine))
    out["names"] = [f"class{i}" for i in range(100)]
    dump(folder / "meta", {"fine_label_names": out["names"], "coarse_label_names": [str(i) for i in range(20)]}, False)
    return out


def load(overrides) -> "object":
    return build_dataset(compose_config(overrides).dataset, CPU)


# ---------------------------------------------------------------- reading the real formats

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_are_read_exactly(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    data = load(["dataset=mnist", f"dataset.root={tmp_path}"])
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape == (6, 1, 28, 28)
    assert torch.equal(data.train.x[:, 0], torch.from_numpy(arrays["train"][0]))
    assert data.train.y.dtype == torch.int64 and data.train.y.tolist() == arrays["train"][1].tolist()
    assert torch.equal(data.test.x[:, 0], torch.from_numpy(arrays["t10k"][0]))
    assert (data.info.channels, data.info.image_size, data.info.num_classes) == (1, (28, 28), 10)
    assert data.augment == Augmentation(translate=2)
    # per-channel statistics of the training split, in raw pixel units
    assert torch.allclose(data.mean.flatten(), torch.tensor([arrays["train"][0].mean()], dtype=torch.float32))


@pytest.mark.parametrize("legacy", [False, True])
def test_cifar10_batches_are_read_exactly(tmp_path, legacy):
    arrays = write_cifar10(tmp_path, legacy=legacy)
    data = load(["dataset=cifar10", f"dataset.root={tmp_path}"])
    x, y = arrays["train"]
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape == (10, 3, 32, 32)
    assert torch.equal(data.train.x, torch.from_numpy(x).view(10, 3, 32, 32))  # batches 1..5 in order
    assert data.train.y.tolist() == y.tolist()
    assert torch.equal(data.test.x.reshape(3, -1), torch.from_numpy(arrays["test"][0]))
    assert data.class_names == arrays["names"]
    assert (data.info.channels, data.info.image_size, data.info.num_classes) == (3, (32, 32), 10)
    # planar RGB: the first 1024 values of a row are the red channel
    assert torch.equal(data.train.x[0, 0].flatten(), torch.from_numpy(x[0, :1024]))
    assert data.augment == Augmentation(crop_padding=4, flip=True)


def test_cifar100_uses_the_fine_labels(tmp_path):
    arrays = write_cifar100(tmp_path)
    data = load(["dataset=cifar100", f"dataset.root={tmp_path}"])
    assert data.num_classes == 100 and data.info.num_classes == 100
    assert data.train.y.tolist() == arrays["train"][1].tolist() and data.train.y[0] == 99
    assert torch.equal(data.test.x.reshape(3, -1), torch.from_numpy(arrays["test"][0]))
    assert data.class_names[57] == "class57"


def test_subsets_and_validation_hold_out(tmp_path):
    write_cifar10(tmp_path, per_batch=4)  # 20 training images
    base = ["dataset=cifar10", f"dataset.root={tmp_path}"]
    full = load(base)
    data = load(base + ["dataset.val_size=5", "dataset.train_size=8", "dataset.test_size=2"])
    assert (len(data.train), len(data.val), len(data.test)) == (8, 5, 2)
    assert torch.equal(data.test.x, full.test.x[:2])
    rows = lambda s: {bytes(r.numpy()) for r in s.x.reshape(len(s), -1)}  # noqa: E731
    assert not rows(data.train) & rows(data.val)
    assert rows(data.train) | rows(data.val) <= rows(full.train)
    again = load(base + ["dataset.val_size=5"])
    assert torch.equal(again.val.x, data.val.x)  # the fixed seed: the same validation set every run


def test_unreadable_files_name_the_file(tmp_path):
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="data_batch_3"):
        load(["dataset=cifar10", f"dataset.root={tmp_path}"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad.write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(UserError, match="builtins.print"):
        load(["dataset=cifar10", f"dataset.root={tmp_path}"])

    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 5) + b"\x01")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte is truncated"):
        load(["dataset=mnist", f"dataset.root={tmp_path}"])


# ---------------------------------------------------------------- missing files and downloads

def test_missing_files_stop_the_run_with_the_fix(tmp_path):
    empty = tmp_path / "nothing here"
    proc = kdrun_cli(["dataset=cifar10", f"dataset.root='{empty}'", f"hydra.run.dir={tmp_path / 'run'}", *TINY_RUN],
                     cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out and "checksum" not in out.lower()
    folder = empty.resolve() / "cifar-10-batches-py"
    assert str(folder) in " ".join(out.split())
    for needle in ("data_batch_1", "test_batch", "batches.meta", "dataset.root=", "dataset.download=true"):
        assert needle in out
    assert read_json(tmp_path / "run" / "metrics.json")["status"] == "failed"
    assert not folder.exists()  # download=false: nothing was fetched or created


def test_one_missing_file_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(UserError, match=r"files missing under .*cifar-10-batches-py: test_batch \(expected"):
        load(["dataset=cifar10", f"dataset.root={tmp_path}"])


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_offline_download_fails_cleanly(tmp_path, monkeypatch, name):
    monkeypatch.setattr(mnist, "MIRRORS", [OFFLINE])
    for layout in (cifar.CIFAR10, cifar.CIFAR100):
        monkeypatch.setattr(layout, "url", OFFLINE + layout.url.rsplit("/", 1)[1])
    with pytest.raises(UserError) as caught:
        load([f"dataset={name}", f"dataset.root={tmp_path}", "dataset.download=true"])
    message = str(caught.value)
    assert message.startswith("The download of") and "failed" in message
    assert str(tmp_path.resolve()) in message and "no files under" in message
    assert "dataset.root=DIR" in message and "dataset.download=true" in message


@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server over tmp_path/served, standing in for the official download sites."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_fetches_and_unpacks_the_archive(tmp_path, monkeypatch, file_server):
    served, url = file_server
    arrays = write_cifar10(tmp_path / "source")
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "source" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(cifar.CIFAR10, "url", url + archive.name)
    monkeypatch.setattr(cifar.CIFAR10, "md5", md5(archive))
    data = load(["dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "dataset.download=true"])
    assert data.train.y.tolist() == arrays["train"][1].tolist()
    assert (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()


def test_mnist_download_tries_the_next_mirror(tmp_path, monkeypatch, file_server):
    served, url = file_server
    arrays = write_mnist(served, gz=True)
    for gz in (served / "MNIST" / "raw").iterdir():
        gz.rename(served / gz.name)
    monkeypatch.setattr(mnist, "MIRRORS", [OFFLINE, url])
    monkeypatch.setattr(mnist, "RESOURCES", {name: md5(served / f"{name}.gz") for name in mnist.RESOURCES})
    data = load(["dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.download=true"])
    assert torch.equal(data.test.x[:, 0], torch.from_numpy(arrays["t10k"][0]))


# ---------------------------------------------------------------- augmentation on whole batches

def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`image` (C x H x W) moved down by dy and right by dx, zeros where nothing moved in."""
    out = torch.zeros_like(image)
    h, w = image.shape[1:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
        image[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("flip", [False, True])
def test_random_shift_is_a_zero_filled_shift_of_each_image(dtype, flip):
    image = torch.arange(1, 2 * 5 * 6 + 1).view(2, 5, 6).to(dtype)
    batch = image.expand(400, -1, -1, -1)
    out = random_shift(batch, 2, torch.Generator().manual_seed(0), flip=flip)
    assert out.shape == batch.shape and out.dtype == dtype
    sides = {"kept": image, "mirrored": image.flip(2)} if flip else {"kept": image}
    moves = {(side, dy, dx): shifted(im, dy, dx) for side, im in sides.items()
             for dy in range(-2, 3) for dx in range(-2, 3)}
    seen = set()
    for o in out:
        match = [m for m, expected in moves.items() if torch.equal(o, expected)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(moves)  # every offset of the 5 x 5 window occurs, on both sides when flipping


def test_random_flip_mirrors_about_half_of_the_images():
    image = torch.arange(12.0).view(1, 3, 4)
    out = random_flip(image.expand(100, -1, -1, -1), torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, image.flip(2)) for o in out])
    kept = torch.tensor([torch.equal(o, image) for o in out])
    assert bool((flipped ^ kept).all()) and 20 < int(flipped.sum()) < 80


def test_augmentation_follows_its_generator():
    x = torch.rand(16, 3, 32, 32)
    aug = Augmentation(crop_padding=4, flip=True)
    a = aug(x, torch.Generator().manual_seed(7))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(8)))
    both = Augmentation(crop_padding=1, translate=1, flip=True)(torch.ones(64, 1, 5, 5), torch.Generator())
    assert both.shape == (64, 1, 5, 5) and 0 < int((both == 0).sum(1).sum((1, 2)).max()) <= 5 + 5 + 5 + 5 - 4


def test_training_batches_are_padded_with_black_before_normalising(tmp_path):
    write_cifar10(tmp_path)
    data = load(["dataset=cifar10", f"dataset.root={tmp_path}", "dataset.augment.flip=false"])
    x = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)  # white images: any padding shows
    out = data.prepare(x, train=True, generator=torch.Generator().manual_seed(0))
    black, white = (0 - data.mean) / data.std, (255 - data.mean) / data.std
    is_black = torch.isclose(out, black.expand_as(out))
    assert bool((is_black | torch.isclose(out, white.expand_as(out))).all())
    assert 0 < int(is_black.any(1).sum((1, 2)).max()) <= 4 * 32 + 4 * 32 - 16  # at most 4 rows and 4 columns
    assert torch.allclose(data.prepare(x, train=False), white.expand_as(out))  # no augmentation at test time


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric"])
def test_padding_modes_are_numpys(mode):
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    for p in (1, 3):  # numpy's modes: reflect = dcb|abcd, symmetric = cba|abcd (OpenCV's BORDER_REFLECT)
        expected = np.pad(x.numpy(), ((0, 0), (0, 0), (p, p), (p, p)), mode=mode)
        assert np.array_equal(pad(x, p, mode).numpy(), expected)
    row = torch.tensor([[[[1.0, 2.0, 3.0]]]]).expand(1, 1, 3, 3)
    assert pad(row, 2, "reflect")[0, 0, 0].tolist() == [3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]
    assert pad(row, 2, "symmetric")[0, 0, 0].tolist() == [2.0, 1.0, 1.0, 2.0, 3.0, 3.0, 2.0]


def test_a_reflected_crop_is_a_window_of_the_reflected_image():
    x = torch.rand(32, 3, 8, 8)
    out = Augmentation(crop_padding=2, padding_mode="reflect")(x, torch.Generator().manual_seed(0))
    windows = pad(x, 2, "reflect").unfold(2, 8, 1).unfold(3, 8, 1)  # (n, c, 5, 5, 8, 8)
    for image, crops in zip(out, windows):
        assert any(torch.equal(image, crops[:, i, j]) for i in range(5) for j in range(5))
    assert not (out == 0).any()  # nothing black is added


def test_default_padding_mode_keeps_the_teacher_cache_key():
    def key(overrides):
        cfg = compose_config(["dataset=cifar10"] + overrides)
        return cache_key(cfg.teacher, cfg.dataset, Recipe.from_config(cfg.teacher.train), 0)

    assert key([]) == key(["~dataset.augment.padding_mode"])  # as before the key existed
    assert key([]) != key(["dataset.augment.padding_mode=reflect"])


def test_training_batches_depend_only_on_the_seed(tmp_path):
    write_cifar10(tmp_path, per_batch=8)
    data = load(["dataset=cifar10", f"dataset.root={tmp_path}"])
    first = list(data.batches(data.train, 16, shuffle=True, seed=3, train=True))
    again = list(data.batches(data.train, 16, shuffle=True, seed=3, train=True))
    other = list(data.batches(data.train, 16, shuffle=True, seed=4, train=True))
    assert [len(y) for _, _, y in first] == [16, 16, 8]
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(first, again))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other))
    idx, x, y = first[0]
    assert x.dtype == torch.float32 and torch.equal(y, data.train.y[idx])


def test_augmentation_keys(tmp_path):
    write_cifar10(tmp_path)
    base = ["dataset=cifar10", f"dataset.root={tmp_path}"]
    assert load(base + ["dataset.augment=null"]).augment is None
    assert load(base + ["dataset.augment.crop_padding=0", "dataset.augment.flip=false"]).augment is None
    assert load(base + ["dataset.augment.flip=false"]).augment == Augmentation(crop_padding=4)
    assert load(base + ["+dataset.augment.translate=1"]).augment == Augmentation(4, 1, True)
    with pytest.raises(UserError, match="crop_padding"):
        load(base + ["dataset.augment.crop_padding=-1"])
    with pytest.raises(UserError, match="valid keys"):
        load(base + ["+dataset.augment.rotate=10"])
    assert load(base + ["dataset.augment.padding_mode=reflect"]).augment == Augmentation(4, 0, True, "reflect")
    with pytest.raises(UserError, match="padding_mode must be one of constant, edge, reflect, symmetric"):
        load(base + ["dataset.augment.padding_mode=mirror"])
    with pytest.raises(UserError, match="at most 31 pixels"):
        load(base + ["dataset.augment.padding_mode=reflect", "dataset.augment.crop_padding=40"]).augment(
            torch.zeros(1, 3, 32, 32))


# ---------------------------------------------------------------- through a run

def test_val_acc_is_written_when_val_size_is_set(tmp_path):
    write_cifar10(tmp_path, per_batch=4)
    common = ["dataset=cifar10", f"dataset.root={tmp_path}", *TINY_RUN]
    metrics = run(compose_config(common + ["dataset.val_size=6"]), tmp_path / "with")
    on_disk = read_json(tmp_path / "with" / "metrics.json")
    assert 0 <= on_disk["val_acc"] <= 100 and on_disk["val_acc"] == metrics["history"][-1]["val_acc"]
    assert all("val_acc" in h for h in on_disk["history"])
    run(compose_config(common), tmp_path / "without")
    assert "val_acc" not in read_json(tmp_path / "without" / "metrics.json")


def shared_materialize() -> Path | None:
    for shared in (REPO.parent / "shared", REPO.parent.parent / "shared"):
        script = shared / "data" / "cifar10-jpeg" / "materialize.py"
        if script.is_file():
            return script
    return None


@pytest.mark.skipif(shared_materialize() is None, reason="no ../shared/data/cifar10-jpeg beside the checkout")
def test_materialised_cifar10_jpeg_copy_loads(tmp_path):
    subprocess.run([sys.executable, str(shared_materialize()), str(tmp_path), "--train", "10", "--test", "5"],
                   check=True, capture_output=True)
    data = load(["dataset=cifar10", f"dataset.root={tmp_path}"])
    assert (len(data.train), len(data.test)) == (10, 5)
    assert data.class_names[0] == "airplane" and data.train.x.dtype == torch.uint8
    assert 0 < float(data.train.x.float().std()) and data.train.y.max() < 10
