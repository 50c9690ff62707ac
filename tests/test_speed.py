"""Every speed option computes the same thing as plain fp32 NCHW, up to rounding (bf16 tolerance for bf16)."""
import copy
import logging

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from conftest import QUICK, compose_config
from kdrun.data import build_dataset
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.base import Distiller
from kdrun.training import speed as speed_mod
from kdrun.training.loop import evaluate, fit
from kdrun.training.recipe import Recipe
from kdrun.run import run
from kdrun.methods.precision import loss_inputs
from kdrun.training.speed import Speed, resolve_dtype

CPU = torch.device("cpu")
KD = OmegaConf.create({"name": "kd", "T": 4.0, "alpha": 0.9, "ce_weight": None})


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 5, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.pool(self.relu(self.conv2(x))).flatten(1))


class FeatureKD(Distiller):
    """KD plus an MSE between hooked features, to check that teacher features take every path too."""

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.watch(["conv2"], ["conv2", "fc:in"])

    def losses(self, s_logits, t_logits, s_feats, t_feats, **_):
        n = len(s_logits)  # .view needs the standard layout, which losses get also under channels_last
        s_map, t_map = s_feats["conv2"].view(n, -1).pow(2).mean(1), t_feats["conv2"].view(n, -1).pow(2).mean(1)
        return {"kl": nn.functional.kl_div(s_logits.log_softmax(1), t_logits.softmax(1), reduction="batchmean"),
                "feat": (s_map - t_map).pow(2).mean() + (t_feats["fc:in"] - 0.1).pow(2).mean()}


def tiny_data(augment=None):
    cfg = OmegaConf.create({"name": "synthetic", "train_size": 48, "test_size": 16, "val_size": 0, "channels": 3,
                            "image_size": 8, "num_classes": 5, "noise": 1.0, "data_seed": 0})
    data = build_dataset(cfg, CPU)
    data.augment = augment
    return data


def models(seed=0):
    torch.manual_seed(seed)
    return TinyCNN(), TinyCNN(width=12).eval()


def losses_and_grads(speed: Speed, method="kd"):
    student, teacher = models()
    data = tiny_data()
    distiller = (build_method(KD, student, teacher, data.info) if method == "kd"
                 else FeatureKD(student, teacher, KD, data.info))
    if speed.channels_last:
        distiller.to(memory_format=torch.channels_last)
    speed.prepare_model(distiller.student)
    speed.prepare_model(distiller.teacher)
    idx, x, y = next(data.batches(data.train, 32, shuffle=True, seed=3, train=True))
    with speed.autocast():
        logits, losses = distiller.forward_train(speed.batch(x), y, 1, idx)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in distiller.student.named_parameters()}
    return logits, losses, grads


def assert_close(a, b, rtol, atol):
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("method", ["kd", "features"])
def test_speed_options_compute_the_same_loss_and_gradients(method, monkeypatch):
    # Compilation is checked with the aot_eager backend: the same graph capture (dynamo, hooks,
    # autograd) as the default backend, without minutes of C++ code generation in the test suite.
    original = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: original(self, backend="aot_eager", **kw))
    torch._dynamo.reset()
    ref_logits, ref_losses, ref_grads = losses_and_grads(Speed(CPU), method)
    assert all(v.dtype == torch.float32 for v in ref_losses.values())
    for option in (Speed(CPU, channels_last=True), Speed(CPU, compile=True)):
        logits, losses, grads = losses_and_grads(option, method)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
        assert_close(losses, ref_losses, rtol=1e-4, atol=1e-5)
        assert_close(grads, ref_grads, rtol=1e-3, atol=1e-5)
    logits, losses, grads = losses_and_grads(Speed(CPU, dtype=torch.bfloat16, channels_last=True), method)
    # The losses are computed in fp32 from bf16 forwards: equal within bf16 rounding (8 bits of mantissa).
    assert logits.dtype == torch.float32 and all(v.dtype == torch.float32 for v in losses.values())
    torch.testing.assert_close(logits, ref_logits, rtol=0.05, atol=0.03)
    assert_close(losses, ref_losses, rtol=0.05, atol=0.01)
    for k in grads:
        cosine = nn.functional.cosine_similarity(grads[k].flatten(), ref_grads[k].flatten(), dim=0)
        assert cosine > 0.98, (k, cosine)


