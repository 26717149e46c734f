"""Train Fast-SCNN for one curriculum stage with cross-entropy + Dice loss (a teacher).

loss = CE + w * Dice, w = --dice-loss-weight (1.0 as in the original). The Dice term is the soft Dice of the softmax
over the classes present in the batch, void pixels excluded (training/losses.py). Same flags and outputs as train.py.

    python train_dice.py --profile low --experiment-id fastscnn-training-experiment-21
"""

from torch import nn

from training.engine.cli import add_dice_args, add_previous_model_args
from training.engine.stage import stage_main
from training.errors import run_cli
from training.losses import cross_entropy, dice_loss

# name: ((image width, image height), (patch width, patch height)); images are resized, then patches cropped
PROFILES = {
    "low": ((576, 288), (448, 224)),
    "medium": ((768, 384), (576, 288)),
    "high": ((1024, 512), (768, 384)),
    "higher": ((1536, 768), (1152, 576)),
    "highest": ((2048, 1024), (1536, 768)),
}
PROFILE = "low"  # the active profile; --profile overrides it


class Loss(nn.Module):
    """CE + w * Dice."""

    def __init__(self, dice_weight: float):
        super().__init__()
        self.dice_weight = dice_weight

    def forward(self, logits, images, target):
        ce, dice = cross_entropy(logits, target), dice_loss(logits, target)
        total = ce + self.dice_weight * dice
        return total, {"train_ce_loss": ce, "train_dice_loss": dice, "train_loss": total}


def make_loss(args, device) -> nn.Module:
    return Loss(args.dice_loss_weight)


def main(argv=None):
    return stage_main(
        argv, __doc__, PROFILES, PROFILE, make_loss, add_previous_model_args, add_dice_args, script="train_dice.py"
    )


if __name__ == "__main__":
    run_cli(main)
