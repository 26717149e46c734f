"""Train a Fast-SCNN student for one curriculum stage: distillation from a frozen teacher + Dice loss.

loss = alpha * kd + (1 - alpha) * CE + w * Dice (w = --dice-loss-weight); see train_distillation.py for the
distillation term and the teacher, train_dice.py for the Dice term.

    python train_distillation_dice.py --profile low --experiment-id fastscnn-training-experiment-31 \
        --trained-teacher-model-path models/fastscnn-training-experiment-25.pth
"""

from training.engine.cli import add_dice_args, add_distillation_args
from training.engine.stage import stage_main
from training.errors import run_cli
from training.losses import DistillationLoss, dice_loss
from training.models.build import load_teacher

# name: ((image width, image height), (patch width, patch height)); images are resized, then patches cropped
PROFILES = {
    "low": ((576, 288), (448, 224)),
    "medium": ((768, 384), (576, 288)),
    "high": ((1024, 512), (768, 384)),
    "higher": ((1536, 768), (1152, 576)),
    "highest": ((2048, 1024), (1536, 768)),
}
PROFILE = "low"  # the active profile; --profile overrides it


class Loss(DistillationLoss):
    """alpha * kd + (1 - alpha) * CE against the teacher, + w * Dice."""

    def __init__(
        self, teacher, temperature: float, alpha: float, kd_loss: str, dice_weight: float, beta=1.0, gamma=1.0
    ):
        super().__init__(teacher, temperature, alpha, kd_loss, beta, gamma)
        self.dice_weight = dice_weight

    def forward(self, logits, images, target):
        total, parts = super().forward(logits, images, target)
        dice = dice_loss(logits, target)
        total = total + self.dice_weight * dice
        return total, {**parts, "train_total_loss": total, "train_dice_loss": dice}


def make_loss(args, device) -> DistillationLoss:
    teacher = load_teacher(args.teacher_arch, args.trained_teacher_model_path)
    return Loss(
        teacher,
        args.temperature,
        args.alpha,
        args.kd_loss,
        args.dice_loss_weight,
        getattr(args, "dist_beta", 1.0),
        getattr(args, "dist_gamma", 1.0),
    )


def main(argv=None):
    return stage_main(
        argv,
        __doc__,
        PROFILES,
        PROFILE,
        make_loss,
        add_distillation_args,
        add_dice_args,
        script="train_distillation_dice.py",
    )


if __name__ == "__main__":
    run_cli(main)
