"""What a GPU gives this project, in one command: training img/s and inference FPS, side by side.

    python benchmarks/gpu.py                          # on a GPU machine: the first thing to run (< 5 min)
    python benchmarks/gpu.py --data-dir data/cityscapes
    python benchmarks/gpu.py --device cpu --quick     # a smoke run (what the test suite runs)

Training, for profiles 1, 3 and 5 and each of fp32 / --amp / --amp --channels-last / + --compile: img/s of the
full step (the training loader with --num-workers workers, uint8 batches, colour jitter and normalisation on the
device, forward, backward, optimizer) and of the same step on one batch already on the device (the GPU's ceiling:
where the full step is lower, the loader is the limit), with the peak GPU memory of the step. The step is the
stage's own (`training.engine.loop.train_step`), built from the scripts' command line, in a temporary directory.
Inference at 1024x2048, batch 1: FPS of the plain model (eval, fp32), the deploy form (BatchNorm folded,
channels_last, fp16 on CUDA: `training.efficiency.deploy.DeployForm`) and the deploy form replayed as a CUDA graph,
with their peak memory.

Without --data-dir a demo data set at 2048x1024 is generated in a temporary directory first (--quick: 256x128 and
scaled-down profiles). The per-profile caches are built before any timing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from input_pipeline import Repeated  # noqa: E402

import train  # noqa: E402
from training.data.dataset import EpochSampler, make_loader  # noqa: E402
from training.data.layouts import DATASETS  # noqa: E402
from training.engine.cli import add_previous_model_args, get_args_parser  # noqa: E402
from training.engine.loop import train_step  # noqa: E402
from training.engine.step_monitor import StepMonitor  # noqa: E402
from training.errors import UserError, run_cli  # noqa: E402

# --quick: the profiles scaled down to 256x128 demo images (names and numbers as in the scripts)
QUICK_PROFILES = {
    "low": ((128, 64), (96, 64)),
    "medium": ((160, 80), (128, 64)),
    "high": ((192, 96), (128, 64)),
    "higher": ((224, 112), (160, 96)),
    "highest": ((256, 128), (192, 96)),
}
VARIANTS = {
    "fp32": [],
    "amp": ["--amp"],
    "amp+cl": ["--amp", "--channels-last"],
    "amp+cl+compile": ["--amp", "--channels-last", "--compile"],
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "n/a"


def build_stage(data_dir: Path, profile: str, variant: list[str], opts):
    from training.engine.build import build_stage

    argv = [
        "--dataset",
        opts.dataset,
        "--data-dir",
        str(data_dir),
        "--profile",
        profile,
        "--batch-size",
        str(opts.batch_size),
        "--num-workers",
        str(opts.num_workers),
        "--device",
        opts.device,
        "--experiment-id",
        "gpu-benchmark",
        "--restart",
        "--previews",
        "0",
        *variant,
    ]
    parser = get_args_parser("benchmark", "low")
    add_previous_model_args(parser)  # train.py's flags: random initial weights
    args = parser.parse_args(argv)
    return build_stage(args, opts.profiles, train.make_loss, script="benchmarks/gpu.py")


def time_steps(stage, batches, steps: int, warmup: int) -> tuple[float, float]:
    """img/s over `steps` steps after `warmup` (the first of which compiles, with --compile) and the warm-up's
    seconds; `batches` yields (images, target, params)."""
    monitor = StepMonitor(stage.device, {})
    iterator = iter(batches)
    start = time.perf_counter()
    for _ in range(warmup):
        train_step(stage, *next(iterator), monitor)
    synchronize(stage.device)
    warm = time.perf_counter() - start
    images = 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(iterator)
        train_step(stage, *batch, monitor)
        images += batch[0].shape[0]
    synchronize(stage.device)
    monitor.check(False, False)  # a non-finite step would make the figure meaningless: read it once at the end
    return images / (time.perf_counter() - start), warm


def training_rows(data_dir: Path, opts) -> list[tuple]:
    rows = []
    for profile in opts.profile_list:
        for name, variant in VARIANTS.items():
            if "--compile" in variant and opts.quick:
                rows.append((profile, name, "skipped (--quick)", "", "", ""))
                continue
            stage = build_stage(data_dir, profile, variant, opts)
            try:
                steps, warmup = opts.steps, opts.warmup
                size = (steps + warmup) * opts.batch_size
                sampler = EpochSampler(size, 0, True)
                sampler.set_epoch(0)
                loader = make_loader(
                    Repeated(stage.train_set, size),
                    sampler,
                    opts.batch_size,
                    opts.num_workers,
                    stage.device,
                    drop_last=True,
                )
                stage.trained.train()
                reset_peak(stage.device)
                full, warm = time_steps(stage, loader, steps, warmup)
                del loader
                images, target, params = next(iter(stage.train_loader))
                on_device = (images.to(stage.device), target.to(stage.device), params)
                synthetic, _ = time_steps(stage, _repeat(on_device), steps, warmup)
                rows.append((profile, name, f"{full:.1f}", f"{synthetic:.1f}", peak_mib(stage.device), f"{warm:.1f}"))
            finally:
                stage.close_loaders()
                del stage
            print(f"  measured profile {profile} {name}", flush=True)
    return rows


def _repeat(batch):
    while True:
        yield batch


def inference_rows(opts) -> list[tuple]:
    import fast_scnn
    from training.efficiency.deploy import DeployForm, choose_deploy_dtype
    from training.efficiency.latency import measure_latency

    device = torch.device(opts.device)
    height, width = opts.resolution
    model = fast_scnn.Model().to(device).eval()
    x = torch.randn(1, 3, height, width, device=device)
    dtype, _, why = choose_deploy_dtype(device)
    deploy = DeployForm(model, device, dtype)
    deploy_x = deploy.prepare(x)
    forms = {"plain (eval, fp32)": (lambda inp: model(inp), x), f"deploy ({why})": (deploy, deploy_x)}
    if device.type == "cuda":
        forms["deploy + CUDA graph"] = (cuda_graph(deploy, deploy_x), deploy_x)
    rows = []
    runs, seconds = (3, 0.0) if opts.quick else (50, 3.0)
    for name, form in forms.items():
        reset_peak(device)
        with torch.inference_mode():
            latency = measure_latency({name: form}, device, runs=runs, min_seconds=seconds, warmup=2)[name]
        rows.append((name, f"{latency.median_ms:.2f}", f"{latency.fps:.1f}", peak_mib(device)))
    return rows


def cuda_graph(form, static_input: torch.Tensor):
    """`form` captured once as a CUDA graph on a fixed input buffer; calls replay it (the launch cost vanishes)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm-up outside the graph (cuDNN picks its algorithms)
            form(static_input)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        output = form(static_input)

    def replay(_x):
        graph.replay()
        return output

    return replay


