"""Weights & Biases logging that never blocks or stops a training job.

`WANDB_MODE` is respected (online, offline, disabled). Without it, the run goes online only when an API key is at
hand (WANDB_API_KEY, e.g. from the user's .env, or a `wandb login` in ~/.netrc); otherwise it logs offline into
wandb/ and says how to upload later. Any W&B failure (start-up time-out, network, service crash) is reported once and
logging is switched off: training goes on.
"""

from __future__ import annotations

import netrc
import os
import sys

PROJECT = "5lsm0-cityscapes-segmentation"  # the original project's W&B project


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class Tracker:
    """A thin guard around one wandb run; a no-op on non-main processes or once W&B has failed."""

    def __init__(
        self, name: str, config: dict, enabled: bool = True, project: str = PROJECT, resume_id: str | None = None
    ):
        self.run = None
        if not enabled:
            return
        mode = os.environ.get("WANDB_MODE", "").strip().lower()
        if mode == "disabled":
            return
        if not mode:
            mode = "online" if _has_api_key() else "offline"
            if mode == "offline":
                print(
                    "W&B: no API key (WANDB_API_KEY or ~/.netrc): logging offline to wandb/; upload later with "
                    "`wandb sync wandb/offline-run-*`",
                    flush=True,
                )
        try:
            import wandb

            self._wandb = wandb
            self.run = wandb.init(
                project=project,
                name=name,
                id=resume_id or None,
                resume="allow" if resume_id else None,
                config=config,
                mode=mode,
                settings=wandb.Settings(init_timeout=60, silent=True),
            )
        except Exception as error:  # never let logging stop training
            self._fail(error)

    @property
    def run_id(self) -> str | None:
        return getattr(self.run, "id", None)

    def _fail(self, error: BaseException) -> None:
        print(
            f"W&B: disabled for this stage after an error ({type(error).__name__}: {error}); training continues",
            file=sys.stderr,
            flush=True,
        )
        self.run = None

    def log(self, values: dict, step: int | None = None) -> None:
        if self.run is None:
            return
        try:
            self.run.log(values, step=step)
        except Exception as error:
            self._fail(error)

    def summary(self, values: dict) -> None:
        """Set the run's summary values (what W&B shows for the run as a whole)."""
        if self.run is None:
            return
        try:
            self.run.summary.update(values)
        except Exception as error:
            self._fail(error)

    def image(self, array, caption: str = ""):
        """A wandb.Image for `log`, or None when W&B is off."""
        if self.run is None:
            return None
        try:
            return self._wandb.Image(array, caption=caption)
        except Exception as error:
            self._fail(error)
            return None

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as error:
            self._fail(error)
