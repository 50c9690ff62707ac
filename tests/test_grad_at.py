"""`grad_at` (Zagoruyko & Komodakis 2017, Section 3.2): the input gradient of the cross-entropy against its
closed form and finite differences, the term against its formula, the double backward, and the wiring."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import QUICK, read_json
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)
from kdrun.data.base import DataInfo
from kdrun.methods import build_method
from kdrun.methods.grad_at import grad_at_loss, input_gradient

INFO = DataInfo(1, (2, 3), 4)


def test_the_input_gradient_of_a_linear_model_is_its_closed_form():
    torch.manual_seed(0)
    w, b = torch.randn(4, 6, dtype=torch.double), torch.randn(4, dtype=torch.double)
    x = torch.randn(5, 6, dtype=torch.double, requires_grad=True)
    y = torch.tensor([0, 3, 1, 2, 3])
    logits = x @ w.t() + b
    expected = (F.softmax(logits, 1) - F.one_hot(y, 4).double()) @ w  # dCE_i/dx_i = (p_i - e_y) W
    assert torch.allclose(input_gradient(logits, y, x, create_graph=False).double(), expected, atol=1e-6)


def test_the_input_gradient_matches_finite_differences():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x = torch.randn(3, 6, dtype=torch.double, requires_grad=True)
    y = torch.tensor([1, 0, 3])
    j = input_gradient(net(x), y, x, create_graph=False).double()
    eps = 1e-6
    for i in range(3):  # each example's own cross-entropy, each input coordinate
        for k in range(6):
            step = torch.zeros_like(x)
            step[i, k] = eps
            ce = [F.cross_entropy(net(x.detach() + s)[i:i + 1], y[i:i + 1]) for s in (step, -step)]
            assert j[i, k].item() == pytest.approx(((ce[0] - ce[1]) / (2 * eps)).item(), abs=1e-7)


def test_the_term_is_the_mean_l2_distance_between_the_gradients():
    j_s = torch.tensor([[[3.0, 0.0]], [[1.0, 1.0]]])
    j_t = torch.tensor([[[0.0, 4.0]], [[1.0, 1.0]]])
    assert grad_at_loss(j_s, j_t).item() == pytest.approx((5.0 + 0.0) / 2)


def test_the_double_backward_matches_finite_differences():
    """The term's gradient with respect to the student's weights (through its input gradient)."""
    torch.manual_seed(2)
    student = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    teacher = nn.Sequential(nn.Linear(6, 4)).double()
    x, y = torch.randn(3, 6, dtype=torch.double), torch.tensor([1, 0, 3])
    xt = x.clone().requires_grad_(True)
    j_t = input_gradient(teacher(xt), y, xt, create_graph=False).double()

    def term(weight):
        xs = x.clone().requires_grad_(True)
        logits = F.linear(torch.tanh(student[0](xs)), weight, student[2].bias)
        return grad_at_loss(input_gradient(logits, y, xs, create_graph=True).double(), j_t).double()

    weight = student[2].weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(term, (weight,), eps=1e-6, atol=1e-5)


class Tiny(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(6, width), nn.Tanh())
        self.fc = nn.Linear(width, 4)

    def forward(self, x):
        return self.fc(self.body(x))


def cfg(**over):
    return OmegaConf.create({"name": "grad_at", "T": 4.0, "alpha": 0.0, "ce_weight": 1.0, "beta": 0.6, **over})


def test_the_method_weights_the_term_by_half_beta_and_trains_the_student_alone():
    torch.manual_seed(3)
    student, teacher = Tiny(5), Tiny(7)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = build_method(cfg(), student, teacher, INFO)
    x, y = torch.randn(4, 1, 2, 3), torch.tensor([0, 1, 2, 3])
    _, losses = method.forward_train(x, y)
    assert set(losses) == {"ce", "grad_at"}
    xs, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    expected = grad_at_loss(input_gradient(student(xs), y, xs, True), input_gradient(teacher(xt), y, xt, False))
    assert losses["grad_at"].item() == pytest.approx(0.3 * expected.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    without = build_method(cfg(beta=0.0, alpha=0.5), Tiny(5), Tiny(7), INFO)
    assert set(without.forward_train(x, y)[1]) == {"ce", "kd"}  # a weight of 0: no input gradient taken


@pytest.mark.parametrize("teacher,student", [("wrn16_2", "wrn16_1"), ("resnet8", "wrn16_1")])
def test_grad_at_runs_through_the_cli(tmp_path, monkeypatch, capsys, teacher, student):
    args = [o for o in QUICK if not o.startswith(("teacher", "student"))] + [
        f"teacher={teacher}", f"student={student}", "teacher.train.epochs=1", "teacher.train.batch_size=32",
        "method=grad_at", f"hydra.run.dir={tmp_path / 'run'}"]
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 0, out
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["status"] == "completed" and set(metrics["history"][-1]["losses"]) == {"ce", "grad_at"}
