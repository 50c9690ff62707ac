"""The strong view of MLKD (kdrun.data.randaugment): each op on hand-made images and against PIL (the
reference builds its views with PIL), Cutout, the draws, and the view itself: another image than the
weak view, the same labels and shape, a function of its generator's seed alone."""
import numpy as np
import pytest
import torch

from kdrun.data.augment import Augmentation
from kdrun.data.base import Dataset, Split
from kdrun.data.randaugment import OP_INDEX, OPS, RandAugment, StrongView, apply_ops, cutout
from kdrun.errors import UserError


def one(name, x, v=0.0):
    """Op `name` at magnitude v on every image of the float batch x."""
    n = x.shape[0]
    return apply_ops(x.float(), torch.full((n,), OP_INDEX[name]), torch.full((n,), float(v)))


def dot(size=4, row=3, col=3, value=200.0):
    x = torch.zeros(1, 1, size, size)
    x[0, 0, row, col] = value
    return x


def test_identity_leaves_the_image():
    x = torch.randint(0, 256, (3, 3, 8, 8)).float()
    assert torch.equal(one("identity", x, 0.7), x)


def test_rotate_90_turns_the_image_counter_clockwise():
    out = one("rotate", dot(row=3, col=3), 90.0)  # bottom-right -> top-right
    assert out[0, 0, 0, 3] == 200 and out.sum() == 200


def test_translate_and_shear_move_a_known_pixel():
    assert one("translate_x", dot(row=1, col=2), 0.25)[0, 0, 1, 1] == 200  # 0.25 x width 4: one pixel left
    assert one("translate_y", dot(row=2, col=1), 0.25)[0, 0, 1, 1] == 200  # one pixel up
    x = torch.arange(16.0).view(1, 1, 4, 4) + 1
    shifted = one("translate_x", x, 0.25)
    assert torch.equal(shifted[..., :3], x[..., 1:]) and (shifted[..., 3] == 0).all()  # black fill
    # shear_x 0.5: output (x, y) reads input x + 0.5 y (pixel centres); row 2 reads 1.25 columns further
    assert one("shear_x", dot(row=2, col=3), 0.5)[0, 0, 2, 2] == 200


def test_colour_ops_on_hand_made_pixels():
    x = torch.tensor([[[[0.0, 100.0], [183.0, 255.0]]]])
    assert one("solarize", x, 128).flatten().tolist() == [0, 100, 72, 0]  # at or above 128: 255 - i
    assert one("posterize", x, 4.7).flatten().tolist() == [0, 96, 176, 240]  # 4 bits kept
    assert one("brightness", x, 0.5).flatten().tolist() == [0, 50, 91, 127]  # floor(0.5 i)
    assert one("auto_contrast", torch.tensor([[[[10.0, 61.0], [35.0, 61.0]]]])).flatten().tolist() == \
        [0, 255, 125, 255]  # (i - 10) * 255 / 51
    flat = torch.full((1, 3, 4, 4), 90.0)
    for name in ("auto_contrast", "equalize", "color", "contrast", "sharpness"):
        assert torch.equal(one(name, flat, 0.3), flat), name  # nothing to stretch, grey already, smooth already


def pil_op(img, name, v):
    from PIL import Image, ImageEnhance, ImageOps
    ops = {
        "auto_contrast": lambda: ImageOps.autocontrast(img),
        "brightness": lambda: ImageEnhance.Brightness(img).enhance(v),
        "color": lambda: ImageEnhance.Color(img).enhance(v),
        "contrast": lambda: ImageEnhance.Contrast(img).enhance(v),
        "equalize": lambda: ImageOps.equalize(img),
        "identity": lambda: img,
        "posterize": lambda: ImageOps.posterize(img, max(1, int(v))),
        "rotate": lambda: img.rotate(v),
        "sharpness": lambda: ImageEnhance.Sharpness(img).enhance(v),
        "shear_x": lambda: img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
        "shear_y": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
        "solarize": lambda: ImageOps.solarize(img, v),
        "translate_x": lambda: img.transform(img.size, Image.AFFINE, (1, 0, v * img.size[0], 0, 1, 0)),
        "translate_y": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * img.size[1])),
    }
    return np.asarray(ops[name]())


