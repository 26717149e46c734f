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
# The recipes whose lr is quoted at a total batch and scales linearly with it.
LR_REFERENCE_BATCH = {"mmseg": 32}


def resolve_recipe(args, world_size: int) -> str:
    """Fill the flags left at None from `args.recipe`; returns a line for the log saying what was set."""
    recipe = RECIPES[args.recipe]
    from_recipe, explicit = [], []
    for name, value in recipe.items():
        if getattr(args, name, None) is not None:
            explicit.append(f"{name} {getattr(args, name)}")
            continue
        if name == "lr" and args.recipe in LR_REFERENCE_BATCH:
            reference, total = LR_REFERENCE_BATCH[args.recipe], args.batch_size * world_size
            value = value * total / reference
            from_recipe.append(f"lr {value:g} (= {recipe['lr']:g} x total batch {total} / {reference})")
        else:
            from_recipe.append(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}")
        setattr(args, name, value)
    line = f"recipe {args.recipe}: " + (", ".join(from_recipe) if from_recipe else "nothing left to set")
    return line + (f"; given explicitly: {', '.join(explicit)}" if explicit else "")
