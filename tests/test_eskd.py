"""Early-stopped KD (ESKD, Cho & Hariharan, ICCV 2019) as `method.stop_epoch=E`: the KD term(s) are on
through epoch E of the stage; from epoch E + 1 on the student trains with the plain cross-entropy
(weight 1, whatever ce_weight was), the method's other terms unchanged."""
import re

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import QUICK, compose_config, compose_refusal
from fixed_logits import Fixed
from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.config import WithKD
from kdrun.methods.weighted import WeightedDistiller
from kdrun.results.identity import config_identity
from kdrun.run import run
from test_methods_runs import TINY

S = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -0.5]])
T_LOGITS = torch.tensor([[1.5, 1.0, -0.5, 0.2], [-1.0, 0.0, 2.0, 0.1]])
Y = torch.tensor([0, 2])
INFO = DataInfo(1, (1, 1), 4)
X = torch.zeros(2, 1, 1, 1)


def kd(**over):
    cfg = OmegaConf.create({"name": "kd", "T": 4.0, "alpha": 0.9, "ce_weight": None, "teachers": [],
                            "ensemble": "arithmetic", "variant": None, "logit_stand": False, "stop_epoch": 3, **over})
    return build_method(cfg, Fixed(S), Fixed(T_LOGITS), INFO)


def dkd(**over):
    cfg = OmegaConf.create({"name": "dkd", "T": 4.0, "alpha": 0.0, "beta": 1.0, "ce_weight": 1.0, "dkd_alpha": 1.0,
                            "dkd_beta": 8.0, "warmup": 20, "logit_stand": False, "stop_epoch": 5, **over})
    return build_method(cfg, Fixed(S), Fixed(T_LOGITS), INFO)


def test_kd_weights_before_at_and_after_the_stop_epoch():
    method = kd()
    for epoch in (1, 3):  # on through epoch E = 3
        assert method.weights(epoch) == pytest.approx({"ce": 0.1, "kd": 0.9})
    for epoch in (4, 50):  # then the plain cross-entropy
        assert method.weights(epoch) == {"ce": 1.0, "kd": 0.0}
    assert kd(stop_epoch=None).weights(1000) == pytest.approx({"ce": 0.1, "kd": 0.9})
    # Logit standardisation's weights (ce 0.1, KD 9): the cross-entropy at 1 after E as well.
    assert kd(ce_weight=0.1, alpha=9.0, logit_stand=True).weights(4) == {"ce": 1.0, "kd": 0.0}
    # Born-again's KD without labels (ce 1 - alpha = 0): the student still has a loss after E.
    assert kd(alpha=1.0, T=1.0).weights(4) == {"ce": 1.0, "kd": 0.0}
    assert kd(variant="cwtm").weights(4) == {"ce": 1.0, "cwtm": 0.0}
    annealed = kd(ce_weight=1.0, alpha=4.0, alpha_anneal=[1, 10, 1.0])
    assert annealed.weights(3)["kd"] == pytest.approx(4.0 - 3.0 * 2 / 9)
    assert annealed.weights(4) == {"ce": 1.0, "kd": 0.0}


def test_after_the_stop_epoch_the_loss_is_the_plain_cross_entropy():
    method = kd()
    _, losses = method.forward_train(X, Y, epoch=3)
    assert set(losses) == {"ce", "kd"}
    _, losses = method.forward_train(X, Y, epoch=4)
    assert set(losses) == {"ce"}
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(S, Y).item(), rel=1e-6)


def test_dkd_weights_stop_tckd_nckd_and_kd():
    method = dkd(alpha=0.5)
    assert method.weights(5) == pytest.approx({"ce": 1.0, "kd": 0.5, "tckd": 5 / 20, "nckd": 8 * 5 / 20})
    assert method.weights(6) == {"ce": 1.0, "kd": 0.0, "tckd": 0.0, "nckd": 0.0}
    _, losses = method.forward_train(X, Y, epoch=6)
    assert set(losses) == {"ce"}


class OwnTerm(WeightedDistiller):
    """A method of the CRD table's kind: its own term (not a KD term) at beta."""
    Config = WithKD
    own_terms = ("own",)


def test_other_methods_lose_their_kd_term_and_keep_their_own():
    cfg = OmegaConf.create({"name": "own", "T": 4.0, "alpha": 0.5, "beta": 2.0, "ce_weight": 0.3,
                            "logit_stand": False, "stop_epoch": 2})
    OwnTerm.validate(cfg)
    method = OwnTerm(Fixed(S), Fixed(T_LOGITS), cfg, INFO)
    assert method.weights(2) == {"ce": 0.3, "kd": 0.5, "own": 2.0}
    assert method.weights(3) == {"ce": 1.0, "kd": 0.0, "own": 2.0}
    assert method.weights(3, "init") == {}  # an initialisation stage is not KD's


@pytest.mark.parametrize("stop", [0, -2, 1.5, True, "3"])
def test_a_stop_epoch_that_is_not_an_epoch_is_refused(stop):
    with pytest.raises(UserError, match=re.escape("method.stop_epoch is the last epoch with the KD term (early-stopped "
                                                  "KD, Cho & Hariharan 2019): null (KD in every epoch) or an epoch of 1 "
                                                  "or more, got")):
        kd(stop_epoch=stop)


