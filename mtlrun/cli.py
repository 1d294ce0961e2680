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
    "export": ("mtlrun.export:export", "export a checkpoint: mtlrun export checkpoint=PATH format=weights|pt2|torchscript|onnx"),
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
    """One timestamp for the run dir (the `mtlrun_now` resolver), shared by all DDP ranks so they write to the
    same directory: joins the process group under torchrun/srun."""
    from omegaconf import OmegaConf

    from mtlrun import distributed

    distributed.init_if_launched()
    started = distributed.broadcast_object(datetime.now())
    OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: started.strftime(fmt), replace=True)
    return started


def _resume_in_place(overrides: list[str]) -> list[str]:
    """`resume=RUN/checkpoints/last.pt` continues in RUN unless the user chose another hydra.run.dir."""
    from pathlib import Path

    from mtlrun.sweep import last_value

    resume = last_value(overrides, "resume")
    if resume in (None, "", "null") or last_value(overrides, "hydra.run.dir") is not None:
        return overrides
    path = Path(resume).expanduser().resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.is_dir():
        return [*overrides, f"hydra.run.dir={path.parent.parent}"]
    return overrides


def _take_explicit_dirs(command: str, overrides: list[str]) -> None:
    """Take a run dir given as `hydra.run.dir=...` (its lock and records check, rundir.acquire) before Hydra
    writes its .hydra/ files and the log there, so a run refused there changes nothing in it; for a sweep into
    `hydra.sweep.dir=...`, check its job dirs the same way. A refusal says why and ends the command. A run dir
    made from the date is taken when the job starts (_locked), as is each job dir of a sweep."""
    from pathlib import Path

    from mtlrun.engine import rundir
    from mtlrun.errors import MtlrunError, RunDirRefused
    from mtlrun.sweep import asks_multirun, last_value

    flags = {o.split("=")[0] for o in overrides}
    not_a_run = {"--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--resolve"}
    sweep = asks_multirun(overrides)
    given = last_value(overrides, "hydra.sweep.dir" if sweep else "hydra.run.dir")
    if given is None or "${" in given or flags & not_a_run:
        return
    folder = Path(given).expanduser()
    try:
        if sweep:
            why = rundir.sweep_refusal(folder, command)
            if why:
                raise RunDirRefused(why)
        else:  # held until the process exits
            rundir.acquire(folder, command, resumes=rundir.resumes_in(folder, last_value(overrides, "resume")))
    except MtlrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _exit(exc.exit_code)


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
    """`mtlrun COMMAND [overrides]`, step by step; a step that must end the command exits itself."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _answered_without_a_command(argv):  # --help, -sc (shell completion), --version
        return
    command, overrides = _known_command(argv)
    if command in NOT_HYDRA:  # report: plain flags, no config
        _command_function(command)(overrides)
        return
    _check_sweeper(overrides)
    if any(o in COMPLETION_FLAGS for o in overrides):
        _hydra_completion(command, overrides)
        return
    _cwd_on_path()
    if command == "train":
        overrides = _resume_in_place(overrides)
    started = _start_time()
    ddp_sweep = _ddp_sweep(overrides)
    overrides = _rank_overrides(overrides)
    _check_launcher(command, overrides, ddp_sweep)
    _take_explicit_dirs(command, overrides)
    code, exited = _run_hydra(command, overrides, ddp_sweep)
    _finish(command, overrides, started, code, exited)


def _answered_without_a_command(argv: list[str]) -> bool:
    """--help (usage; no argument at all: usage, exit 2), shell completion, --version: True once answered."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if argv else USAGE_EXIT)
    if argv[0] in COMPLETION_FLAGS:
        _completion(argv)
        return True
    if argv[0] == "--version":
        from mtlrun import __version__

        print(f"mtlrun {__version__}")
        return True
    return False


def _known_command(argv: list[str]) -> tuple[str, list[str]]:
    """The subcommand and its arguments; exit 2 for an unknown one."""
    command, overrides = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"error: unknown command {command!r}; valid: {', '.join(SUBCOMMANDS)} (see mtlrun --help)",
              file=sys.stderr)
        raise SystemExit(USAGE_EXIT)
    return command, overrides


