"""Cost and accuracy of trained Fast-SCNN models -> measurements/efficiency.csv (one row per model and resolution).

    python evaluate_efficiency.py --current-model-path models/fastscnn-training-experiment-05.pth --profile highest
    python evaluate_efficiency.py --all models/ --data-dir none --resolution 1024x2048 --compile

Reports parameters, thop MACs and FLOPs (= 2 x MACs, cross-checked with torch.utils.flop_counter), batch-1 latency of
the plain model (eval, fp32, NCHW) and of the deploy form (BatchNorm folded, channels_last, bf16 autocast on CPUs with
native bf16 / fp16 on CUDA, narrowed to the context branch or to fp32 where it would change more than 0.1% of the
predictions; --compile adds torch.compile) measured side by side, their argmax agreement, and (unless --data-dir
none) mIoU, per-class
IoU, mean Dice and pixel accuracy on `val`: the model sees the profile's image size, its fp32 logits are scored at the
labels' own resolution (the benchmark's protocol; --val-resolution profile for the older score at the profile's size),
one row per --tta mode. Sizes are measured at the profile's image size and at every --resolution. On Linux the tool
restarts itself once with glibc malloc tuned (see measurements/README.md).

    python evaluate_efficiency.py --current-model-path M --profile P --data-dir D --export-predictions DIR \
        [--split test]

writes the predictions instead, as the Cityscapes benchmark reads them: one label-id PNG per image at its own
resolution, DIR/<city>/<city>_<seq>_<frame>_leftImg8bit.png (scored too where the split has labels); --overlay adds
colour overlays, --images FOLDER predicts any folder of PNG/JPEG photos.
"""

import os
import platform
import sys

TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}
MARKER = "EVALUATE_EFFICIENCY_TUNED_MALLOC"


def tune_malloc(argv: list) -> None:
    """Restart once with large mmap/trim thresholds: glibc then keeps the big activation buffers between runs
    instead of mmap-ing and unmapping (and page-faulting) them on every call, which costs ~2x CPU latency.
    glibc reads these settings only at start-up; settings the user made, or --malloc system, are left alone."""
    choice = next((a.split("=", 1)[1] for a in argv if a.startswith("--malloc=")), None)
    choice = choice or next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--malloc"), "tuned")
    user_set = any(os.environ.get(name) for name in (*TUNED_MALLOC, "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES"))
    if choice == "tuned" and not os.environ.get(MARKER) and not user_set and platform.libc_ver()[0] == "glibc":
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **TUNED_MALLOC, MARKER: "1"})


if __name__ == "__main__":
    tune_malloc(sys.argv[1:])

