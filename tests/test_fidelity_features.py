"""AB, FSP and FT wired as RepDistiller wires them (issue 24): which maps they read, which connectors
they add, what their init stages train and in which mode, each against a re-statement of the
reference's procedure written here from its documented behaviour (RepDistiller's models/*.py
forward(is_feat=True) and get_feat_modules(), models/util.py, helper/pretrain.py, distiller_zoo/)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import REPO, compose_config
from kdrun.data.base import DataInfo
from kdrun.methods import build_method
from kdrun.methods.fsp import default_maps
from kdrun.models import MODELS
from kdrun.models.features import feature_shapes
from kdrun.schedules.runner import hold_statistics


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def method_cfg(name, **over):
    cfg = OmegaConf.load(REPO / "conf" / "method" / f"{name}.yaml")
    return OmegaConf.merge(cfg, over)


def zoo(name, device="meta", size=(32, 32), num_classes=100):
    with torch.device(device):
        return MODELS.get(name)(num_classes=num_classes, in_channels=3, image_size=size)


CIFAR = DataInfo(channels=3, image_size=(32, 32), num_classes=100, train_size=64)

# ---- FSP's maps: RepDistiller's feat[:-1] at 32x32 (its models' forward(is_feat=True)) -------------------
# WRN: f0 = conv1(x), f1..f3 the blocks. ResNet, ResNet50, ShuffleNets: f0 = relu(bn1(conv1(x))), then the
# layers. VGG: f0 = relu(block0(x)), f1..f4 = relu(blockK(...)). MobileNetV2 (mobile_half): f0 = conv1(x),
# then blocks[1], [2], [4], [6].
REPDISTILLER_FSP_MAPS = {
    "wrn16_2": [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)],
    "wrn40_1": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "resnet20": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "resnet8x4": [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)],
    "resnet50": [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)],
    "vgg8": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)],
    "vgg13": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)],
    "mobilenetv2": [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)],
    "shufflenetv1": [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)],
    "shufflenetv2": [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4)],
}


@pytest.mark.parametrize("name", sorted(REPDISTILLER_FSP_MAPS))
def test_fsp_default_maps_are_repdistillers_feat_without_the_embedding(name):
    model = zoo(name)
    paths = default_maps(model, "student")
    shapes = feature_shapes(model, paths, torch.zeros(2, 3, 32, 32, device="meta"))
    assert [shapes[p] for p in paths] == REPDISTILLER_FSP_MAPS[name], paths


def test_fsp_on_vgg13_vgg8_compares_four_matrices_from_relu0_and_mobilenetv2_starts_at_conv1():
    fsp = build_method(method_cfg("fsp"), zoo("vgg8"), zoo("vgg13"), CIFAR)
    assert fsp.s_pairs == [("relu0", "relu1"), ("relu1", "relu2"), ("relu2", "relu3"), ("relu3", "relu4")]
    assert fsp.t_pairs == fsp.s_pairs
    fsp = build_method(method_cfg("fsp"), zoo("mobilenetv2"), zoo("mobilenetv2"), CIFAR)
    assert fsp.s_pairs[0] == ("conv1", "blocks.1")


# ---- what an init stage trains: RepDistiller's get_feat_modules() --------------------------------------
# Re-stated as "every parameter but these" (the modules after the last feature map):
HEADS = {
    "wrn16_2": ("bn1.", "fc."),
    "resnet20": ("fc.",),
    "resnet8x4": ("fc.",),
    "resnet50": ("linear.",),
    "vgg8": ("classifier.",),
    "mobilenetv2": ("conv2.", "classifier."),
    "shufflenetv1": ("linear.",),
    "shufflenetv2": ("conv2.", "bn2.", "linear."),
}


def trained_names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_ab_and_fsp_init_stages_train_the_students_feature_layers(name):
    student = zoo(name)
    feat = {n for n, _ in student.named_parameters() if not n.startswith(HEADS[name])}
    ab = build_method(method_cfg("ab"), student, copy.deepcopy(student), CIFAR)
    assert not list(ab.connectors.parameters())  # equal shapes: RepDistiller's Connector is the identity
    assert trained_names(student, ab.init_parameters()) == feat
    if name in ("wrn16_2", "vgg8"):  # the same rule; on WRN FSP's last map (block3) is read before bn1
        fsp = build_method(method_cfg("fsp"), student, copy.deepcopy(student), CIFAR)
        assert trained_names(student, fsp.init_parameters()) == feat


# ---- AB's connectors: RepDistiller's Connector (models/util.py) ---------------------------------------------

def test_ab_connectors_are_identities_where_shapes_match_else_conv_bn():
    same = build_method(method_cfg("ab"), zoo("wrn16_2"), zoo("wrn40_2"), CIFAR)
    assert all(isinstance(c, nn.Identity) for c in same.connectors)
    wider = build_method(method_cfg("ab"), zoo("wrn40_1"), zoo("wrn40_2"), CIFAR)  # 16-32-64 -> 32-64-128
    for c, channels in zip(wider.connectors, (32, 64, 128)):  # ConvReg for equal sizes: 1x1 conv, then BN
        conv, bn = c
        assert (conv.kernel_size, conv.stride, conv.out_channels, bn.num_features) == ((1, 1), (1, 1), channels, channels)
    cross = build_method(method_cfg("ab"), zoo("mobilenetv2"), zoo("vgg13"), CIFAR)
    kinds = [type(c[0]).__name__ for c in cross.connectors]  # 12x16x16 ... 160x2x2 -> 128x16x16 ... 512x4x4
    assert kinds == ["Conv2d", "Conv2d", "Conv2d", "ConvTranspose2d"]
    always = build_method(method_cfg("ab", connector="always"), zoo("wrn16_2"), zoo("wrn40_2"), CIFAR)
    assert all(isinstance(c[0], nn.Conv2d) and isinstance(c[1], nn.BatchNorm2d) for c in always.connectors)


# ---- the init stages against RepDistiller's procedure, on a small WRN ------------------------------------------

TINY = DataInfo(channels=3, image_size=(8, 8), num_classes=5, train_size=16)


def tiny_wrn(seed):
    torch.manual_seed(seed)
    model = MODELS.get("wrn10_1")(num_classes=5, in_channels=3, image_size=(8, 8))
    for m in model.modules():  # running statistics unlike any batch's: eval and train mode differ visibly
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model


def batch(seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)


def repdistiller_wrn_feats(model, x, preact):
    """WideResNet.forward(x, is_feat=True, preact=...) of RepDistiller's models/wrn.py, re-stated."""
    f0 = model.conv1(x)
    f1 = model.block1(f0)
    f2 = model.block2(f1)
    f3 = model.block3(f2)
    logits = model.fc(model.pool(model.relu(model.bn1(f3))).flatten(1))
    if preact:
        f1, f2, f3 = model.block2.layer[0].bn1(f1), model.block3.layer[0].bn1(f2), model.bn1(f3)
    return [f0, f1, f2, f3], logits


