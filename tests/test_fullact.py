"""`fullact` (F-ActT, Zagoruyko & Komodakis 2017, Table 1): the term against its formula on hand-made
tensors, the 1x1 projections where widths differ (the paper's), the refusal of unequal shapes naming both,
the wiring of a step, and (slow) short runs through kdrun on NIN and WRN pairs, and AT on the NIN pair."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from conftest import compose_config
from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.base import Batch
from kdrun.methods.fullact import FullActConfig, fullact_loss
from kdrun.models import MODELS
from kdrun.run import run
from inprocess import one_cpu_thread  # noqa: F401  (autouse: tiny models on one thread)

CONF = Path(__file__).resolve().parents[1] / "conf"
INFO = DataInfo(channels=3, image_size=(8, 8), num_classes=10, train_size=16)
TINY = ["dataset=synthetic", "dataset.train_size=16", "dataset.test_size=8", "dataset.image_size=16",
        "dataset.num_classes=4", "train.epochs=1", "train.batch_size=16", "teacher.train.epochs=1",
        "teacher.train.batch_size=16", "progress=false"]


def cfg(**over):
    return OmegaConf.merge(OmegaConf.load(CONF / "method" / "fullact.yaml"), over)


def zoo(name):
    return MODELS.get(name)(num_classes=10, in_channels=3, image_size=INFO.image_size)


def test_term_is_the_mean_squared_difference_of_the_l2_normalised_activations():
    s = torch.tensor([[3.0, 4.0], [0.0, 2.0]]).view(2, 1, 1, 2)  # 2 examples, 1 x 1 x 2 each
    t = torch.tensor([[1.0, 0.0], [0.0, 5.0]]).view(2, 1, 1, 2)
    # normalised: s -> (0.6, 0.8), (0, 1); t -> (1, 0), (0, 1); squares 0.16 + 0.64 + 0 + 0 over 4 elements
    assert fullact_loss(s, t).item() == pytest.approx(0.8 / 4)
    assert fullact_loss(s, t, normalize=False).item() == pytest.approx((4 + 16 + 0 + 9) / 4)
    a, b = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    qa, qb = a.flatten(1) / a.flatten(1).norm(dim=1, keepdim=True), b.flatten(1) / b.flatten(1).norm(dim=1, keepdim=True)
    assert fullact_loss(a, b).item() == pytest.approx(((qa - qb) ** 2).sum().item() / a.numel(), rel=1e-5)
    assert fullact_loss(a, 5 * a).item() == pytest.approx(0, abs=1e-12)  # scale-free per example


def test_unequal_widths_get_a_1x1_conv_onto_the_teachers_channels_and_equal_ones_none():
    method = build_method(cfg(), zoo("nin_thin"), zoo("nin_wide"), INFO)
    assert method.s_paths == method.t_paths == ["block1", "block2", "block3"]
    assert [(p.in_channels, p.out_channels, p.kernel_size, p.bias) for p in method.projections] == [
        (48, 96, (1, 1), None), (96, 192, (1, 1), None), (96, 192, (1, 1), None)]
    assert {n for n, _ in method.named_parameters() if n.startswith("projections")} == {
        "projections.0.weight", "projections.1.weight", "projections.2.weight"}  # trained with the student
    same = build_method(cfg(), zoo("wrn10_1"), zoo("wrn16_1"), INFO)  # same width, different depth: direct
    assert all(isinstance(p, nn.Identity) for p in same.projections)


def test_unequal_channel_counts_are_refused_without_projection_naming_both_shapes():
    with pytest.raises(UserError) as err:
        build_method(cfg(projection="none"), zoo("nin_thin"), zoo("nin_wide"), INFO)
    message = str(err.value)
    assert "'block1' is 48x8x8 (C x H x W)" in message and "'block1' is 96x8x8 (C x H x W)" in message
    assert "channel counts differ (48 and 96)" in message and "method.projection=auto" in message


def test_unequal_sizes_are_refused_naming_both_shapes():
    with pytest.raises(UserError) as err:
        build_method(cfg(student_features=["block1"], teacher_features=["block2"]), zoo("wrn10_1"),
                     zoo("wrn16_1"), INFO)
    message = str(err.value)
    assert "'block1' is 16x8x8 (C x H x W)" in message and "'block2' is 32x4x4 (C x H x W)" in message
    assert "sizes differ" in message and "method=at" in message


def test_a_step_weights_the_term_by_beta_and_sums_it_over_the_points():
    torch.manual_seed(0)
    student, teacher = zoo("nin_thin"), zoo("nin_wide")
    method = build_method(cfg(beta=7.0), student, teacher, INFO)
    assert method.weights(1) == {"ce": 1.0, "kd": 0.0, "fullact": 7.0}
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    _, losses = method.forward_train(x, y)
    assert set(losses) == {"ce", "fullact"}
    s_feats, t_feats = {}, {}
    for model, feats in ((student, s_feats), (teacher, t_feats)):
        out = x
        for name in ("block1", "pool1", "drop1", "block2", "pool2", "drop2", "block3"):
            out = getattr(model, name)(out)
            feats[name] = out
    want = sum(fullact_loss(p(s_feats[b]), t_feats[b]) for p, b in zip(method.projections, method.s_paths))
    assert losses["fullact"].item() == pytest.approx(7.0 * want.item(), rel=1e-5)
    batch = Batch(x=x, y=y, s_logits=student(x), t_logits=None, s_feats=s_feats, t_feats=t_feats)
    assert method.terms(frozenset({"fullact"}), batch)["fullact"].item() == pytest.approx(want.item(), rel=1e-5)


def test_config_file_and_schema_agree():
    composed = compose_config(["method=fullact"]).method
    schema = OmegaConf.structured(FullActConfig)
    assert set(composed) == set(schema)
    assert (composed.beta, composed.normalize, str(composed.projection)) == (1000.0, True, "auto")
    assert composed.logit_stand is False and composed.stop_epoch is None


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize("method,teacher,student", [("fullact", "nin_wide", "nin_thin"),
                                                    ("fullact", "wrn16_2", "wrn16_1"),
                                                    ("at", "nin_wide", "nin_thin")])
def test_runs_through_kdrun(method, teacher, student, shared_cache, tmp_path):
    metrics = run(compose_config(TINY + [f"method={method}", f"teacher={teacher}", f"student={student}",
                                         f"cache_dir={shared_cache}"]), tmp_path / "run")
    assert metrics["status"] == "completed"
    assert method in metrics["history"][0]["losses"]