import argparse  # noqa: E402  (after the restart: torch is imported once, by the final process)
import datetime  # noqa: E402
import shlex  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from training.efficiency import deploy  # noqa: E402
from training.efficiency import measure as eff  # noqa: E402
from training.engine.distributed import device_name, pick_device  # noqa: E402
from training.errors import UserError, run_cli  # noqa: E402
from training.files import append_csv_row  # noqa: E402
from training.metrics import format_iou_table  # noqa: E402
from training.models.build import ARCHITECTURES, build_model, load_weights  # noqa: E402
from training.profiles import resolve_profile  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--current-model-path", "--model-path", dest="model", help="the trained model's .pth state_dict")
    add("--all", metavar="DIR", help="evaluate every .pth in DIR (sorted by name) into one table")
    add("--data-dir", default="./data/cityscapes", help="Cityscapes root for accuracy on val, or 'none' (cost only)")
    add("--profile", default="highest", help="the model's training profile (name or 1-5): accuracy and latency size")
    add("--resolution", action="append", default=[], help="extra latency size HxW, e.g. 1024x2048 (repeatable)")
    add("--arch", default="fast_scnn", choices=ARCHITECTURES, help="architecture of the model(s)")
    add("--device", default="auto", choices=("auto", "cuda", "cpu"), help="auto = CUDA when available")
    add("--batch-size", type=int, default=4, help="validation batch size (latency is always batch 1)")
    add("--num-workers", type=int, default=4, help="data-loading worker processes")
    add("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    add(
        "--deploy-dtype",
        default="auto",
        choices=deploy.DEPLOY_CHOICES,
        help="auto: fp16 on CUDA, bf16 autocast on CPUs with native bf16, else fp32, stepping down to mixed (reduced "
        "precision in the context branch only), then fp32, while predictions change; any other value is used as is",
    )
    add(
        "--compile",
        action="store_true",
        help="torch.compile the deploy form with frozen weights (oneDNN conv + ReLU/add fusion on CPU, CUDA graphs on "
        "CUDA); needs a C++ compiler on CPU",
    )
    add("--latency-runs", type=int, default=50, help="at least this many timed runs per form")
    add("--min-seconds", type=float, default=5.0, help="... adding up to at least this many seconds per form")
    add("--warmup", type=int, default=5, help="untimed runs per form first")
    add("--agreement-images", type=int, default=4, help="val images (or random inputs) for the deploy check")
    add(
        "--export-onnx",
        metavar="PATH",
        help="write the fp32 network (BatchNorm folded) as ONNX at the first --resolution (static shape), check it "
        "with ONNX Runtime against PyTorch and time it beside the plain and deploy forms",
    )
    add(
        "--val-resolution",
        choices=("full", "profile"),
        default="full",
        help="score at the labels' own resolution (full: the benchmark's protocol) or at the profile's image size",
    )
    add(
        "--tta",
        nargs="+",
        default=["none"],
        choices=("none", "flip", "multiscale"),
        help="test-time augmentation of the accuracy, one row each: none, flip (with the mirror image), multiscale "
        "(mmseg's ratios 0.5-1.75 of the profile size, each with its mirror); latency is always single-scale",
    )
    add(
        "--export-predictions",
        metavar="DIR",
        help="write label-id PNGs of every image of --split (the test server's format) to DIR/<city>/ and score "
        "them where the split has labels; no cost, latency or CSV row",
    )
    add("--split", default="val", choices=("val", "test"), help="the split --export-predictions predicts")
    add(
        "--overlay",
        nargs="?",
        const="",
        metavar="DIR",
        help="with --export-predictions: colour overlays of the predictions too (default DIR: <export dir>_overlay)",
    )
    add("--images", metavar="FOLDER", help="with --export-predictions: predict every PNG/JPEG under FOLDER instead")
    add("--output-csv", default="measurements/efficiency.csv", help="append one row per model and resolution here")
    add(
        "--write-resolutions",
        nargs="?",
        const="measurements/resolutions.csv",
        metavar="PATH",
        help="regenerate resolutions.csv from training/profiles.py and exit",
    )
    add("--malloc", default="tuned", choices=("tuned", "system"), help="glibc malloc: tuned (fast) or as started")
    add("--debug", action="store_true", help="show tracebacks for errors")
    return parser.parse_args(argv)


def model_paths(args) -> list:
    if bool(args.model) == bool(args.all):
        raise UserError("expected exactly one of --current-model-path FILE or --all DIR")
    if args.model:
        return [Path(args.model)]
    folder = Path(args.all)
    paths = sorted(folder.glob("*.pth")) if folder.is_dir() else []
    if not paths:
        raise UserError(f"--all {folder}: " + ("no .pth files in it" if folder.is_dir() else "no such directory"))
    return paths


