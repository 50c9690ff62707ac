"""Multi-step parity: `kdrun` (the CLI, end to end) trains the same weights as a plain PyTorch loop written
the way RepDistiller trains, after several epochs in fp32 on the CPU, for `ce`, `kd` and `at`.

The reference loop below follows RepDistiller's `train_student.py` / `train_teacher.py` as documented
there: SGD with momentum 0.9 and weight decay 5e-4 on every parameter of the student (BN included),
the lr multiplied by 0.1 for each milestone the epoch is past (`epoch > milestone`, set at the start
of the epoch), the student in train mode and the teacher in eval mode under no_grad; the loss is
`gamma * CE + alpha * KL(p_t || p_s) * T^2 (summed, over the batch) + beta * sum of the AT terms`, AT's
term being `mean((normalize(mean_c f_s^2) - normalize(mean_c f_t^2))^2)` on the outputs of the three
ResNet stages (RepDistiller's `feat[1:-1]`). Both loops see the same batches in the same order: the
reference draws them from kdrun's data iterator with kdrun's per-epoch seed, and starts from the
weights kdrun's stage starts from (the model built under the stage's seed).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_config
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)
from kdrun.data import build_dataset
from kdrun.models import build_model
from kdrun.training.loop import epoch_seed
from kdrun.training.recipe import Recipe

CPU = torch.device("cpu")
EPOCHS, MILESTONES, LR, BATCH, SEED = 4, (2, 3), 0.05, 32, 3
SETUP = ["dataset=synthetic", "dataset.train_size=96", "dataset.test_size=32", "dataset.image_size=16",
         "dataset.channels=3", "train.augment={crop_padding: 2, flip: true}",
         "student=resnet8", "teacher=resnet14", f"seed={SEED}", "progress=false", "train.precision=fp32",
         "train.channels_last=false",  # the reference loop is NCHW: the same kernels, the same rounding
         f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}", f"train.lr={LR}", "train.momentum=0.9",
         "train.weight_decay=5e-4", f"train.milestones=[{','.join(map(str, MILESTONES))}]", "train.gamma=0.1",
         "train.nesterov=false"]
METHODS = {  # kdrun's overrides, and RepDistiller's (gamma, alpha, beta) for the same loss
    "ce": (["method=ce"], (1.0, 0.0, 0.0)),
    "kd": (["method=kd", "method.T=4", "method.alpha=0.9", "method.ce_weight=0.1"], (0.1, 0.9, 0.0)),
    "at": (["method=at", "method.beta=1000", "method.alpha=0", "method.ce_weight=1", "method.p=2"], (1.0, 0.0, 1000.0)),
}
T = 4.0


def attention(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))


def stage_outputs(model) -> tuple[list, list]:
    outputs = []
    handles = [getattr(model, name).register_forward_hook(lambda m, i, o: outputs.append(o))
               for name in ("layer1", "layer2", "layer3")]
    return outputs, handles


def repdistiller_loop(student, teacher, data, stage: str, weights: tuple[float, float, float],
                      milestones=MILESTONES):
    gamma, alpha, beta = weights
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    s_feats, _ = stage_outputs(student)
    t_feats, _ = stage_outputs(teacher)
    for epoch in range(1, EPOCHS + 1):
        for group in optimizer.param_groups:
            group["lr"] = LR * 0.1 ** sum(epoch > m for m in milestones)
        student.train()
        teacher.eval()
        seed = epoch_seed(SEED, stage, epoch)
        torch.manual_seed(seed)
        for _, x, y in data.batches(data.train, BATCH, shuffle=True, seed=seed, train=True):
            s_feats.clear(), t_feats.clear()
            logit_s = student(x)
            with torch.no_grad():
                logit_t = teacher(x)
            loss = gamma * F.cross_entropy(logit_s, y)
            if alpha:
                kl = F.kl_div(F.log_softmax(logit_s / T, dim=1), F.softmax(logit_t / T, dim=1), reduction="sum")
                loss = loss + alpha * kl * T ** 2 / len(y)
            if beta:
                loss = loss + beta * sum((attention(s) - attention(t)).pow(2).mean() for s, t in zip(s_feats, t_feats))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return student.state_dict()


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("method", METHODS)
def test_kdrun_trains_the_weights_a_repdistiller_style_loop_trains(tmp_path, monkeypatch, capsys, method):
    overrides, weights = METHODS[method]
    cfg = compose_config(SETUP + overrides)
    data = Recipe.from_config(cfg.train).data_for(build_dataset(cfg.dataset, CPU))  # with train.augment
    torch.manual_seed(0)
    teacher = build_model(cfg.teacher, data.info)
    teacher_file = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), teacher_file)

    run_dir = tmp_path / "run"
    code, out = kdrun_in_process([*SETUP, *overrides, f"teacher.checkpoint={teacher_file}",
                                  f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch, capsys)
    assert code == 0, out
    stage = method  # a single schedule's stage is named after its method
    assert f"Stage {stage}:" in out, out
    trained = torch.load(run_dir / "student.pt", weights_only=True)

    torch.manual_seed(epoch_seed(SEED, stage, 0))  # the stage builds its model under this seed
    start = build_model(cfg.student, data.info)
    reference = repdistiller_loop(copy.deepcopy(start), teacher, data, stage, weights)
    assert largest_difference(trained, reference) < 1e-5  # float rounding at most (0.0 on this machine)

    # The check tells trainings apart: decaying the lr one epoch early changes the weights far more.
    early = repdistiller_loop(copy.deepcopy(start), teacher, data, stage, weights, milestones=(1, 2))
    assert largest_difference(trained, early) > 1e-3
