"""Loss weighting and gradient aggregation (`weighting=`): every method, in-process and small.

- gradient-level methods give torchjd's aggregate of the Jacobian (and the closed forms of PCGrad and
  MGDA) on a two-task problem whose gradients are written down by hand, at both `grad_on` levels;
- every method, built from its real Hydra config, lowers the sum of the task losses in 30 steps;
- a batch where a task has no label gives finite gradients to which that task contributes nothing;
- learned and stateful weightings resume from their state_dict; a missing solver fails at config time;
- checkpoints that name a weighting by its path before the one-file-per-method split still load.

The methods are found in configs/weighting/*.yaml, not listed here: a new method is covered by adding
its file and its YAML.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchjd.scalarization as tjs
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from torch import nn
from torchjd import aggregation

from contracts import REPO, compose_config, run_process
from mtlrun.build import build_components, build_trainer
from mtlrun.config import config_dir, config_groups
from mtlrun.instantiate import instantiate_node
from mtlrun.data.loading import train_loader
from mtlrun.distributed import DistInfo
from mtlrun.engine import checkpoint
from mtlrun.errors import UsageError
from mtlrun.models.base import MultiTaskModel
from mtlrun.weighting.base import Weighting
from mtlrun.weighting.gradient_base import GradientAggregation

# torchjd's NashMTL, called directly here for reference: cvxpy's notes on its problem (G w = [0, 1] at
# the start of the hand-made problem makes its linearisation divide by zero, which it survives)
pytestmark = [pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP"),
              pytest.mark.filterwarnings("ignore:divide by zero encountered in divide:RuntimeWarning")]

CONFIGS = Path(config_dir()) / "weighting"
METHODS = {p.stem: OmegaConf.load(p) for p in sorted(CONFIGS.glob("*.yaml"))}
ALL = list(METHODS)
# Methods that take grad_on: the gradient-level ones, and GradNorm (where its gradient norms are taken).
WITH_GRAD_ON = [m for m in ALL if METHODS[m].grad_on is not None]
WITHOUT_GRAD_ON = [m for m in ALL if m not in WITH_GRAD_ON]  # one backward of a weighted loss
GRADIENT_LEVEL = [m for m in ALL if issubclass(get_class(METHODS[m]._target_), GradientAggregation)]
TINY = ["data.n_train=64", "data.n_val=8", "data.n_test=8", "data.batch_size=16", "backbone.image.channels=[8,16]",
        "backbone.image.out_dim=32"]




def compose_train(*overrides):
    return compose_config([*overrides, *TINY])


def build_run(method: str, *overrides):
    torch.manual_seed(0)
    cfg = compose_train(f"weighting={method}", *overrides)
    parts = build_components(cfg)
    params = list(parts.model.parameters()) + list(parts.weighting.parameters())
    optimizer = instantiate_node(cfg.optim, "optim")(params)
    batches = list(train_loader(parts.data.dataset("train"), batch_size=16, seed=0, epoch=0))[:2]
    return parts, optimizer, batches


def train_step(parts, batch, scale=lambda x: x, masks=None):
    """The weighting's part of a step, on its own: forward, losses, weighting.backward, leaving the gradients
    in `.grad` to be looked at (Trainer.step adds AMP, accumulation, clipping and the optimizer step)."""
    model, weighting = parts.model, parts.weighting
    if weighting.needs_shared:
        preds, shared = model(batch["inputs"], return_shared=True)
    else:
        preds, shared = model(batch["inputs"]), None
    masks = masks or {}
    losses = {t: task.loss(preds[t], batch["targets"][t], masks.get(t)) for t, task in parts.tasks.items()}
    objective = weighting.backward(losses, scale=scale, shared=shared, extra=model.regularizer())
    return losses, objective


def total_loss(parts, batches) -> float:
    with torch.no_grad():
        return sum(float(task.loss(parts.model(b["inputs"])[t], b["targets"][t], None))
                   for b in batches for t, task in parts.tasks.items())


def test_the_methods_are_found():
    assert {"static", "gradnorm", "uw"} <= set(WITHOUT_GRAD_ON + ["gradnorm"]) and "upgrad" in GRADIENT_LEVEL
    assert set(GRADIENT_LEVEL) < set(WITH_GRAD_ON) and set(config_groups()["weighting"]) == set(ALL)


@pytest.mark.parametrize("method", ALL)
def test_each_method_is_one_file_named_as_its_config(method):
    """configs/weighting/<name>.yaml cites the method and builds mtlrun.weighting.<name>.<Class>, a module
    of its own with its paper in its docstring; messages call it by that name (`weighting=<name>`)."""
    text = (CONFIGS / f"{method}.yaml").read_text()
    assert text.startswith("# ") and "_target_: mtlrun.weighting." in text
    assert "grad_on:" in text and "weights" in text.lower()  # documents grad_on and the logged weights
    cls = get_class(METHODS[method]._target_)
    assert issubclass(cls, Weighting) and cls.__module__ == f"mtlrun.weighting.{method}"
    assert cls.method_name() == method and sys.modules[cls.__module__].__doc__


# --------------------------------------------------------------------- a two-task problem by hand
class TwoTaskLinear(MultiTaskModel):
    """z = W x (W shared, 2 x 2); task k predicts h_k . z. With x = e_1 and W = I:
    dL_k/dW = h_k x^T, dL_k/dz = h_k, so the Jacobian rows are known in closed form."""

    def __init__(self, ha=(1.0, 0.0), hb=(-1.0, 1.0)):
        super().__init__()
        self.encoder = nn.Linear(2, 2, bias=False)
        self.heads = nn.ModuleDict({"a": nn.Linear(2, 1, bias=False), "b": nn.Linear(2, 1, bias=False)})
        with torch.no_grad():
            self.encoder.weight.copy_(torch.eye(2))
            self.heads["a"].weight.copy_(torch.tensor([ha]))
            self.heads["b"].weight.copy_(torch.tensor([hb]))

    def forward(self, inputs, return_shared=False):
        z = self.encoder(inputs["x"])
        preds = {t: head(z).sum() for t, head in self.heads.items()}
        return (preds, z) if return_shared else preds


X = torch.tensor([[1.0, 0.0]])
# rows of the Jacobian: with respect to W (flattened row-major) and to z
J_PARAMS = torch.tensor([[1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 1.0, 0.0]])
J_REPR = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])


def make_method(method: str, grad_on: str, **kw):
    cfg = OmegaConf.load(Path(config_dir()) / "weighting" / f"{method}.yaml")
    cfg.grad_on = grad_on
    for k, v in kw.items():
        cfg[k] = v
    return instantiate_node(cfg, "weighting")


def hand_step(method, grad_on, scale=lambda x: x, extra=None, **kw):
    model = TwoTaskLinear()
    weighting = make_method(method, grad_on, **kw)
    weighting.setup({"a": None, "b": None}, model)
    preds, z = model({"x": X}, return_shared=True)
    torch.manual_seed(0)  # PCGrad, GradVac and GradDrop draw random numbers
    weighting.backward(preds, scale=scale, shared=z, extra=extra(model) if extra else None)
    return model, weighting


def direct_aggregate(method, grad_on, **kw):
    """torchjd's aggregator of the method, called on the stacked Jacobian."""
    weighting = make_method(method, grad_on, **kw)
    weighting.setup({"a": None, "b": None}, TwoTaskLinear())
    torch.manual_seed(0)
    if method == "nash_mtl":  # our NashMTL caps the norm itself; torchjd's does it inside
        aggregator = aggregation.NashMTL(n_tasks=2, max_norm=weighting.max_norm)
    else:
        aggregator = weighting.aggregator
    return aggregator(J_PARAMS if grad_on == "parameters" else J_REPR)


