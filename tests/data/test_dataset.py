"""nas.data.dataset: the IDX reader, its errors, the fixed split, real Fashion-MNIST, the same
real images in each layout, scikit-learn's digits, and the crop-flip augmentation."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from conftest import write_idx
from nas.data.dataset import load_data, load_fashion_mnist, resolve_data_dir, to_input
from nas.data.formats import read_idx
from nas.errors import DataError


def test_read_idx_round_trip(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", 3), a)


def test_tiny_files_split(tiny_data_dir: Path) -> None:
    d = load_fashion_mnist(tiny_data_dir)
    assert d.train_x.shape == (100, 28, 28, 1) and d.val_x.shape == (20, 28, 28, 1)
    assert d.test_x.shape == (30, 28, 28, 1) and d.train_x.dtype == torch.uint8
    assert d.train_y.dtype == torch.int64
    x, y = d.full_train()
    assert len(x) == len(y) == 120


def test_split_is_fixed_and_disjoint(tiny_data_dir: Path) -> None:
    a, b = load_fashion_mnist(tiny_data_dir), load_fashion_mnist(tiny_data_dir)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    rows = {bytes(r.numpy()) for r in a.train_x}
    assert not rows & {bytes(r.numpy()) for r in a.val_x}


def _corrupt(folder: Path, how: str) -> Path:
    f = folder / "train-images-idx3-ubyte.gz"
    if how == "missing":
        f.unlink()
    elif how == "not gzip":
        f.write_bytes(b"this is not gzip data")
    elif how == "truncated":
        raw = gzip.decompress(f.read_bytes())
        f.write_bytes(gzip.compress(raw[:-100]))
    elif how == "bad magic":
        raw = bytearray(gzip.decompress(f.read_bytes()))
        raw[2] = 0x0D  # float32 instead of unsigned bytes
        f.write_bytes(gzip.compress(bytes(raw)))
    elif how == "labels disagree":
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    return f


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing", "missing file .*train-images"),
        ("not gzip", "corrupt IDX file"),
        ("truncated", "header says"),
        ("bad magic", "bad IDX header"),
        ("labels disagree", "files disagree"),
    ],
)
def test_bad_files_give_one_clear_error(tiny_data_dir: Path, how: str, message: str) -> None:
    _corrupt(tiny_data_dir, how)
    with pytest.raises(DataError, match=message) as e:
        load_fashion_mnist(tiny_data_dir)
    if how != "labels disagree":
        assert "apt-get install dataset-fashion-mnist" in str(e.value)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_fashion_mnist(tmp_path / "nowhere")


def test_data_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NAS_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir("/elsewhere") == Path("/elsewhere")
    monkeypatch.delenv("NAS_DATA_DIR")
    assert resolve_data_dir() == Path("/usr/share/datasets/fashion-mnist")


def test_to_input_scales_and_resizes() -> None:
    x = torch.full((2, 28, 28), 255, dtype=torch.uint8)
    y = to_input(x, 96, torch.float32)
    assert y.shape == (2, 1, 96, 96)
    torch.testing.assert_close(y, torch.ones_like(y))
    assert to_input(x, 28, torch.float32).shape == (2, 1, 28, 28)


def test_real_fashion_mnist(real_data) -> None:
    d = real_data
    assert (len(d.train_x), len(d.val_x), len(d.test_x)) == (50_000, 10_000, 10_000)
    # Fashion-MNIST is balanced: 6000 of each class in train+val, 1000 in test
    _, y = d.full_train()
    assert torch.bincount(y).tolist() == [6000] * 10
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
    # mean pixel of Fashion-MNIST's training set is 72.94 / 255 = 0.286
    assert abs(d.train_x.float().mean().item() / 255 - 0.286) < 0.003


def test_split_permutation_is_pinned_by_arithmetic() -> None:
    """The same indices on every host and library version: pinned values, a true
    permutation, and another seed gives another order."""
    from nas.data.dataset import split_permutation

    p = split_permutation(60_000, 0)
    assert sorted(p.tolist()) == list(range(60_000))
    assert p[:5].tolist() == [34952, 30320, 10062, 9539, 25727]
    assert split_permutation(60_000, 1)[:5].tolist() != p[:5].tolist()


def test_fingerprint_names_files_and_split(real_data, tiny_data_dir, monkeypatch) -> None:
    import nas.data.dataset

    fp = real_data.fingerprint
    assert (fp["train"], fp["val"], fp["test"]) == (50_000, 10_000, 10_000)
    assert fp["shape"] == [28, 28, 1] and fp["classes"] == 10
    tiny = load_fashion_mnist(tiny_data_dir).fingerprint
    assert tiny["content_sha256"] != fp["content_sha256"]
    monkeypatch.setattr(nas.data.dataset, "SPLIT_SEED", 1)
    other = load_fashion_mnist(tiny_data_dir).fingerprint
    assert other["val_from"] != tiny["val_from"]  # another split: another fingerprint
    assert other["content_sha256"] != tiny["content_sha256"]


# -- the same real images in every layout -----------------------------------------------

N_TRAIN, N_TEST = 1_200, 300  # real Fashion-MNIST images: the first of each file


def _real_subset(real_data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from nas.data.formats import read_idx

    def pair(prefix: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = read_idx(real_data_dir / f"{prefix}-images-idx3-ubyte.gz", 3)[:n]
        y = read_idx(real_data_dir / f"{prefix}-labels-idx1-ubyte.gz", 1)[:n]
        return x, y

    return {"train": pair("train", N_TRAIN), "test": pair("t10k", N_TEST)}


def write_layouts(real_data_dir: Path, root: Path) -> dict[str, Path]:
    """The same real images as IDX files, an ImageFolder of PNGs (files named by index,
    so that they read back in index order) and a .npz."""
    from PIL import Image

    subset = _real_subset(real_data_dir)
    idx = root / "idx"
    idx.mkdir(parents=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = subset[split]
        write_idx(idx / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(idx / f"{prefix}-labels-idx1-ubyte.gz", y)
        for i, (image, label) in enumerate(zip(x, y)):
            folder = root / "png" / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    npz = root / "fashion.npz"
    np.savez(
        npz,
        train_images=subset["train"][0],
        train_labels=subset["train"][1],
        test_images=subset["test"][0],
        test_labels=subset["test"][1],
    )
    return {"idx": idx, "folder": root / "png", "npz": npz}


def test_one_dataset_in_three_layouts_is_one_dataset(tmp_path, real_data_dir, monkeypatch):
    """IDX, PNG folder and .npz of the same real images: equal arrays (every split, in
    order), equal fingerprints, and a search with one seed gives each the same accuracies."""
    from nas.search import main as search

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    layouts = write_layouts(real_data_dir, tmp_path / "data")
    loaded = {kind: load_data(str(path)) for kind, path in layouts.items()}
    ref = loaded["idx"]
    assert ref.train_x.shape == (1_000, 28, 28, 1) and len(ref.test_x) == N_TEST
    for kind, d in loaded.items():
        assert d.kind == kind
        for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
            assert torch.equal(getattr(d, name), getattr(ref, name)), (kind, name)
        assert d.fingerprint == ref.fingerprint, kind
    accuracies = {}
    monkeypatch.chdir(tmp_path)
    for kind, path in layouts.items():
        argv = ["--preset", "tiny", "--budget", "smoke", "--trials", "2", "--device", "cpu"]
        argv += ["--sampler", "random", "--seed", "3", "--data", str(path), "--study", kind]
        assert search(argv) == 0
        study = optuna.load_study(study_name=kind, storage=f"sqlite:///studies/{kind}.db")
        accuracies[kind] = [t.values[0] for t in study.trials]
        assert study.user_attrs["data"]["content_sha256"] == ref.fingerprint["content_sha256"]
    assert accuracies["folder"] == accuracies["idx"] == accuracies["npz"], accuracies
    assert len(set(accuracies["idx"])) == 2  # two networks, told apart


def test_digits_search_with_its_own_classes_resized(tmp_path, monkeypatch, capsys) -> None:
    """scikit-learn's 1,797 real 8x8 digits (6 classes kept), as a Keras-style .npz: a
    search resizes them to 16 px and builds 6-way networks."""
    from sklearn.datasets import load_digits

    from nas.search import main as search

    digits = load_digits(n_class=6)
    x = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
    path = tmp_path / "digits.npz"
    np.savez(
        path,
        x_train=x[:900],
        y_train=digits.target[:900],
        x_test=x[900:],
        y_test=digits.target[900:],
    )
    monkeypatch.chdir(tmp_path)
    argv = ["--preset", "tiny", "--budget", "smoke", "--trials", "2", "--device", "cpu"]
    assert search([*argv, "--data", str(path), "--image-size", "16", "--study", "d"]) == 0
    out = capsys.readouterr().out
    assert "8x8, 1 channel, 6 classes" in out and "750 train, 150 val (held out of train)" in out
    study = optuna.load_study(study_name="d", storage="sqlite:///studies/d.db")
    config = study.trials[0].user_attrs["config"]
    assert (config["num_classes"], config["image_size"], config["in_channels"]) == (6, 16, 1)
    mean = x[:900].mean() / 255  # held-out split aside, close to the whole train file's
    assert abs(config["input_mean"][0] - mean) < 0.02
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_crop_flip_equals_pad_crop_mirror_in_numpy() -> None:
    """The device version against the recipe written plainly: zero-pad 4, crop, mirror."""
    from nas.data.dataset import CROP_PAD, crop_flip

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 10, 12, 3), dtype=torch.uint8, generator=g)
    aug = torch.cat(
        (torch.randint(0, 9, (64, 2), generator=g), torch.randint(0, 2, (64, 1), generator=g)), 1
    )
    ours = crop_flip(x, aug).numpy()
    p = CROP_PAD
    padded = np.pad(x.numpy(), ((0, 0), (p, p), (p, p), (0, 0)))
    for i, (dy, dx, flip) in enumerate(aug.tolist()):
        want = padded[i, dy : dy + 10, dx : dx + 12]
        if flip:
            want = want[:, ::-1]
        np.testing.assert_array_equal(ours[i], want)
    assert (aug[:, 2] == 1).any() and (aug[:, :2] != p).any()  # flips and shifts were drawn


def _digits_npz(path: Path, shuffle_labels: bool = False) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits(n_class=6)
    x = np.round(digits.images * (255 / 16)).astype(np.uint8)
    y = digits.target.copy()
    if shuffle_labels:
        y[:900] = np.roll(y[:900], 1)
    np.savez(path, x_train=x[:900], y_train=y[:900], x_test=x[900:], y_test=y[900:])
    return path


def test_a_study_refuses_other_data_and_refine_reads_its_own(tmp_path, monkeypatch, capsys):
    """Resuming with the same images under other labels is refused; nas.refine trains on
    the study's own data, found from the study; moved data that changed is refused."""
    from nas.refine import main as refine
    from nas.search import main as search

    monkeypatch.chdir(tmp_path)
    path = _digits_npz(tmp_path / "digits.npz")
    argv = ["--preset", "tiny", "--budget", "smoke", "--device", "cpu", "--image-size", "16"]
    argv += ["--study", "d", "--sampler", "random", "--seed", "0"]
    assert search([*argv, "--trials", "3", "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "note: each trial is scored on all 150 validation images (budget 'smoke' asks" in out
    # how finely 150 images tell networks apart: 100/150 points an image, 50/sqrt(150) the
    # standard error of an accuracy near 50 %
    assert "one image is 0.67 points of accuracy" in out and "up to 4.1 points" in out, out
    assert "budget 'smoke' trains each network for 16 steps of 32 images, too few" in out
    other = _digits_npz(tmp_path / "other.npz", shuffle_labels=True)
    assert search([*argv, "--trials", "1", "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert "created with another data (" in err and "content_sha256" in err
    assert err.count("\n") == 1
    capsys.readouterr()
    assert search([*argv, "--trials", "1"]) == 0  # without --data: the study's own
    assert f"data {path} (npz): 8x8, 1 channel, 6 classes" in capsys.readouterr().out
    assert refine(["--study", "d", "--budget", "smoke-long", "--top", "2", "--device", "cpu"]) == 0
    refined = optuna.load_study(
        study_name="d-refined-smoke-long", storage="sqlite:///studies/d.db"
    )
    assert [t.state for t in refined.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert refined.trials[0].user_attrs["config"]["num_classes"] == 6
    capsys.readouterr()
    _digits_npz(path, shuffle_labels=True)  # the file at the study's path changed
    assert refine(["--study", "d", "--budget", "long", "--top", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "are not those study 'd' was searched on" in err and err.count("\n") == 1


def test_data_too_large_for_the_device_is_refused_before_reading(tmp_path, monkeypatch):
    """The limit is half the device's memory; here made tiny to show the refusal."""
    import nas.data.dataset

    path = tmp_path / "big.npz"
    np.savez(path, x_train=np.zeros((1000, 32, 32, 3), np.uint8), y_train=np.arange(1000) % 2)
    monkeypatch.setattr(nas.data.dataset, "DEVICE_SHARE", 1e-9)
    with pytest.raises(DataError, match=r"needs 2\.9 MiB as uint8, more than 0\.0 MiB \(half"):
        load_data(str(path), device=torch.device("cpu"))
    monkeypatch.setattr(nas.data.dataset, "DEVICE_SHARE", 0.5)
    assert load_data(str(path), device=torch.device("cpu")).train_x.shape == (834, 32, 32, 3)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_phone_photos_are_turned_upright_by_their_exif_orientation(
    tmp_path, real_data_dir, monkeypatch, suffix: str
) -> None:
    """A photo a phone stored on its side, with EXIF orientation 6 (turn a quarter
    clockwise to show), decodes upright, as viewers show it. Fashion-MNIST images cut to
    28x20 (so that a quarter turn shows in the shape too), every other one stored turned
    with the tag: the folder reads back as the upright images (PNG: exactly; JPEG: as
    close as the same picture saved upright)."""
    from PIL import Image

    from nas.data.decode import read_folder

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    x = read_idx(real_data_dir / "t10k-images-idx3-ubyte.gz", 3)[:8, :, 4:24]  # (8, 28, 20)
    quality = {"quality": 100, "subsampling": 0} if suffix == ".jpg" else {}
    for turned, root in ((False, tmp_path / "upright"), (True, tmp_path / "phone")):
        for i, image in enumerate(x):
            folder = root / ("a" if i % 2 == 0 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            im, exif = Image.fromarray(image), Image.Exif()
            if turned and i % 2:
                im = im.transpose(Image.Transpose.ROTATE_90)  # stored on its side
                exif[0x0112] = 6
            im.save(folder / f"{i:03d}{suffix}", exif=exif, **quality)
    phone, _ = read_folder(tmp_path / "phone")
    upright, _ = read_folder(tmp_path / "upright")
    got, want = phone.splits["train"][0], upright.splits["train"][0]
    assert got.shape == want.shape == (8, 28, 20, 1) and not phone.notes  # none resized
    if suffix == ".png":
        assert np.array_equal(got[..., 0], x)
    else:  # a quarter turn moves JPEG's 8x8 blocks: the same picture, other rounding.
        # At quality 100 that rounding is 0.07 grey levels on average; a picture left on
        # its side differs by 82 (both measured here): 2 lies far from either.
        diff = np.abs(got.astype(int) - want.astype(int))
        turned = np.rot90(got[1::2], axes=(1, 2))[:, :20, :20].astype(int)  # as if ignored
        sideways = np.abs(turned - want[1::2, :20, :20].astype(int))
        assert diff.mean() < 2 < sideways.mean(), (diff.mean(), sideways.mean())


def test_a_folder_as_it_comes_leaves_out_hidden_entries_and_names_its_bad_images(
    tmp_path, real_data_dir, monkeypatch
) -> None:
    """Fashion-MNIST pixels as PNGs in two class folders, with what real folders carry: a
    Jupyter .ipynb_checkpoints/ folder of images, macOS's ._ twins (not images) and a
    .DS_Store. The hidden entries are left out, and said; the classes are the two. Then
    four truncated PNGs: the one line names the first, more by name, and the count per
    class folder."""
    from PIL import Image

    from nas.data.decode import read_folder
    from nas.errors import DataError

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    x = read_idx(real_data_dir / "t10k-images-idx3-ubyte.gz", 3)[:8]
    root = tmp_path / "photos"
    for i, image in enumerate(x):
        folder = root / ("coat" if i % 2 else "shirt")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
        (folder / f"._{i:03d}.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "coat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / ".ipynb_checkpoints").mkdir()
    Image.fromarray(x[0]).save(root / ".ipynb_checkpoints" / "000.png")
    raw, _ = read_folder(root)
    assert raw.classes == ["coat", "shirt"] and len(raw.splits["train"][0]) == 8
    assert any("10 hidden files and folders left out" in n for n in raw.notes), raw.notes
    png = (root / "coat" / "001.png").read_bytes()
    for i in range(4):
        (root / ("coat" if i < 3 else "shirt") / f"bad{i}.png").write_bytes(png[:60])
    with pytest.raises(DataError) as e:
        read_folder(root)
    line = str(e.value)
    assert (
        line.startswith(f"cannot read image {root / 'coat' / 'bad0.png'}: ") and "\n" not in line
    )
    assert (
        "(and 3 other images: bad1.png, bad2.png, bad3.png; per class folder: coat 3, "
        "shirt 1)" in line
    ), line


def _jpeg_folder(root: Path, x: np.ndarray, classes: tuple[str, ...]) -> None:
    """Real pixels as phone-style JPEGs (an EXIF block with orientation 1, upright), one
    class folder per name, images dealt round them."""
    from PIL import Image

    for i, image in enumerate(x):
        folder = root / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        exif = Image.Exif()
        exif[0x0112] = 1
        Image.fromarray(image).save(folder / f"{i:03d}.jpg", exif=exif, quality=95)


def test_skip_bad_images_leaves_them_out_and_the_fingerprint_is_of_what_was_used(
    tmp_path, real_data_dir, monkeypatch
) -> None:
    """Fashion-MNIST pixels as JPEGs in three class folders, and the same folder with what
    goes wrong in real ones: a JPEG cut off half way (its header reads, its pixels do not)
    and a text file named .jpg (no header). Without --skip-bad-images the read stops,
    naming both and the option; with it, the two are left out, said in one note with the
    count per class folder, and the data is exactly the clean folder's, fingerprint
    included. The cache entry of the skipping read is not taken by a read without it (it
    refuses again), and a class folder with only bad images is refused all the same."""
    import shutil

    from nas.errors import DataError

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    x = read_idx(real_data_dir / "t10k-images-idx3-ubyte.gz", 3)[:60]
    classes = ("coat", "dress", "shirt")
    clean, messy = tmp_path / "clean", tmp_path / "messy"
    _jpeg_folder(clean, x, classes)
    shutil.copytree(clean, messy)
    jpeg = (messy / "coat" / "000.jpg").read_bytes()
    (messy / "coat" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (messy / "shirt" / "notes.jpg").write_text("not a picture")
    with pytest.raises(DataError) as e:
        load_data(str(messy))
    line = str(e.value)
    assert "\n" not in line and "cut.jpg" in line and "notes.jpg" in line, line
    assert "per class folder: coat 1, shirt 1" in line and "--skip-bad-images" in line, line
    got = load_data(str(messy), skip_bad_images=True)
    want = load_data(str(clean))
    assert got.fingerprint == want.fingerprint
    assert torch.equal(got.train_x, want.train_x) and torch.equal(got.val_y, want.val_y)
    assert got.record()["skip_bad_images"] is True and "skip_bad_images" not in want.record()
    (note,) = [n for n in got.notes if "could not be read" in n]
    assert note.startswith("2 of 62 images could not be read and are left out "), note
    assert "per class folder: coat 1, shirt 1" in note, note
    again = load_data(str(messy), skip_bad_images=True)  # from the cache, said the same
    assert "decoded images read from the cache" in again.notes and note in again.notes
    assert again.fingerprint == want.fingerprint
    with pytest.raises(DataError, match="cut.jpg"):
        load_data(str(messy))  # the skipping read's cache entry is not this read's
    for p in (messy / "dress").iterdir():
        p.write_bytes(jpeg[:100])
    with pytest.raises(DataError, match=r"class folder .*dress holds no readable images \(20 "):
        load_data(str(messy), skip_bad_images=True)
