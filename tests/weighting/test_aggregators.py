"""Any torchjd aggregator makes a gradient-level method (docs/howto/extending.md): what it needs (the
Gramian or the Jacobian) is read from the aggregator, whatever the class declares in `needs_jacobian`, at both
`grad_on` levels; anything that is not an aggregator is a usage error at set-up. In-process, on a 3-task
problem whose Jacobian is written down by hand."""

from __future__ import annotations

import inspect
import re
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torchjd import aggregation

from contracts import REPO, compose_config
from mtlrun.build import build_components
from mtlrun.errors import UsageError
from mtlrun.instantiate import instantiate_node
from mtlrun.models.base import MultiTaskModel
from mtlrun.weighting.gradient_base import GradientAggregation

pytestmark = [pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP"),
              pytest.mark.filterwarnings("ignore:divide by zero encountered in divide:RuntimeWarning")]

TASKS = ("a", "b", "c")
# The arguments of the aggregators that have no default, for 3 tasks; the others are built with none.
SIMPLE_ARGUMENTS = {"CAGrad": {"c": 0.5}, "Constant": {"weights": torch.tensor([1.0, 2.0, 0.5])},
                    "FairGrad": {"alpha": 1.0}, "Krum": {"n_byzantine": 0}, "NashMTL": {"n_tasks": 3},
                    "TrimmedMean": {"trim_number": 1}}
BASES = (aggregation.Aggregator, aggregation.WeightedAggregator, aggregation.GramianWeightedAggregator)
AGGREGATORS = sorted(name for name, cls in vars(aggregation).items()
                     if inspect.isclass(cls) and issubclass(cls, aggregation.Aggregator) and cls not in BASES)


def build(name: str) -> aggregation.Aggregator:
    return getattr(aggregation, name)(**SIMPLE_ARGUMENTS.get(name, {}))


class ThreeTaskLinear(MultiTaskModel):
    """z = W x (W shared, 3 x 3, = I); task k predicts h_k . z. With x = e_1: dL_k/dz = h_k, dL_k/dW = h_k x^T."""

    HEADS = ((1.0, 0.0, 0.5), (-1.0, 1.0, 0.0), (0.5, -2.0, 1.0))

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 3, bias=False)
        self.heads = nn.ModuleDict({t: nn.Linear(3, 1, bias=False) for t in TASKS})
        with torch.no_grad():
            self.encoder.weight.copy_(torch.eye(3))
            for t, h in zip(TASKS, self.HEADS):
                self.heads[t].weight.copy_(torch.tensor([h]))

    def forward(self, inputs, return_shared=False):
        z = self.encoder(inputs["x"])
        preds = {t: head(z).sum() for t, head in self.heads.items()}
        return (preds, z) if return_shared else preds


X = torch.tensor([[1.0, 0.0, 0.0]])
J_REPR = torch.tensor(ThreeTaskLinear.HEADS)
J_PARAMS = torch.stack([torch.outer(h, X[0]).flatten() for h in J_REPR])


def plugin(make, declared: bool = False) -> type[GradientAggregation]:
    """A user's method: its class says only which aggregator it uses (and, maybe, whether it needs the Jacobian)."""
    return type("Plugin", (GradientAggregation,), {"needs_jacobian": declared,
                                                   "make_aggregator": lambda self, num_tasks: make(num_tasks)})


def hand_step(weighting, model, scale=lambda x: x):
    preds, z = model({"x": X}, return_shared=True)
    torch.manual_seed(0)  # Random, GradDrop, PCGrad... draw random numbers
    weighting.backward(preds, scale=scale, shared=z)


@pytest.mark.parametrize("declared", [False, True], ids=["undeclared", "needs_jacobian"])
@pytest.mark.parametrize("grad_on", ["parameters", "representation"])
@pytest.mark.parametrize("name", AGGREGATORS)
def test_every_torchjd_aggregator_is_a_gradient_level_method(name, grad_on, declared):
    model, weighting = ThreeTaskLinear(), plugin(lambda n: build(name), declared)(grad_on=grad_on)
    weighting.setup(dict.fromkeys(TASKS), model)
    assert weighting.needs_jacobian == (not isinstance(build(name), aggregation.GramianWeightedAggregator))
    hand_step(weighting, model)
    jacobian = J_PARAMS if grad_on == "parameters" else J_REPR
    torch.manual_seed(0)
    expected = build(name)(jacobian)  # torchjd on the stacked Jacobian
    if grad_on == "representation":  # dL/dW = (dL/dz) x^T
        expected = torch.outer(expected, X[0]).flatten()
    torch.testing.assert_close(model.encoder.weight.grad.flatten(), expected, atol=1e-4, rtol=1e-4)
    weights = weighting.current_weights()
    assert weights.shape == (3,) and torch.isfinite(weights).all()
    if isinstance(weighting.aggregator, aggregation.WeightedAggregator):  # the weights applied
        aggregate = weights @ jacobian
        torch.testing.assert_close(aggregate if grad_on == "parameters" else torch.outer(aggregate, X[0]).flatten(),
                                   expected, atol=1e-4, rtol=1e-4)
    hand_step(weighting, model)  # a second step: stateful aggregators (GradVac, PCD, ExcessMTL, Nash-MTL) go on
    assert torch.isfinite(model.encoder.weight.grad).all()