def table(header: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in [header, *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny data, profiles and runs (a smoke test)")
    parser.add_argument("--data-dir", default=None, help="the data set's root (default: a generated demo set)")
    parser.add_argument(
        "--dataset", choices=DATASETS, default="cityscapes", help="its layout, as the scripts' (default cityscapes)"
    )
    parser.add_argument("--profiles", default="1,3,5", help="profiles to train at (default 1,3,5)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (--quick: 2)")
    parser.add_argument("--num-workers", type=int, default=None, help="loader workers (default 8; --quick: 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 20; --quick: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; --quick: 1)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    opts = parser.parse_args(argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine (expected --device cpu)")
    quick = opts.quick
    opts.batch_size = opts.batch_size or (2 if quick else 32)
    opts.num_workers = opts.num_workers if opts.num_workers is not None else (1 if quick else 8)
    opts.steps = opts.steps or (2 if quick else 20)
    opts.warmup = opts.warmup or (1 if quick else 5)
    for flag, value in (("--batch-size", opts.batch_size), ("--steps", opts.steps), ("--warmup", opts.warmup)):
        if value < 1:
            raise UserError(f"{flag} {value}: expected an integer >= 1")
    opts.profile_list = [p.strip() for p in opts.profiles.split(",") if p.strip()]
    opts.profiles = QUICK_PROFILES if quick else train.PROFILES
    opts.resolution = (128, 256) if quick else (1024, 2048)
    device = torch.device(opts.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"benchmarks/gpu.py: {name} | torch {torch.__version__} | batch {opts.batch_size}, {opts.num_workers} "
        f"loader workers, {opts.warmup} warm-up + {opts.steps} timed steps per row",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="gpu-benchmark-") as work, contextlib.chdir(work):
        data_dir = Path(opts.data_dir).resolve() if opts.data_dir else None
        if data_dir is None:
            from demo.dataset import make_demo_dataset

            start = time.perf_counter()
            count = max(4, opts.batch_size) if quick else 40
            data_dir = make_demo_dataset(
                Path(work) / "demo",
                num_train=count,
                num_val=2,
                size=(256, 128) if quick else (2048, 1024),
                seed=0,
                layout=opts.dataset,
            )
            print(f"data: {count} demo images generated in {time.perf_counter() - start:.0f} s", flush=True)
        os.environ.setdefault("WANDB_MODE", "disabled")
        start = time.perf_counter()
        rows = training_rows(data_dir, opts)
        print(
            f"\ntraining (img/s; full = loader included, device = one batch on the device; "
            f"{time.perf_counter() - start:.0f} s):"
        )
        print(table(("profile", "variant", "full step", "device step", "peak MiB", "warm-up s"), rows))
        print(f"\ninference {opts.resolution[0]}x{opts.resolution[1]}, batch 1:")
        print(table(("form", "median ms", "FPS", "peak MiB"), inference_rows(opts)), flush=True)


if __name__ == "__main__":
    run_cli(main)
