"""Training steps without host syncs: loss sums, non-finite losses and the update skip kept on the device.

Reading a device value on the host (`.item()`, `float()`, `bool()`, `.tolist()`) makes the CPU wait until the
GPU has run everything queued so far; done every step, the GPU then idles while the CPU queues the next one.
Here a step only queues work: the loss parts are summed on the device (float64, the same additions the host made
before), a non-finite loss or gradient masks the optimizer's update on the device (`skip_nonfinite_update`), and
the first non-finite step of the epoch is remembered on the device. The host reads all of it in one transfer every
`CHECK_EVERY` steps, at the end of an epoch and before any state is saved (`StepMonitor.check`); under DDP that
read is also the one collective that tells every process whether any had a non-finite step or was asked to stop.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

CHECK_EVERY = 10  # steps between host reads: Slurm's warning comes 300 s before the limit, a step takes < 10 s
_NONE = 2**62  # "no non-finite step yet"


class StepMonitor:
    """Device-side bookkeeping of one epoch's steps, started from the host sums saved so far (a resumed epoch)."""

    def __init__(self, device: torch.device, sums: dict[str, float]):
        self.device = device
        self.sums = {
            name: torch.tensor(float(value), dtype=torch.float64, device=device) for name, value in sums.items()
        }
        for name in ("steps", "skipped_steps"):
            self.sums.setdefault(name, torch.zeros((), dtype=torch.float64, device=device))
        self.first_bad = torch.full((), _NONE, dtype=torch.int64, device=device)  # 1-based step in the epoch
        self.first_bad_loss = torch.zeros((), dtype=torch.float32, device=device)
        self.last_loss = torch.zeros((), dtype=torch.float32, device=device)

    def record(self, step: int, loss: torch.Tensor, parts: dict[str, torch.Tensor], finite: torch.Tensor) -> None:
        """Step `step` (1-based in the epoch) had `loss` and `parts`; `finite` (device bool) says it was applied."""
        loss = loss.detach().float()
        bad = ~finite
        new_bad = bad & (self.first_bad == _NONE)
        self.first_bad = torch.where(new_bad, step, self.first_bad)
        self.first_bad_loss = torch.where(new_bad, loss, self.first_bad_loss)
        self.last_loss = loss
        for name, value in parts.items():
            total = self.sums.get(name)
            value = torch.where(finite, value.detach().double(), 0.0)
            self.sums[name] = value if total is None else total + value
        self.sums["steps"] = self.sums["steps"] + finite.double()
        self.sums["skipped_steps"] = self.sums["skipped_steps"] + bad.double()

    def check(self, stop_requested: bool, distributed: bool) -> tuple[int | None, float, bool, float]:
        """One host read: (first non-finite step of the epoch on any process or None, its loss on this process
        (nan where another process had it), whether any process was asked to stop, the last loss)."""
        flags = torch.stack(
            [
                self.first_bad.double(),
                torch.tensor(-1.0 if stop_requested else 0.0, dtype=torch.float64, device=self.device),
            ]
        )
        if distributed and dist.is_available() and dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)  # earliest bad step; -1 where any process stops
        local = torch.stack([self.first_bad.double(), self.first_bad_loss.double(), self.last_loss.double()])
        first_bad, stop, own_bad, bad_loss, last_loss = torch.cat([flags, local]).tolist()
        first_bad = None if first_bad >= _NONE else int(first_bad)
        return first_bad, (bad_loss if own_bad == first_bad else float("nan")), stop < 0, last_loss

    def epoch_sums(self) -> dict[str, float]:
        """The sums as host floats (one transfer), for the saved state and the epoch's means."""
        names = list(self.sums)
        values = torch.stack([self.sums[name] for name in names]).tolist()
        return dict(zip(names, values))


def nonfinite_gradients(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """A device flag (float32 0-d, 1.0 = some gradient is inf/nan), checked on the device as GradScaler does. Under
    DDP the gradients are already averaged, so every process gets the same flag."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    device = grads[0].device if grads else torch.device("cpu")
    found = torch.zeros((), dtype=torch.float32, device=device)
    by_dtype: dict = {}
    for grad in grads:
        by_dtype.setdefault(grad.dtype, []).append(grad)
    one = torch.ones((), dtype=torch.float32, device=device)
    for group in by_dtype.values():
        torch._amp_foreach_non_finite_check_and_unscale_(group, found, one)  # multiplies by 1: values unchanged
    return found


def supports_device_skip(optimizer: torch.optim.Optimizer) -> bool:
    """Fused optimizers take a `found_inf` flag and leave parameters and state untouched where it is set."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        group.get("fused") for group in optimizer.param_groups
    )


def skip_nonfinite_update(optimizer: torch.optim.Optimizer, scaler, loss_finite: torch.Tensor) -> torch.Tensor:
    """Apply the optimizer's update unless the loss or a gradient is non-finite; returns the device flag 'good step'.

    With a fused optimizer (AdamW/SGD with fused=True) the decision stays on the device (the optimizer's own
    found_inf mechanism, which also keeps its step count); other optimizers need one host read here. With an fp16
    GradScaler the scaler's inf check skips the update (a non-finite loss gives non-finite gradients); its overflows
    are routine and lower the scale, so only a non-finite loss counts as a bad step there.
    """
    if scaler is not None and scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
        return loss_finite
    found = torch.maximum(nonfinite_gradients(optimizer), (~loss_finite).float())
    if supports_device_skip(optimizer):
        optimizer.found_inf = found
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(found):
        optimizer.step()
    return found == 0
