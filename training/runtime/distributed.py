"""Process-group set-up from torchrun's variables or Slurm's (one task per GPU), and the few collectives we need.

Collectives time out after COLLECTIVE_TIMEOUT_S (env FASTSCNN_COLLECTIVE_TIMEOUT_S overrides it): when a rank
dies the others fail within minutes instead of waiting for it as long as the allocation lasts (the jobs also run
`srun --kill-on-bad-exit=1`, which ends the whole step when one task fails).
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from training.errors import UserError

COLLECTIVE_TIMEOUT_S = 300  # half NCCL's default; also bounds the wait for the slowest rank's set-up (cache)


@dataclass(frozen=True)
class DistributedEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """The first host name of a Slurm node list ('gpu[007-009,012],cpu1' -> 'gpu007'), by `scontrol show hostnames`
    or, without scontrol (inside a container), by `first_host_of_nodelist`."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return first_host_of_nodelist(nodelist)


def first_host_of_nodelist(nodelist: str) -> str:
    """The first host of a Slurm node list, parsed: each bracket group contributes the start of its first range
    ('n[1-2]-ib' -> 'n1-ib', 'r[07-08]n[1,3]' -> 'r07n1', 'gpu[007-009,012],cpu1' -> 'gpu007')."""
    first = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip())  # up to the first comma outside brackets
    if not first:
        return nodelist
    return re.sub(r"\[([^\]]*)\]", lambda group: re.split(r"[,-]", group[1])[0], first.group(0))


def cuda_device(local_rank: int) -> torch.device:
    """This process's GPU: local rank modulo the visible GPUs (per-task GPU binding leaves each task just one)."""
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def collective_timeout() -> datetime.timedelta:
    value = os.environ.get("FASTSCNN_COLLECTIVE_TIMEOUT_S", "") or COLLECTIVE_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise UserError(f"FASTSCNN_COLLECTIVE_TIMEOUT_S={value!r}: expected a number of seconds") from None
    return datetime.timedelta(seconds=seconds)


def detect(environ: dict | None = None) -> DistributedEnv:
    """Rank, local rank and world size from torchrun (RANK, ...) or from an srun step with several tasks."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistributedEnv(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return DistributedEnv(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]))
    return DistributedEnv()


def init(device_type: str) -> DistributedEnv:
    """Join the process group when launched by torchrun or srun; NCCL on CUDA, gloo on CPU."""
    env = detect()
    if not env.enabled:
        return env
    # srun: the rendezvous from the job (the jobscripts export MASTER_ADDR from the batch shell already)
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = first_host(os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1"))
    if "SLURM_JOB_ID" in os.environ:  # one port per job: two jobs sharing a node do not collide
        os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ["SLURM_JOB_ID"]) % 10000))
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(cuda_device(env.local_rank))
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, timeout=collective_timeout())
    return env


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when `flag` is true on any (all ranks stop at the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value)
    return bool(value.item() > 0)


def any_process_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """`any_process` for several flags with a single collective."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(flags)
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
    dist.all_reduce(values)
    return [bool(v > 0) for v in values.tolist()]


_HOST_GROUP = None  # a gloo group beside NCCL, for flags that the host holds


def any_process_on_host(flag: bool) -> bool:
    """True on every process when `flag` is true on any, from an all-reduce of host memory (gloo; a gloo group of its
    own beside NCCL): no wait for the device. Every process calls it at the same points (each training step)."""
    global _HOST_GROUP
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    if dist.get_backend() != "gloo" and _HOST_GROUP is None:
        _HOST_GROUP = dist.new_group(backend="gloo")
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, group=_HOST_GROUP)
    return bool(value.item())


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy the buffers (BatchNorm statistics) of process `src` to every process."""
    if dist.is_available() and dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    global _HOST_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _HOST_GROUP = None


def pick_device(choice: str) -> torch.device:
    """--device auto|cuda|cpu as a torch.device; cuda without CUDA is a UserError."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine (expected --device cpu or auto)")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def device_name(device: torch.device) -> str:
    """The GPU's or the CPU's model name, for measurement rows."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
