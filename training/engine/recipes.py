"""Named training recipes: the values of the optimisation and augmentation flags that a recipe sets.

`--recipe original` (the default) is the original course project's recipe, so the eight runs stay the original's.
`--recipe mmseg` is mmsegmentation's Fast-SCNN recipe (70.96 val mIoU at 1024x2048 after 160k iterations at batch 32):
SGD momentum 0.9, lr 0.12 at a total batch of 32 (scaled linearly with the total batch), weight decay 4e-5, poly
schedule (power 0.9, min lr 1e-4), two auxiliary heads with weight 0.4 each, its augmentation (data/transforms.py).

The recipe's flags default to None on the command line: a flag given explicitly wins over the recipe, and
`resolve_recipe` fills in the rest. The one rule of precedence for every setting: the command line > the run file's
stage entry > the run file's `flags` (runs/, passed as flags by the chain) > the recipe > the script's defaults.
The resolved values are the arguments the state file records, so a resume with another recipe or another explicit
value is refused like any other changed argument.
"""

from __future__ import annotations

RECIPES = {
    "original": {
        "optimizer": "adamw",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "lr_schedule": "constant",
        "min_lr": 0.0,
        "warmup_steps": 0,
        "aux_weight": 0.0,
        "augment": "original",
    },
    "mmseg": {
        "optimizer": "sgd",
        "lr": 0.12,
        "momentum": 0.9,
        "weight_decay": 4e-5,
        "lr_schedule": "poly",
        "min_lr": 1e-4,
        "warmup_steps": 0,
        "aux_weight": 0.4,
        "augment": "mmseg",
    },
}
# The recipes whose lr is quoted at a total batch and scales linearly with it (unless --lr-scaling declares a rule).
LR_REFERENCE_BATCH = {"mmseg": 32}
LR_SCALINGS = ("none", "linear", "pixels")

# Regularisation: the random rescale each --augment applies by default (LO, HI), the largest --scale-range ratio
# (a sanity bound: 4x the profile's image), and the largest --photometric-strength each augmentation's ranges allow
# (original: the hue shift 0.1 x S stays <= 0.5; mmseg: the contrast and saturation factors 1 +- 0.5 S stay >= 0).
AUGMENT_SCALE_RANGE = {"original": (1.0, 1.0), "mmseg": (0.5, 2.0)}
SCALE_MAX = 4.0
PHOTOMETRIC_MAX = {"original": 5.0, "mmseg": 2.0}


def resolve_recipe(args, world_size: int) -> str:
    """Fill the flags left at None from `args.recipe`; returns a line for the log saying what was set."""
    recipe = RECIPES[args.recipe]
    from_recipe, explicit = [], []
    for name, value in recipe.items():
        if getattr(args, name, None) is not None:
            explicit.append(f"{name} {getattr(args, name)}")
            continue
        if name == "lr" and args.recipe in LR_REFERENCE_BATCH and getattr(args, "lr_scaling", "none") == "none":
            reference, total = LR_REFERENCE_BATCH[args.recipe], args.batch_size * world_size
            value = value * total / reference
            from_recipe.append(f"lr {value:g} (= {recipe['lr']:g} x total batch {total} / {reference})")
        else:
            from_recipe.append(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}")
        setattr(args, name, value)
    resolve_regularisation(args)
    line = f"recipe {args.recipe}: " + (", ".join(from_recipe) if from_recipe else "nothing left to set")
    return line + (f"; given explicitly: {', '.join(explicit)}" if explicit else "")


def parse_scale_range(text: str) -> tuple[float, float]:
    """'LO,HI' -> (LO, HI); ValueError when it is not two numbers."""
    low, high = (float(part) for part in str(text).split(","))
    return low, high


def resolve_regularisation(args) -> None:
    """The regularisation flags left unset, from --augment and --whole-images (recorded, so that a resume or a card
    says what the stage trained with): --scale-range the augmentation's own rescale (none with whole images),
    --photometric-strength 1 (0 with whole images), --dropout Fast-SCNN's 0.1 (None for other architectures)."""
    if not hasattr(args, "scale_range"):  # a namespace of another caller
        return
    whole = getattr(args, "whole_images", False)
    if args.scale_range is None:
        low, high = (1.0, 1.0) if whole else AUGMENT_SCALE_RANGE[args.augment]
        args.scale_range = f"{low!r},{high!r}"
    if args.photometric_strength is None:
        args.photometric_strength = 0.0 if whole else 1.0
    if args.dropout is None and getattr(args, "arch", "fast_scnn") == "fast_scnn":
        args.dropout = 0.1


def lr_scale(args, world_size: int, sample_size: tuple[int, int], reference_size: tuple[int, int]) -> tuple[float, str]:
    """The factor --lr-scaling applies to --lr and --min-lr, and how it was computed (for the log). `sample_size`:
    (W, H) of one training sample (the patch, or the image with --whole-images); `reference_size`: profile 1's patch."""
    total, reference = args.batch_size * world_size, args.reference_batch_size
    if args.lr_scaling == "linear":
        return total / reference, f"x total batch {total} / {reference}"
    if args.lr_scaling == "pixels":
        pixels, reference_pixels = (
            total * sample_size[0] * sample_size[1],
            reference * reference_size[0] * reference_size[1],
        )
        return pixels / reference_pixels, (
            f"x pixels per total batch {total} x {sample_size[0]}x{sample_size[1]} / {reference} x "
            f"{reference_size[0]}x{reference_size[1]} (profile 1's patch)"
        )
    return 1.0, ""
