"""nas.train: the final training command on real Fashion-MNIST, and its bad inputs."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import torch

from conftest import small_config
from nas.config import ArchConfig
from nas.model import build_model, count_params
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
    assert main([str(cfg), "--epochs", "0.02", "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "s.result.json").read_text())
    assert result["bn_recalibration_images"] == 2560
    assert result["test_accuracy"] > 0.2
    out = capsys.readouterr().out
    assert "scoring (BN re-estimate on 2,560 train images, 10,000 test images) ..." in out
    assert "(BN statistics re-estimated on 2,560 training images" in out
    assert main([str(cfg), "--epochs", "1", "--out", str(tmp_path / "no" / "x")]) == 2
    assert f"folder {tmp_path / 'no'} does not exist" in capsys.readouterr().err
