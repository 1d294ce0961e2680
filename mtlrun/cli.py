"""The `mtlrun` command: `mtlrun train|eval [hydra overrides]`, `mtlrun report DIR ...`.

`train` and `eval` are Hydra apps over the same config directory, so everything Hydra offers works after
the subcommand (`-m` sweeps, `--cfg job`, `--info`, `--config-dir`, `hydra.run.dir=...`). Errors mtlrun
anticipates print one short message and exit 2 (usage) or 1 (run failure); HYDRA_FULL_ERROR=1 shows the
traceback instead. `report` reads finished runs, composes no config, and takes plain argparse flags.

Shell completion is Hydra's, routed through the subcommand: `mtlrun -sc install=bash` (or `mtlrun train -sc
install=bash`) prints a script that completes the `mtlrun` command by calling `mtlrun -sc query=bash` with the
command line in COMP_LINE; that query completes the subcommand, then hands the rest of the line to the
subcommand's Hydra app, which completes groups, options and keys from its config.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from datetime import datetime

SUBCOMMANDS = {
    "train": ("mtlrun.train:train", "train a model (default: two-digit multidigits, small CNN, hard sharing)"),
    "eval": ("mtlrun.eval:evaluate", "evaluate a checkpoint: mtlrun eval checkpoint=PATH [split=test]"),
    "predict": ("mtlrun.predict:predict", "predictions of a checkpoint: mtlrun predict checkpoint=PATH data.path=new.csv"),
    "export": ("mtlrun.export:export", "export a checkpoint: mtlrun export checkpoint=PATH format=weights|torchscript|onnx"),
    "affinity": ("mtlrun.affinity:affinity", "which tasks help each other: lookahead task affinity (TAG) and groupings"),
    "report": ("mtlrun.report:main", "compare runs: mean ± std over seeds, Δm%, paired tests, Pareto front"),
}
NOT_HYDRA = ("report",)
USAGE_EXIT = 2
COMPLETION_FLAGS = ("-sc", "--shell-completion")  # Hydra's


def usage() -> str:
    from mtlrun import __version__
    from mtlrun.config import config_groups

    lines = [f"mtlrun {__version__}: train and evaluate multi-task / multi-modal PyTorch models from configs",
             "", "usage: mtlrun <command> [key=value ...] [group=option ...] [hydra flags]",
             "       mtlrun report DIR [DIR ...] [--stl DIR ...] [--reference LABEL] [--pareto X Y] [--out DIR]",
             "", "commands:"]
    lines += [f"  {name:<9}{text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "config groups (pick one with group=option; the first is the default):"]
    from mtlrun.config import config_dir
    from omegaconf import OmegaConf

    defaults = {}
    for entry in OmegaConf.load(config_dir() / "train.yaml").get("defaults", []):
        if isinstance(entry, dict) or OmegaConf.is_dict(entry):
            defaults.update({str(k): v for k, v in dict(entry).items()})
    for group, options in config_groups().items():
        default = defaults.get(group)
        chosen = list(default) if OmegaConf.is_list(default) else [default]  # a list: several at once
        ordered = [o for o in chosen if o in options] + [o for o in options if o not in chosen]
        several = f"  (several: {group}=[{','.join(ordered[:2])}])" if OmegaConf.is_list(default) else ""
        lines.append(f"  {group:<17}{', '.join(ordered)}{several}")
    lines += ["", "examples:",
              "  mtlrun train                                    # defaults: multidigits, cnn, hps",
              "  mtlrun train backbone/image=resnet18 trainer.max_epochs=20 data.batch_size=256",
              "  mtlrun train experiment=digits_av fusion=attention   # 4 modalities, attention fusion",
              "  mtlrun train experiment=scenes_hps              # segmentation + depth + normals",
              "  mtlrun train --config-dir my_configs experiment=my_data   # your CSV (examples/README.md)",
              "  mtlrun train -m seed=0,1,2                      # a Hydra multirun sweep",
              "  mtlrun train 'logger=[csv,tensorboard]'         # + TensorBoard: tensorboard --logdir outputs",
              "  mtlrun train -m experiment=stl_baselines seed=0,1,2   # single-task baselines",
              "  mtlrun report outputs/multirun/...              # mean ± std over seeds, Δm% vs STL",
              "  mtlrun train -m hparams_search=weighting_lr     # an Optuna search (pip install \"mtlrun[optuna]\")",
              "  mtlrun train resume=outputs/train/.../checkpoints/last.pt",
              "  mtlrun eval checkpoint=outputs/train/.../checkpoints/best.pt split=test",
              "  mtlrun eval checkpoint=... robustness.modality=image robustness.noise=gaussian",
              "  mtlrun predict checkpoint=.../best.pt data.path=new.csv   # predictions.csv, predictions.jsonl",
              "  mtlrun export checkpoint=.../best.pt format=onnx          # model.onnx, checked against torch",
              "  torchrun --nproc_per_node=2 -m mtlrun train      # DDP",
              "  mtlrun train --cfg job                          # print the composed config",
              "  mtlrun train --help                             # Hydra's help for one command",
              "  eval \"$(mtlrun -sc install=bash)\"               # tab completion of commands, groups, keys"]
    return "\n".join(lines)


def _start_time() -> datetime:
    """One timestamp for the run dir, shared by all DDP ranks so they write to the same directory."""
    from mtlrun import distributed

    distributed.init_if_launched()
    return distributed.broadcast_object(datetime.now())


def _resume_in_place(overrides: list[str]) -> list[str]:
    """`resume=RUN/checkpoints/last.pt` continues in RUN unless the user chose another hydra.run.dir."""
    from pathlib import Path

    resume = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if not resume or resume[-1] in ("", "null") or any(o.startswith("hydra.run.dir=") for o in overrides):
        return overrides
    path = Path(resume[-1]).expanduser().resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.is_dir():
        return [*overrides, f"hydra.run.dir={path.parent.parent}"]
    return overrides


def _take_explicit_dirs(command: str, overrides: list[str]) -> int:
    """Take a run dir given as `hydra.run.dir=...` (its lock and records check, rundir.acquire) before Hydra
    writes its .hydra/ files and the log there, so a run refused there changes nothing in it; for a sweep into
    `hydra.sweep.dir=...`, check its job dirs the same way. 0, or the exit code after saying why. A run dir
    made from the date is taken when the job starts (_locked), as is each job dir of a sweep."""
    from pathlib import Path

    from mtlrun import distributed
    from mtlrun.engine import rundir
    from mtlrun.errors import MtlrunError, RunDirRefused

    flags = {o.split("=")[0] for o in overrides}
    not_a_run = {"--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--resolve"}
    sweep = bool(flags & {"-m", "--multirun"})
    given = _last_value(overrides, "hydra.sweep.dir" if sweep else "hydra.run.dir")
    if given is None or "${" in given or flags & not_a_run:
        return 0
    folder = Path(given).expanduser()
    try:
        if sweep:
            why = rundir.sweep_refusal(folder, command)
            if why:
                raise RunDirRefused(why)
        else:  # held until the process exits
            rundir.acquire(folder, command, resumes=rundir.resumes_in(folder, _last_value(overrides, "resume")))
    except MtlrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if distributed.dist_info().enabled:
            _exit_distributed(exc.exit_code)
        return exc.exit_code
    return 0


def _last_value(overrides: list[str], key: str) -> str | None:
    given = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
    return given[-1] if given else None


def _warn_unused_sweep() -> None:
    """A config's own sweep (`hydra.sweeper.params`, e.g. experiment=stl_baselines) only applies with -m."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    params = hydra_cfg.sweeper.get("params") if "sweeper" in hydra_cfg else None
    if hydra_cfg.mode == RunMode.RUN and params:
        sweep = " ".join(f"{k}={v}" for k, v in params.items())
        logging.getLogger("mtlrun").warning(f"the config sweeps {sweep}, which applies only to a multirun: "
                                            f"this single run ignores it (add -m to run the sweep)")


