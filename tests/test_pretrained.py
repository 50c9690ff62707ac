"""`teacher.pretrained=SOURCE`: mdistiller's released teachers, served here from a local HTTP server as an
archive in mdistiller's layout (built from kdrun's own models, saved as RepDistiller and mdistiller save them),
on CIFAR-100 files in the real on-disk format; torchvision's weights from a file in torch.hub's cache (named as
torchvision's weights API names it), on a tree in ImageNet's layout. Nothing is downloaded from outside."""
from __future__ import annotations

import hashlib
import http.server
import io
import re
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (a fixture)
from test_datasets import write_cifar100
from tests.conftest import compose_config, read_json

from kdrun.data import build_dataset
from kdrun.models import MODELS
from kdrun.models.pretrained import MIRROR_ENV, SOURCES, Published, Source
from kdrun.results.identity import config_identity
from kdrun.results.report import main as report_main

WRN = "cifar_teachers/wrn_40_2_vanilla/ckpt_epoch_240.pth"
RESNET56 = "cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth"
RUN = ["teacher.pretrained=mdistiller", "teacher=wrn40_2", "dataset=cifar100", "student=mlp", "student.hidden=[8]",
       "method=kd", "train.epochs=1", "train.batch_size=5", "progress=false"]
PREDICTED = 99  # the served teachers predict this class for every image: the first test image's label


def teacher_weights(name: str, prefix: str = "") -> dict:
    """A zoo model's state_dict, unlike any initial weights, whose classifier always predicts PREDICTED."""
    torch.manual_seed(1234)
    model = MODELS.get(name)(num_classes=100, in_channels=3, image_size=(32, 32))
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.zero_()
        fc.bias[PREDICTED] = 1.0
    return {prefix + k: v for k, v in model.state_dict().items()}


def checkpoint_bytes(state: dict) -> bytes:
    """As RepDistiller's train_teacher.py saves ckpt_epoch_240.pth: with the epoch, its accuracy and the
    optimiser's state, whose learning rate is a numpy float."""
    optimizer = torch.optim.SGD([torch.zeros(1)], lr=0.05, momentum=0.9).state_dict()
    optimizer["param_groups"][0]["lr"] = np.float64(0.05)
    buffer = io.BytesIO()
    torch.save({"epoch": 240, "model": state, "accuracy": torch.tensor(75.0), "optimizer": optimizer}, buffer)
    return buffer.getvalue()