def repdistiller_init_modes(student, teacher, feat_modules):
    """helper/pretrain.py: model_t.eval(); model_s.eval(); init_modules.train()."""
    teacher.eval()
    student.eval()
    for m in feat_modules:
        m.train()


def wrn_feat_modules(model):
    return [model.conv1, model.block1, model.block2, model.block3]  # WideResNet.get_feat_modules()


def alternative_l2(source, target, margin=1.0):
    """distiller_zoo/AB.py's criterion_alternative_l2."""
    loss = ((source + margin) ** 2 * ((source > -margin) & (target <= 0)).float()
            + (source - margin) ** 2 * ((source <= margin) & (target > 0)).float())
    return loss.abs().sum()


def kdrun_init_step(method, x, y):
    """One forward and backward of the init stage as the schedule runner sets it up."""
    params = method.init_parameters()
    handle = hold_statistics(method.student, params)
    method.train()
    try:
        _, losses = method.forward_train(x, y, phase="init")
        loss = sum(losses.values())
        loss.backward()
    finally:
        handle.remove()
    return loss, params


def test_ab_init_stage_on_a_wrn_computes_and_trains_what_repdistiller_does():
    student, teacher = tiny_wrn(0), tiny_wrn(1)
    ref_s, ref_t = copy.deepcopy(student), copy.deepcopy(teacher)
    x, y = batch()
    method = build_method(method_cfg("ab"), student, teacher, TINY)
    assert all(isinstance(c, nn.Identity) for c in method.connectors)
    loss, params = kdrun_init_step(method, x, y)
    assert not student.bn1.training and student.block3.layer[0].bn1.training  # the modes of that forward

    repdistiller_init_modes(ref_s, ref_t, wrn_feat_modules(ref_s))
    g_s, _ = repdistiller_wrn_feats(ref_s, x, preact=True)
    with torch.no_grad():
        g_t, _ = repdistiller_wrn_feats(ref_t, x, preact=True)
    weights = [2 ** (i - 3 + 1) for i in range(3)]  # ABLoss(3).w
    ref_loss = sum(w * alternative_l2(s, t) / len(x) / 1000 * 3 for w, s, t in zip(weights, g_s[1:], g_t[1:]))
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)

    trained = trained_names(student, params)
    assert trained == {n for n, _ in student.named_parameters() if n.startswith(("conv1.", "block"))}
    ref_params = dict(ref_s.named_parameters())
    for n, p in student.named_parameters():
        if n in trained:
            assert torch.allclose(p.grad, ref_params[n].grad, rtol=1e-4, atol=1e-7), n
    # Batch norm outside the trained layers keeps its running statistics, as in RepDistiller (eval mode).
    assert torch.equal(student.bn1.running_mean, ref_s.bn1.running_mean)
    ref_stats = dict(ref_s.named_buffers())
    for n, b in student.named_buffers():
        # RepDistiller's preact=True applies block2/3.layer.0.bn1 a second time, in train mode: their running
        # statistics move twice per step there, once in kdrun (README, AB's notes).
        if not n.startswith(("block2.layer.0.bn1.", "block3.layer.0.bn1.")):
            assert torch.allclose(b.float(), ref_stats[n].float(), atol=1e-6), n

    # The old wiring (the final bn1 trained, in train mode: batch statistics) gives another number.
    with torch.no_grad():
        on_batch = F.batch_norm(ref_s.block3(ref_s.block2(ref_s.block1(ref_s.conv1(x)))),
                                None, None, ref_s.bn1.weight, ref_s.bn1.bias, training=True)
    old = ref_loss + (alternative_l2(on_batch, g_t[3]) - alternative_l2(g_s[3], g_t[3])) * 3 / 1000 / len(x)
    assert abs(old.item() - ref_loss.item()) > 1e-2 * ref_loss.item()


