"""nas.train: the final training command on real Fashion-MNIST and on real colour
photographs (CIFAR's layout and an ImageFolder), its programs, and its bad inputs."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import torch

from conftest import small_config
from nas.arch.config import ArchConfig
from nas.arch.model import build_model, count_params
from nas.train import main

SMALL = small_config(image_size=28)


def test_train_cli_on_real_data(tmp_path, real_data_dir, capsys) -> None:
    """nas.train: full 60k training set, scored on the 10k test set; checkpoint and JSON."""
    cfg = tmp_path / "best.json"
    cfg.write_text(SMALL.to_json())
    argv = [str(cfg), "--epochs", "0.1", "--batch-size", "64", "--device", "cpu"]
    assert main(argv) == 0
    result = json.loads((tmp_path / "best.result.json").read_text())
    assert result["test_images"] == 10_000
    # 0.1 epoch of the 60k (train + val): whole batches, round(0.1 * 937 steps per epoch)
    assert result["train_images"] == 94 * 64
    assert result["test_accuracy"] > 0.5  # 94 steps on real data: well above chance
    ckpt = torch.load(tmp_path / "best.pt", weights_only=False)
    model = build_model(ArchConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    assert count_params(model) == count_params(build_model(SMALL))
    assert ckpt["result"]["test_accuracy"] == result["test_accuracy"]
    out = capsys.readouterr().out
    epoch_line = re.search(r"^epoch 1/1: train loss (\S+), \d+ s$", out, re.M)
    assert epoch_line and 0 < float(epoch_line[1]) < math.log(10) + 0.5, out
    assert f"{result['epoch_train_losses'][0]:.4f}" == epoch_line[1]
    assert f"test accuracy {result['test_accuracy']:.4f} on 10,000 test images" in out
    assert "best.pt2 (torch.export: loads without nas)" in out
    assert (
        _fresh_process_test_accuracy(tmp_path / "best.pt2", real_data_dir, tmp_path)
        == (result["test_accuracy"])
    )
    shipped = result["latency_cpu_shipped"]
    assert "AOTInductor package, fresh process" in shipped["device"] and shipped["value"] > 0
    assert (
        f"wrote {tmp_path / 'best.cpu.pt2'}: {shipped['value']:.3g} ms per image as shipped" in out
    )
    _package_classifies_images_of_any_size_as_trained(
        tmp_path, model, real_data_dir, result["test_accuracy"]
    )


# Run by a fresh `python -I` where `import nas` fails: the CPU package's predictions for
# uint8 images of one size (an .npy file), as a user would load it.
PREDICT_ALONE = """
import sys
sys.modules["nas"] = None
import numpy as np, torch
run = torch._inductor.aoti_load_package(sys.argv[1])
x = torch.from_numpy(np.load(sys.argv[2]))
with torch.inference_mode():
    logits = torch.cat([run(x[i : i + 100]) for i in range(0, len(x), 100)])