@pytest.mark.parametrize("name", [name for name, _, _ in OPS])
def test_each_op_is_pils(name):
    """The reference's ops (PIL on 8-bit RGB) at random magnitudes of their ranges, on smooth images."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(OP_INDEX[name])
    low, high = next((lo, hi) for n, lo, hi in OPS if n == name)
    for _ in range(4):
        image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((32, 32), Image.BILINEAR)
        v = low + (high - low) * rng.random()
        ref = pil_op(image, name, v)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
        ours = apply_ops(x, torch.tensor([OP_INDEX[name]]), torch.tensor([v], dtype=torch.float64))
        ours = ours[0].permute(1, 2, 0).numpy()
        # PIL places rotated pixels in fixed point: one on a pixel boundary may round the other way
        assert (ours == ref).mean() >= (0.995 if name == "rotate" else 1.0), (name, v)


def test_cutout_is_pils_rectangle():
    """Side U(0, 0.5) x width, centre as numpy's uniform(w) (in (1, w]), both corners included (PIL)."""
    x = torch.zeros(1, 3, 32, 32)
    side, cx, cy = 0.5, 0.5, 1.0  # side 0.5 x 0.5 x 32 = 8 px; centre x 32 - 31 * 0.5 = 16.5, centre y 32 - 31 = 1
    out = cutout(x, torch.tensor([[side], [cx], [cy]]))
    filled = (out[0, 0] == 125).nonzero()
    assert filled[:, 0].min() == 0 and filled[:, 0].max() == 8  # rows int(max(0, 1 - 4)) = 0 .. 0 + 8
    assert filled[:, 1].min() == 12 and filled[:, 1].max() == 20  # cols int(16.5 - 4) = 12 .. 20
    assert out[0, :, 0, 12].tolist() == [125, 123, 114]
    assert torch.equal(cutout(x, torch.tensor([[0.0], [0.5], [0.5]])), x)  # side 0: nothing


def test_both_ways_of_selecting_ops_give_the_same_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (48, 3, 16, 16), generator=g).float()
    ra = RandAugment()
    ops, magnitudes, _ = ra.draw(48, g, x.device)
    assert torch.equal(apply_ops(x, ops[0], magnitudes[0], "where"), apply_ops(x, ops[0], magnitudes[0], "index"))


def test_draws_cover_every_op_within_its_range():
    ops, magnitudes, cut = RandAugment().draw(4000, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert ops.shape == magnitudes.shape == (2, 4000) and cut.shape == (3, 4000)
    assert set(ops.flatten().tolist()) == set(range(len(OPS)))
    for i, (_, low, high) in enumerate(OPS):
        v = magnitudes[ops == i]
        assert v.min() >= low and v.max() <= high


def test_randaugment_takes_8_bit_images_only():
    with pytest.raises(UserError, match="8-bit"):
        RandAugment()(torch.rand(2, 3, 8, 8))


def tiny_dataset(augment=Augmentation(crop_padding=2, flip=True), dtype=torch.uint8):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (20, 3, 12, 12), generator=g).to(dtype)
    split = Split(x, torch.arange(20) % 4)
    return Dataset("tiny", split, split, None, 4, torch.full((1, 3, 1, 1), 120.0), torch.full((1, 3, 1, 1), 60.0),
                   augment)


def test_strong_view_is_another_normalised_view_of_the_same_images():
    data = tiny_dataset()
    view = StrongView(data)
    index = torch.tensor([3, 0, 7, 19, 11, 2, 5, 8])
    weak = data.prepare(data.train.x.index_select(0, index), True, torch.Generator().manual_seed(5))
    strong = view(index, view.generator(5))
    assert strong.shape == weak.shape and strong.dtype == torch.float32
    assert not torch.equal(strong, weak)
    raw = (strong * data.std + data.mean).round()  # normalised as the weak view is
    assert raw.min() >= 0 and raw.max() <= 255


def test_strong_view_depends_on_its_seed_alone():
    view = StrongView(tiny_dataset())
    index = torch.arange(16)
    torch.manual_seed(0)
    a = view(index, view.generator(123))
    torch.manual_seed(99)  # the global generator plays no part
    torch.rand(10)
    b = view(index, view.generator(123))
    assert torch.equal(a, b)
    assert not torch.equal(a, view(index, view.generator(124)))


def test_strong_view_without_a_crop_and_refused_on_float_data():
    view = StrongView(tiny_dataset(augment=None))
    assert view(torch.arange(4), view.generator(0)).shape == (4, 3, 12, 12)
    with pytest.raises(UserError, match="8-bit"):
        StrongView(tiny_dataset(dtype=torch.float32), method="mlkd")
