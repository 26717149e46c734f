"""Train Fast-SCNN on Cityscapes for one curriculum stage with cross-entropy (a teacher).

Stage k of the curriculum trains at profile k, starting from stage k-1's best model (--previous-model-path),
stage 1 from random weights ('none'). The best epoch by validation mIoU goes to models/<experiment-id>.pth.

    python train.py --data-dir ./data/cityscapes --profile low --experiment-id fastscnn-training-experiment-01
    python train.py --profile medium --experiment-id fastscnn-training-experiment-02 \
        --previous-model-path models/fastscnn-training-experiment-01.pth
Run the same command again to resume an interrupted stage; see docs/curriculum.md and docs/slurm.md for the
curriculum on SLURM.
"""

from torch import nn

from training.engine.cli import add_previous_model_args
from training.engine.stage import stage_main
from training.errors import run_cli
from training.losses import cross_entropy

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
    """Cross-entropy over the non-void pixels."""

    def forward(self, logits, images, target):
        ce = cross_entropy(logits, target)
        return ce, {"train_loss": ce}


def make_loss(args, device) -> nn.Module:
    return Loss()


def main(argv=None):
    return stage_main(argv, __doc__, PROFILES, PROFILE, make_loss, add_previous_model_args, script="train.py")


if __name__ == "__main__":
    run_cli(main)