np.save(sys.argv[3], logits.numpy())
"""


def _package_classifies_images_of_any_size_as_trained(folder, model, data_dir, accuracy) -> None:
    """best.cpu.pt2, in a fresh process without nas, on the real test images as stored
    (28x28) and enlarged by Pillow to 64x64 and 36x44 (a user's own sizes): at each size
    its predictions are the trained network's on the same input conversion (nas.deploy:
    Pillow's resize back to 28x28, then training's), but for near ties, where the C++
    kernels' other order of float32 sums may tip a prediction: images whose two best
    logits lie within 1e-3 (float32 sums of these sizes differ by under 1e-5). At 28x28
    its accuracy is nas.train's, to those near ties."""
    from PIL import Image

    from nas.data.dataset import load_fashion_mnist
    from nas.deploy.artifact import Deployed

    data = load_fashion_mnist(data_dir)
    x, y = data.test_x[..., 0].numpy(), data.test_y
    script = folder / "predict_alone.py"
    script.write_text(PREDICT_ALONE)
    trained = Deployed(model.eval(), (28, 28), SMALL.image_size).eval()
    for h, w in [(28, 28), (64, 64), (36, 44)]:
        images = np.stack(
            [np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR)) for a in x]
        )
        np.save(folder / "images.npy", images)
        done = subprocess.run(
            [
                sys.executable,
                "-I",
                str(script),
                str(folder / "best.cpu.pt2"),
                str(folder / "images.npy"),
                str(folder / "logits.npy"),
            ],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        shipped = torch.from_numpy(np.load(folder / "logits.npy"))
        with torch.no_grad():
            ref = torch.cat(
                [
                    trained(torch.from_numpy(images[i : i + 500]))
                    for i in range(0, len(images), 500)
                ]
            )
        top2 = ref.topk(2, dim=1).values
        near_tie = (top2[:, 0] - top2[:, 1]) < 1e-3
        differ = shipped.argmax(1) != ref.argmax(1)
        assert not (differ & ~near_tie).any(), (h, w, int(differ.sum()))
        if (h, w) == (28, 28):
            got = float((shipped.argmax(1) == y).float().mean())
            assert abs(got - accuracy) <= int(near_tie.sum()) / len(y), (got, accuracy)


# Run by a fresh `python -I` (isolated: no PYTHONPATH, no current folder on sys.path), with
# any import of nas made to fail: the program loads and scores with PyTorch alone.
LOAD_ALONE = """
import gzip, sys
sys.modules["nas"] = None  # nas is installed (editable) here: make any import of it fail
import numpy as np, torch
program, data = sys.argv[1], sys.argv[2]
def idx(name):
    raw = gzip.open(f"{data}/{name}", "rb").read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    flat = np.frombuffer(raw, np.uint8, offset=4 + 4 * dims)
    return torch.from_numpy(flat.reshape(shape).copy())
x, y = idx("t10k-images-idx3-ubyte.gz"), idx("t10k-labels-idx1-ubyte.gz").long()
model = torch.export.load(program).module()
with torch.no_grad():
    correct = sum(
        int((model(x[i : i + 50]).argmax(1) == y[i : i + 50]).sum()) for i in range(0, len(x), 50)
    )
print(correct / len(x))
"""


def _fresh_process_test_accuracy(program, data_dir, folder) -> float:
    script = folder / "load_alone.py"
    script.write_text(LOAD_ALONE)
    done = subprocess.run(
        [sys.executable, "-I", str(script), str(program), str(data_dir)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return float(done.stdout.strip())


def test_train_cli_bad_input(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text('{"growth_rate": -3}')
    assert main([str(cfg)]) == 2
    assert "growth_rate must be in" in capsys.readouterr().err
    cfg.write_text(SMALL.to_json())
    for bad, message in (
        (["--epochs", "0"], "--epochs must be in"),
        (["--epochs", "x"], "invalid float value"),
        (["--recipe", "adam"], "invalid choice"),
        (["--batch-size", "0"], "expected a positive integer, got 0"),
    ):
        assert main([str(cfg), *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_short_run_re_estimates_bn_and_says_so(tmp_path, real_data_dir, capsys) -> None:
    """0.02 epoch (4 steps): BN's running statistics still near their initial values
    scored exactly chance (0.1000) before; re-estimated on 2,560 train images, well above
    (chance on 10k test images is 0.100 +- 0.003)."""
    cfg = tmp_path / "s.json"
    cfg.write_text(SMALL.to_json())
    assert main([str(cfg), "--epochs", "0.02", "--device", "cpu", "--no-cpu-package"]) == 0
    result = json.loads((tmp_path / "s.result.json").read_text())
    assert result["bn_recalibration_images"] == 2560
    assert result["test_accuracy"] > 0.2
    out = capsys.readouterr().out
    assert "scoring (BN re-estimate on 2,560 train images, 10,000 test images) ..." in out
    assert "(BN statistics re-estimated on 2,560 training images" in out
    assert main([str(cfg), "--epochs", "1", "--out", str(tmp_path / "no" / "x")]) == 2
    assert f"folder {tmp_path / 'no'} does not exist" in capsys.readouterr().err


# -- colour images: a CIFAR-format folder and an ImageFolder of real photographs ---------------

RGB_CLASSES = ["china-bottom", "china-top", "flower-bottom", "flower-top"]


def rgb_patches(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """32x32 RGB patches of scikit-learn's two bundled photographs (427x640), labelled by
    photograph and half: real colour pixels, four classes."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # china.jpg, flower.jpg
    rng = np.random.default_rng(seed)
    x, y = np.zeros((n, 32, 32, 3), np.uint8), rng.integers(0, 4, n)
    for i, label in enumerate(y):
        photo = photos[0 if RGB_CLASSES[label].startswith("china") else 1]
        top = RGB_CLASSES[label].endswith("top")
        r = rng.integers(0, 213 - 32) + (0 if top else 213)
        c = rng.integers(0, 640 - 32)
        x[i] = photo[r : r + 32, c : c + 32]
    return x, y


def write_cifar(folder: Path, train, test) -> Path:
    """CIFAR-10's python layout: rows of 3 planes of 32x32, labels, and batches.meta."""
    import pickle

    folder.mkdir(parents=True)
    for name, (x, y) in (("data_batch_1", train), ("test_batch", test)):
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        batch = {b"data": rows, b"labels": [int(v) for v in y]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [n.encode() for n in RGB_CLASSES]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_image_folder(root: Path, train, test) -> Path:
    from PIL import Image

    for split, (x, y) in (("train", train), ("test", test)):
        for i, (image, label) in enumerate(zip(x, y)):
            folder = root / split / RGB_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


LOAD_CIFAR_ALONE = """
import pickle, sys
sys.modules["nas"] = None
import numpy as np, torch
program, test_batch = sys.argv[1], sys.argv[2]
d = pickle.load(open(test_batch, "rb"), encoding="bytes")
x = torch.from_numpy(d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy())
y = torch.tensor(d[b"labels"])
model = torch.export.load(program).module()
with torch.no_grad():
    print(int((model(x).argmax(1) == y).sum()) / len(y))
"""


def test_colour_data_search_export_train_and_program(tmp_path, monkeypatch, capsys) -> None:
    """CIFAR batches and an ImageFolder of the same RGB photographs read as one dataset;
    a search on the CIFAR folder (crop-flip by default), its export, nas.train on the
    export's own data, and the .pt2 scoring the test batch in a fresh process without nas
    exactly as nas.train did."""
    from nas.data.dataset import load_data
    from nas.export import main as export
    from nas.search import main as search

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    train, test = rgb_patches(480, seed=0), rgb_patches(120, seed=1)
    cifar = write_cifar(tmp_path / "cifar", train, test)
    folder = write_image_folder(tmp_path / "photos", train, test)
    a, b = load_data(str(cifar)), load_data(str(folder))
    assert a.fingerprint == b.fingerprint and a.classes == b.classes == tuple(RGB_CLASSES)
    assert torch.equal(a.train_x, b.train_x) and a.train_x.shape[1:] == (32, 32, 3)
    monkeypatch.chdir(tmp_path)
    argv = ["--preset", "tiny", "--budget", "smoke", "--trials", "2", "--device", "cpu"]
    assert search([*argv, "--data", str(cifar), "--study", "rgb"]) == 0
    out = capsys.readouterr().out
    assert "32x32, 3 channels, 4 classes (china-bottom, china-top" in out
    study = optuna.load_study(study_name="rgb", storage="sqlite:///studies/rgb.db")
    assert study.user_attrs["budget"]["augment"] == "crop-flip"
    assert export(["--study", "rgb", "--out", "best.json"]) == 0
    exported = json.loads((tmp_path / "best.json").read_text())
    assert exported["data"]["source"] == str(cifar) and exported["config"]["in_channels"] == 3
    argv = ["best.json", "--epochs", "1", "--batch-size", "32", "--device", "cpu"]
    capsys.readouterr()
    assert main([*argv, "--no-cpu-package"]) == 0
    assert "for 1 epoch (" in capsys.readouterr().out  # one epoch, in words that say one
    result = json.loads((tmp_path / "best.result.json").read_text())
    assert result["test_images"] == 120 and result["budget"]["augment"] == "crop-flip"
    script = tmp_path / "alone.py"
    script.write_text(LOAD_CIFAR_ALONE)
    done = subprocess.run(
        [sys.executable, "-I", str(script), "best.pt2", str(cifar / "test_batch")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == result["test_accuracy"]


def test_a_config_for_other_data_is_one_line(tmp_path, real_data_dir, capsys) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(replace(SMALL, in_channels=3).to_json())
    assert main([str(cfg), "--epochs", "0.01", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "takes 3-channel images in 10 classes" in err and err.count("\n") == 1
    cfg.write_text(replace(SMALL, num_classes=3).to_json())
    assert main([str(cfg), "--epochs", "0.01", "--device", "cpu"]) == 2
    assert "in 3 classes, the data fashion-mnist has 1-channel" in capsys.readouterr().err


def test_data_without_a_test_split_is_scored_on_its_validation_split(tmp_path, capsys) -> None:
    """scikit-learn's digits as a .npz of a training split alone: nas.train trains on its
    train part and scores on the held-out validation part, and says so."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    npz = tmp_path / "digits.npz"
    np.savez(npz, train_images=images, train_labels=digits.target.astype(np.int64))
    cfg = tmp_path / "c.json"
    cfg.write_text(replace(SMALL, image_size=8).to_json())
    argv = [str(cfg), "--data", str(npz), "--epochs", "0.1", "--batch-size", "64"]
    assert main([*argv, "--device", "cpu", "--no-cpu-package"]) == 0
    out = capsys.readouterr().out
    assert "has no test split: trained on train only and scored on the validation split" in out
    result = json.loads((tmp_path / "c.result.json").read_text())
    assert result["test_images"] == 1797 // 6  # min(10,000, N/6) held out for validation


def test_a_run_of_too_few_steps_says_what_to_change_and_the_change_helps(
    tmp_path, real_data, capsys
) -> None:
    """1,003 real Fashion-MNIST images at the default batch of 256 for 3 epochs: 9 steps,
    too few to learn; nas.train says so and what to run instead, and the run it names
    (more, smaller steps over the same images) scores higher on the same test images."""
    data = tmp_path / "small.npz"
    np.savez(
        data,
        train_images=real_data.train_x[:1003, ..., 0].numpy(),
        train_labels=real_data.train_y[:1003].numpy(),
        test_images=real_data.test_x[:500, ..., 0].numpy(),
        test_labels=real_data.test_y[:500].numpy(),
    )
    cfg = tmp_path / "net.json"
    cfg.write_text(SMALL.to_json())
    argv = [str(cfg), "--data", str(data), "--device", "cpu", "--no-cpu-package"]
    assert main([*argv, "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    short = json.loads((tmp_path / "net.result.json").read_text())
    too_few = r"note: (\d+) steps of 256 images are too few .* try "
    hint = re.search(too_few + r"(--batch-size \d+ --epochs \S+) \((\d+) steps\)", out)
    assert hint and int(hint[1]) == short["train_images"] // 256 == 9, out
    assert main([*argv, *hint[2].split()]) == 0
    hinted = json.loads((tmp_path / "net.result.json").read_text())
    assert hinted["train_images"] // hinted["budget"]["batch_size"] == int(hint[3]) >= 100
    assert "too few" not in capsys.readouterr().out
    assert hinted["test_accuracy"] > short["test_accuracy"], (hinted, short)


def test_skip_bad_images_is_kept_by_the_study_refine_and_train(
    tmp_path, real_data_dir, monkeypatch, capsys
) -> None:
    """A folder of Fashion-MNIST JPEGs with one cut off half way: nas.search refuses it,
    naming the option; with --skip-bad-images it searches, says how many were left out,
    and stores that with the study, so a continued study given only --study and --trials,
    nas.refine's reading of its data and nas.train of its export read the folder the same
    way (else each would stop at the bad image, or train on other data)."""
    from PIL import Image

    from nas.data.formats import read_idx
    from nas.export import main as export
    from nas.refine import study_data
    from nas.search import main as search

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    x = read_idx(real_data_dir / "t10k-images-idx3-ubyte.gz", 3)[:300]
    y = read_idx(real_data_dir / "t10k-labels-idx1-ubyte.gz", 1)[:300]
    for split, part in (("train", slice(0, 240)), ("test", slice(240, 300))):
        for i, (image, label) in enumerate(zip(x[part], y[part])):
            folder = tmp_path / "photos" / split / f"class {label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:03d}.jpg", quality=95)
    good = next((tmp_path / "photos" / "train" / "class 0").iterdir()).read_bytes()
    (tmp_path / "photos" / "train" / "class 0" / "cut.jpg").write_bytes(good[: len(good) // 2])
    argv = ["--preset", "tiny", "--budget", "smoke", "--device", "cpu", "--study", "p"]
    base = ["--study", "p", "--trials", "1"]
    assert search([*argv, "--trials", "1", "--data", "photos"]) == 2
    assert "--skip-bad-images leaves unreadable images out" in capsys.readouterr().err
    assert search([*argv, "--trials", "1", "--data", "photos", "--skip-bad-images"]) == 0
    out = capsys.readouterr().out
    assert "note: 1 of 301 images could not be read and are left out" in out, out
    assert search(base) == 0  # the study's own data, read as it was
    url = "sqlite:///studies/p.db"
    study = optuna.load_study(study_name="p", storage=url)
    assert len(study.trials) == 2 and study.user_attrs["data_record"]["skip_bad_images"]
    data = study_data(study, None, None, torch.device("cpu"))
    assert data.fingerprint == study.user_attrs["data"] and len(data.train_x) == 200
    assert export(["--study", "p", "--out", "best.json"]) == 0
    capsys.readouterr()
    train = ["best.json", "--epochs", "1", "--batch-size", "32", "--device", "cpu"]
    assert main([*train, "--no-cpu-package"]) == 0
    out = capsys.readouterr().out
    assert "1 of 301 images could not be read" in out, out
    assert json.loads((tmp_path / "best.result.json").read_text())["test_images"] == 60
