"""Inference latency of every form of a model, side by side in one run: plain, the deploy forms, compiled, ONNX Runtime.

    python benchmarks/inference.py                              # CPU (and CUDA where present), a random-weight model
    python benchmarks/inference.py --model-path models/fastscnn-training-experiment-05.pth --threads 4
    python benchmarks/inference.py --quick                      # a smoke run at a small size (what the tests run)

CPU forms: `plain` (the model as trained: eval, fp32, NCHW); the deploy forms of training/efficiency/deploy.py:
`fp32 folded` (BatchNorm folded, channels_last: the deploy form before efficiency/forms.py), `fp32` (+ convolutions
fused with their ReLU/add in oneDNN, bilinear upsampling by phases), `bf16`, `mixed-bf16`, `fp16`, `mixed-fp16`
(reduced precision in all of the network / in its context branch only; where the CPU has it natively: AVX512-BF16
or AMX, AVX512-FP16); `fp32 compiled`, `bf16 compiled`, `fp16 compiled` (torch.compile, inductor with frozen
weights, reduced precision under autocast; --quick: fp32 only); and `onnxruntime fp32`, the project's own ONNX export
(deploy.export_onnx) under ONNX Runtime's CPU provider. With CUDA: plain, `fp16` (the CUDA deploy form), `fp16 CUDA
graphs` (compiled and replayed as a CUDA graph), and ONNX Runtime's CUDA provider where the installed build has it,
with FPS at 1024x2048 batch 1 beside the published figures.

For every size and batch the input is painted demo street scenes (demo/scene.py), normalised as in training. Each
form's argmax agreement with the plain model is measured on them first (a form below 99.9% is marked REJECTED and
never counts as the best), then every form is timed in turn, run by run (measure_latency): medians and p10/p90.
The header states threads, allocator and load average; the process restarts itself once with glibc malloc tuned
(training/efficiency/allocator.py) unless --malloc system or the environment already chose an allocator.

The last line: `speed-up over ONNX Runtime fp32: fp32 X.XXx, best Y.YYx (FORM)`, ONNX Runtime's median latency over
the form's, at the first size and batch 1 (1024x2048 unless --sizes or --quick say otherwise): `fp32` the fastest
fp32 deploy form (eager or compiled), `best` the fastest form of all, both among those that agree.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from training.efficiency.allocator import describe_allocator, tune_malloc  # noqa: E402 (imports no torch)

QUICK_SIZE = (128, 256)
# published FPS of Fast-SCNN at 1024x2048, batch 1: the paper (Poudel et al., 2019) and mmsegmentation's model zoo
PUBLISHED_FPS = (("paper, Titan Xp", 123.5), ("mmsegmentation, V100", 56.0))
AGREEMENT_THRESHOLD = 0.999  # as efficiency/measure.py's check of the deploy forms


def add_model_arguments(add) -> None:
    """The model a benchmark measures (load_model reads them): also benchmarks/precision.py's."""
    add("--model-path", default="none", help="a trained model's .pth state_dict, or 'none' (random weights)")
    add("--arch", default="fast_scnn", help="architecture of --model-path (training/models/build.py)")
    add("--num-classes", type=int, default=19, help="classes of the model")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add_model_arguments(add)
    add("--sizes", default="1024x2048,512x1024", help="comma-separated HxW input sizes; the first one is the headline")
    add("--batches", default="1,8", help="comma-separated batch sizes")
    add("--threads", type=int, default=0, help="CPU threads for torch and ONNX Runtime (0 = the cores available)")
    add("--runs", type=int, default=10, help="timed runs per form and setting")
    add("--warmup", type=int, default=2, help="untimed runs per form and setting")
    add("--agreement-images", type=int, default=4, help="painted scenes per size for the agreement check (at least)")
    add("--no-compile", action="store_true", help="leave out the compiled forms (torch.compile needs a C++ compiler)")
    add("--no-onnx", action="store_true", help="leave out ONNX Runtime (then there is no speed-up line)")
    add("--cuda", choices=("auto", "skip"), default="auto", help="auto: also measure the CUDA forms where CUDA is")
    add("--malloc", choices=("tuned", "system"), default="tuned", help="restart with glibc malloc tuned, or not")
    add(
        "--omp-wait-policy",
        choices=("passive", "active", "default"),
        default="passive",
        help="OpenMP threads of torch at a barrier: sleep (passive), spin, or the runtime's default (an "
        "OMP_WAIT_POLICY in the environment wins)",
    )
    add(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK_SIZE[0]}x{QUICK_SIZE[1]}, batch 1 and 2, 2 runs, fp32 the only compiled form",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batches = f"{QUICK_SIZE[0]}x{QUICK_SIZE[1]}", "1,2"
        args.runs, args.warmup, args.agreement_images = 2, 1, 2
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    tune_malloc(argv)
    if args.omp_wait_policy != "default" and "OMP_WAIT_POLICY" not in os.environ:
        # read by the OpenMP runtime when torch loads it (below); spinning threads take the cores that the other
        # thread, and the other runtime timed alongside, need (see docs/efficiency.md)
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    from training.errors import run_cli

    run_cli(lambda _: run(args), argv)