def test_a_stop_epoch_without_a_kd_term_is_refused():
    with pytest.raises(UserError, match=re.escape("method.stop_epoch acts on the KD term, but method.alpha is 0 (the "
                                                  "soft-target term is off)")):
        kd(alpha=0.0)
    at = OmegaConf.create({"name": "at", "T": 4.0, "alpha": 0.0, "beta": 1000.0, "ce_weight": 1.0, "p": 2.0,
                           "form": "repdistiller", "logit_stand": False, "stop_epoch": 10})
    with pytest.raises(UserError, match=re.escape("method.stop_epoch acts on the KD term, but method.alpha is 0 (at "
                                                  "has no KD term then): give method.alpha a positive value")):
        build_method(at, Fixed(S), Fixed(T_LOGITS), INFO)
    dkd(alpha=0.0)  # DKD's own terms are KD terms


@pytest.mark.parametrize("stop", [2, 7])
def test_a_kd_term_that_would_never_stop_is_refused_before_training(stop, tmp_path):
    cfg = compose_config(QUICK + ["train.epochs=2", f"method.stop_epoch={stop}"])
    with pytest.raises(UserError, match=re.escape(
            f"method.stop_epoch={stop}: the KD term would never stop, because stage 'kd' (recipe train) trains 2 "
            f"epoch(s) and the term stops after epoch {stop}. Give a stop_epoch below 2, or null for KD in every "
            f"epoch.")):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_stop_epoch_that_is_not_an_integer_is_refused_as_the_config_composes():
    assert "method.stop_epoch" in compose_refusal(["method.stop_epoch=1.5"])


def test_kd_with_ls_and_eskd_end_to_end(tmp_path):
    cfg = compose_config([*TINY, "method=kd", "teacher=wrn16_1", "student=wrn10_1", "method.logit_stand=true",
                          "method.stop_epoch=1", "train.epochs=2", f"cache_dir={tmp_path / 'cache'}"])
    metrics = run(cfg, tmp_path / "run")
    assert metrics["status"] == "completed"
    first, second = metrics["history"]
    assert set(first["losses"]) == {"ce", "kd"}
    assert set(second["losses"]) == {"ce"}  # no KD term after epoch 1
    assert second["train_loss"] == pytest.approx(second["losses"]["ce"])


def test_a_weighted_method_with_ls_and_eskd_end_to_end(tmp_path):
    """grad_at's alpha * KD term stops after epoch 1; its own term goes on."""
    cfg = compose_config([*QUICK, "method=grad_at", "method.alpha=0.5", "method.logit_stand=true",
                          "method.stop_epoch=1", "train.epochs=2", f"cache_dir={tmp_path / 'cache'}"])
    first, second = run(cfg, tmp_path / "run")["history"]
    assert set(first["losses"]) == {"ce", "kd", "grad_at"}
    assert set(second["losses"]) == {"ce", "grad_at"}


@pytest.mark.parametrize("overrides", [[], ["method=dkd"], ["schedule=fitnet"]])
def test_identities_of_runs_made_before_the_options_are_kept(overrides):
    """The new keys at their defaults are left out of the identity (kdrun.results.identity.KEYS_ADDED):
    these are the identities kdrun computed before the keys existed."""
    before = {(): "2ce19144d1583356", ("method=dkd",): "6122cb63f330ee80", ("schedule=fitnet",): "5ad1827f9bb8a937"}
    assert config_identity(compose_config(overrides)) == before[tuple(overrides)]
    for option in ("method.logit_stand=true", "method.stop_epoch=3"):
        assert config_identity(compose_config([*overrides, option])) != before[tuple(overrides)]


def test_the_teacher_does_not_run_once_the_kd_term_has_stopped():
    method = kd(stop_epoch=2)
    calls = []
    real = method.teacher_forward
    method.teacher_forward = lambda x: calls.append(1) or real(x)
    for epoch in (1, 2, 3, 4):
        method.forward_train(X, Y, epoch)
    assert len(calls) == 2  # epochs 1 and 2


def test_the_teacher_output_cache_is_complete_only_once_every_example_is_stored():
    from kdrun.training.teacher_outputs import TeacherOutputs

    cache = TeacherOutputs(4, torch.zeros(2, 3), {})
    cache.store(torch.tensor([0, 1]), torch.ones(2, 3), {})
    cache.epoch_done()  # an epoch that needed only two of them
    assert not cache.complete
    cache.store(torch.tensor([2, 3]), torch.ones(2, 3), {})
    cache.epoch_done()
    assert cache.complete


def test_a_kd_weight_that_starts_at_0_fills_the_teacher_cache_later(tmp_path):
    """Epoch 1 needs no teacher (alpha 0 there), so the cache fills in epoch 2: the run equals one without it."""
    common = TINY + ["method=kd", "method.alpha=0", "method.alpha_anneal=[1,2,0.9]", "method.ce_weight=1",
                     "train.epochs=3", "dataset.augment=null"]
    cached = run(compose_config(common + ["train.cache_teacher=true"]), tmp_path / "cached")
    plain = run(compose_config(common + ["train.cache_teacher=false"]), tmp_path / "plain")
    assert [h["train_loss"] for h in cached["history"]] == [h["train_loss"] for h in plain["history"]]
    assert "kd" not in cached["history"][0]["losses"] and "kd" in cached["history"][2]["losses"]