def _sweep_job(fn):
    """In a multirun a job's error is recorded in its dir and the sweep goes on (mtlrun/sweep.py)."""
    from mtlrun import sweep

    return (lambda cfg: sweep.run_job(fn, cfg)) if sweep.is_multirun() else fn


def _locked(fn, command: str):
    """Hold the job's run dir while it runs: one live run per run dir, and never another command's (in a
    sweep, per job dir, so a taken dir fails that job alone)."""
    from hydra.core.hydra_config import HydraConfig

    from mtlrun import sweep
    from mtlrun.engine import rundir

    def job(cfg):
        run_dir = HydraConfig.get().runtime.output_dir
        key, where = ("hydra.sweep.dir", f"job dir {run_dir}") if sweep.is_multirun() else ("hydra.run.dir", None)
        with rundir.locked(run_dir, command, key, where, resumes=rundir.resumes_in(run_dir, cfg.get("resume"))):
            return fn(cfg)

    return job


def _run_guarded(fn, cfg):
    from mtlrun.engine.signals import TrainingInterrupted
    from mtlrun.errors import MtlrunError, exit_on
    from mtlrun.sweep import log_error_to_files

    log = logging.getLogger("mtlrun")
    try:
        return fn(cfg)
    except MtlrunError as exc:
        exit_on(exc, also=log_error_to_files)
    except TrainingInterrupted as exc:
        name = signal.Signals(exc.signum).name
        if exc.path is not None:
            log.warning(f"{name}: stopped; saved {exc.path}\nresume with: mtlrun train resume={exc.path}")
        elif exc.last_good is not None:
            log.warning(f"{name}: stopped at once (second signal), without saving; {exc.last_good} is intact\n"
                        f"resume with: mtlrun train resume={exc.last_good}")
        else:
            log.warning(f"{name}: stopped at once (second signal), before the first checkpoint")
        raise SystemExit(128 + exc.signum) from None
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (building, evaluating): no traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.warning("SIGINT: stopped")
        raise SystemExit(128 + signal.SIGINT) from None