# ------------------------------------------------------------------------------------------- everything else
# (imported after the restart: torch is loaded once, by the process that measures)


@dataclass
class Form:
    """One way to run the model: `call(prepare(images))` gives logits."""

    name: str
    precision: str
    call: object
    prepare: object
    what: str


@dataclass
class Row:
    """One form's result in one setting (names only: the form itself, and its memory, can go)."""

    name: str
    precision: str
    agreement: float
    latency: object  # measure.Latency

    @property
    def agrees(self) -> bool:
        return self.agreement >= AGREEMENT_THRESHOLD


def run(args: argparse.Namespace) -> None:
    import torch

    from training.efficiency.measure import parse_resolution
    from training.errors import UserError

    sizes = [parse_resolution(text.strip(), "--sizes") for text in args.sizes.split(",") if text.strip()]
    try:
        batches = [int(text) for text in args.batches.split(",") if text.strip()]
    except ValueError:
        batches = []
    if not sizes or not batches or min(batches) < 1:
        raise UserError(f"--batches {args.batches!r}: expected comma-separated positive integers, e.g. 1,8")
    if args.runs < 1:
        raise UserError(f"--runs {args.runs}: expected a positive number of timed runs")
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    model = load_model(args)
    print_header(args, threads)
    with tempfile.TemporaryDirectory(prefix="inference-benchmark-") as tmp:
        cpu_rows = measure_device(model, torch.device("cpu"), sizes, batches, args, threads, Path(tmp))
        if args.cuda == "auto":
            measure_cuda(model, sizes, batches, args, Path(tmp))
    print(f"load average at the end: {load_average()}")
    headline = cpu_rows.get((sizes[0], 1))
    if headline is None or args.no_onnx:
        print("no speed-up over ONNX Runtime: it was not measured (batch 1 at the first size, with ONNX Runtime)")
        return
    print(speed_up_line(headline))


def load_model(args: argparse.Namespace):
    import torch

    from training.models.build import build_model, load_weights

    torch.manual_seed(0)  # random weights (--model-path none): the same model in every run
    model = build_model(args.arch, args.num_classes)
    if args.model_path != "none":
        load_weights(model, args.model_path, args.arch, "--model-path")
    return model.eval()


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