def fit_history(cache, method="kd", epochs=3, precision="fp32"):
    student, teacher = models()
    data = tiny_data()
    distiller = (build_method(KD, student, teacher, data.info) if method == "kd"
                 else FeatureKD(student, teacher, KD, data.info))
    recipe = Recipe(epochs=epochs, batch_size=16, lr=0.05, precision=precision, cache_teacher=cache)
    return fit(distiller, data, recipe, stage="kd", seed=0), student


@pytest.mark.parametrize("method", ["kd", "features"])
def test_teacher_output_cache_gives_the_same_training(method, caplog):
    caplog.set_level("INFO", logger="kdrun")
    cached, s_cached = fit_history("true", method)
    assert "Teacher outputs are cached" in caplog.text
    plain, s_plain = fit_history("false", method)
    for a, b in zip(cached.history, plain.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["losses"] == pytest.approx(b["losses"], rel=1e-5, abs=1e-7)
    for (k, a), b in zip(s_cached.state_dict().items(), s_plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_cached_epochs_do_not_run_the_teacher():
    student, teacher = models()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    data = tiny_data()
    distiller = build_method(KD, student, teacher, data.info)
    fit(distiller, data, Recipe(epochs=3, batch_size=16, cache_teacher="true", precision="fp32"), stage="kd", seed=0)
    # two probes of the outputs' shapes, one epoch of 3 batches, then nothing (evaluation is the student's)
    assert len(calls) == 2 + 3
    assert not hasattr(distiller, "teacher_cache")  # the loop's, for one stage: freed with it


def test_cache_refused_when_the_data_is_augmented(caplog):
    flip = lambda x, g: x.flip(3)  # noqa: E731
    caplog.set_level("INFO", logger="kdrun")
    student, teacher = models()
    data = tiny_data(augment=flip)
    distiller = build_method(KD, student, teacher, data.info)
    fit(distiller, data, Recipe(epochs=1, batch_size=16, precision="fp32"), stage="kd", seed=0)
    assert "not cached: the training data is augmented" in caplog.text
    with pytest.raises(UserError, match="augmented"):
        fit(distiller, data, Recipe(epochs=1, batch_size=16, cache_teacher="true"), stage="kd", seed=0)


def test_cache_refused_for_an_ensemble_teacher(caplog):
    from kdrun.models.ensemble import TeacherEnsemble

    caplog.set_level("INFO", logger="kdrun")
    student, teacher = models()
    ensemble = TeacherEnsemble([teacher, models(seed=1)[1]]).eval()
    data = tiny_data()
    distiller = build_method(KD, student, ensemble, data.info)
    fit(distiller, data, Recipe(epochs=1, batch_size=16, precision="fp32"), stage="kd", seed=0)
    assert "not cached: they are not tensors with one row per example" in caplog.text
    with pytest.raises(UserError, match="one row per example"):
        fit(distiller, data, Recipe(epochs=1, batch_size=16, cache_teacher="true"), stage="kd", seed=0)


def test_cache_refused_over_the_memory_budget(monkeypatch, caplog):
    from kdrun.training import teacher_outputs

    caplog.set_level("INFO", logger="kdrun")
    monkeypatch.setattr(teacher_outputs, "memory_budget", lambda device: 1000)
    student, teacher = models()
    data = tiny_data()
    distiller = FeatureKD(student, teacher, KD, data.info)
    fit(distiller, data, Recipe(epochs=1, batch_size=16, precision="fp32"), stage="kd", seed=0)
    assert "not cached" in caplog.text and "budget" in caplog.text
    with pytest.raises(UserError, match="cache_teacher=true"):
        fit(distiller, data, Recipe(epochs=1, batch_size=16, cache_teacher="true"), stage="kd", seed=0)


def test_bf16_training_and_evaluation_follow_fp32():
    fp32, _ = fit_history("false", precision="fp32", epochs=2)
    bf16, _ = fit_history("false", precision="bf16", epochs=2)
    for a, b in zip(bf16.history, fp32.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)
    student, _ = models()
    data = tiny_data()
    plain = evaluate(student, data, data.test)
    assert evaluate(student, data, data.test, speed=Speed(CPU, dtype=torch.bfloat16, channels_last=True)) == \
        pytest.approx(plain, abs=100 * 2 / len(data.test))  # at most two near-ties flip


def test_precision_resolution_and_recipe_keys(monkeypatch):
    monkeypatch.setattr(speed_mod, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", CPU) == torch.float32
    monkeypatch.setattr(speed_mod, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", CPU) == torch.bfloat16
    assert resolve_dtype("fp32", CPU) == torch.float32 and resolve_dtype("BF16", CPU) == torch.bfloat16
    speed = Speed.resolve(Recipe(channels_last="auto", cache_teacher="auto"), CPU)
    assert speed.channels_last and speed.cache_teacher is None and not speed.compile
    assert not Speed.resolve(Recipe(channels_last=False), CPU).channels_last
    assert not Speed.resolve(Recipe(), torch.device("meta")).channels_last
    assert Speed.resolve(Recipe(channels_last=True, compile=True, cache_teacher=False), CPU) == \
        Speed(CPU, resolve_dtype("auto", CPU), channels_last=True, compile=True, cache_teacher=False)
    for key, value in [("precision", "fp16"), ("channels_last", "maybe"), ("cache_teacher", "sometimes")]:
        with pytest.raises(UserError, match=f"train.{key}"):
            Recipe.from_config(OmegaConf.create({key: value}))
    # speed keys do not change what is computed, so they stay out of the teacher cache key
    assert Recipe(precision="bf16", compile=True).as_dict() == Recipe().as_dict()
    nested = loss_inputs({"a": [torch.ones(2, dtype=torch.bfloat16)], "b": torch.ones(2, dtype=torch.long)})
    assert nested["a"][0].dtype == torch.float32 and nested["b"].dtype == torch.long


def test_run_with_speed_options_writes_images_per_second(tmp_path):
    cfg = compose_config(QUICK + ["train.precision=bf16", "train.channels_last=true", "train.cache_teacher=true",
                                  "train.epochs=2"])
    assert cfg.teacher.train.precision == "bf16"  # the teacher's recipe follows train.* by default
    metrics = run(cfg, tmp_path / "run")
    assert metrics["status"] == "completed" and metrics["train_images_per_s"] > 0
    again = compose_config(QUICK + ["train.precision=fp32", "train.epochs=2"])
    from kdrun.results.identity import config_identity
    assert config_identity(again) == config_identity(cfg)  # a run may resume with other speed settings


def test_bench_script_runs_both_loops(capsys):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--teacher", "mlp", "--student", "mlp", "--batch-size", "16", "--images", "48", "--workers", "0",
                "--warmup-batches", "1", "--rounds", "2", "--no-augment", "teacher.hidden=[16]", "student.hidden=[8]", "device=cpu"])
    out = capsys.readouterr().out
    assert "kdrun / reference:" in out and "rounds:" in out and "reference (RepDistiller-style)" in out and "CIFAR-100 epoch" in out


def test_every_stage_of_a_schedule_follows_the_speed_keys_of_train():
    from kdrun.schedules import build_stages

    cfg = compose_config(["schedule=fitnet", "method=fitnet", "train.precision=fp32", "train.compile=true"])
    stages = build_stages(cfg)
    assert len(stages) == 2 and all(s.train_recipe.precision == "fp32" and s.train_recipe.compile for s in stages)
    assert Recipe.from_config(cfg.teacher.train).precision == "fp32"


def test_the_evaluation_batch_does_not_change_the_accuracy():
    """The batch is chosen by device (64 on the CPU, 1000 on a GPU: scripts/bench_eval.py); BN layers
    evaluate with their running statistics, so the split's accuracy is the same in any batching."""
    student, _ = models()
    student.train()
    data = tiny_data()
    fit(FeatureKD(student, models()[1], KD, data.info), data, Recipe(epochs=1, batch_size=16, precision="fp32"),
        stage="kd", seed=0)  # running statistics that are not the initial ones
    accuracies = {evaluate(student, data, data.test, batch_size=b) for b in (1, 7, 64, 1000)}
    assert len(accuracies) == 1 and evaluate(student, data, data.test) in accuracies
    assert student.training  # evaluation puts the model back into the mode it found