def test_ab_init_trains_student_is_the_authors_whole_student_in_train_mode():
    student, teacher = tiny_wrn(0), tiny_wrn(1)
    method = build_method(method_cfg("ab", init_trains="student"), student, teacher, TINY)
    kdrun_init_step(method, *batch())
    assert all(m.training for m in student.modules())
    assert trained_names(student, method.init_parameters()) == {n for n, _ in student.named_parameters()}


def fsp_matrices(g):
    """distiller_zoo/FSP.py compute_fsp: pool the larger map, then mean over positions of bot_i * top_j."""
    out = []
    for bot, top in zip(g, g[1:]):
        if bot.shape[2] > top.shape[2]:
            bot = F.adaptive_avg_pool2d(bot, top.shape[2:])
        elif bot.shape[2] < top.shape[2]:
            top = F.adaptive_avg_pool2d(top, bot.shape[2:])
        out.append((bot.unsqueeze(1).flatten(3) * top.unsqueeze(2).flatten(3)).mean(-1))
    return out


def test_fsp_init_stage_on_a_wrn_computes_and_trains_what_repdistiller_does():
    student, teacher = tiny_wrn(0), tiny_wrn(1)
    ref_s, ref_t = copy.deepcopy(student), copy.deepcopy(teacher)
    x, y = batch()
    method = build_method(method_cfg("fsp"), student, teacher, TINY)
    loss, params = kdrun_init_step(method, x, y)

    repdistiller_init_modes(ref_s, ref_t, wrn_feat_modules(ref_s))
    feat_s, _ = repdistiller_wrn_feats(ref_s, x, preact=False)
    with torch.no_grad():
        feat_t, _ = repdistiller_wrn_feats(ref_t, x, preact=False)
    ref_loss = sum((s - t).pow(2).mean() for s, t in zip(fsp_matrices(feat_s), fsp_matrices(feat_t)))
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    trained = trained_names(student, params)
    assert trained == {n for n, _ in student.named_parameters() if n.startswith(("conv1.", "block"))}
    ref_params = dict(ref_s.named_parameters())
    for n in trained:
        assert torch.allclose(dict(student.named_parameters())[n].grad, ref_params[n].grad, rtol=1e-4, atol=1e-7), n
    ref_stats = dict(ref_s.named_buffers())
    assert all(torch.allclose(b.float(), ref_stats[n].float(), atol=1e-6) for n, b in student.named_buffers())


