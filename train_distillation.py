"""Train a Fast-SCNN student for one curriculum stage, distilled from a trained, frozen teacher.

loss = alpha * kd + (1 - alpha) * CE. --kd-loss kl (default): kd = T^2 * per-pixel KL(teacher || student) of the
softmax over the classes at temperature T, averaged over all pixels; --kd-loss cwd: channel-wise distillation, the
same KL with each class channel a softmax over the positions, averaged over images and classes; --kd-loss dist: DIST,
T^2 (beta (1 - Pearson across the classes of each pixel) + gamma (1 - Pearson across the pixels of each class)),
weights --dist-beta and --dist-gamma (training/losses.py).
The teacher (--teacher-arch, Fast-SCNN by default) sees the same augmented batch, stays in eval mode without
gradients, and is never saved; the best student goes to models/<experiment-id>.pth.

    python train_distillation.py --profile low --experiment-id fastscnn-training-experiment-11 \
        --trained-teacher-model-path models/fastscnn-training-experiment-05.pth
"""

from training.engine.cli import add_distillation_args
from training.engine.stage import stage_main
from training.errors import run_cli
from training.losses import DistillationLoss
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


def make_loss(args, device) -> DistillationLoss:
    teacher = load_teacher(args.teacher_arch, args.trained_teacher_model_path)
    return DistillationLoss(
        teacher,
        args.temperature,
        args.alpha,
        args.kd_loss,
        getattr(args, "dist_beta", 1.0),
        getattr(args, "dist_gamma", 1.0),
    )


def main(argv=None):
    return stage_main(
        argv, __doc__, PROFILES, PROFILE, make_loss, add_distillation_args, script="train_distillation.py"
    )


if __name__ == "__main__":
    run_cli(main)
