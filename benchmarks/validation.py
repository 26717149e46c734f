"""Cost of one validation pass scored at full resolution vs at the profile's size, side by side in one run.

    python benchmarks/validation.py --data-dir data/demo_cityscapes --profile low --rounds 3

Both passes run the stage's own code (`training.evaluation.scoring.Scorer` over the stage's validation loader, cached
images, fp32 logits, loss included) on the same model, alternating round by round so that both see the same
background load. It prints seconds per pass for each and their ratio, and the part of the full-resolution pass spent
upsampling, taking the argmax and counting (measured separately on the same logits).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from training.data.dataset import CityscapesSegmentation, EpochSampler, make_loader, val_transform  # noqa: E402
from training.data.layouts import DATASETS, dataset_profile, native_size, open_dataset  # noqa: E402
from training.data.photometric import to_model_input  # noqa: E402
from training.errors import run_cli  # noqa: E402
from training.evaluation import scoring as evaluation  # noqa: E402
from training.models.build import build_model, load_weights  # noqa: E402
from training.profiles import resolve_profile  # noqa: E402


def one_pass(model, loader, device, num_classes: int) -> tuple[float, float]:
    """(seconds of the whole pass, seconds of its scoring part: upsampling, argmax, counting, loss)."""
    scorer = evaluation.Scorer(num_classes, device, loss=True)
    scoring = 0.0
    start = time.perf_counter()
    with torch.no_grad():
        for images, targets in loader:
            logits = model(to_model_input(images, device)).float()
            if device.type == "cuda":
                torch.cuda.synchronize()
            tick = time.perf_counter()
            scorer.update([logits], targets)
            scorer.compute()  # waits for the device
            scoring += time.perf_counter() - tick
    return time.perf_counter() - start, scoring


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/demo_cityscapes")
    parser.add_argument("--dataset", choices=DATASETS, default="cityscapes", help="its layout (as the scripts')")
    parser.add_argument("--profile", default="low")
    parser.add_argument("--model", default="none", help="a trained fast_scnn .pth (default: random weights)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cache-dir", default=None, help="where the cache goes (default: $FASTSCNN_CACHE_DIR, else beside the data)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    profile = dataset_profile(resolve_profile(args.profile), args.dataset, native_size(args.dataset, args.data_dir))
    classes = open_dataset(args.dataset, args.data_dir).classes
    model = build_model("fast_scnn", classes.num_classes)
    if args.model != "none":
        load_weights(model, args.model, "fast_scnn", "--model")
    model.eval().to(device)
    loaders = {}
    for mode in evaluation.VAL_RESOLUTIONS:
        dataset = CityscapesSegmentation(
            args.data_dir,
            "val",
            val_transform(profile),
            profile=profile,
            full_labels=mode == "full",
            cache_dir=args.cache_dir,
            dataset=args.dataset,
        )
        loaders[mode] = make_loader(
            dataset,
            EpochSampler(len(dataset), 0, False),
            args.batch_size,
            args.num_workers,
            device,
            drop_last=False,
            collate_fn=evaluation.collate,
        )
    times = {mode: [] for mode in loaders}
    scoring = {mode: [] for mode in loaders}
    for _ in range(args.rounds):
        for mode, loader in loaders.items():
            total, part = one_pass(model, loader, device, classes.num_classes)
            times[mode].append(total)
            scoring[mode].append(part)
    images = len(loaders["full"].dataset)
    full, small = statistics.median(times["full"]), statistics.median(times["profile"])
    print(
        f"{images} val images, {profile.describe()}, device {device}, {torch.get_num_threads()} threads, "
        f"median of {args.rounds} alternating rounds"
    )
    for mode in loaders:
        print(
            f"  {mode:7s}: {statistics.median(times[mode]):.2f} s per pass, of which scoring "
            f"{statistics.median(scoring[mode]):.2f} s ({1000 * statistics.median(scoring[mode]) / images:.1f} "
            f"ms/image)"
        )
    print(f"full / profile: {full / small:.2f}x")


if __name__ == "__main__":
    run_cli(main)