def repdistiller_paraphraser(c, k):
    """models/util.py Paraphraser(t_shape, k, use_bn=False): its layers in order."""
    kc = int(c * k)
    enc = [nn.Conv2d(c, c, 3, 1, 1), nn.LeakyReLU(0.1), nn.Conv2d(c, kc, 3, 1, 1), nn.LeakyReLU(0.1),
           nn.Conv2d(kc, kc, 3, 1, 1), nn.LeakyReLU(0.1)]
    dec = [nn.ConvTranspose2d(kc, kc, 3, 1, 1), nn.LeakyReLU(0.1), nn.ConvTranspose2d(kc, c, 3, 1, 1),
           nn.LeakyReLU(0.1), nn.ConvTranspose2d(c, c, 3, 1, 1), nn.LeakyReLU(0.1)]
    return nn.Sequential(*enc), nn.Sequential(*dec)


def repdistiller_translator(cs, ct, k):
    """models/util.py Translator(s_shape, t_shape, k, use_bn=True)."""
    kc = int(ct * k)
    layers = []
    for a, b in ((cs, cs), (cs, kc), (kc, kc)):
        layers += [nn.Conv2d(a, b, 3, 1, 1), nn.BatchNorm2d(b), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


def copy_in_order(src, dst):
    for a, b in zip([m for m in src.modules() if list(m.parameters(recurse=False))],
                    [m for m in dst.modules() if list(m.parameters(recurse=False))]):
        assert type(a) is type(b) and a.weight.shape == b.weight.shape
        b.load_state_dict(a.state_dict())


def test_ft_init_stage_trains_the_paraphraser_alone_on_mse_then_the_factor_term_is_repdistillers():
    student, teacher = tiny_wrn(0), tiny_wrn(1)
    x, y = batch()
    method = build_method(method_cfg("ft"), student, teacher, TINY)
    enc, dec = repdistiller_paraphraser(64, 0.5)
    copy_in_order(method.paraphraser.encoder, enc)
    copy_in_order(method.paraphraser.decoder, dec)
    translator = repdistiller_translator(64, 64, 0.5)
    copy_in_order(method.translator, translator)
    modes = []
    student.bn1.register_forward_pre_hook(lambda m, _: modes.append(m.training))
    loss, params = kdrun_init_step(method, x, y)
    assert {id(p) for p in params} == {id(p) for p in method.paraphraser.parameters()}
    assert modes == [False]  # helper/pretrain.py: the student in eval mode (its statistics unchanged)

    teacher.eval()
    with torch.no_grad():
        f_t = teacher.block3(teacher.block2(teacher.block1(teacher.conv1(x))))  # feat_t[-2]
    enc.train(), dec.train()
    ref_loss = nn.MSELoss()(dec(enc(f_t)), f_t)  # criterion_init = nn.MSELoss()
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert torch.allclose(method.paraphraser.encoder[0].weight.grad, enc[0].weight.grad, rtol=1e-4, atol=1e-8)

    # Main stage (helper/loops.py): factor_s = translator(feat_s[-2]), factor_t = paraphraser(feat_t[-2],
    # is_factor=True), loss = CE + 200 * FactorTransfer()(factor_s, factor_t).
    method.train()
    translator.train()
    _, losses = method.forward_train(x, y)
    f_s = student.block3(student.block2(student.block1(student.conv1(x))))
    with torch.no_grad():
        factor_t = enc(f_t)

    def factor(f):
        return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))

    expected = (factor(translator(f_s)) - factor(factor_t)).abs().mean()
    assert set(losses) == {"ce", "ft"}
    assert losses["ft"].item() == pytest.approx(200 * expected.item(), rel=1e-4)