def main(argv):
    args = parse_args(argv)
    if args.write_resolutions:
        return print(f"wrote {eff.write_resolutions(args.write_resolutions)}")
    for flag, value, low in (
        ("--latency-runs", args.latency_runs, 1),
        ("--batch-size", args.batch_size, 1),
        ("--warmup", args.warmup, 0),
        ("--num-workers", args.num_workers, 0),
        ("--threads", args.threads, 0),
        ("--agreement-images", args.agreement_images, 1),
    ):
        if value < low:
            raise UserError(f"{flag} {value}: expected an integer >= {low}")
    profile = resolve_profile(args.profile)
    if args.export_onnx and args.all:
        raise UserError("--export-onnx: expected one model (--current-model-path), not --all")
    sizes = list(dict.fromkeys([profile.image_hw] + [eff.parse_resolution(r) for r in args.resolution]))
    device = pick_device(args.device)
    from training.data.dataset import CLASS_NAMES, NUM_CLASSES
    from training.evaluation import scoring as evaluation  # torchvision: slow

    evaluation.check_export_args(args)

    models = []
    for path in model_paths(args):  # every input is checked before anything is measured or written
        model = build_model(args.arch, NUM_CLASSES)
        load_weights(model, path, args.arch, "--all" if args.all else "--current-model-path")
        models.append((path, model.eval().to(device)))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.export_predictions:
        metrics = evaluation.export_predictions(models[0][1], args, profile, device)
        if metrics:
            print(format_iou_table(metrics["iou"], CLASS_NAMES))
            print(
                f"{args.split}: mIoU {metrics['miou']:.4f} | mean Dice {metrics['mean_dice']:.4f} | pixel accuracy "
                f"{metrics['pixel_accuracy']:.4f} (val at full res, tta {args.tta[0]}; the official evaluator: "
                f"CITYSCAPES_DATASET={args.data_dir} CITYSCAPES_RESULTS={args.export_predictions} "
                f"csEvalPixelLevelSemanticLabeling)"
            )
        return
    no_data = str(args.data_dir).lower() == "none"
    val_set, sets = (
        (None, {}) if no_data else evaluation.accuracy_sets(args.data_dir, profile, args.tta, args.val_resolution)
    )
    dtype, scope, why = deploy.choose_deploy_dtype(device, args.deploy_dtype)
    allocator = eff.describe_allocator() + (" (set by the tool)" if os.environ.get(MARKER) else "")
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(f"{profile.describe()} | device {device} ({device_name(device)}) | deploy: {why}")
    if threads:
        print(f"CPU latency with {threads} threads (torch.get_num_threads), allocator: {allocator}")
    command = shlex.join(["python", Path(sys.argv[0]).name, *argv])
    rows = []
    for path, model in models:
        params = eff.count_parameters(model)
        print(f"\n== {path} ({args.arch}): {params:,} parameters ({params * 4 / 2**20:.2f} MB fp32)")
        onnx = None
        if args.export_onnx:  # at the first --resolution (the profile's image size without one)
            hw = eff.parse_resolution(args.resolution[0]) if args.resolution else profile.image_hw
            folded = deploy.export_onnx(model, hw, args.export_onnx)
            print(
                f"wrote {args.export_onnx}: fp32, {folded} BatchNorm folded, input 'image' 1x3x{hw[0]}x{hw[1]} "
                f"(static), output 'logits' (torch.onnx.export dynamo=True)"
            )
            onnx = deploy.OnnxRuntimeForm(args.export_onnx, threads)
        result = eff.evaluate_model(
            model,
            sizes,
            device,
            dtype,
            val_set,
            args.compile,
            args.agreement_images,
            args.batch_size,
            args.num_workers,
            args.latency_runs,
            args.min_seconds,
            args.warmup,
            NUM_CLASSES,
            fallback=args.deploy_dtype == "auto",
            scope=scope,
            onnx=onnx,
            accuracy_sets=sets,
        )
        scoring = evaluation.describe_scoring(args.val_resolution, profile)
        for tta, acc in result.accuracies.items():
            print(format_iou_table(acc["iou"], CLASS_NAMES))
            print(
                f"val ({result.val_images} images seen at {profile.image_size[0]}x{profile.image_size[1]}, scored "
                f"at {scoring}, tta {tta}): mIoU {acc['miou']:.4f} | mean Dice {acc['mean_dice']:.4f} | "
                f"pixel accuracy {acc['pixel_accuracy']:.4f}"
            )
        date = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
        new = eff.csv_rows(
            result,
            path.stem,
            args.arch,
            profile,
            device,
            threads,
            allocator,
            date,
            command,
            val_resolution=args.val_resolution,
        )
        Path(args.output_csv).parent.mkdir(parents=True, exist_ok=True)
        for row in new:  # written model by model: an interrupted --all keeps what it measured
            append_csv_row(args.output_csv, row)
        rows += new
    print("\n" + eff.format_sheet(rows))
    print(f"appended {len(rows)} row(s) to {args.output_csv}")


if __name__ == "__main__":
    run_cli(main)