@pytest.mark.parametrize("grad_on", ["parameters", "representation"])
@pytest.mark.parametrize("method", GRADIENT_LEVEL)
def test_gradient_methods_match_torchjd_on_a_hand_made_problem(method, grad_on):
    model, weighting = hand_step(method, grad_on)
    expected = direct_aggregate(method, grad_on)
    if grad_on == "representation":  # dL/dW = (dL/dz) x^T
        expected = torch.outer(expected, X[0]).flatten()
    torch.testing.assert_close(model.encoder.weight.grad.flatten(), expected, atol=1e-4, rtol=1e-4)
    # each head gets its own task's gradient, dL_k/dh_k = z = W x = x
    for t in "ab":
        torch.testing.assert_close(model.heads[t].weight.grad, X)
    weights = weighting.current_weights()
    assert weights.shape == (2,) and torch.isfinite(weights).all()
    jacobian = J_PARAMS if grad_on == "parameters" else J_REPR
    aggregate = direct_aggregate(method, grad_on)
    if isinstance(weighting.aggregator, aggregation.WeightedAggregator):  # the weights applied
        torch.testing.assert_close(weights @ jacobian, aggregate, atol=1e-4, rtol=1e-4)
    else:  # GradDrop, ConFIG: the documented proxy <aggregate, g_k> / ||g_k||^2
        torch.testing.assert_close(weights, jacobian @ aggregate / (jacobian * jacobian).sum(1))