def archive(members: dict[str, dict]) -> bytes:
    """A tar of {member: state_dict}, as mdistiller's cifar_teachers.tar lays them out."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, state in members.items():
            data = checkpoint_bytes(state)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Server:
    """Files over HTTP on 127.0.0.1; counts the requests; `cut`: sends half the body after a full Content-Length."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.cut = False
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                served.requests.append(self.path)
                body = served.files.get(self.path.removeprefix("/files/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if served.cut else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(monkeypatch):
    served = Server()
    monkeypatch.setenv(MIRROR_ENV, served.url)
    yield served
    served.httpd.shutdown()
    served.httpd.server_close()


@pytest.fixture
def data_root(tmp_path):
    write_cifar100(tmp_path / "data")
    return tmp_path / "data"


def kdrun(tmp_path, monkeypatch, capsys, data_root, *extra, run="run"):
    """Its exit status and output, with tmp_path (whose name is the test's) written TMP."""
    args = [*RUN, f"dataset.root={data_root}", f"hydra.run.dir={tmp_path / run}", *extra]
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    return code, " ".join(out.split()).replace(str(tmp_path), "TMP")


def cached(tmp_path) -> list[str]:
    """What the cache's pretrained/ folder holds, its lock files left out."""
    folder = tmp_path / "cache" / "pretrained"
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".lock") if folder.is_dir() else []


def test_a_published_teacher_is_downloaded_once_and_its_weights_are_the_teachers(tmp_path, monkeypatch, capsys,
                                                                                  server, data_root):
    served = {WRN: teacher_weights("wrn40_2"), RESNET56: teacher_weights("resnet56")}
    server.files["cifar_teachers.tar"] = tar = archive(served)
    code, out = kdrun(tmp_path, monkeypatch, capsys, data_root)
    assert code == 0, out
    assert server.requests == ["/files/cifar_teachers.tar"]
    assert cached(tmp_path) == ["cifar_teachers.tar", "cifar_teachers.tar.sha256", "mdistiller-wrn40_2-cifar100.pt"]
    folder = tmp_path / "cache" / "pretrained"
    assert (folder / "cifar_teachers.tar.sha256").read_text() == f"{hashlib.sha256(tar).hexdigest()}  cifar_teachers.tar\n"
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["teacher_source"] == str(folder / "mdistiller-wrn40_2-cifar100.pt")
    assert metrics["teacher_pretrained"] == "mdistiller" and metrics["teacher_published_acc"] == 75.61
    kept = torch.load(metrics["teacher_source"], weights_only=True)["state_dict"]
    assert kept.keys() == served[WRN].keys() and all(torch.equal(kept[k], served[WRN][k]) for k in kept)
    # The run's teacher had those weights: it predicts class 99 everywhere, the label of 1 test image in 3.
    data = build_dataset(compose_config(RUN[:3] + [f"dataset.root={data_root}"]).dataset, torch.device("cpu"))
    expected = 100.0 * float((data.test.y == PREDICTED).float().mean())
    assert 0 < expected < 100 and metrics["teacher_test_acc"] == pytest.approx(expected, abs=1e-3)

    code, out = kdrun(tmp_path, monkeypatch, capsys, data_root, "seed=1", run="again")
    assert code == 0 and "reused from the cache" in out and "(no download)" in out, out
    code, out = kdrun(tmp_path, monkeypatch, capsys, data_root, "teacher=resnet56", run="resnet56")
    assert code == 0, out
    assert server.requests == ["/files/cifar_teachers.tar"]  # the second and third runs: no download
    assert read_json(tmp_path / "resnet56" / "metrics.json")["teacher_published_acc"] == 72.34

    report_main([str(tmp_path / "run")])  # kdrun-report: the published accuracy beside the measured one
    assert re.search(r"\| teacher acc \(%\) \| teacher published \(%\) \|.*\n.*\n.* 33\.33 \| 75\.61 \|",
                     (tmp_path / "run" / "summary.md").read_text())


@pytest.mark.parametrize("how", ["connection cut", "short file"])
def test_a_truncated_archive_is_refused_and_not_cached(tmp_path, monkeypatch, capsys, server, data_root, how):
    whole = archive({WRN: teacher_weights("wrn40_2")})
    if how == "connection cut":  # the server promises the whole file and sends half
        server.files["cifar_teachers.tar"], server.cut = whole, True
    else:  # a mirror that holds a partial copy
        server.files["cifar_teachers.tar"] = whole[: len(whole) * 2 // 3]
    code, out = kdrun(tmp_path, monkeypatch, capsys, data_root)
    assert code == 2 and "is not usable: it end" in out and "bytes (truncated). Nothing was cached" in out, out
    assert cached(tmp_path) == []


def test_a_corrupted_archive_is_refused_and_not_cached(tmp_path, monkeypatch, capsys, server, data_root):
    good = archive({WRN: teacher_weights("wrn40_2"), RESNET56: teacher_weights("resnet56")})
    server.files["cifar_teachers.tar"] = np.random.default_rng(0).bytes(len(good))  # garbage: no tar at all
    code, out = kdrun(tmp_path, monkeypatch, capsys, data_root)
    assert code == 2 and "not a readable tar archive" in out and "Nothing was cached" in out, out
    assert cached(tmp_path) == []

    server.files["cifar_teachers.tar"] = good
    assert kdrun(tmp_path, monkeypatch, capsys, data_root)[0] == 0
    # A later copy that differs from the one recorded at the first download (a byte flipped in resnet56's
    # weights: still a readable tar whose member loads) is refused, and the cache keeps what it had.
    (tmp_path / "cache" / "pretrained" / "cifar_teachers.tar").unlink()
    flipped = bytearray(good)
    flipped[good.index(b"cifar_teachers/resnet56") + 4096] ^= 0xFF
    server.files["cifar_teachers.tar"] = bytes(flipped)
    code, out = kdrun(tmp_path, monkeypatch, capsys, data_root, "teacher=resnet56", run="resnet56")
    assert code == 2 and "recorded in TMP/cache/pretrained/cifar_teachers.tar.sha256 when the archive was first " \
        "downloaded" in out and "Nothing was cached" in out, out
    assert cached(tmp_path) == ["cifar_teachers.tar.sha256", "mdistiller-wrn40_2-cifar100.pt"]


def test_a_damaged_cache_entry_is_refused_and_deleting_it_works_without_a_download(tmp_path, monkeypatch, capsys,
                                                                                   server, data_root):
    server.files["cifar_teachers.tar"] = archive({WRN: teacher_weights("wrn40_2")})
    assert kdrun(tmp_path, monkeypatch, capsys, data_root)[0] == 0
    entry = tmp_path / "cache" / "pretrained" / "mdistiller-wrn40_2-cifar100.pt"
    entry.write_bytes(entry.read_bytes()[:1000])
    code, out = kdrun(tmp_path, monkeypatch, capsys, data_root, "seed=1", run="again")
    assert code == 2 and "The cached published teacher TMP/cache/pretrained/mdistiller-wrn40_2-cifar100.pt cannot be " \
        "read" in out and "Delete it and run again: kdrun takes it from the archive again." in out, out
    entry.unlink()
    assert kdrun(tmp_path, monkeypatch, capsys, data_root, "seed=1", run="again")[0] == 0
    assert server.requests == ["/files/cifar_teachers.tar"] and entry.is_file()


def test_without_network_the_message_says_where_to_put_the_file_and_following_it_works(
        tmp_path, monkeypatch, capsys, data_root):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{port}")
    code, out = kdrun(tmp_path, monkeypatch, capsys, data_root)
    assert code == 2 and "could not download cifar_teachers.tar" in out, out
    assert SOURCES.get("mdistiller").url in out and "Nothing was cached" in out
    where = re.search(r"put it at (\S+) and run the same command again", out).group(1)
    assert where == "TMP/cache/pretrained/cifar_teachers.tar"
    good = archive({WRN: teacher_weights("wrn40_2")})
    by_hand = Path(where.replace("TMP", str(tmp_path)))
    by_hand.write_bytes(good[:-4096])  # a copy cut short: checked as a download is
    code, out = kdrun(tmp_path, monkeypatch, capsys, data_root)
    assert code == 2 and "The archive TMP/cache/pretrained/cifar_teachers.tar is not mdistiller's cifar_teachers.tar:" \
        in out and "Delete it and run again to download it anew (or put a good copy there)" in out, out
    by_hand.write_bytes(good)  # as the user would, by hand
    code, out = kdrun(tmp_path, monkeypatch, capsys, data_root)
    assert code == 0, out
    assert cached(tmp_path) == ["cifar_teachers.tar", "cifar_teachers.tar.sha256", "mdistiller-wrn40_2-cifar100.pt"]


@pytest.mark.parametrize("extra,expected", [
    (["teacher.pretrained=mdistillr"], "Unknown pretrained source 'mdistillr'. Did you mean mdistiller? Valid "
                                       "pretrained source names (teacher.pretrained=NAME): mdistiller"),
    (["teacher=resnet20"], "teacher.pretrained=mdistiller (mdistiller's released CIFAR-100 teachers, trained with "
                           "RepDistiller's recipe for 240 epochs) has no teacher=resnet20 for dataset=cifar100. It "
                           "has on dataset=cifar100: resnet56, resnet110, resnet32x4, wrn40_2, vgg13, resnet50."),
    (["dataset=cifar10"], "has no teacher=wrn40_2 for dataset=cifar10"),
    (["teacher.checkpoint=mine.pt"], "teacher.pretrained=mdistiller and teacher.checkpoint=mine.pt both give"),
    (["teacher.epoch=3"], "teacher.epoch=3 picks an epoch of a teacher kdrun trains, but teacher.pretrained"),
    (["teacher.drop_rate=0.3"], "teacher.pretrained=mdistiller gives the weights of teacher=wrn40_2 as published, "
                                "with its default arguments, but teacher.drop_rate=0.3 changes it"),
    (["schedule=rco", "schedule.anchors=[10]"], "which kdrun keeps when it trains the teacher; teacher.pretrained=mdistiller gives only"),
])
def test_what_a_source_cannot_give_is_refused_before_any_download(tmp_path, monkeypatch, capsys, server, extra,
                                                                  expected):
    code, out = kdrun(tmp_path, monkeypatch, capsys, tmp_path / "no-data", *extra)
    assert code == 2 and expected in out, out
    assert server.requests == [] and cached(tmp_path) == []


def test_the_advice_of_the_refusals_works(tmp_path, monkeypatch, capsys, server, data_root):
    """Each refusal's way out: another teacher the source has, or teacher.pretrained=null."""
    server.files["cifar_teachers.tar"] = archive({RESNET56: teacher_weights("resnet56")})
    assert kdrun(tmp_path, monkeypatch, capsys, data_root, "teacher=resnet56")[0] == 0
    code, out = kdrun(tmp_path, monkeypatch, capsys, data_root, "teacher.epoch=1", "teacher.pretrained=null",
                      "teacher=mlp", "teacher.hidden=[8]", "teacher.train.epochs=1", "teacher.train.batch_size=5",
                      run="trained")
    assert code == 0, out
    assert "teacher_pretrained" not in read_json(tmp_path / "trained" / "metrics.json")


def test_in_an_ensemble_the_runs_teacher_is_the_published_one_and_the_others_are_trained(tmp_path, monkeypatch,
                                                                                        capsys, server, data_root):
    server.files["cifar_teachers.tar"] = archive({WRN: teacher_weights("wrn40_2")})
    code, out = kdrun(tmp_path, monkeypatch, capsys, data_root, "method.teachers=[resnet8]", "teacher.train.epochs=1",
                      "teacher.train.batch_size=5")
    assert code == 0, out
    metrics = read_json(tmp_path / "run" / "metrics.json")
    published, trained = metrics["teacher_source"].split(", ")
    assert metrics["teacher"] == "wrn40_2+resnet8" and published == str(tmp_path / "cache" / "pretrained" /
                                                                         "mdistiller-wrn40_2-cifar100.pt")
    assert Path(trained).parent == tmp_path / "cache" / "teachers" and Path(trained).name.startswith("resnet8-cifar100")


def test_the_key_is_in_a_runs_identity_only_when_set():
    plain = compose_config(["teacher=wrn40_2", "dataset=cifar100"])
    assert config_identity(compose_config(["teacher=wrn40_2", "dataset=cifar100", "teacher.pretrained=null"])) == \
        config_identity(plain)
    published = compose_config(["teacher=wrn40_2", "dataset=cifar100", "teacher.pretrained=mdistiller"])
    assert config_identity(published) != config_identity(plain)


def test_another_source_is_one_more_entry_and_its_keys_can_be_renamed(tmp_path, monkeypatch, capsys, server,
                                                                     data_root):
    """A source whose files keep the weights under `state_dict` with a `backbone.` prefix (data, no code)."""
    entry = Published("wrn40_2", "cifar100", 70.0, member="zoo/wrn.pt")
    SOURCES.register("elsewhere", Source(
        name="elsewhere", about="a test's zoo", kind="archive", models={"cifar100": {"wrn40_2": entry}},
        url="https://example.invalid/zoo.tar", page="https://example.invalid", archive="zoo.tar",
        weights_key="state_dict", rename={"backbone.": ""}))
    try:
        buffer = io.BytesIO()
        torch.save({"state_dict": teacher_weights("wrn40_2", prefix="backbone.")}, buffer)
        with tarfile.open(fileobj=(tar := io.BytesIO()), mode="w") as zoo:
            info = tarfile.TarInfo("zoo/wrn.pt")
            info.size = len(buffer.getvalue())
            zoo.addfile(info, io.BytesIO(buffer.getvalue()))
        server.files["zoo.tar"] = tar.getvalue()
        code, out = kdrun(tmp_path, monkeypatch, capsys, data_root, "teacher.pretrained=elsewhere")
        assert code == 0, out
        metrics = read_json(tmp_path / "run" / "metrics.json")
        assert metrics["teacher_published_acc"] == 70.0 and server.requests == ["/files/zoo.tar"]
        kept = torch.load(metrics["teacher_source"], weights_only=True)["state_dict"]
        assert all(torch.equal(kept[k], v) for k, v in teacher_weights("wrn40_2").items())
    finally:
        SOURCES.unregister("elsewhere")


def write_imagenet(root: Path, classes: int = 1000) -> None:
    """ILSVRC-2012's layout, train/WNID/*.JPEG and val/WNID/*.JPEG, one tiny image of each class in each."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{split}_{c}.JPEG")


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    write_imagenet(root)
    return root


def tv_kdrun(tmp_path, monkeypatch, capsys, imagenet_root):
    """teacher=tv_resnet18 from torchvision's weights, with torch.hub's cache in TMP/torch."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    args = ["teacher.pretrained=torchvision", "teacher=tv_resnet18", "dataset=imagenet", f"dataset.root={imagenet_root}",
            "dataset.image_size=32", "dataset.workers=0", "dataset.train_size=4", "dataset.test_size=4", "student=mlp",
            "student.hidden=[8]", "method=kd", "train.epochs=1", "train.batch_size=4", "progress=false",
            f"hydra.run.dir={tmp_path / 'run'}"]
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    return code, " ".join(out.split()).replace(str(tmp_path), "TMP")


def resnet18_predicting_class_0() -> dict:
    from torchvision.models import resnet18

    model = resnet18(num_classes=1000)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[0] = 1.0
    return model.state_dict()


def test_torchvision_weights_by_hand_into_the_hub_cache_are_loaded_without_a_download(tmp_path, monkeypatch, capsys,
                                                                                      imagenet_root):
    """Offline, the message names the file torchvision's weights API expects in $TORCH_HOME/hub/checkpoints/;
    put there, it is loaded (it predicts class 0 for every image: 1 test image in 4) and nothing is downloaded."""
    from torchvision.models import ResNet18_Weights

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{s.getsockname()[1]}")
    code, out = tv_kdrun(tmp_path, monkeypatch, capsys, imagenet_root)
    assert code == 2 and "could not download resnet18-f37072fd.pth" in out and ResNet18_Weights.IMAGENET1K_V1.url in out
    assert "put it at TMP/torch/hub/checkpoints/resnet18-f37072fd.pth and run the same command again" in out, out
    file = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert not file.parent.is_dir() or not any(file.parent.iterdir())
    torch.save(resnet18_predicting_class_0(), file)
    code, out = tv_kdrun(tmp_path, monkeypatch, capsys, imagenet_root)
    assert code == 0, out
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["teacher_source"] == str(file)
    assert metrics["teacher_pretrained"] == "torchvision" and metrics["teacher_published_acc"] == 69.758
    assert metrics["teacher_test_acc"] == pytest.approx(25.0, abs=1e-3)


def test_a_bad_file_in_the_hub_cache_is_refused_and_torchvisions_file_there_works(tmp_path, monkeypatch, capsys,
                                                                                  server, imagenet_root):
    file = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    file.parent.mkdir(parents=True)
    file.write_bytes(b"not a torch file")
    code, out = tv_kdrun(tmp_path, monkeypatch, capsys, imagenet_root)
    assert code == 2 and "the file TMP/torch/hub/checkpoints/resnet18-f37072fd.pth in torch.hub's cache cannot be " \
        "read (UnpicklingError" in out and "Put torchvision's file there instead, or delete it" in out, out
    torch.save(resnet18_predicting_class_0(), file)
    assert tv_kdrun(tmp_path, monkeypatch, capsys, imagenet_root)[0] == 0 and server.requests == []


def test_a_file_in_the_hub_cache_that_does_not_fit_is_refused(tmp_path, monkeypatch):
    from kdrun.errors import UserError
    from kdrun.training.pretrained import hub_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({"fc.bias": torch.zeros(1000)}, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    source = SOURCES.get("torchvision")
    teacher = MODELS.get("tv_resnet18")(num_classes=1000, in_channels=3, image_size=(32, 32))
    with pytest.raises(UserError, match=r"in torch.hub's cache does not fit teacher=tv_resnet18 \(Error\(s\) in "
                                        r"loading .*\. Put torchvision's file there instead, or delete it"):
        hub_weights(source, source.published("tv_resnet18", "imagenet"), teacher)


def test_torchvision_weights_that_fail_their_hash_are_refused_and_not_cached(tmp_path, monkeypatch, capsys, server,
                                                                             imagenet_root):
    buffer = io.BytesIO()
    torch.save(resnet18_predicting_class_0(), buffer)
    server.files["resnet18-f37072fd.pth"] = buffer.getvalue()  # its SHA-256 does not begin with f37072fd
    code, out = tv_kdrun(tmp_path, monkeypatch, capsys, imagenet_root)
    assert code == 2 and f"the download of resnet18-f37072fd.pth from {server.url}/resnet18-f37072fd.pth is not " \
        f"usable (invalid hash value" in out and "Nothing was cached" in out, out
    assert server.requests == ["/files/resnet18-f37072fd.pth"]
    assert not any((tmp_path / "torch" / "hub" / "checkpoints").iterdir())


def test_the_published_accuracies_of_torchvision_are_its_own():
    from torchvision.models import get_weight

    for entry in SOURCES.get("torchvision").models["imagenet"].values():
        assert entry.published_acc == get_weight(entry.weights).meta["_metrics"]["ImageNet-1K"]["acc@1"]