@pytest.mark.parametrize("name", ["TrimmedMean", "Mean", "ConFIG"])
def test_a_jacobian_aggregator_gets_the_true_gradients_and_accumulates_at_parameter_level(name):
    """The loss scale (fp16, 1/accumulate) is taken off before the aggregator and put back after; a window of
    two micro-batches at parameter level is the step of the two together."""
    plain, scaled, window = (ThreeTaskLinear() for _ in range(3))
    weightings = [plugin(lambda n: build(name))() for _ in range(3)]
    for model, weighting in zip((plain, scaled, window), weightings):
        weighting.setup(dict.fromkeys(TASKS), model)
    hand_step(weightings[0], plain)
    hand_step(weightings[1], scaled, scale=lambda x: 8.0 * x)
    torch.testing.assert_close(scaled.encoder.weight.grad, 8.0 * plain.encoder.weight.grad)
    for first, last in ((True, False), (False, True)):  # the same batch twice, each half of the step
        weightings[2].start_micro_batch(first, last)
        hand_step(weightings[2], window, scale=lambda x: 0.5 * x)
    torch.testing.assert_close(window.encoder.weight.grad, plain.encoder.weight.grad)


def test_a_jacobian_aggregator_refuses_a_representation_window_as_it_opens():
    weighting = plugin(lambda n: aggregation.TrimmedMean(trim_number=1))(grad_on="representation")
    weighting.setup(dict.fromkeys(TASKS), ThreeTaskLinear())
    weighting.start_micro_batch(first=True, last=True)  # a whole step: fine
    with pytest.raises(UsageError, match=r"trainer.accumulate>1: weighting=test_aggregators at grad_on="
                                         r"representation needs the whole batch's Jacobian"):
        weighting.start_micro_batch(first=True, last=False)


@pytest.mark.parametrize("returned, named", [(lambda n: None, "None"), (lambda n: (lambda m: m.mean(0)), "a function"),
                                             (lambda n: aggregation.MeanWeighting(), "a MeanWeighting"),
                                             (lambda n: aggregation.Mean, "a ABCMeta")])
def test_anything_but_an_aggregator_is_a_usage_error_at_set_up(returned, named):
    weighting = plugin(returned)()
    with pytest.raises(UsageError) as caught:
        weighting.setup(dict.fromkeys(TASKS), ThreeTaskLinear())
    message = str(caught.value)
    assert caught.value.exit_code == 2 and "\n" not in message
    assert message.startswith(f"weighting=test_aggregators: make_aggregator(3) returned {named}, not a torchjd "
                              f"aggregator; it must return an instance of a torchjd.aggregation.Aggregator"), message


def test_a_class_without_make_aggregator_is_a_usage_error_at_set_up():
    with pytest.raises(UsageError, match=r"weighting=test_aggregators: Plugin defines no make_aggregator"):
        type("Plugin", (GradientAggregation,), {})().setup(dict.fromkeys(TASKS), ThreeTaskLinear())


def readme_method() -> str:
    """The gradient-level method of docs/howto/extending.md, as a user would save it."""
    readme = (REPO / "docs" / "howto" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    return next(b for b in blocks if "class TrimmedMeanGradient(GradientAggregation)" in b)


@pytest.mark.parametrize("grad_on", ["parameters", "representation"])
def test_the_readme_gradient_level_method_trains(tmp_path, monkeypatch, grad_on):
    """The guide's TrimmedMeanGradient (torchjd's TrimmedMean: not a weighting of the Gramian) lowers the losses of
    digits_av's three tasks in 20 steps, built from its config as `weighting=trimmed_mean` would."""
    (tmp_path / "my_gradient_methods.py").write_text(readme_method())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_gradient_methods", raising=False)
    torch.manual_seed(0)
    cfg = compose_config(["experiment=digits_av", "data.modalities=[tabular]", "data.n_train=32", "data.n_val=8",
                          "data.n_test=8", "data.batch_size=16"])
    cfg.weighting = OmegaConf.create({"_target_": "my_gradient_methods.TrimmedMeanGradient", "trim": 1,
                                      "grad_on": grad_on})
    parts = build_components(cfg)
    optimizer = instantiate_node(cfg.optim, "optim")(list(parts.model.parameters()))
    batch = next(iter(parts.data.train_loader(epoch=0, seed=0, device=torch.device("cpu"))))

    def losses():
        preds, shared = parts.model(batch["inputs"], return_shared=True)
        return {t: task.loss(preds[t], batch["targets"][t], None) for t, task in parts.tasks.items()}, shared

    before = sum(float(v.detach()) for v in losses()[0].values())
    for _ in range(20):
        step_losses, shared = losses()
        parts.weighting.backward(step_losses, scale=lambda x: x, shared=shared)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert parts.weighting.needs_jacobian and torch.isfinite(parts.weighting.current_weights()).all()
    assert sum(float(v.detach()) for v in losses()[0].values()) < before


def test_the_readme_method_says_when_it_has_too_few_tasks(tmp_path, monkeypatch):
    (tmp_path / "my_gradient_methods.py").write_text(readme_method())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_gradient_methods", raising=False)
    import my_gradient_methods

    with pytest.raises(UsageError, match=r"weighting=my_gradient_methods: .*trim=2 .* at least 5 tasks"):
        my_gradient_methods.TrimmedMeanGradient(trim=2).setup(dict.fromkeys(TASKS), ThreeTaskLinear())

