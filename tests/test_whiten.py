"""dataset.whiten: pylearn2's global contrast normalisation + ZCA whitening, fitted on the training split."""
import numpy as np
import pytest
import torch
from omegaconf import open_dict

from conftest import QUICK, compose_config, compose_refusal
from kdrun.data import build_dataset
from kdrun.data.whiten import apply_zca_, fit_zca, global_contrast_normalize
from kdrun.errors import UserError
from kdrun.training.recipe import Recipe
from kdrun.training.teacher import cache_key

CPU = torch.device("cpu")
WHITEN = "dataset.whiten={gcn_scale:55.0,zca_bias:0.1}"
TINY = ["dataset=synthetic", "dataset.image_size=4", "dataset.train_size=200", "dataset.test_size=20"]


def test_gcn_gives_each_image_zero_mean_and_norm_scale():
    x = torch.tensor([[[[0.0, 255.0], [10.0, 20.0]]], [[[3.0, 1.0], [4.0, 1.0]]]], dtype=torch.float64)
    out = global_contrast_normalize(x, scale=55.0)
    assert out.shape == x.shape
    flat = x.flatten(1)
    centred = flat - flat.mean(1, keepdim=True)
    expected = centred / (centred.norm(dim=1, keepdim=True) / 55.0)
    assert torch.allclose(out.flatten(1), expected)
    assert torch.allclose(out.flatten(1).mean(1), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out.flatten(1).norm(dim=1), torch.full((2,), 55.0, dtype=torch.float64))


def test_gcn_leaves_a_constant_image_finite():
    out = global_contrast_normalize(torch.full((1, 3, 2, 2), 7.0), scale=55.0)
    assert torch.equal(out, torch.zeros(1, 3, 2, 2))  # norm 0 < min_divisor: divided by 1


def numpy_zca(x: np.ndarray, bias: float) -> tuple[np.ndarray, np.ndarray]:
    """pylearn2's ZCA.fit, written out."""
    mean = x.mean(0)
    centred = x - mean
    eigs, vecs = np.linalg.eigh(centred.T @ centred / x.shape[0] + bias * np.eye(x.shape[1]))
    return mean, vecs @ np.diag(1 / np.sqrt(eigs)) @ vecs.T


def test_zca_matches_the_formula_and_whitens():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) + rng.normal(size=12)
    mean, projection = fit_zca(torch.from_numpy(x).float(), bias=0.1)
    ref_mean, ref_projection = numpy_zca(x.astype(np.float32).astype(np.float64), 0.1)
    assert np.allclose(mean.numpy(), ref_mean) and np.allclose(projection.numpy(), ref_projection)

    mean, projection = fit_zca(torch.from_numpy(x), bias=0.0)
    white = apply_zca_(torch.from_numpy(x).clone(), mean, projection).numpy()
    assert np.allclose(white.mean(0), 0, atol=1e-10)
    assert np.allclose(white.T @ white / len(white), np.eye(12), atol=1e-8)


def test_zca_of_fewer_examples_than_features_is_the_same_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 20)) * np.linspace(0.5, 3.0, 20)
    mean, projection = fit_zca(torch.from_numpy(x), bias=0.1)  # the thin-SVD path
    ref_mean, ref_projection = numpy_zca(x, 0.1)
    assert np.allclose(mean.numpy(), ref_mean) and np.allclose(projection.numpy(), ref_projection, atol=1e-10)


def test_zca_without_bias_on_singular_data_asks_for_a_bias():
    x = torch.randn(10, 20, dtype=torch.float64)  # fewer examples than features
    with pytest.raises(UserError, match="Raise dataset.whiten.zca_bias"):
        fit_zca(x, bias=0.0)


def test_build_dataset_whitens_every_split_with_the_training_statistics():
    data = build_dataset(compose_config(TINY + ["dataset.val_size=30", WHITEN]).dataset, CPU)
    plain = build_dataset(compose_config(TINY + ["dataset.val_size=30"]).dataset, CPU)
    assert len(data.train) == 170 and len(data.val) == 30 and len(data.test) == 20
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (3, 4, 4)
    assert torch.equal(data.prepare(data.test.x, train=False), data.test.x)
    assert torch.equal(data.prepare(data.train.x, train=False), data.train.x)

    # The reference: GCN each split, ZCA fitted on the GCN'd training split only (numpy, float64).
    def gcn(x):
        x = x.flatten(1).double().numpy()
        x = x - x.mean(1, keepdims=True)
        return x / (np.linalg.norm(x, axis=1, keepdims=True) / 55.0)

    mean, projection = numpy_zca(gcn(plain.train.x), 0.1)
    for split, raw in ((data.train, plain.train), (data.val, plain.val), (data.test, plain.test)):
        assert torch.equal(split.y, raw.y)
        expected = (gcn(raw.x) - mean) @ projection
        assert np.allclose(split.x.flatten(1).numpy(), expected, atol=1e-4)
    # not refitted on the test split: its own ZCA would give other values
    test_mean, test_projection = numpy_zca(gcn(plain.test.x), 0.1)
    assert not np.allclose(data.test.x.flatten(1).numpy(), (gcn(plain.test.x) - test_mean) @ test_projection,
                           atol=1e-2)


def test_augmentation_pads_whitened_images_with_zeros():
    data = build_dataset(compose_config(TINY + [WHITEN, "+dataset.augment={crop_padding:4}"]).dataset, CPU)
    out = data.prepare(data.train.x[:8], train=True, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == (8, 3, 4, 4)
    assert (out == 0).any() and set(out[out != 0].tolist()) <= set(data.train.x[:8].flatten().tolist())


@pytest.mark.parametrize("override, message", [
    ("+dataset.whiten.scale=2", "Unknown dataset.whiten key.*scale"),
    ("dataset.whiten={gcn_scale:0.0,zca_bias:0.1}", "dataset.whiten.gcn_scale must be above 0"),
    ("dataset.whiten={gcn_scale:55.0,zca_bias:-1.0}", "dataset.whiten.zca_bias must be above 0"),
    ("dataset.whiten={gcn_scale:55.0}", "dataset.whiten lacks zca_bias"),
    ("dataset.whiten.gcn_scale=55", "dataset.whiten lacks zca_bias"),
])
def test_bad_whiten_configs_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        build_dataset(compose_config(TINY + [override]).dataset, CPU)


@pytest.mark.parametrize("override, message", [
    ("dataset.whiten={gcn_scale:abc,zca_bias:0.1}", "dataset.whiten.gcn_scale=abc: expected a number or null"),
    ("dataset.whiten=true", "dataset.whiten=true: expected a group of keys or null"),
])
def test_whiten_values_of_the_wrong_type_are_refused_by_the_schema(override, message):
    assert message in compose_refusal(TINY + [override])


def test_teacher_cache_key_depends_on_whiten_and_ignores_a_null_one():
    def key(overrides, without_whiten=False):
        cfg = compose_config(QUICK + overrides)
        if without_whiten:
            with open_dict(cfg.dataset):
                del cfg.dataset["whiten"]
        return cache_key(cfg.teacher, cfg.dataset, Recipe.from_config(cfg.teacher.train), 0)

    plain = key([])
    assert plain != key([WHITEN])
    assert key([WHITEN]) != key(["dataset.whiten={gcn_scale:55.0,zca_bias:0.2}"])
    assert key([WHITEN]) == key(["dataset.whiten.gcn_scale=55", "dataset.whiten.zca_bias=0.1"])
    assert plain == key(["dataset.whiten=null"])
    # a config from before dataset.whiten existed: its cached teachers keep their keys
    assert plain == key([], without_whiten=True)
