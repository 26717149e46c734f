"""Cost and accuracy of trained Fast-SCNN models -> measurements/efficiency.csv (one row per model and resolution).

    python evaluate_efficiency.py --model-path models/fastscnn-training-experiment-05.pth
    python evaluate_efficiency.py --all models/ --data-dir none --resolution 1024x2048 --compile

Each model is measured at the profile its model card records (models/<id>.json beside the .pth): the classes, the
data set and the image size come from the card; --profile overrides the profile; a model without a card is measured
at --profile (default highest) with Cityscapes' 19 classes, and a note says so. The accuracy is scored on the val
split of the model's own data set (--dataset and --data-dir, by default the card's at ./data/<dataset>); a data set
of other classes is refused.

Reports parameters, thop MACs and FLOPs (= 2 x MACs, cross-checked with torch.utils.flop_counter), batch-1 latency of
the plain model (eval, fp32, NCHW) and of the deploy form (BatchNorm folded, channels_last, bf16 autocast on CPUs with
native bf16 / fp16 on CUDA, narrowed to the context branch or to fp32 where it would change more than 0.1% of the
predictions; --compile adds torch.compile) measured side by side, their argmax agreement, and (unless --data-dir
none) mIoU, per-class IoU, mean Dice and pixel accuracy on `val`: the model sees the profile's image size, its fp32
logits are scored at the labels' own resolution (the benchmark's protocol; --val-resolution profile for the older
score at the profile's size), one row per --tta mode. Sizes are measured at the profile's image size and at every
--resolution. The sheet goes to <--output-dir>/measurements/efficiency.csv (--output-csv to choose the file). On
Linux the tool restarts itself once with glibc malloc tuned (see measurements/README.md).

Predictions are predict.py's job: `--export-predictions DIR [--split test] [--overlay] [--images FOLDER]` still
work here and run predict.py's code (the same files: one Cityscapes label-id PNG per image at its own resolution).
"""

import sys

from training.efficiency.allocator import tune_malloc

if __name__ == "__main__":
    tune_malloc(sys.argv[1:])

import shlex  # noqa: E402  (after the restart: torch is imported once, by the final process)
from pathlib import Path  # noqa: E402

from training.efficiency import cli, tool  # noqa: E402
from training.efficiency.sheet import write_resolutions  # noqa: E402
from training.errors import run_cli  # noqa: E402
from training.evaluation import prediction  # noqa: E402
from training.runtime.distributed import pick_device  # noqa: E402


def main(argv):
    args = cli.get_args_parser(__doc__).parse_args(argv)
    csv_path, resolutions_path = cli.output_paths(args)
    if args.write_resolutions is not None:
        return print(f"wrote {write_resolutions(resolutions_path)}")
    prediction.check_export_args(args)
    if args.export_predictions:
        print("note: predictions are predict.py's job (python predict.py ... takes these flags); running its code")
        return prediction.run_export(args)
    cli.check_args(args)
    device = pick_device(args.device)
    with_data = cli.with_data(args)
    models = tool.load_models(args, device, with_data)
    command = shlex.join(["python", Path(sys.argv[0]).name, *argv])
    tool.measure_models(args, models, device, csv_path, command)


if __name__ == "__main__":
    run_cli(main)