# ---- the CRD preset runs the forms its numbers come from -------------------------------------------------------

def test_crd_preset_uses_repdistillers_forms_of_ab_ft_at_and_fsp():
    ft = compose_config(["experiment=crd_cifar100", "method=ft"]).method
    assert (ft.form, ft.beta, ft.reconstruction) == ("repdistiller", 200.0, "auto")
    at = compose_config(["experiment=crd_cifar100", "method=at"]).method
    assert (at.form, at.p) == ("repdistiller", 2.0)
    ab = compose_config(["experiment=crd_cifar100", "method=ab"]).method
    assert (ab.connector, ab.init_trains) == ("auto", "feature_layers")
    sweep = compose_config(["sweep=crd_table"], return_hydra_config=True).hydra.sweeper.params
    assert not any(k.startswith("method.") for k in sweep)  # every job takes those defaults
    # The AB authors' recipe keeps their own init stage: the whole student, in train mode.
    assert compose_config(["experiment=ab_cifar10"]).method.init_trains == "student"


# ---- the CRD preset's schedule: RepDistiller's init stage for ab, ft, fsp ----------------------------------

def stages_of(*overrides):
    from kdrun.schedules import build_stages

    cfg = compose_config(["experiment=crd_cifar100", *overrides])
    return [(s.name, s.phase, s.train_recipe.epochs, s.train_recipe.lr, list(s.train_recipe.milestones))
            for s in build_stages(cfg)]


def test_crd_preset_runs_repdistillers_init_stage_for_ab_ft_and_fsp_only():
    """train_student.py: init(...) for abound, factor and fsp only, --init_epochs 30, at a constant lr
    (helper/pretrain.py never adjusts it): 0.01 for factor with a CIFAR ResNet/WRN student, else the run's."""
    main = ("ab", "main", 240, 0.05, [150, 180, 210])
    assert stages_of("method=ab") == [("init", "init", 30, 0.05, []), main]
    assert stages_of("method=fsp", "pair=resnet56-resnet20")[0] == ("init", "init", 30, 0.05, [])
    assert stages_of("method=ft")[0] == ("init", "init", 30, 0.01, [])
    assert stages_of("method=ft", "pair=vgg13-vgg8")[0] == ("init", "init", 30, 0.05, [])
    assert stages_of("method=ft", "pair=resnet32x4-shufflenetv2")[0] == ("init", "init", 30, 0.01, [])
    assert stages_of("method=fitnet") == [("fitnet", "main", 240, 0.05, [150, 180, 210])]  # RepDistiller's hint: joint
    sweep = compose_config(["sweep=crd_table"], return_hydra_config=True).hydra.sweeper.params
    assert sweep["schedule"] == compose_config(["experiment=crd_cifar100"]).schedule.name == "repdistiller"


def test_only_for_leaves_a_stage_out_and_names_are_checked():
    from kdrun.errors import UserError
    from kdrun.schedules import build_stages

    quick = ["dataset=synthetic", "teacher=mlp", "student=mlp", "schedule=repdistiller"]
    assert [s.name for s in build_stages(compose_config(quick + ["method=kd"]))] == ["kd"]
    bad = compose_config(quick + ["method=kd", "schedule.stages.0.only_for=[abx]"])
    with pytest.raises(UserError, match="abx"):
        build_stages(bad)
    none = compose_config(quick + ["method=kd", "+schedule.stages.1.only_for=[ab]"])
    with pytest.raises(UserError, match="only_for"):
        build_stages(none)


def test_init_stage_modes_hold_every_module_outside_the_trained_layers():
    inner = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Dropout(0.5))
    model = nn.Sequential(inner, nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.Dropout(0.5))
    handle = hold_statistics(model, list(inner.parameters()))
    model.train()
    model(torch.randn(2, 1, 3, 3))
    handle.remove()
    assert all(m.training for m in inner.modules())  # a trained container keeps everything in it in train mode
    assert not model[2].training and model[3].training  # batch norm outside: eval; dropout as it was

