"""Adding a weighting or a fusion is one file plus one YAML, outside mtlrun: a module on the path and a
`--config-dir` with the YAMLs (the templates of docs/howto/extending.md). Nothing in mtlrun is edited."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from contracts import TINY, read_results, run_cli

pytestmark = pytest.mark.e2e  # trains and evaluates through the CLI

EXTENSION = '''
"""A user's own fusion and weighting, as docs/howto/extending.md's templates write them."""
import torch

from mtlrun.models.fusion.base import Projected
from mtlrun.weighting.loss_base import LossWeighting


class Max(Projected):
    """Elementwise max of the present modalities' projections (zeros where none is present)."""

    def __init__(self, dims, token_dims, dim=128, trunk=(256,)):
        super().__init__(dims, token_dims, dim, trunk)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        h, present = self.projections(encoded, mask)
        h = h.masked_fill(~present.unsqueeze(-1), torch.finfo(h.dtype).min).amax(1)
        return h.masked_fill(~present.any(1, keepdim=True), 0.0)


class InverseLoss(LossWeighting):
    """w_k proportional to 1 / L_k (detached), normalised to sum to the number of labelled tasks."""

    def __init__(self, eps: float = 1e-3, grad_on=None):
        super().__init__(grad_on)
        self.eps = float(eps)

    def objective(self, losses, labelled):
        inverse = labelled / (losses.detach() + self.eps)
        self.weights = inverse * labelled.sum() / inverse.sum().clamp_min(self.eps)
        return (self.weights * losses).sum()
'''

TINY_AV = ["experiment=digits_av", "data.n_train=64", "data.n_val=16", "data.n_test=32", "data.batch_size=16",
           "backbone.image.channels=[8,16]", "backbone.image.out_dim=16", "backbone.audio.channels=[4,8]",
           "backbone.audio.out_dim=16", "backbone.text.hidden=8", "backbone.text.embed_dim=8",
           "backbone.text.out_dim=16", "backbone.tabular.hidden=[16]", "backbone.tabular.out_dim=16",
           "fusion.dim=16", "fusion.trunk=[16]", "trainer.max_epochs=2", "trainer.device=cpu",
           "trainer.progress_bar=false"]


def test_a_fusion_and_a_weighting_from_outside_mtlrun_train_and_evaluate(tmp_path):
    (tmp_path / "my_methods.py").write_text(textwrap.dedent(EXTENSION))
    configs = tmp_path / "my_configs"
    (configs / "fusion").mkdir(parents=True)
    (configs / "weighting").mkdir()
    (configs / "fusion" / "max.yaml").write_text("_target_: my_methods.Max\ndim: 128\ntrunk: [256]\n")
    (configs / "weighting" / "inverse_loss.yaml").write_text("_target_: my_methods.InverseLoss\neps: 0.001\n")
    env = {"PYTHONPATH": str(tmp_path)}

    run = tmp_path / "run"
    proc = run_cli("train", "--config-dir", str(configs), *TINY_AV, "fusion=max", "weighting=inverse_loss",
                   f"hydra.run.dir={run}", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fusion: my_methods.Max" in proc.stdout and "weighting: my_methods.InverseLoss" in proc.stdout
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert state["config"]["fusion"]["_target_"] == "my_methods.Max"
    weights = [row for row in (run / "metrics.csv").read_text().splitlines()[1:] if ",train," in row]
    assert len(weights) == 2  # one train row per epoch, with the method's own logged weights
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"digit/weight", "parity/weight", "ink/weight"} <= set(header)

    # the checkpoint names code outside mtlrun: eval builds it only when the user trusts the module
    proc = run_cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={tmp_path / 'no'}",
                   cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "trusted_targets=[my_methods]" in proc.stderr, proc.stderr
    proc = run_cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", "trusted_targets=[my_methods]",
                   f"hydra.run.dir={tmp_path / 'ev'}", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trained = json.loads((run / "results.json").read_text())["metrics"]
    assert read_results(tmp_path / "ev") == {k: v for k, v in trained.items() if k.startswith("test/")}


# docs/howto/extending.md, "Your own encoder": my_net.py in the working directory, its YAML under --config-dir
MY_NET = '''
from torch import nn
from mtlrun.models.backbone.base import Encoder


class MyNet(Encoder):
    """Two convolutions and a global average pool: [B, C, H, W] -> [B, out_dim]."""

    def __init__(self, in_channels, input_size, width=32, out_dim=64):   # the data passes the first two
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, out_dim, 3, padding=1, stride=2), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = self.token_dim = out_dim

    def forward(self, x):
        return self.net(x)
'''


def _without_cwd_on_path() -> list[str]:
    """mtlrun started the way the installed `mtlrun` script starts it: without the working directory on
    sys.path (`python -m mtlrun` puts it there itself; `python -P` leaves it out)."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", "mtlrun"]
    script = Path(sys.executable).parent / "mtlrun"
    if not script.is_file():
        pytest.skip("needs python -P (3.11+) or the installed `mtlrun` script")
    return [str(script)]


def test_a_target_in_the_working_directory_trains_and_a_checkpoint_naming_it_needs_trust(tmp_path):
    (tmp_path / "my_net.py").write_text(MY_NET)
    (tmp_path / "my_configs" / "backbone" / "image").mkdir(parents=True)
    (tmp_path / "my_configs" / "backbone" / "image" / "my_net.yaml").write_text(
        "_target_: my_net.MyNet\nwidth: 32\nout_dim: 64\n")
    launcher = _without_cwd_on_path()

    proc = run_cli("train", "--config-dir", "my_configs", "backbone/image=my_net", *TINY, "hydra.run.dir=run",
                   cwd=tmp_path, launcher=launcher)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "backbone.image: my_net.MyNet" in proc.stdout
    checkpoint = f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'best.pt'}"

    # importable is not trusted: a checkpoint that names my_net is refused before anything is imported
    proc = run_cli("eval", checkpoint, "hydra.run.dir=no", cwd=tmp_path, launcher=launcher)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "backbone.image._target_=my_net.MyNet: not code that mtlrun ships; if you trust the checkpoint's " \
           "author, add trusted_targets=[my_net]" in proc.stderr
    assert not (tmp_path / "no" / "results.json").exists()
    proc = run_cli("eval", checkpoint, "trusted_targets=[my_net]", "hydra.run.dir=ev", cwd=tmp_path,
                   launcher=launcher)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trained = read_results(tmp_path / "run")
    assert read_results(tmp_path / "ev") == {k: v for k, v in trained.items() if k.startswith("test/")}
