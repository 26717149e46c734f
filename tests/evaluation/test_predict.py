"""predict.py: class-index PNGs and overlays of images and folders at each input's own resolution, with the classes
and the profile from the model card; the Cityscapes export (round-2 contract) through predict.py and through
evaluate_efficiency.py's forwarder; bad input refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import run_main, run_script
from PIL import Image
from torchvision.transforms import v2

import fast_scnn
from training.data.classes import CITYSCAPES, folder_class_set
from training.data.dataset import PALETTE
from training.data.photometric import MEAN, STD
from training.models.card import profile_entry, write_card
from training.profiles import Profile

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, a machine shared with other jobs
FIVE = ["road", "car", "tree", "sky", "person"]
FIVE_PALETTE = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]]
CARD_PROFILE = Profile("low", 1, (128, 64), (64, 32))  # a card may record sizes the profile table does not have


def random_model(classes: int, seed: int = 0) -> torch.nn.Module:
    """A Fast-SCNN with random weights whose BatchNorm statistics are those of a few photos (a random network's
    default statistics predict one class everywhere): its predictions vary over an image."""
    torch.manual_seed(seed)
    model = fast_scnn.Model(n_classes=classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average
    x = torch.stack([torch.from_numpy(photo(200 + i, 128, 64)).permute(2, 0, 1) for i in range(8)]).float() / 255
    with torch.no_grad():
        model.train()((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    return model.eval()


def write_model(path, classes: int, card: dict | None, seed: int = 0) -> torch.nn.Module:
    model = random_model(classes, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    if card is not None:
        write_card(path, card)
    return model


def five_class_card() -> dict:
    return {
        "experiment_id": "five",
        "script": "train.py",
        "arch": "fast_scnn",
        "profile": profile_entry(CARD_PROFILE),
        "classes": folder_class_set(tuple(FIVE), tuple(map(tuple, FIVE_PALETTE)), 255, None, "test").to_dict(),
    }


def photo(seed: int, width: int, height: int) -> np.ndarray:
    """A smooth random colour field (neighbouring pixels alike, as in photos)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def expected_classes(model: torch.nn.Module, image: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """By hand: resize to `height` keeping the aspect ratio, normalise, forward, bilinear back, argmax; with the
    margin between the two best scores (where it is ~0, float rounding may pick either class)."""
    h, w = image.shape[:2]
    x = torch.from_numpy(image).permute(2, 0, 1)
    x = v2.functional.resize(x, [height, max(1, round(height * w / h))], antialias=True).float() / 255
    x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    with torch.no_grad():
        logits = F.interpolate(model(x[None]), size=(h, w), mode="bilinear", align_corners=False)[0]
    top2 = logits.topk(2, dim=0).values
    return logits.argmax(0).numpy(), (top2[0] - top2[1]).numpy()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """20 photos: 17 of 96x64 (batched together), 3 of other sizes in a subfolder; PNG and JPEG."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    images = {}
    for index in range(17):
        name = f"img{index:02d}"
        images[name] = photo(index, 96, 64)
        suffix = ".png" if index % 2 else ".jpg"
        Image.fromarray(images[name]).save(root / f"{name}{suffix}", quality=95)
    for index, (width, height) in enumerate(((80, 120), (150, 50), (64, 64))):
        name = f"sub/other{index}"
        images[name] = photo(100 + index, width, height)
        Image.fromarray(images[name]).save(root / f"{name}.png")
    for name in list(images):  # what a reader sees (JPEG is lossy; torchvision's decoder, as photo tools use)
        path = next(root.glob(f"{name}.*"))
        images[name] = torchvision.io.decode_image(str(path), mode=torchvision.io.ImageReadMode.RGB)
        images[name] = images[name].permute(1, 2, 0).numpy().copy()
    return root, images


@pytest.fixture(scope="module")
def five_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "five.pth"
    return path, write_model(path, 5, five_class_card())


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 4])
def test_a_folder_gives_class_indices_at_each_images_size_with_the_cards_classes(folder, five_model, tmp_path, batch):
    root, images = folder
    path, model = five_model
    out = tmp_path / "out"
    args = ("--model-path", str(path), "--input", str(root), "--output", str(out), "--batch-size", str(batch))
    result = run_script("predict.py", *args, "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "frames/s" in result.stdout and "device cpu" in result.stdout and "20 images" in result.stdout
    assert "folder: 5 classes" in result.stdout and "128x64" in result.stdout  # the card's classes and profile
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(f"{n}.png" for n in images)
    seen, agree, total = set(), 0, 0
    for name, image in images.items():
        with Image.open(out / f"{name}.png") as png:
            assert (png.mode, png.size) == ("L", (image.shape[1], image.shape[0]))
            got = np.asarray(png)
        expected, margin = expected_classes(model, image, height=64)  # the card's 128x64, not the table's 576x288
        clear = margin > 1e-3  # away from near-ties, the classes must be exactly the hand-computed ones
        assert np.array_equal(got[clear], expected[clear]) and clear.mean() > 0.99, name
        agree, total, seen = agree + int((got == expected).sum()), total + got.size, seen | set(np.unique(got))
        with Image.open(out / f"{name}_overlay.jpg") as jpg:  # the card's palette, blended half and half
            drawn = np.asarray(jpg, dtype=np.float64)
        error = {  # JPEG blurs the colour edges: the card's palette must fit far better than Cityscapes' would
            key: np.abs(drawn - (0.5 * image + 0.5 * np.asarray(colours, dtype=np.float64)[expected])).mean()
            for key, colours in (("card", FIVE_PALETTE), ("cityscapes", PALETTE[:5]))
        }
        assert error["card"] < 16 and error["card"] < 0.5 * error["cityscapes"], (name, error)
    assert agree / total >= 0.999
    assert len(seen) >= 2 and seen <= set(range(5))  # a sensitive comparison; only the model's 5 classes


@pytest.mark.slow
def test_the_onnxruntime_backend_predicts_the_models_classes_its_onnx_files_cached_next_to_it(folder, tmp_path):
    root, images = folder
    chosen = ["img00", "img01", "img02", "sub/other0"]  # two sizes the model sees: 64x96 (three) and 64x43
    photos = tmp_path / "photos"
    for name in chosen:
        source = next(root.glob(f"{name}.*"))
        (photos / source.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        (photos / source.relative_to(root)).write_bytes(source.read_bytes())
    path = tmp_path / "models" / "five.pth"
    model = write_model(path, 5, five_class_card())
    args = ("--model-path", str(path), "--input", str(photos), "--no-overlay", "--backend", "onnxruntime")
    for run, out in enumerate((tmp_path / "first", tmp_path / "second")):
        result = run_script(
            "predict.py", *args, "--output", str(out), "--device", "cpu", "--batch-size", "2", cwd=tmp_path
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "GPU providers:" in result.stdout and "4 images" in result.stdout
        assert result.stdout.count("ONNX Runtime: exporting") == (2 if run == 0 else 0)  # cached for the second run
        for name in chosen:
            got = np.asarray(Image.open(out / f"{name}.png"))
            expected, margin = expected_classes(model, images[name], height=64)
            clear = margin > 1e-3
            assert np.array_equal(got[clear], expected[clear]) and clear.mean() > 0.99, name
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "five.64x43.onnx",
        "five.64x96.onnx",
        "five.json",
        "five.pth",
    ]


@pytest.mark.slow
def test_one_image_without_a_card_is_cityscapes_at_the_given_profile(folder, tmp_path):
    root, images = folder
    path = tmp_path / "plain.pth"
    model = write_model(path, 19, card=None, seed=1)
    result = run_script(
        "predict.py",
        "--model-path",
        str(path),
        "--input",
        str(root / "sub" / "other1.png"),
        "--output",
        str(tmp_path / "o"),
        "--no-overlay",
        "--profile",
        "low",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note: no model card" in result.stdout and "cityscapes: 19 classes" in result.stdout
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["other1.png"]
    got = np.asarray(Image.open(tmp_path / "o" / "other1.png"))
    expected, margin = expected_classes(model, images["sub/other1"], height=288)  # profile low: 576x288
    assert np.array_equal(got[margin > 1e-3], expected[margin > 1e-3]) and (got == expected).mean() >= 0.999


@pytest.mark.slow
def test_the_cityscapes_export_is_the_same_from_predict_and_from_the_efficiency_tool(tiny_cityscapes, tmp_path):
    path = tmp_path / "models" / "city.pth"
    card = {"arch": "fast_scnn", "profile": profile_entry(CARD_PROFILE), "classes": CITYSCAPES.to_dict()}
    write_model(path, 19, card, seed=2)
    common = ("--model-path", str(path), "--data-dir", str(tiny_cityscapes), "--num-workers", "0", "--overlay")
    new = run_script("predict.py", *common, "--export-predictions", str(tmp_path / "a"), cwd=tmp_path)
    old = run_script("evaluate_efficiency.py", *common, "--export-predictions", str(tmp_path / "b"), cwd=tmp_path)
    for result in (new, old):
        assert result.returncode == 0, result.stdout + result.stderr
        assert "mIoU" in result.stdout and "frames/s" in result.stdout
    assert "predict.py" in old.stdout.splitlines()[0]  # the forwarder says which tool does the job
    written = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    sources = sorted((tiny_cityscapes / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    assert written == [p.relative_to(tiny_cityscapes / "leftImg8bit" / "val") for p in sources]
    for name in written:
        with Image.open(tmp_path / "a" / name) as png:
            assert (png.mode, png.size) == ("L", (256, 128))
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert len(list((tmp_path / "a_overlay").rglob("*_overlay.jpg"))) == len(written)


def bad_setup(tmp_path):
    (tmp_path / "clash").mkdir()
    for suffix in (".png", ".jpg"):
        Image.fromarray(photo(0, 32, 16)).save(tmp_path / "clash" / f"a{suffix}")
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 16)
    (tmp_path / "empty").mkdir()
    write_model(tmp_path / "five.pth", 5, five_class_card())
    write_model(tmp_path / "plain.pth", 19, None)


def bad_argv(args: list[str], tmp_path) -> list[str]:
    args = [a.format(tmp=tmp_path) for a in args]
    return args if "--model-path" in args else ["--model-path", str(tmp_path / "plain.pth"), *args]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--input", "{tmp}/clash"], "--input: expected --output DIR"),
        (["--input", "{tmp}/clash", "--output", "{tmp}/o"], "a.jpg and a.png would both be written as a.png"),
        (["--input", "{tmp}/clip.mp4", "--output", "{tmp}/o"], "clip.mp4: cannot read the video (Invalid data"),
        (["--input", "{tmp}/nowhere", "--output", "{tmp}/o"], "no such file or folder"),
        (["--input", "{tmp}/empty", "--output", "{tmp}/o"], "no .png/.jpg/.jpeg files"),
        (["--input", "{tmp}/clash", "--output", "{tmp}/o", "--export-predictions", "{tmp}/o"], "exactly one of"),
        (["--input", "{tmp}/clash", "--output", "{tmp}/o", "--tta", "multiscale"], "not for --input"),
        (["--export-predictions", "{tmp}/o", "--model-path", "{tmp}/five.pth"], "writes Cityscapes label ids"),
        (["--input", "{tmp}/clash", "--output", "{tmp}/o", "--batch-size", "0"], "--batch-size 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, monkeypatch):
    import predict

    bad_setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(predict.main, [*bad_argv(args, tmp_path), "--data-dir", str(tmp_path)])
    assert code == 2, out + err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_bad_input_as_a_process_is_one_line_and_exit_2(tmp_path):
    """The refusals above, in-process; here one of them as the user's command (no traceback from the script)."""
    bad_setup(tmp_path)
    argv = bad_argv(["--input", "{tmp}/nowhere", "--output", "{tmp}/o"], tmp_path)
    result = run_script("predict.py", *argv, "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "no such file or folder" in result.stderr and not (tmp_path / "o").exists()


def test_the_tools_read_classes_and_profile_from_the_card_and_fall_back_with_a_note(tmp_path):
    from training.errors import UserError
    from training.evaluation.trained import predicts_cityscapes, read_trained

    write_model(tmp_path / "five.pth", 5, five_class_card())
    trained = read_trained(tmp_path / "five.pth")
    assert (trained.profile, trained.classes.names, trained.classes.dataset) == (CARD_PROFILE, tuple(FIVE), "folder")
    assert trained.classes.palette_table()[:5].tolist() == FIVE_PALETTE and not predicts_cityscapes(trained.classes)
    assert read_trained(tmp_path / "five.pth", profile="medium").profile.image_size == (768, 384)
    # a card whose classes entry is not ClassSet.to_dict's is refused in one line naming the card
    spelled = {"dataset": "folder", "names": FIVE, "palette": FIVE_PALETTE, "void": 255}
    write_card(tmp_path / "five.pth", five_class_card() | {"classes": spelled})
    with pytest.raises(UserError, match=r"five\.json: classes: expected the keys dataset, classes, palette"):
        read_trained(tmp_path / "five.pth")

    plain = read_trained(tmp_path / "none.pth")  # no card: Cityscapes, the default profile, a note
    assert (
        predicts_cityscapes(plain.classes)
        and plain.profile.name == "highest"
        and plain.note.startswith("note: no model")
    )
    for classes, message in (
        ({"dataset": "folder", "classes": [], "palette": [], "void": 255}, "expected 1 to"),
        ({"dataset": "folder", "classes": FIVE, "palette": [[1, 2, 3]], "void": 255}, "palette: expected one"),
    ):
        write_card(tmp_path / "bad.pth", five_class_card() | {"classes": classes})
        with pytest.raises(UserError, match=message):
            read_trained(tmp_path / "bad.pth")