def test_pcgrad_and_mgda_closed_forms():
    g_a, g_b = J_PARAMS
    # PCGrad: each gradient loses its component along the other (they conflict: g_a . g_b = -1)
    pc = (g_a - (g_a @ g_b) / (g_b @ g_b) * g_b) + (g_b - (g_b @ g_a) / (g_a @ g_a) * g_a)
    model, _ = hand_step("pcgrad", "parameters")
    torch.testing.assert_close(model.encoder.weight.grad.flatten(), pc)
    torch.testing.assert_close(pc, torch.tensor([0.5, 0.0, 1.5, 0.0]))
    # MGDA with two tasks: alpha = (g_b - g_a) . g_b / ||g_a - g_b||^2 = 0.6, d = alpha g_a + (1 - alpha) g_b
    alpha = ((g_b - g_a) @ g_b / (g_a - g_b).pow(2).sum()).clamp(0, 1)
    model, weighting = hand_step("mgda", "parameters", epsilon=1e-6)
    torch.testing.assert_close(model.encoder.weight.grad.flatten(), alpha * g_a + (1 - alpha) * g_b,
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(weighting.current_weights(), torch.stack([alpha, 1 - alpha]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["upgrad", "fairgrad", "nash_mtl", "graddrop"])
def test_loss_scale_and_regulariser(method):
    """Losses go through `scale` (fp16 loss scale, accumulation) and come out scaled; the aggregator still
    sees the true gradients (FairGrad and Nash-MTL's norm cap depend on their size). The model's
    regulariser is added once, outside the aggregation."""
    plain, _ = hand_step(method, "parameters")
    scaled, _ = hand_step(method, "parameters", scale=lambda x: 8.0 * x)
    torch.testing.assert_close(scaled.encoder.weight.grad, 8.0 * plain.encoder.weight.grad, atol=1e-3, rtol=1e-3)
    regularised, _ = hand_step(method, "parameters", extra=lambda m: 0.5 * m.encoder.weight.pow(2).sum())
    torch.testing.assert_close(regularised.encoder.weight.grad, plain.encoder.weight.grad + torch.eye(2),
                               atol=1e-4, rtol=1e-4)


def test_gradnorm_weight_gradient_is_the_papers():
    """grad_w of L_grad = sum_k |w_k ||grad_W L_k|| - target_k| (computed here with a double backward)."""
    model = TwoTaskLinear(ha=(1.0, 0.5), hb=(0.5, 2.0))
    weighting = make_method("gradnorm", "parameters", alpha=1.5)
    weighting.setup({"a": None, "b": None}, model)
    with torch.no_grad():
        weighting.task_weights.copy_(torch.tensor([1.5, 0.5]))

    def losses():
        preds = model({"x": torch.tensor([[1.0, 2.0]])})
        return {"a": (preds["a"] - 3.0) ** 2, "b": (preds["b"] + 1.0) ** 2}

    first = losses()
    weighting.backward(first, scale=lambda x: x)  # the first step sets L(0)
    model.zero_grad()
    weighting.task_weights.grad = None
    with torch.no_grad():
        model.encoder.weight.add_(0.1)
    second = losses()
    w = weighting.task_weights.detach().clone().requires_grad_()  # already renormalised to sum to 2
    norms = torch.stack([torch.autograd.grad(w[i] * second[t], model.encoder.weight, create_graph=True,
                                             retain_graph=True)[0].norm() for i, t in enumerate("ab")])
    ratio = torch.stack([second[t].detach() / first[t].detach() for t in "ab"])
    target = (norms.mean() * (ratio / ratio.mean()) ** 1.5).detach()
    expected = torch.autograd.grad((norms - target).abs().sum(), w)[0]
    weighting.backward(second, scale=lambda x: x)
    torch.testing.assert_close(weighting.task_weights.grad, expected)
    assert weighting.task_weights.sum().item() == pytest.approx(2.0)
    assert weighting.layers == [[model.encoder.weight]] * 2  # the last shared layer, found from the losses


# ----------------------------------------------------------------- the real configs, 30 steps each
CASES = [(m, None) for m in ALL] + [(m, "representation") for m in WITH_GRAD_ON]


@pytest.mark.parametrize("method,grad_on", CASES, ids=[f"{m}-{g or 'default'}" for m, g in CASES])
def test_each_method_lowers_the_losses(method, grad_on, tmp_path):
    """30 optimizer steps of the Trainer (`Trainer.step`, as `mtlrun train` takes them) at a constant lr."""
    overrides = ["scheduler=constant", "logger=[]", "trainer.device=cpu",
                 *([f"weighting.grad_on={grad_on}"] if grad_on else [])]
    parts, _, batches = build_run(method, *overrides)
    trainer = build_trainer(compose_train(f"weighting={method}", *overrides), tmp_path, parts=parts,
                            dist=DistInfo())
    before = total_loss(parts, batches)
    for step in range(30):
        trainer.step([batches[step % len(batches)]])
    trainer.check_nonfinite()
    assert trainer.train_sums.objective.isfinite()
    weights = parts.weighting.current_weights()
    assert weights.shape == (len(parts.tasks),) and torch.isfinite(weights).all()
    after = total_loss(parts, batches)
    assert after < 0.8 * before, (before, after)


# ------------------------------------------------------------------------------------ bad combinations
@pytest.mark.parametrize("method", WITHOUT_GRAD_ON)
def test_loss_level_methods_refuse_grad_on(method):
    cfg = compose_train(f"weighting={method}", "weighting.grad_on=representation")
    with pytest.raises(UsageError, match=r"weighting.grad_on=representation: weighting=\w+ is loss-level"):
        instantiate_node(cfg.weighting, "weighting")


@pytest.mark.parametrize("method", WITH_GRAD_ON)
def test_unknown_grad_on_is_refused(method):
    cfg = compose_train(f"weighting={method}", "weighting.grad_on=shared")
    with pytest.raises(UsageError, match="weighting.grad_on=shared: valid for .*parameters, representation"):
        instantiate_node(cfg.weighting, "weighting")


class NoSharedRepresentation(TwoTaskLinear):
    """Like soft sharing: nothing that all tasks read."""

    has_shared_representation = False

    def forward(self, inputs, return_shared=False):
        preds = super().forward(inputs)
        return (preds, None) if return_shared else preds


@pytest.mark.parametrize("method", WITH_GRAD_ON)
def test_representation_level_needs_a_shared_representation(method):
    weighting = make_method(method, "representation")
    with pytest.raises(UsageError, match="weighting.grad_on=representation: the architecture "
                                         "NoSharedRepresentation has no shared representation"):
        weighting.setup({"a": None, "b": None}, NoSharedRepresentation())
    # parameter level works without one: the Jacobian is taken from the losses
    model = NoSharedRepresentation()
    weighting = make_method(method, "parameters")
    weighting.setup({"a": None, "b": None}, model)
    preds, shared = model({"x": X}, return_shared=True)
    torch.manual_seed(0)
    weighting.backward(preds, scale=lambda x: x, shared=shared)
    assert torch.isfinite(model.encoder.weight.grad).all()
    if method != "gradnorm":
        torch.testing.assert_close(model.encoder.weight.grad.flatten(), direct_aggregate(method, "parameters"),
                                   atol=1e-4, rtol=1e-4)


class NotACut(TwoTaskLinear):
    """Returns a `shared` that task b bypasses: b also reads the encoder's weight directly."""

    def forward(self, inputs, return_shared=False):
        z = self.encoder(inputs["x"])
        preds = {"a": self.heads["a"](z).sum(), "b": self.heads["b"](z).sum() + self.encoder.weight.sum()}
        return (preds, z) if return_shared else preds


def test_a_shared_representation_that_is_not_a_cut():
    model = NotACut()
    preds, z = model({"x": X}, return_shared=True)
    weighting = make_method("upgrad", "representation")
    weighting.setup({"a": None, "b": None}, model)
    with pytest.raises(UsageError, match="other than through the shared representation"):
        weighting.backward(preds, scale=lambda x: x, shared=z)
    # parameter level notices and takes the Jacobian from the losses: the bypass is counted
    preds, z = model({"x": X}, return_shared=True)
    weighting = make_method("upgrad", "parameters")
    weighting.setup({"a": None, "b": None}, model)
    weighting.backward(preds, scale=lambda x: x, shared=z)
    jacobian = J_PARAMS + torch.tensor([[0.0] * 4, [1.0] * 4])
    torch.testing.assert_close(model.encoder.weight.grad.flatten(), aggregation.UPGrad()(jacobian),
                               atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------- partial labels
@pytest.mark.parametrize("method,grad_on", CASES, ids=[f"{m}-{g or 'default'}" for m, g in CASES])
def test_a_task_without_labels_contributes_nothing(method, grad_on):
    parts, optimizer, batches = build_run(method, *([f"weighting.grad_on={grad_on}"] if grad_on else []))
    model, weighting = parts.model, parts.weighting
    batch = batches[0]
    no_right = {"right": torch.zeros(len(batch["targets"]["right"]), dtype=torch.bool)}
    for _ in range(2):  # a labelled step first, so stateful methods have a "previous" step
        train_step(parts, batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    state = {k: v.clone() for k, v in weighting.state_dict().items() if isinstance(v, torch.Tensor)}

    losses, objective = train_step(parts, batch, masks=no_right)
    assert losses["right"].item() == 0.0 and torch.isfinite(objective)
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    for p in model.heads["right"].parameters():
        assert p.grad is None or not p.grad.any()
    weights = weighting.current_weights()
    assert torch.isfinite(weights).all()
    if method != "static":  # the weight a task got this step; static reports its configured weights
        assert weights[list(parts.tasks).index("right")] == 0
    for p in weighting.parameters():  # UW's and IMTL-L's log terms, GradNorm's weights
        assert p.grad is None or p.grad[list(parts.tasks).index("right")] == 0
    if method == "famo":  # the absent task's logit and Adam moments are left alone
        right = list(parts.tasks).index("right")
        for key in ("logits", "adam_m", "adam_v"):
            assert weighting.state_dict()[key][right] == state[key][right]

    # the shared gradient is that of the labelled task alone, up to a positive factor
    shared = [p for p in model.shared_parameters()]
    got = torch.cat([p.grad.flatten() for p in shared])
    model.zero_grad(set_to_none=True)
    preds = model(batch["inputs"])
    left = parts.tasks["left"].loss(preds["left"], batch["targets"]["left"], None)
    alone = torch.cat([g.flatten() for g in torch.autograd.grad(left, shared)])
    assert torch.nn.functional.cosine_similarity(got, alone, dim=0) > 0.999


def test_dwa_with_a_task_that_was_never_labelled():
    parts, _, _ = build_run("dwa")
    weighting = parts.weighting
    for means in ({"left": 2.0, "right": 0.0}, {"left": 1.5, "right": 0.0}, {"left": 1.0, "right": 0.5}):
        weighting.on_epoch_end(means)
    weights = weighting.epoch_weights
    assert torch.isfinite(weights).all() and weights.sum().item() == pytest.approx(2.0)


# ------------------------------------------------ agreement with torchjd's scalarizers (all labelled)
def test_loss_level_formulas_agree_with_torchjd_scalarization():
    losses = torch.tensor([0.7, 2.3])
    labelled = torch.ones(2, dtype=torch.bool)

    def ours(method, **kw):
        w = make_method(method, None, **kw)
        w.setup({"a": None, "b": None}, TwoTaskLinear())
        return w

    uw = ours("uw")
    with torch.no_grad():
        uw.log_var.copy_(torch.tensor([0.3, -0.2]))
    reference = tjs.UW(2)
    with torch.no_grad():
        reference.log_var.copy_(uw.log_var)
    torch.testing.assert_close(uw.objective(losses, labelled), reference(losses))

    imtl = ours("imtl_l")
    with torch.no_grad():
        imtl.log_scale.copy_(torch.tensor([0.4, -0.1]))
    reference = tjs.IMTLL(2)
    with torch.no_grad():
        reference.log_scale.copy_(imtl.log_scale)
    torch.testing.assert_close(imtl.objective(losses, labelled), reference(losses))

    torch.testing.assert_close(ours("gls").objective(losses, labelled), tjs.GeometricMean()(losses))

    dwa, reference = ours("dwa", temperature=2.0), tjs.DWA(temperature=2.0)
    for epoch_losses in (torch.tensor([2.0, 3.0]), torch.tensor([1.0, 2.5])):
        reference(epoch_losses)
        reference.step()
        dwa.on_epoch_end({"a": float(epoch_losses[0]), "b": float(epoch_losses[1])})
    torch.testing.assert_close(dwa.objective(losses, labelled), reference(losses))

    famo, reference = ours("famo"), tjs.FAMO(2, lr=0.025, weight_decay=1e-3)
    steps = [torch.tensor([2.0, 1.0]), torch.tensor([1.5, 0.9]), torch.tensor([1.2, 0.85]), torch.tensor([1.0, 0.8])]
    for before, after in zip(steps, steps[1:]):
        torch.testing.assert_close(famo.objective(before, labelled), reference(before))
        reference.update(after)  # torchjd: the losses after the update; ours: the next step's losses
    famo.objective(steps[-1], labelled)
    torch.testing.assert_close(famo.logits, reference._w.detach())


# ------------------------------------------------------------------------------------- checkpoints
def keeps_state(method: str) -> bool:
    """Learned weights, buffers or extra state: something in the state_dict once set up."""
    weighting = make_method(method, METHODS[method].grad_on)
    weighting.setup({t: SimpleNamespace(weight=1.0) for t in "ab"}, TwoTaskLinear())
    return bool(weighting.state_dict())


STATEFUL = [m for m in ALL if keeps_state(m)]


def test_stateful_methods_are_found():
    assert {"uw", "gradnorm", "famo", "dwa", "gradvac", "nash_mtl"} <= set(STATEFUL)
    assert not {"static", "upgrad", "pcgrad"} & set(STATEFUL)


@pytest.mark.parametrize("method", STATEFUL)
def test_state_goes_through_the_state_dict(method):
    """A weighting rebuilt from its config and loaded from a checkpoint continues as the original would."""
    parts, optimizer, batches = build_run(method)
    for step in range(4):
        torch.manual_seed(step)
        train_step(parts, batches[step % 2])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    parts.weighting.on_epoch_end({"left": 2.0, "right": 1.0})
    parts.weighting.on_epoch_end({"left": 1.0, "right": 0.9})
    buffer = io.BytesIO()
    torch.save({"weighting": parts.weighting.state_dict(), "model": parts.model.state_dict(),
                "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # as checkpoint.load reads it

    resumed, resumed_optimizer, _ = build_run(method)
    resumed.model.load_state_dict(state["model"])
    resumed.weighting.load_state_dict(state["weighting"])
    resumed_optimizer.load_state_dict(state["optimizer"])
    for run in (parts, resumed):
        torch.manual_seed(99)
        train_step(run, batches[0])
    torch.testing.assert_close(resumed.weighting.current_weights(), parts.weighting.current_weights())
    for (name, p), q in zip(parts.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for p, q in zip(parts.weighting.parameters(), resumed.weighting.parameters()):
        torch.testing.assert_close(q.grad, p.grad)


def test_a_checkpoint_naming_a_weighting_by_its_old_path_is_rewritten(tmp_path):
    """Before the split into one file per method, the gradient-level methods lived in
    mtlrun.weighting.gradient and the adaptive loss weightings in mtlrun.weighting.loss."""
    old = {"weighting": {"_target_": "mtlrun.weighting.gradient.UPGrad", "norm_eps": 0.0001, "reg_eps": 0.0001,
                         "grad_on": "parameters"}, "runs": [{"_target_": "mtlrun.weighting.loss.FAMO"}]}
    renamed = checkpoint.rename_targets(old)
    assert renamed["weighting"] == {**old["weighting"], "_target_": "mtlrun.weighting.upgrad.UPGrad"}
    assert renamed["runs"] == [{"_target_": "mtlrun.weighting.famo.FAMO"}]
    assert old["weighting"]["_target_"] == "mtlrun.weighting.gradient.UPGrad"  # a copy: the input is kept
    assert isinstance(instantiate(renamed["weighting"]), get_class(METHODS["upgrad"]._target_))
    path = tmp_path / "old.pt"
    torch.save({"mtlrun_version": "0", "format": 1, "config": old, "model": {}}, path)
    assert checkpoint.load(path)["config"] == renamed
    # every moved method: renamed to the target its YAML names now, under the same class name
    moved = {o: n for o, n in checkpoint.RENAMED_TARGETS.items() if o.startswith("mtlrun.weighting.")}
    current = {str(cfg._target_) for cfg in METHODS.values()}
    assert set(moved.values()) <= current and len(moved) == len(current) - 2  # static, gradnorm did not move
    for o, n in moved.items():
        assert o.rpartition(".")[0] in ("mtlrun.weighting.gradient", "mtlrun.weighting.loss")
        assert o.rpartition(".")[2] == n.rpartition(".")[2]


# ------------------------------------------------------------------------------------ missing solvers
SOLVERS = [(m, package) for m in GRADIENT_LEVEL for package in get_class(METHODS[m]._target_).packages]


@pytest.mark.parametrize("method,package", SOLVERS)
def test_a_missing_solver_fails_at_config_time_with_the_pip_command(method, package, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else find_spec(name, *a))
    cfg = compose_train(f"weighting={method}")
    with pytest.raises(UsageError) as error:
        build_components(cfg)
    message = str(error.value)
    assert f"weighting={method} needs the solver package(s) {package}" in message
    assert 'pip install "mtlrun[solvers]"' in message and f"pip install {package}" in message


def test_an_aggregator_that_fails_to_import_names_the_pip_command(monkeypatch):
    def broken(**kw):
        raise ImportError("CAGradWeighting requires ['clarabel'] to be installed")

    monkeypatch.setattr(aggregation, "CAGrad", broken)
    with pytest.raises(UsageError, match=r'weighting=cagrad: .*clarabel.* pip install "mtlrun\[solvers\]"'):
        build_components(compose_train("weighting=cagrad"))


def test_a_compiled_model_is_handled():
    """torch.compile makes one graph node of the whole model: gradients with respect to `shared` would be
    None there. Parameter level notices and differentiates from the losses; representation level refuses."""
    eager = TwoTaskLinear(hb=(-1.0, 2.0))
    eager_weighting = make_method("upgrad", "parameters")
    eager_weighting.setup({"a": None, "b": None}, eager)
    preds, z = eager({"x": X}, return_shared=True)
    eager_weighting.backward(preds, scale=lambda x: x, shared=z)

    model = TwoTaskLinear(hb=(-1.0, 2.0))
    compiled = torch.compile(model, backend="aot_eager")
    weighting = make_method("upgrad", "parameters")
    weighting.setup({"a": None, "b": None}, model)
    preds, z = compiled({"x": X}, return_shared=True)
    weighting.backward(preds, scale=lambda x: x, shared=z)
    for p, q in zip(eager.parameters(), model.parameters()):
        torch.testing.assert_close(q.grad, p.grad)

    weighting = make_method("upgrad", "representation")
    weighting.setup({"a": None, "b": None}, model)
    preds, z = compiled({"x": X}, return_shared=True)
    with pytest.raises(UsageError, match="trainer.compile=false"):
        weighting.backward(preds, scale=lambda x: x, shared=z)


# ------------------------------------------------------------------------------------------------- DDP
# Both DDP tests read one torchrun launch (ddp_worker_run): each rank's start-up (torch, torchvision via the
# tasks, torchjd and cvxpy for the aggregators: seconds per rank) is paid once, not once per test. Each part's
# lines carry its tag ("equal", "in_step").
#
# A 2-rank run equals one process on the same global batch: the loader gives rank r the samples r, r+2, ... of
# the order one process takes in batches of 32, so with batches of 16 per rank each step sees the same 32
# samples. No BatchNorm (its batch statistics are per rank) and no dropout: the tabular modality of digits_av.
# No weight decay: DDP's manual gradient average gives the parameters no prediction uses (the tabular encoder's
# token embedding here) a zero gradient where one process leaves it None, and decay would then move them.
# The one-process references are trained before the process group exists, half of them on each rank (only rank
# 1 compares, with all of them: they are gathered once the group is up).
DDP_WORKER = """
import os, sys, tempfile, torch
import hydra_memo
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from mtlrun.build import build_trainer
from mtlrun.config import config_dir
from mtlrun import distributed

torch.set_num_threads(1)
hydra_memo.install()  # composes as the test process does (tests/cli/test_configs.py checks it against Hydra's)
OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: "x", replace=True)

def compose_train(overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)

# ---- equal: 2 ranks x 16 samples take the steps of 1 process x 32
BASE = ["experiment=digits_av", "data.modalities=[tabular]", "backbone.tabular.batch_norm=false", "data.n_train=96",
        "data.n_val=8", "data.n_test=8", "trainer.device=cpu", "trainer.max_epochs=1", "trainer.progress_bar=false",
        "scheduler=constant", "optim=sgd", "optim.lr=0.1", "optim.weight_decay=0"]
CASES = [[f"weighting={m}", f"weighting.grad_on={level}"] for m in ("upgrad", "mgda", "nash_mtl")
         for level in ("parameters", "representation")] + [["weighting=famo"], ["weighting=gradnorm"]]

def train(overrides, batch_size, info):
    cfg = compose_train([*BASE, *overrides, f"data.batch_size={batch_size}"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(cfg, run_dir, dist=info)
        trainer.fit()
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()]), \\
        {k: v.clone() for k, v in trainer.weighting.state_dict().items() if isinstance(v, torch.Tensor)}

rank = int(os.environ["RANK"])
mine = {i: train(case, 32, distributed.DistInfo()) for i, case in enumerate(CASES) if i % 2 == rank}
info = distributed.init_if_launched()
single = {i: ref for part in distributed.gather_objects(mine) for i, ref in part.items()}
for i, case in enumerate(CASES):
    ref, ref_state = single[i]
    ours, state = train(case, 16, info)
    difference = (ours - ref).abs().max().item()
    state_difference = max([(state[k].float() - ref_state[k].float()).abs().max().item() for k in state] or [0.0])
    if info.rank == 1:
        print("equal", " ".join(case), "moved", (ref - single[0][0]).abs().max().item() if i else 1.0,
              "difference", difference, "state", state_difference, flush=True)

# ---- in_step: the ranks end with the same parameters (and, where BatchNorm is trained outside DDP, buffers)
for overrides in [["weighting=upgrad", "trainer.accumulate=2"], ["weighting=mgda", "weighting.grad_on=representation"],
                  ["weighting=upgrad", "weighting.grad_on=representation", "trainer.accumulate=2"],
                  ["weighting=gradnorm"], ["weighting=uw"]]:
    cfg = compose_train([*overrides, *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(cfg, run_dir, dist=info)
        params = list(trainer.model.parameters()) + list(trainer.weighting.parameters())
        before = torch.cat([p.detach().flatten() for p in params])
        trainer.fit()
    after = torch.cat([p.detach().flatten() for p in params])
    ranks = distributed.gather_objects(after)
    stats = distributed.gather_objects(torch.cat([b.float().flatten() for b in trainer.model.buffers()]))
    if info.rank == 0:
        print("in_step", " ".join(overrides), "buffers", (stats[0] - stats[1]).abs().max().item(), "moved",
              (after - before).abs().max().item(), "rank difference", (ranks[0] - ranks[1]).abs().max().item(),
              flush=True)
distributed.barrier()
distributed.destroy()
# Leave without the interpreter's teardown: about one run in seven otherwise aborts there ("terminate called
# without an active exception"), with weighting=static too, after all the work is done and checked.
os._exit(0)
"""


@pytest.fixture(scope="module")
def ddp_worker_run(tmp_path_factory):
    """DDP_WORKER under `torchrun --nproc_per_node=2`: the completed process (its stdout has each part's lines)."""
    root = tmp_path_factory.mktemp("ddp_weighting")
    worker = root / "worker.py"
    worker.write_text(f"import sys; sys.path.insert(1, {str(REPO / 'tests')!r})\n" + DDP_WORKER)  # hydra_memo
    # the in_step part: multidigits, whose CNN has BatchNorm; 4 batches of 16 per rank
    small = [*TINY, "data.n_train=128", "trainer.device=cpu", "trainer.progress_bar=false", "trainer.max_epochs=1"]
    return run_process([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(worker), *small], cwd=root, timeout=600)


def worker_lines(proc, tag: str) -> list[str]:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [line for line in proc.stdout.splitlines() if line.startswith(f"{tag} ")]


@pytest.mark.e2e
def test_ddp_keeps_the_ranks_in_step(ddp_worker_run):
    """Two CPU processes: per-task-gradient methods (outside DDP's reducer), GradNorm and UW (whose
    learned weights live outside the DDP-wrapped model) end with the same parameters on both ranks, and the
    per-task-gradient methods, trained without the DDP wrapper, with the same BatchNorm statistics."""
    lines = worker_lines(ddp_worker_run, "in_step")
    assert len(lines) == 5, ddp_worker_run.stdout
    for line in lines:
        moved, difference = float(line.split()[-4]), float(line.split()[-1])
        assert moved > 0 and difference == 0.0, line
        if "upgrad" in line or "mgda" in line:  # trained without DDP's wrapper: BatchNorm statistics averaged
            assert float(line.split()[-6]) == 0.0, line


@pytest.mark.e2e
def test_two_ranks_equal_one_process_on_the_global_batch(ddp_worker_run):
    """upgrad, mgda and nash_mtl at both grad_on levels, famo and gradnorm: 2 ranks x 16 samples take the steps
    of 1 process x 32 (parameters and the weighting's state, e.g. FAMO's logits and previous losses, GradNorm's
    initial losses, which rank 0's checkpoint then holds for every rank)."""
    lines = worker_lines(ddp_worker_run, "equal")
    assert len(lines) == 8, ddp_worker_run.stdout
    for line in lines:
        words = line.split()
        moved, difference, state = float(words[-5]), float(words[-3]), float(words[-1])
        assert moved > 0, line  # the cases differ from one another: the comparison can fail
        assert difference < 1e-4 and state < 1e-4, line