def _cwd_on_path() -> None:
    """`python -m mtlrun` puts the working directory on sys.path, the `mtlrun` script does not: either way a
    `_target_: my_net.MyNet` with my_net.py in the working directory imports. Appended, so a file there never
    shadows an installed package; a checkpoint's targets are still refused unless trusted (mtlrun/trust.py)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def _optuna_search(overrides: list[str]) -> str | None:
    """The override that asks for an Optuna search (hparams_search presets run hydra-optuna-sweeper)."""
    asked = [o for o in overrides if (o.lstrip("+").partition("=")[0] == "hparams_search"
                                      and o.partition("=")[2] not in ("", "null"))
             or o.lstrip("+") == "hydra/sweeper=optuna"]
    return asked[-1] if asked else None


def _optuna_installed() -> bool:
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("hydra_plugins.hydra_optuna_sweeper", "optuna"))


def _completion(argv: list[str]) -> None:
    """`mtlrun -sc install=bash` prints the script (for the `mtlrun` command, whatever the subcommand);
    `mtlrun -sc query=SHELL` answers it: the subcommands while the first word is typed, then the
    subcommand's own completion (none for report: the shell falls back to file names)."""
    request = argv[1] if len(argv) > 1 else ""
    if not request.startswith("query="):
        main(["train", *argv])
        return
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    if len(words) < 2 or (len(words) == 2 and not line[-1:].isspace()):  # still typing the subcommand
        typed = words[1] if len(words) == 2 else ""
        choices = [c for c in (*SUBCOMMANDS, "--help", "--version") if c.startswith(typed)]
        print(("\n" if request == "query=fish" else " ").join(choices))
    elif words[1] in SUBCOMMANDS and words[1] not in NOT_HYDRA:
        main([words[1], *argv])


