"""One curriculum stage, shared by every train*.py: `stage_main` (what a script's main does) and `run_stage`.

A script supplies its parsed arguments, its resolution profile table and `make_loss(args, device) -> nn.Module`,
whose forward is `(logits, images, target) -> (total, {name: value})` (a distillation loss is a
`training.losses.DistillationLoss`, which owns its frozen teacher); everything else happens once, here:

  build.py     the stage from its arguments: runtime, data, model and starting weights, loss, optimizer, the state
               it resumes from (every input checked before anything is written)
  loop.py      the epoch loop: train, validate, record; a stop signal saves and exits 75, a NaN loss exits 3
  state.py     checkpoints/<id>/state.pth: what it holds, the checks of a resume, save and restore
  records.py   what an epoch and a finished stage write (best model, model card, state, history, log, W&B,
               measurements/durations.csv), in one order
  signals.py   SIGTERM/SIGUSR1: save after this step and stop

Exit codes (training/errors.py, through `run_cli`): 0 done (or already complete), 2 bad input, 3 a non-finite
loss, 75 stopped by a signal with the state saved (run the same command to resume).
"""

from __future__ import annotations

from training.engine.build import build_stage
from training.engine.cli import get_args_parser
from training.engine.loop import train
from training.errors import UserError
from training.runtime.signals import StopRequest

__all__ = ["run_stage", "stage_main", "StopRequest"]


def run_stage(args, profiles: dict, make_loss, script: str) -> dict:
    """Train one curriculum stage as configured by `args`; returns the final summary."""
    stop = StopRequest()  # from the start: a warning signal during set-up stops the stage at its first step
    stage = None
    try:
        stage = build_stage(args, profiles, make_loss, script)
        return train(stage, stop)
    except UserError:
        # bad input found while training (a corrupt image, a NaN before the first epoch ended): leave nothing behind
        if stage is not None and stage.main and stage.provisional_state:
            stage.paths.state.unlink(missing_ok=True)
        raise
    finally:
        stop.restore()
        if stage is not None:
            stage.close_loaders()


def stage_main(argv, doc: str, profiles: dict, default_profile: str, make_loss, *add_args, script: str) -> dict:
    """What every train*.py's main does: the shared flags plus the script's own (`add_args`), then one stage."""
    parser = get_args_parser(doc.strip().splitlines()[0], default_profile)
    for add in add_args:
        add(parser)
    args = parser.parse_args(argv)
    return run_stage(args, profiles, make_loss, script=script)
