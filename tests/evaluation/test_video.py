"""predict.py on a video file: frames decoded with PyAV, a class-index PNG per frame (checked against a forward pass
by hand on the frames as an independent decoder reads them), the annotated video (frame count, rate, size, the
card's colours), --batch-size and --tta flip, the frames per second printed; refusals in one line."""

from __future__ import annotations

import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_script
from PIL import Image
from test_predict import FIVE_PALETTE, expected_classes, five_class_card, photo, write_model
from torchvision.transforms import v2

from training.data.photometric import MEAN, STD
from training.errors import UserError

FRAMES, RATE, SIZE = 12, 10, (160, 120)  # frames, frames/s, (width, height)


def encode(path, frames: list[np.ndarray], rate: int = RATE, codec: str = "libx264") -> None:
    """Write `frames` (HxWx3 uint8) as a video with PyAV, as a camera or an editor would."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def decode(path) -> tuple[list[np.ndarray], Fraction]:
    """Every frame as HxWx3 uint8, and the frame rate, read with PyAV directly (not through the project)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], stream.average_rate


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 12-frame 160x120 H.264 video of smooth, slowly changing scenes (and the frames a decoder reads from it)."""
    root = tmp_path_factory.mktemp("video")
    base = photo(7, SIZE[0] + 2 * FRAMES, SIZE[1])
    frames = [np.ascontiguousarray(base[:, 2 * i : 2 * i + SIZE[0]]) for i in range(FRAMES)]  # a slow pan
    encode(root / "clip.mp4", frames)
    decoded, rate = decode(root / "clip.mp4")
    assert len(decoded) == FRAMES and rate == RATE
    return root / "clip.mp4", decoded


@pytest.fixture(scope="module")
def five_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "five.pth"
    return path, write_model(path, 5, five_class_card())


def flip_classes(model: torch.nn.Module, image: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """--tta flip by hand: the mean softmax of the image's and its mirror's logits (mirrored back), at the image's
    size; with the margin between the two best probabilities."""
    h, w = image.shape[:2]
    x = torch.from_numpy(image).permute(2, 0, 1)
    x = v2.functional.resize(x, [height, max(1, round(height * w / h))], antialias=True).float() / 255
    x = ((x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1))[None]
    with torch.no_grad():
        views = [model(x), model(x.flip(-1)).flip(-1)]
    probabilities = sum(F.interpolate(v, size=(h, w), mode="bilinear").softmax(1) for v in views)[0] / 2
    top2 = probabilities.topk(2, dim=0).values
    return probabilities.argmax(0).numpy(), (top2[0] - top2[1]).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("tta,batch", [("none", 4), ("flip", 5)])
def test_a_video_gives_a_class_png_per_frame_and_an_annotated_video(clip, five_model, tmp_path, tta, batch):
    path, decoded = clip
    model_path, model = five_model
    out = tmp_path / "out"
    args = ["--model-path", str(model_path), "--input", str(path), "--output", str(out), "--device", "cpu"]
    result = run_script("predict.py", *args, "--batch-size", str(batch), "--tta", tta, "--threads", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{FRAMES} frames in" in result.stdout and "frames/s end to end" in result.stdout
    assert (
        f"video {path} ({FRAMES} frames of 160x120 at 10 frames/s)" in result.stdout and "device cpu" in result.stdout
    )
    assert sorted(p.name for p in out.iterdir()) == ["clip", "clip_overlay.mp4"]
    assert sorted(p.name for p in (out / "clip").iterdir()) == [f"{i:06d}.png" for i in range(FRAMES)]
    by_hand = expected_classes if tta == "none" else flip_classes
    expected = []
    for index, frame in enumerate(decoded):
        with Image.open(out / "clip" / f"{index:06d}.png") as png:
            assert (png.mode, png.size) == ("L", SIZE)
            got = np.asarray(png)
        classes, margin = by_hand(model, frame, 64)  # the card's profile is 128x64: the frames are seen 64 high
        # away from near-ties the classes must be exactly the hand-computed ones. Under flip a saturated softmax
        # whose mirror disagrees averages to an exact 0.5/0.5 tie (a few % of the pixels of a random model)
        clear = margin > (1e-3 if tta == "none" else 1e-5)
        assert np.array_equal(got[clear], classes[clear]) and clear.mean() > (0.99 if tta == "none" else 0.9), index
        expected.append(classes)
    assert len(np.unique(np.stack(expected))) >= 2  # a sensitive comparison: the model's classes vary

    drawn, rate = decode(out / "clip_overlay.mp4")
    assert len(drawn) == FRAMES and rate == RATE and drawn[0].shape == (SIZE[1], SIZE[0], 3)
    for frame, classes, shown in zip(decoded, expected, drawn):  # the frame blended with the card's colours
        error = {
            key: np.abs(shown.astype(float) - (0.5 * frame + 0.5 * np.asarray(colours, dtype=float)[classes])).mean()
            for key, colours in (("card", FIVE_PALETTE), ("reversed", FIVE_PALETTE[::-1]))
        }
        assert error["card"] < 12 and error["card"] < 0.5 * error["reversed"], error


@pytest.mark.slow
def test_no_overlay_writes_the_frames_only_and_overlay_dir_moves_the_video(clip, five_model, tmp_path):
    path, _ = clip
    common = ["--model-path", str(five_model[0]), "--input", str(path), "--threads", "1"]
    result = run_script("predict.py", *common, "--output", str(tmp_path / "a"), "--no-overlay", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["clip"]
    result = run_script(
        "predict.py", *common, "--output", str(tmp_path / "b"), "--overlay", str(tmp_path / "v"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["clip_overlay.mp4"]  # no temporary left over
    assert len(list((tmp_path / "b" / "clip").iterdir())) == FRAMES


def test_an_odd_sized_video_is_padded_by_its_edge_to_the_even_size_4_2_0_needs(tmp_path):
    from training.evaluation.export import VideoOverlay
    from training.evaluation.inputs import Frame

    palette = np.zeros((256, 3), dtype=np.uint8)
    writer = VideoOverlay(tmp_path / "odd.mp4", palette, Fraction(5), av)
    image = np.zeros((21, 33, 3), dtype=np.uint8)
    image[:, -1] = 200  # the last column: repeated into the padding
    for _ in range(3):
        writer.write(Frame("x", torch.from_numpy(image).permute(2, 0, 1)), torch.zeros(21, 33, dtype=torch.uint8))
    writer.close()
    frames, rate = decode(tmp_path / "odd.mp4")
    assert len(frames) == 3 and rate == 5 and frames[0].shape == (22, 34, 3)
    assert abs(float(frames[0][5:15, -1].mean()) - 100) < 12  # blended 50/50 with black: ~100, not 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]


def test_without_pyav_a_video_is_refused_with_what_to_install(clip, monkeypatch):
    from training.evaluation.inputs import open_input

    monkeypatch.setitem(sys.modules, "av", None)  # what `import av` meets where PyAV is not installed
    with pytest.raises(UserError, match=r"clip\.mp4: reading and writing video needs PyAV .*: pip install av"):
        open_input(clip[0])


def test_a_video_input_is_an_iterable_of_named_frames(clip):
    from training.evaluation.inputs import open_input

    path, decoded = clip
    source = open_input(path)
    assert (source.kind, len(source), source.size, source.fps) == ("video", FRAMES, SIZE, RATE)
    frames = list(source)
    assert [f.name.as_posix() for f in frames] == [f"clip/{i:06d}" for i in range(FRAMES)]
    assert all(np.array_equal(f.image.permute(1, 2, 0).numpy(), d) for f, d in zip(frames, decoded))