def _command_function(command: str):
    module_name, fn_name = SUBCOMMANDS[command][0].split(":")
    return getattr(importlib.import_module(module_name), fn_name)


def _check_sweeper(overrides: list[str]) -> None:
    """An Optuna search (hparams_search=...) needs the optional extra: exit 2, saying so, without it."""
    from mtlrun import sweep

    if not sweep.sweeper_installed(overrides):
        raise SystemExit(USAGE_EXIT)


def _ddp_sweep(overrides: list[str]) -> bool:
    """`-m` under torchrun/srun: every rank runs the same sweep, each job one DDP job (mtlrun/sweep.py)."""
    from mtlrun import distributed, sweep

    return distributed.dist_info().enabled and sweep.asks_multirun(overrides)


def _rank_overrides(overrides: list[str]) -> list[str]:
    """Only rank 0 writes into the run dir: the other ranks run without Hydra's output files and logs."""
    from mtlrun import distributed

    if distributed.dist_info().rank > 0:
        return [*overrides, "hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return overrides


def _check_launcher(command: str, overrides: list[str], ddp_sweep: bool) -> None:
    """Exit 2, saying why, when the launcher is not installed or, in a sweep under torchrun/srun, would not keep
    the ranks in step."""
    from mtlrun import sweep

    if not sweep.launcher_installed(overrides) or (ddp_sweep and not sweep.launcher_keeps_ranks_in_step(command, overrides)):
        _exit(USAGE_EXIT)


def _run_hydra(command: str, overrides: list[str], ddp_sweep: bool) -> tuple[object, bool]:
    """Hydra runs the job (each of a -m sweep), guarded, in its locked run dir: its exit code, and if it exited."""
    import hydra

    from mtlrun import distributed, sweep
    from mtlrun.config import config_dir

    if sweep.optuna_search(overrides) and sweep.asks_multirun(overrides):
        sweep.tolerate_no_completed_trial()
    fn = _command_function(command)
    reached = False

    def task(cfg):
        nonlocal reached
        reached = True
        if not ddp_sweep and not distributed.dist_info().enabled:
            # a launcher's job process (hydra/launcher=slurm: one of srun's tasks) joins its job's group
            return _in_launched_group(lambda: _run_guarded(sweep.recorded(_locked(fn, command)), cfg))
        sweep.warn_unused_sweep()
        return _run_guarded(sweep.recorded(_locked(fn, command)), cfg)

    sys.argv = [f"mtlrun {command}", *overrides]
    try:
        hydra.main(config_path=str(config_dir()), config_name=command, version_base="1.3")(task)()
    except SystemExit as exc:
        # Hydra exits 1 on a bad override or an unknown group option, before our task runs: a usage error.
        return (USAGE_EXIT if not reached and exc.code == 1 else exc.code), True
    return 0, False


def _finish(command: str, overrides: list[str], started: datetime, code, exited: bool) -> None:
    """The sweep's summary when a job failed (its exit code then), and the command's end."""
    from mtlrun import distributed, sweep

    code = sweep.finish(code, command, overrides, started.timestamp())
    if exited or code or distributed.dist_info().enabled:
        _exit(code)


def _in_launched_group(job):
    """Run `job` in the process group SLURM's variables describe, if any (mtlrun.distributed.adopt_slurm): rank 0
    logs, the others only warn; the group is left at the end, since the launcher, not mtlrun, ends the process."""
    from mtlrun import distributed, sweep

    if not distributed.init_if_launched().enabled:
        sweep.warn_unused_sweep()
        return job()
    if not distributed.dist_info().is_main:
        logging.getLogger("mtlrun").setLevel(logging.WARNING)
    try:
        return job()
    finally:
        distributed.barrier()
        distributed.destroy()


def _exit(code) -> None:
    """End the command with `code`. Under torchrun/srun the ranks leave the process group together and exit
    without interpreter teardown: gloo's threads can abort the process at exit ("terminate called without an
    active exception") after all work is done."""
    from mtlrun import distributed

    if not distributed.dist_info().enabled:
        raise SystemExit(code) from None
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