def print_header(args: argparse.Namespace, threads: int) -> None:
    import torch

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    omp = f"OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', 'unset')}"
    omp += f", OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    print(f"inference benchmark: {args.arch}, weights {args.model_path}, {cpu_name()}")
    print(
        f"torch {torch.__version__} (intra-op threads {torch.get_num_threads()}, inter-op "
        f"{torch.get_num_interop_threads()}, {omp}), ONNX Runtime {ort_version} "
        f"(intra-op threads {threads}, inter-op 1; timed with its threads spinning between calls, its default, and "
        "not: the faster is the baseline)"
    )
    preload = f", LD_PRELOAD={os.environ['LD_PRELOAD']}" if os.environ.get("LD_PRELOAD") else ""
    print(f"allocator: {describe_allocator()}{preload}; load average at the start: {load_average()}")
    if args.model_path == "none":
        print(
            "random weights: their logit margins are ~1e-5, so the agreement check says little (the mixed forms "
            "agree fully here and not on a trained model; benchmarks/precision.py): give --model-path for a verdict"
        )


# ------------------------------------------------------------------------------------------------------ inputs


def painted_scenes(hw: tuple[int, int], count: int, seed: int = 0):
    """`count` demo street scenes painted at `hw`, normalised as in training: (count, 3, H, W) float32."""
    import numpy as np
    import torch

    from demo.scene import draw_scene
    from training.data.photometric import MEAN, STD

    images = [draw_scene(np.random.default_rng([seed, index]), hw[1], hw[0])[0] for index in range(count)]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
    return (batch - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


# ------------------------------------------------------------------------------------------------------- forms


def cpu_form_specs(args) -> list[tuple[str, object, str, bool, bool]]:
    """(name, dtype, scope, compile, rewrite) of the CPU deploy forms: reduced precision where the CPU has it."""
    import torch

    from training.efficiency.deploy import native_bf16_cpu
    from training.efficiency.forms import onednn_dtypes

    native = onednn_dtypes()
    reduced = []
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        if dtype in native or (dtype == torch.bfloat16 and native_bf16_cpu()):
            reduced += [(name, dtype, "all"), (f"mixed-{name}", dtype, "context")]
        else:
            print(f"{name} forms left out: this CPU has no native {name} (emulated, it would be slower than fp32)")
    specs = [("fp32 folded", torch.float32, "all", False, False), ("fp32", torch.float32, "all", False, True)]
    specs += [(name, dtype, scope, False, True) for name, dtype, scope in reduced]
    if not args.no_compile:  # each compiles once per size and batch: fp32 and the reduced ones in all of the network
        compiled = [("fp32", torch.float32, "all")] + ([] if args.quick else [r for r in reduced if r[2] == "all"])
        specs += [(f"{name} compiled", dtype, scope, True, True) for name, dtype, scope in compiled]
    return specs


def deploy_forms(model, device, args) -> list[Form]:
    """The deploy forms of efficiency/deploy.py for `device` (compiled ones compile at their first call)."""
    import torch

    from training.efficiency.deploy import DeployForm

    if device.type == "cuda":
        specs = [("fp16", torch.float16, "all", False, True)]
        specs += [] if args.no_compile else [("fp16 CUDA graphs", torch.float16, "all", True, True)]
    else:
        specs = cpu_form_specs(args)
    forms = []
    for name, dtype, scope, compile, rewrite in specs:
        deploy = DeployForm(model, device, dtype, compile=compile, scope=scope, rewrite=rewrite)
        forms.append(Form(name, deploy.precision, deploy, deploy.prepare, deploy.describe()))
    return forms


def onnx_forms(model, device, hw, batch, threads, tmp: Path) -> list[Form]:
    """ONNX Runtime on the project's ONNX export at this size and batch (static shapes): on the CPU with its threads
    spinning between calls (its default) and without; none where it cannot run."""
    from training.efficiency.deploy import OnnxRuntimeForm, export_onnx
    from training.errors import UserError

    path = tmp / f"model-{hw[0]}x{hw[1]}-b{batch}.onnx"
    provider = "cuda" if device.type == "cuda" else "cpu"
    variants = [("", True)] + ([(" no-spin", False)] if provider == "cpu" else [])
    try:
        if not path.exists():
            export_onnx(model, hw, path, flag="onnxruntime", batch=batch)
        runtimes = [(name, OnnxRuntimeForm(path, threads, provider, spin)) for name, spin in variants]
    except UserError as error:
        print(f"onnxruntime left out at {hw[0]}x{hw[1]} batch {batch}: {error}")
        return []
    what = f"ONNX Runtime, {provider} provider"
    return [
        Form(f"onnxruntime {provider}{name}", "fp32", runtime, lambda x: x, what + (", no spinning" if name else ""))
        for name, runtime in runtimes
    ]


# ----------------------------------------------------------------------------------------------- measurement


def agreement(plain, form: Form, images, batch: int) -> float:
    import torch

    same = total = 0
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = images[start : start + batch]
            if len(x) < batch:
                break
            reference = plain(x).argmax(1)
            predicted = form.call(form.prepare(x)).float().argmax(1).to(reference.device)
            same += int((predicted == reference).sum())
            total += reference.numel()
    return same / max(total, 1)


def measure_setting(plain, forms: list[Form], images, batch: int, device, args) -> list[Row]:
    """Agreement of each form on `images`, then the latency of all forms, interleaved, on the first batch."""
    from training.efficiency.latency import measure_latency

    agreements = {}
    for form in forms:
        start = time.perf_counter()
        agreements[form.name] = agreement(plain, form, images, batch)
        if "compiled" in form.name or "graphs" in form.name:
            print(f"  {form.name}: compiled and checked in {time.perf_counter() - start:.1f} s")
    x = images[:batch]
    timed = {"plain": (plain, x)} | {form.name: (form.call, form.prepare(x)) for form in forms}
    latency = measure_latency(timed, device, runs=args.runs, min_seconds=0.0, warmup=args.warmup)
    return [Row("plain", "fp32", 1.0, latency["plain"])] + [
        Row(form.name, form.precision, agreements[form.name], latency[form.name]) for form in forms
    ]


def memory_bytes() -> tuple[int, int, int] | None:
    """(this process's peak RSS, its RSS now, the machine's MemAvailable) in bytes; None off Linux."""
    import resource

    try:
        with open("/proc/meminfo", encoding="utf-8") as info:
            available = next(int(line.split()[1]) * 1024 for line in info if line.startswith("MemAvailable:"))
        with open("/proc/self/statm", encoding="utf-8") as statm:
            now = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, StopIteration, ValueError):
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, now, available


