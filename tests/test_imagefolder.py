"""Datasets read from image files (imagefolder, imagenet, tiny_imagenet): small JPEG trees in each real
layout, made here with PIL, read through the real loaders, batched by DataLoader workers, run by the CLI."""
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2 as T2
from PIL import Image

from conftest import compose_config, compose_refusal, read_json, run_dirs
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse: one CPU thread)
from kdrun.data import build_dataset, imagefolder
from kdrun.data.folder import FolderDataset
from kdrun.data.images import ImagePipeline, example_seed
from kdrun.errors import UserError
from kdrun.results.identity import config_identity
from test_datasets import file_server, md5  # noqa: F401  (a fixture)

CPU = torch.device("cpu")
SIZES = [(40, 30), (30, 44), (36, 36)]  # small pictures of unequal shapes, as real trees have


def write_jpeg(path: Path, seed: int, size=None) -> None:
    rng = np.random.default_rng(seed)
    w, h = size or SIZES[seed % len(SIZES)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def class_folders(folder: Path, classes, per_class: int, ext=".jpg", seed=0) -> None:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_jpeg(folder / name / f"img{i}{ext}", seed + 100 * c + i)


def imagefolder_tree(root: Path, classes=("cat", "dog", "eel"), train=4, test=2) -> Path:
    class_folders(root / "train", classes, train)
    class_folders(root / "val", classes, test, seed=50)
    return root


WNIDS = ["n02", "n01", "n03"]  # wnids.txt's order is not sorted; the classes are (as ImageFolder's)


def tiny_tree(root: Path, per_class=3) -> Path:
    """tiny-imagenet-200.zip's layout: wnids.txt, train/WNID/images/*.JPEG (+ boxes), val/images + annotations."""
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    lines = []
    for c, wnid in enumerate(WNIDS):
        for i in range(per_class):
            write_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 10 * c + i, (64, 64))
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    for i in range(2 * len(WNIDS)):
        write_jpeg(folder / "val" / "images" / f"val_{i}.JPEG", 200 + i, (64, 64))
        lines.append(f"val_{i}.JPEG\t{WNIDS[i % len(WNIDS)]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    write_jpeg(folder / "test" / "images" / "test_0.JPEG", 999, (64, 64))  # no labels: not read
    return root


def load(overrides) -> FolderDataset:
    return build_dataset(compose_config(overrides).dataset, CPU)


def refusal(overrides) -> str:
    with pytest.raises(UserError) as caught:
        load(overrides)
    return " ".join(str(caught.value).split())


def paths(split) -> list[str]:
    return [os.fsdecode(f) for f in split.files]


# ---------------------------------------------------------------- the layouts


def test_imagefolder_lists_sorted_classes_interleaved(tmp_path):
    root = imagefolder_tree(tmp_path / "tree")
    data = load(["dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=16"])
    assert isinstance(data, FolderDataset) and data.class_names == ["cat", "dog", "eel"]
    assert (len(data.train), len(data.test), data.num_classes) == (12, 6, 3)
    assert data.train.y.tolist() == [0, 1, 2] * 4 and data.test.y.tolist() == [0, 1, 2] * 2
    assert paths(data.train)[:4] == ["train/cat/img0.jpg", "train/dog/img0.jpg", "train/eel/img0.jpg",
                                     "train/cat/img1.jpg"]
    assert str(data.info) == "3x16x16 images, 3 classes" and data.info.train_size == 12
    # train_size keeps the first N of the interleaved order (every class), test_size likewise
    small = load(["dataset=imagefolder", f"dataset.root={root}", "dataset.train_size=5", "dataset.test_size=4"])
    assert small.train.y.tolist() == [0, 1, 2, 0, 1] and small.test.y.tolist() == [0, 1, 2, 0]


def test_imagefolder_takes_other_split_folders_nested_images_and_a_missing_test_class(tmp_path):
    root = tmp_path / "tree"
    class_folders(root / "training", ["a", "b"], 2, ext=".PNG")
    write_jpeg(root / "training" / "a" / "deeper" / "x.jpeg", 7)
    (root / "training" / "b" / "notes.txt").write_text("not an image")
    class_folders(root / "testing", ["b"], 2)
    data = load(["dataset=imagefolder", f"dataset.root={root}", "dataset.train_dir=training",
                 "dataset.test_dir=testing"])
    assert sorted(paths(data.train)) == ["training/a/deeper/x.jpeg", "training/a/img0.PNG", "training/a/img1.PNG",
                                         "training/b/img0.PNG", "training/b/img1.PNG"]
    assert data.test.y.tolist() == [1, 1]  # class b's label, though the test split lacks class a


def test_imagenet_reads_class_folders_of_wnids(tmp_path):
    root = tmp_path / "imagenet"
    class_folders(root / "train", WNIDS, 2, ext=".JPEG")
    class_folders(root / "val", WNIDS, 1, ext=".JPEG", seed=9)
    data = load(["dataset=imagenet", f"dataset.root={root}", "dataset.image_size=16"])
    assert data.class_names == ["n01", "n02", "n03"] and data.num_classes == 3
    assert paths(data.test) == ["val/n01/img0.JPEG", "val/n02/img0.JPEG", "val/n03/img0.JPEG"]
    assert data.pipeline == ImagePipeline(size=16, resize=18, scale=(0.08, 1.0), ratio=(0.75, 4 / 3), flip=True)


def test_a_flat_imagenet_val_is_refused_with_valprep_and_sorting_it_as_valprep_does_works(tmp_path):
    root = tmp_path / "imagenet"
    class_folders(root / "train", WNIDS, 2, ext=".JPEG")
    truth = {}
    for i in range(1, 4):
        write_jpeg(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", i)
        truth[f"ILSVRC2012_val_{i:08d}.JPEG"] = WNIDS[i - 1]
    message = refusal(["dataset=imagenet", f"dataset.root={root}"])
    assert f"{root / 'val'} holds 3 images but no class folders" in message
    assert "valprep.sh" in message and f"inside {root / 'val'}" in message
    for name, wnid in truth.items():  # what valprep.sh does: mkdir -p WNID; mv IMAGE WNID/
        (root / "val" / wnid).mkdir()
        shutil.move(root / "val" / name, root / "val" / wnid / name)
    data = load(["dataset=imagenet", f"dataset.root={root}"])
    assert paths(data.test)[0] == "val/n01/ILSVRC2012_val_00000002.JPEG" and data.test.y.tolist() == [0, 1, 2]


def test_tiny_imagenet_is_read_as_it_comes(tmp_path):
    root = tiny_tree(tmp_path / "data")
    data = load(["dataset=tiny_imagenet", f"dataset.root={root}"])
    assert data.class_names == ["n01", "n02", "n03"] and (len(data.train), len(data.test)) == (9, 6)
    assert paths(data.train)[:3] == ["train/n01/images/n01_0.JPEG", "train/n02/images/n02_0.JPEG",
                                     "train/n03/images/n03_0.JPEG"]
    # val_i is of WNIDS[i % 3]: val_1 and val_4 of n01 (class 0), val_0 and val_3 of n02, ...
    labels = dict(zip(paths(data.test), data.test.y.tolist()))
    assert labels == {f"val/images/val_{i}.JPEG": sorted(WNIDS).index(WNIDS[i % 3]) for i in range(6)}
    assert data.pipeline == ImagePipeline(size=64, resize=64, scale=(0.25, 1.0), ratio=(0.75, 4 / 3), flip=True)
    _, x, _ = next(data.batches(data.test, 2, shuffle=False))  # evaluation: the whole 64x64 image
    image = torch.from_numpy(np.array(Image.open(root / "tiny-imagenet-200" / paths(data.test)[0]))).permute(2, 0, 1)
    assert torch.allclose(x[0] * data.std[0] + data.mean[0], image.float(), atol=1e-3)


def test_tiny_imagenet_without_val_annotations_is_refused_and_downloads_the_archive(tmp_path, monkeypatch,
                                                                                      file_server):
    root = tiny_tree(tmp_path / "data")
    (root / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    message = refusal(["dataset=tiny_imagenet", f"dataset.root={root}"])
    assert f"files missing under {root / 'tiny-imagenet-200'}: val/val_annotations.txt" in message
    assert "set dataset.root=DIR to the folder that holds tiny-imagenet-200/" in message
    assert "dataset.download=true" in message
    served, url = file_server  # the advice followed: the archive fetched and unpacked into dataset.root
    source = tiny_tree(tmp_path / "source")
    with zipfile.ZipFile(served / "tiny-imagenet-200.zip", "w") as archive:
        for path in sorted((source / "tiny-imagenet-200").rglob("*")):
            archive.write(path, path.relative_to(source))
    monkeypatch.setattr(imagefolder, "TINY_URL", url + "tiny-imagenet-200.zip")
    monkeypatch.setattr(imagefolder, "TINY_MD5", md5(served / "tiny-imagenet-200.zip"))
    data = load(["dataset=tiny_imagenet", f"dataset.root={tmp_path / 'fresh'}", "dataset.download=true"])
    assert (len(data.train), len(data.test)) == (9, 6)


def test_missing_and_malformed_trees_are_refused_with_where_and_what(tmp_path):
    message = refusal(["dataset=imagefolder"])
    assert "dataset=imagefolder needs dataset.root" in message and "train/CLASS/IMAGE" in message
    message = refusal(["dataset=imagefolder", f"dataset.root={tmp_path / 'nowhere'}"])
    assert f"dataset.root={tmp_path / 'nowhere'} is not a folder" in message
    message = refusal(["dataset=imagenet", f"dataset.root={tmp_path / 'nowhere'}"])
    assert "image-net.org" in message and "valprep.sh" in message
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    message = refusal(["dataset=imagefolder", f"dataset.root={empty}"])
    assert f"{empty / 'train'} holds no class folders (expected {empty / 'train'}/CLASS/IMAGE" in message
    root = imagefolder_tree(tmp_path / "tree")
    (root / "train" / "fox").mkdir()
    (root / "train" / "fox" / "readme.txt").write_text("no images")
    message = refusal(["dataset=imagefolder", f"dataset.root={root}"])
    assert f"the class folder {root / 'train' / 'fox'} holds no images" in message
    shutil.rmtree(root / "train" / "fox")
    class_folders(root / "val", ["gnu"], 1)
    message = refusal(["dataset=imagefolder", f"dataset.root={root}"])
    assert "has class folders that the training split has not: gnu" in message
    shutil.rmtree(root / "val")
    assert f"no folder {root / 'val'}" in refusal(["dataset=imagefolder", f"dataset.root={root}"])
    message = refusal(["dataset=imagenet", f"dataset.root={root}", "dataset.download=true"])
    assert "cannot be downloaded by kdrun" in message


def test_wrong_keys_are_refused_before_any_file_is_read(tmp_path):
    where = f"dataset.root={tmp_path / 'nowhere'}"
    assert "dataset.augment.crop_scale must be two numbers" in refusal(
        ["dataset=imagenet", where, "dataset.augment.crop_scale=[0.5,0.1]"])
    assert "take crop_scale, crop_ratio, flip" in refusal(["dataset=imagenet", where, "+dataset.augment.crop_padding=4"])
    message = compose_refusal(["dataset=imagenet", "dataset.augment.crop_padding=4"])  # so no advice to add it with +
    assert "dataset.augment has: crop_scale, crop_ratio, flip" in message and "added with +" not in message
    assert "torchvision, pil" in compose_refusal(["dataset=imagenet", "dataset.decoder=cv2"])
    assert "dataset.resize=100 is smaller than dataset.image_size=224" in refusal(
        ["dataset=imagenet", where, "dataset.resize=100"])
    assert "dataset.workers must be 0 or more" in refusal(["dataset=imagenet", where, "dataset.workers=-1"])
    assert "Leave dataset.whiten's keys null" in refusal(
        ["dataset=imagenet", where, "dataset.whiten.gcn_scale=55", "dataset.whiten.zca_bias=0.1"])


# ---------------------------------------------------------------- the pipeline and its determinism


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_each_crop_is_torchvisions_under_the_examples_seed(tmp_path, decoder):
    """PIL: torchvision's classic transforms on the PIL image, as ImageFolder gives it; torchvision.io: the
    v2 transforms on the decoded uint8 tensor (the classic ones round through float: off by one at most)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    write_jpeg(tmp_path / "x.jpg", 3, (50, 37))
    path = str(tmp_path / "x.jpg")
    pipeline = ImagePipeline(size=24, resize=28, decoder=decoder)
    if decoder == "pil":
        image, api, to_tensor = Image.open(path).convert("RGB"), T, T.PILToTensor()
    else:
        image, api, to_tensor = decode_image(read_file(path), mode=ImageReadMode.RGB), T2, T2.Identity()
    train = api.Compose([api.RandomResizedCrop(24, antialias=True), api.RandomHorizontalFlip(), to_tensor])
    for index in range(8):
        seed = example_seed(11, index)
        ours = pipeline(path, torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        assert torch.equal(ours, train(image)), index
    evaluation = api.Compose([api.Resize(28, antialias=True), api.CenterCrop(24), to_tensor])
    assert torch.equal(pipeline(path), evaluation(image))


def test_batches_depend_on_seed_and_index_only_not_on_workers_or_batches(tmp_path):
    root = imagefolder_tree(tmp_path / "tree", train=5)
    data = load(["dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=12", "dataset.workers=0"])

    def epoch(workers, batch_size, seed):
        data.workers = workers
        out = {}
        batches = list(data.batches(data.train, batch_size, shuffle=True, seed=seed, train=True))
        for idx, x, y in batches:
            assert torch.equal(y, data.train.y[idx]) and x.dtype == torch.float32
            out.update({int(i): xi for i, xi in zip(idx, x)})
        return torch.cat([idx for idx, _, _ in batches]), out

    order, crops = epoch(0, 4, seed=5)
    assert order.tolist() == torch.randperm(15, generator=torch.Generator().manual_seed(5)).tolist()
    for workers, batch_size in ((2, 4), (2, 3)):
        other_order, other = epoch(workers, batch_size, seed=5)
        assert torch.equal(other_order, order) and all(torch.equal(crops[i], other[i]) for i in range(15))
    _, next_epoch = epoch(0, 4, seed=6)
    assert sum(torch.equal(crops[i], next_epoch[i]) for i in range(15)) < 3  # another epoch, other crops
    before = torch.get_rng_state()  # the run's own random numbers (dropout's) are not drawn
    epoch(0, 4, seed=5)
    epoch(2, 4, seed=5)
    assert torch.equal(before, torch.get_rng_state())
    part = data.train.take(torch.arange(6))  # a part of a split (a rank's share): workers for its passes alone
    kept = len(data.loaders)
    for _ in range(2):
        _, x, _ = next(data.batches(part, 3, shuffle=False, seed=5, train=True))
        assert torch.equal(x[2], next(data.batches(data.train, 3, shuffle=False, seed=5, train=True))[1][2])
    assert len(data.loaders) == kept
    tests = [x for _, x, _ in data.batches(data.test, 4, shuffle=False)]  # evaluation: centre crops, unflipped
    again = [x for _, x, _ in data.batches(data.test, 4, shuffle=False, seed=9, train=False)]
    assert all(torch.equal(a, b) for a, b in zip(tests, again))


def test_an_unreadable_image_is_named(tmp_path):
    root = imagefolder_tree(tmp_path / "tree")
    (root / "train" / "dog" / "img1.jpg").write_bytes(b"not a jpeg")
    data = load(["dataset=imagefolder", f"dataset.root={root}", "dataset.workers=0"])
    with pytest.raises(UserError, match=r"cannot read the image .*train/dog/img1\.jpg .*Replace the file"):
        list(data.batches(data.train, 4, shuffle=False, train=True))


def test_workers_are_not_in_a_runs_identity():
    base = ["dataset=imagenet", "teacher=tv_resnet18", "student=tv_mobilenet_v2"]
    assert config_identity(compose_config(base)) == config_identity(compose_config(base + ["dataset.workers=3"]))
    assert config_identity(compose_config(base)) != config_identity(compose_config(base + ["dataset.decoder=pil"]))


# ---------------------------------------------------------------- runs


RUN = ["dataset.image_size=16", "dataset.workers=0", "teacher=resnet8", "student=tv_resnet18", "train.epochs=1",
       "teacher.train.epochs=1", "train.batch_size=4", "teacher.train.batch_size=4", "progress=false", "device=cpu"]


def test_kdrun_distils_on_an_image_folder(tmp_path, monkeypatch, capsys):
    root = imagefolder_tree(tmp_path / "tree")
    code, out = kdrun_in_process(["dataset=imagefolder", f"dataset.root={root}", "dataset.val_size=3",
                                  "dataset.train_size=8", *RUN], tmp_path, monkeypatch, capsys)
    assert code == 0, out
    metrics = read_json(run_dirs(tmp_path / "outputs")[0] / "metrics.json")
    assert (metrics["status"], metrics["dataset"], metrics["student"]) == ("completed", "imagefolder", "tv_resnet18")
    assert "val_acc" in metrics and "8 train, 6 test, 3 validation; 3x16x16 images, 3 classes" in out
    weights = torch.load(run_dirs(tmp_path / "outputs")[0] / "student.pt", weights_only=True)
    assert weights["fc.weight"].shape == (3, 512)


def test_the_teacher_cache_needs_the_augmentation_off(tmp_path, monkeypatch, capsys):
    root = imagefolder_tree(tmp_path / "tree")
    args = ["dataset=imagefolder", f"dataset.root={root}", *RUN, "train.cache_teacher=true"]
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 2 and "the training data is augmented" in out and "dataset.augment=null" in out
    code, out = kdrun_in_process([*args, "dataset.augment=null"], tmp_path, monkeypatch, capsys)
    assert code == 0 and "Teacher outputs are cached after the first epoch" in out, out


def test_mlkd_is_refused_before_training_and_runs_on_one_view(tmp_path, monkeypatch, capsys):
    root = imagefolder_tree(tmp_path / "tree")
    args = ["dataset=imagefolder", f"dataset.root={root}", *RUN, "method=mlkd"]
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 2 and "method.strong_view=false" in out and "Teacher" not in out, out
    code, out = kdrun_in_process([*args, "method.strong_view=false"], tmp_path, monkeypatch, capsys)
    assert code == 0, out


def test_a_recipes_augment_is_refused_before_training(tmp_path, monkeypatch, capsys):
    root = imagefolder_tree(tmp_path / "tree")
    args = ["dataset=imagefolder", f"dataset.root={root}", *RUN]
    code, out = kdrun_in_process([*args, "train.augment={flip:true}"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "Leave the recipe's augment null and set dataset.augment's keys" in out, out
    assert "Teacher" not in out
    code, out = kdrun_in_process([*args, "teacher.train.augment={flip:true}"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "Leave the recipe's augment null" in out and "Teacher" not in out, out
