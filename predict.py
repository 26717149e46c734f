"""Predictions of a trained Fast-SCNN: class-index PNGs and colour overlays of images or a video, or the Cityscapes
export.

    python predict.py --model-path models/fastscnn-training-experiment-05.pth --input photos/ --output predictions/

writes predictions/<name>.png for every PNG/JPEG under photos/ (or for one image): 8-bit class indices (Cityscapes
train ids 0-18 for a Cityscapes model; void is never predicted) at the image's own resolution, and a colour overlay
predictions/<name>_overlay.jpg (--overlay DIR elsewhere, --no-overlay none). The model sees each image at its
profile's height, the width keeping the image's aspect ratio; images of one size are batched (--batch-size). It
prints the frames per second it reached and the device.

    python predict.py --model-path M --input clip.mp4 --output predictions/

decodes a video file with PyAV (pip install av) and writes predictions/clip/000000.png ... (the class indices of
every frame) and the annotated video predictions/clip_overlay.mp4 (H.264, the input's frame rate; --overlay DIR
elsewhere, --no-overlay none).

    python predict.py --model-path M --data-dir data/cityscapes --export-predictions DIR [--split val|test]

writes what the Cityscapes benchmark reads: one label-id PNG per image of the split at its own resolution,
DIR/<city>/<city>_<seq>_<frame>_leftImg8bit.png, scored where the split has labels; --overlay adds colour overlays,
--images FOLDER predicts a folder of photos into label-id PNGs instead of a split.

The model card beside the model (models/<id>.json) gives its classes, data set, architecture and profile; --profile
overrides the profile (scaled to the model's data set, as in training). Without a card: Cityscapes' 19 classes and
--profile (default highest), with a note. On Linux the tool restarts itself once with glibc malloc tuned (as
evaluate_efficiency.py does).
"""

import sys

from training.efficiency.allocator import tune_malloc

if __name__ == "__main__":
    tune_malloc(sys.argv[1:])

import argparse  # noqa: E402  (after the restart: torch is imported once, by the final process)

from training.errors import UserError, run_cli  # noqa: E402
from training.evaluation.cli import add_data_arguments, add_export_arguments, add_model_arguments  # noqa: E402
from training.evaluation.tta import TTA_MODES  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add_model_arguments(parser)
    add("--input", metavar="PATH", help="an image (PNG/JPEG), a folder of images, or a video file to predict")
    add("--output", metavar="DIR", help="with --input: where the class-index PNGs and overlays (or the video) go")
    add("--no-overlay", action="store_true", help="with --input: class-index PNGs only (no overlays, no video)")
    add_export_arguments(parser)
    add_data_arguments(parser, "with --export-predictions: the Cityscapes root")
    add("--tta", default="none", choices=TTA_MODES, help="test-time augmentation (multiscale: split exports only)")
    add("--batch-size", type=int, default=4, help="images per forward pass")
    add("--num-workers", type=int, default=4, help="with --export-predictions: data-loading worker processes")
    add("--malloc", default="tuned", choices=("tuned", "system"), help="glibc malloc: tuned (fast) or as started")
    return parser.parse_args(argv)


def check_mode(args) -> None:
    """One job per call: --input with --output, or --export-predictions; the numbers in range."""
    if not args.model:
        raise UserError("--model-path: missing; expected the trained model's .pth")
    if bool(args.input) == bool(args.export_predictions):
        raise UserError("expected exactly one of --input PATH (with --output DIR) or --export-predictions DIR")
    if args.input and not args.output:
        raise UserError("--input: expected --output DIR as well (where the predictions go)")
    if args.output and not args.input:
        raise UserError("--output: goes with --input PATH (--export-predictions names its own folder)")
    if args.no_overlay and not args.input:
        raise UserError("--no-overlay: goes with --input PATH")
    if args.input and (args.images or args.split != "val"):
        raise UserError(f"{'--images' if args.images else '--split'}: goes with --export-predictions, not --input")
    for flag, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--num-workers", args.num_workers, 0),
        ("--threads", args.threads, 0),
    ):
        if value < low:
            raise UserError(f"{flag} {value}: expected an integer >= {low}")


def main(argv):
    args = parse_args(argv)
    check_mode(args)
    from training.evaluation import prediction

    if args.input:
        prediction.run_predict(args)
    else:
        prediction.run_export(args)


if __name__ == "__main__":
    run_cli(main)
