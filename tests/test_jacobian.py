"""`jacobian` (Srinivas & Fleuret 2018): the input gradient of the ground-truth logit against its closed form
and finite differences, the term against its formula (with the normalisation), the double backward, the
wiring, and tiny runs on a same-family and a heterogeneous zoo pair."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose_config
from inprocess import one_cpu_thread  # noqa: F401  (autouse fixture)
from kdrun.data.base import DataInfo
from kdrun.methods import build_method
from kdrun.methods.jacobian import class_logit_gradient, jacobian_loss
from kdrun.run import run
from test_methods_runs import PAIRS, TINY

INFO = DataInfo(1, (2, 3), 4)


def test_the_jacobian_of_a_linear_model_is_its_weight_row():
    torch.manual_seed(0)
    w, b = torch.randn(4, 6, dtype=torch.double), torch.randn(4, dtype=torch.double)
    x = torch.randn(5, 6, dtype=torch.double, requires_grad=True)
    y = torch.tensor([0, 3, 1, 2, 3])
    j = class_logit_gradient(x @ w.t() + b, y, x, create_graph=False)
    assert torch.allclose(j, w[y])  # dz_{y_i}/dx_i = W_{y_i}: the row of the example's class
    assert j.grad_fn is None  # the teacher's side: no graph kept
    net = nn.Linear(6, 4).double()
    assert class_logit_gradient(net(x), y, x, create_graph=True).grad_fn is not None  # the student's: kept


def test_the_jacobian_matches_finite_differences():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x = torch.randn(3, 6, dtype=torch.double, requires_grad=True)
    y = torch.tensor([1, 0, 3])
    j = class_logit_gradient(net(x), y, x, create_graph=False)
    eps = 1e-6
    for i in range(3):  # each example's own class logit, each input coordinate
        for k in range(6):
            step = torch.zeros_like(x)
            step[i, k] = eps
            z = [net(x.detach() + s)[i, y[i]] for s in (step, -step)]
            assert j[i, k].item() == pytest.approx(((z[0] - z[1]) / (2 * eps)).item(), abs=1e-7)


def test_the_term_is_the_mean_squared_distance_between_the_normalised_gradients():
    j_s = torch.tensor([[[3.0, 0.0]], [[2.0, 2.0]], [[0.0, 0.0]]])
    j_t = torch.tensor([[[0.0, 4.0]], [[1.0, 1.0]], [[0.0, 5.0]]])
    # (1, 0) vs (0, 1): 2; the same direction at another scale: 0; a zero gradient stays zero: 1
    assert jacobian_loss(j_s, j_t).item() == pytest.approx((2.0 + 0.0 + 1.0) / 3)
    assert jacobian_loss(7 * j_s, j_t).item() == pytest.approx(jacobian_loss(j_s, j_t).item())
    j_s, j_t = torch.tensor([[1.0, 2.0, 2.0]]), torch.tensor([[0.0, 0.0, -2.0]])  # norms 3 and 2, over the input
    assert jacobian_loss(j_s, j_t).item() == pytest.approx((1 / 3) ** 2 + (2 / 3) ** 2 + (2 / 3 + 1) ** 2)


def test_the_double_backward_matches_finite_differences():
    """The term's gradient with respect to the student's weights (through its input gradient)."""
    torch.manual_seed(2)
    student = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    teacher = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x, y = torch.randn(3, 6, dtype=torch.double), torch.tensor([1, 0, 3])
    xt = x.clone().requires_grad_(True)
    j_t = class_logit_gradient(teacher(xt), y, xt, create_graph=False)

    def term(first, last):
        xs = x.clone().requires_grad_(True)
        logits = F.linear(torch.tanh(F.linear(xs, first, student[0].bias)), last, student[2].bias)
        return jacobian_loss(class_logit_gradient(logits, y, xs, create_graph=True), j_t)

    weights = tuple(m.weight.detach().clone().requires_grad_(True) for m in (student[0], student[2]))
    assert torch.autograd.gradcheck(term, weights, eps=1e-6, atol=1e-5)


class Tiny(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(6, width), nn.Tanh())
        self.fc = nn.Linear(width, 4)

    def forward(self, x):
        return self.fc(self.body(x))


def cfg(**over):
    return OmegaConf.create({"name": "jacobian", "T": 4.0, "alpha": 0.0, "ce_weight": 1.0, "beta": 0.6, **over})


def test_the_method_weights_the_term_by_beta_and_trains_the_student_alone():
    torch.manual_seed(3)
    student, teacher = Tiny(5), Tiny(7)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = build_method(cfg(alpha=0.5), student, teacher, INFO)
    x, y = torch.randn(4, 1, 2, 3), torch.tensor([0, 1, 2, 3])
    t_logits, _ = method.teacher_forward(x)
    assert t_logits.grad_fn is None  # the logits handed back (KD's) carry no graph
    method._teacher_graph = None
    _, losses = method.forward_train(x, y)
    assert set(losses) == {"ce", "kd", "jacobian"}
    assert method._teacher_graph is None  # nothing of the teacher's kept past the step
    xs, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    expected = jacobian_loss(class_logit_gradient(student(xs), y, xs, False),
                             class_logit_gradient(teacher(xt), y, xt, False))
    assert losses["jacobian"].item() == pytest.approx(0.6 * expected.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters()) and not teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    without = build_method(cfg(beta=0.0, alpha=0.5), Tiny(5), Tiny(7), INFO)
    assert set(without.forward_train(x, y)[1]) == {"ce", "kd"}  # a weight of 0: no input gradient taken


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_jacobian_runs_on_zoo_pairs(teacher, student, tmp_path):
    config = compose_config(TINY + ["dataset.image_size=8", "method=jacobian", f"teacher={teacher}",
                                    f"student={student}", f"cache_dir={tmp_path / 'cache'}"])
    method = config.method  # conf/method/jacobian.yaml's defaults
    assert (method.beta, method.ce_weight, method.alpha, method.T, method.logit_stand, method.stop_epoch) == (
        1.0, 1.0, 0.0, 4.0, False, None)
    metrics = run(config, tmp_path / "run")
    assert metrics["status"] == "completed" and set(metrics["history"][-1]["losses"]) == {"ce", "jacobian"}