class MemoryGuard:
    """Leaves out a CPU setting that would not fit in the memory the machine has free (a shared machine: the kernel
    would kill the whole run), by the first setting's growth per pixel of input, scaled to the setting."""

    def __init__(self):
        self.per_pixel = None
        self.start = memory_bytes()

    def learn(self, hw, batch: int) -> None:
        now = memory_bytes()
        if self.per_pixel is None and self.start is not None and now is not None:
            self.per_pixel = max(now[0] - self.start[1], 0) / (hw[0] * hw[1] * batch)

    def refuses(self, hw, batch: int) -> str:
        now = memory_bytes()
        if self.per_pixel is None or now is None:
            return ""
        need = self.per_pixel * hw[0] * hw[1] * batch
        if need <= 0.9 * now[2]:
            return ""
        return (
            f"left out: it would need about {need / 2**30:.1f} GiB more (the first setting's growth per pixel), "
            f"the machine has {now[2] / 2**30:.1f} GiB available"
        )


def measure_device(model, device, sizes, batches, args, threads: int, tmp: Path) -> dict:
    """Every setting (size x batch) on `device`: a table each. Returns {(hw, batch): [Row, ...]}."""
    model = model.to(device)
    forms = deploy_forms(model, device, args)
    results = {}
    guard = MemoryGuard() if device.type == "cpu" else None
    for hw in sizes:
        scenes = painted_scenes(hw, max(args.agreement_images, max(batches))).to(device)
        for batch in batches:
            print(f"\n{device.type.upper()} {hw[0]}x{hw[1]}, batch {batch}:")
            if guard and (why := guard.refuses(hw, batch)):
                print(f"  {why}")
                continue
            setting = forms + ([] if args.no_onnx else onnx_forms(model, device, hw, batch, threads, tmp))
            rows = measure_setting(model, setting, scenes, batch, device, args)
            print_table(rows)
            if guard:
                guard.learn(hw, batch)
            results[(hw, batch)] = rows
            del setting  # ONNX Runtime's sessions hold their arenas (GBs at batch 8): gone before the next ones
            gc.collect()
    print("\nforms:")
    for form in forms:
        print(f"  {form.name}: {form.what}")
    return results