def _hydra_completion(command: str, overrides: list[str]) -> None:
    """`mtlrun train -sc ...`: Hydra's completion from the command's config. It runs no job, so neither the
    command nor torch is imported: each TAB stays quick."""
    import hydra
    from omegaconf import OmegaConf

    from mtlrun.config import config_dir

    # Hydra completes COMP_LINE after its program name: take the subcommand out of the line too
    line = os.environ.get("COMP_LINE", "")
    words = line.split(maxsplit=2)
    if len(words) >= 2 and words[1] == command:
        os.environ["COMP_LINE"] = words[0] + line.lstrip()[len(words[0]):].lstrip()[len(command):]
    OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: datetime.now().strftime(fmt), replace=True)
    sys.argv = ["mtlrun", *overrides]  # Hydra's install script names the program after argv[0]: `mtlrun`
    hydra.main(config_path=str(config_dir()), config_name=command, version_base="1.3")(lambda cfg: None)()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if argv else USAGE_EXIT)
    if argv[0] in COMPLETION_FLAGS:
        _completion(argv)
        return
    if argv[0] == "--version":
        from mtlrun import __version__

        print(f"mtlrun {__version__}")
        return
    command, overrides = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"error: unknown command {command!r}; valid: {', '.join(SUBCOMMANDS)} (see mtlrun --help)",
              file=sys.stderr)
        raise SystemExit(USAGE_EXIT)
    if command in NOT_HYDRA:
        module_name, fn_name = SUBCOMMANDS[command][0].split(":")
        getattr(importlib.import_module(module_name), fn_name)(overrides)
        return

    search = _optuna_search(overrides)
    if search and not _optuna_installed():  # the optional extra
        print(f"error: {search}: an Optuna search needs hydra-optuna-sweeper, which is not installed; "
              f'pip install "mtlrun[optuna]"', file=sys.stderr)
        raise SystemExit(USAGE_EXIT)
    if any(o in COMPLETION_FLAGS for o in overrides):
        _hydra_completion(command, overrides)
        return

    import hydra
    from omegaconf import OmegaConf

    from mtlrun import sweep
    from mtlrun.config import config_dir
    from mtlrun import distributed

    _cwd_on_path()
    if search and any(o in ("-m", "--multirun") for o in overrides):
        sweep.tolerate_no_completed_trial()
    if command == "train":
        overrides = _resume_in_place(overrides)
    started = _start_time()
    OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: started.strftime(fmt), replace=True)
    # `-m` under torchrun/srun: every rank runs the same sweep, job by job, each job one DDP job (mtlrun/sweep.py)
    ddp_sweep = distributed.dist_info().enabled and any(o in ("-m", "--multirun") for o in overrides)
    if distributed.dist_info().rank > 0:  # only rank 0 writes into the run dir
        overrides += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]

    if not sweep.launcher_installed(overrides) or (ddp_sweep and
                                                   not sweep.launcher_keeps_ranks_in_step(command, overrides)):
        if distributed.dist_info().enabled:
            _exit_distributed(USAGE_EXIT)
        raise SystemExit(USAGE_EXIT)
    refused = _take_explicit_dirs(command, overrides)
    if refused:
        raise SystemExit(refused)
    module_name, fn_name = SUBCOMMANDS[command][0].split(":")
    fn = getattr(importlib.import_module(module_name), fn_name)
    reached = False

    def task(cfg):
        nonlocal reached
        reached = True
        if not ddp_sweep and not distributed.dist_info().enabled:
            # a launcher's job process (hydra/launcher=slurm: one of srun's tasks) joins its job's group
            return _in_launched_group(lambda: _run_guarded(_sweep_job(_locked(fn, command)), cfg))
        _warn_unused_sweep()
        return _run_guarded(_sweep_job(_locked(fn, command)), cfg)

    sys.argv = [f"mtlrun {command}", *overrides]
    code, exited = 0, False
    try:
        hydra.main(config_path=str(config_dir()), config_name=command, version_base="1.3")(task)()
    except SystemExit as exc:
        # Hydra exits 1 on a bad override or an unknown group option, before our task runs: a usage error.
        code, exited = (USAGE_EXIT if not reached and exc.code == 1 else exc.code), True
    code = sweep.finish(code, command, overrides, started.timestamp())  # failed jobs: a summary, exit != 0
    if distributed.dist_info().enabled:
        _exit_distributed(code)
    if exited or code:
        raise SystemExit(code) from None


def _in_launched_group(job):
    """Run `job` in the process group SLURM's variables describe, if any (mtlrun.distributed.adopt_slurm): rank 0
    logs, the others only warn; the group is left at the end, since the launcher, not mtlrun, ends the process."""
    from mtlrun import distributed

    if not distributed.init_if_launched().enabled:
        _warn_unused_sweep()
        return job()
    if not distributed.dist_info().is_main:
        logging.getLogger("mtlrun").setLevel(logging.WARNING)
    try:
        return job()
    finally:
        distributed.barrier()
        distributed.destroy()


def _exit_distributed(code) -> None:
    """Leave the process group together and exit without interpreter teardown: gloo's threads can abort
    the process at exit ("terminate called without an active exception") after all work is done."""
    from mtlrun import distributed

    try:
        distributed.barrier()
    finally:
        distributed.destroy()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    main()