def measure_cuda(model, sizes, batches, args, tmp: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        print(
            "\nCUDA: not available here (torch.cuda.is_available() is False): the fp16 deploy form, its CUDA graph "
            "and ONNX Runtime's CUDA provider were not measured"
        )
        return
    device = torch.device("cuda")
    print(f"\nCUDA: {torch.cuda.get_device_name(device)}")
    results = measure_device(model, device, sizes, batches, args, torch.get_num_threads(), tmp)
    rows = results.get(((1024, 2048), 1))
    if rows:
        published = ", ".join(f"{name} {fps:.1f}" for name, fps in PUBLISHED_FPS)
        for row in rows:
            print(f"  FPS at 1024x2048, batch 1: {row.name} {1000 / row.latency.median_ms:.1f} ({published})")
    model.cpu()


# ------------------------------------------------------------------------------------------------------ report


def onnx_baseline(rows: list[Row]) -> Row | None:
    """The faster ONNX Runtime row (threads spinning or not): the baseline every speed-up is counted against."""
    runtimes = [row for row in rows if row.name.startswith("onnxruntime")]
    return min(runtimes, key=lambda row: row.latency.median_ms, default=None)


def print_table(rows: list[Row]) -> None:
    plain = rows[0].latency.median_ms
    runtime = onnx_baseline(rows)
    header = f"  {'form':24} {'precision':10} {'median ms':>10} {'p10':>8} {'p90':>8} {'x plain':>8}"
    print(header + (f" {'x ORT':>7}" if runtime else "") + f" {'agreement':>10}")
    for row in rows:
        latency = row.latency
        line = (
            f"  {row.name:24} {row.precision:10} {latency.median_ms:10.1f} {latency.percentile_ms(10):8.1f}"
            f" {latency.percentile_ms(90):8.1f} {plain / latency.median_ms:8.2f}"
        )
        if runtime:
            line += f" {runtime.latency.median_ms / latency.median_ms:7.2f}"
        verdict = f"{100 * row.agreement:.3f}%" + ("" if row.agrees else " REJECTED")
        print(line + f" {verdict:>10}")


def speed_up_line(rows: list[Row]) -> str:
    runtime = onnx_baseline(rows)
    if runtime is None:
        return "no speed-up over ONNX Runtime: it did not run (see above)"
    candidates = [row for row in rows if row.agrees and row.name != "plain"]
    candidates = [row for row in candidates if not row.name.startswith("onnxruntime")]
    fp32 = [row for row in candidates if row.precision == "fp32"]
    ratio = lambda row: runtime.latency.median_ms / row.latency.median_ms  # noqa: E731
    best = max(candidates, key=ratio, default=None)
    fastest_fp32 = max(fp32, key=ratio, default=None)
    fp32_text = f"{ratio(fastest_fp32):.2f}x" if fastest_fp32 else "n/a"
    best_text = f"{ratio(best):.2f}x ({best.name})" if best else "n/a"
    return f"speed-up over ONNX Runtime fp32: fp32 {fp32_text}, best {best_text}"


if __name__ == "__main__":
    main(sys.argv[1:])
