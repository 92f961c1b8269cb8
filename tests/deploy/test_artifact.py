"""nas.deploy.artifact: what the shipped files take (any size, resized as Pillow resizes)
and that the exported program computes what the network computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import small_config
from nas.arch.model import build_model
from nas.data.dataset import to_input
from nas.deploy.artifact import Deployed, export_program, resize_like_pillow


def pillow(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, H, W) uint8 -> (B, h, w): Image.resize(BILINEAR), as nas's folder loader."""
    return np.stack(
        [
            np.asarray(Image.fromarray(a).resize(size[::-1], Image.Resampling.BILINEAR))
            for a in images
        ]
    )


@pytest.mark.parametrize("uint8_kernel", [True, False], ids=["cpu-uint8", "float-as-on-cuda"])
@pytest.mark.parametrize("size", [(64, 64), (36, 44), (20, 17)])
def test_the_resize_is_pillows_within_one_grey_level(real_data, size, uint8_kernel) -> None:
    """Real Fashion-MNIST test images resized to another size, down and up: torch's uint8
    antialiased bilinear is a port of Pillow's fixed-point resample, and the float32 one
    (a GPU's) rounds the same weights, so no pixel is more than one grey level (the last
    bit of a rounding) from Image.resize; plain bilinear (no antialias, what to_input does),
    the bug this exists for, is tens of levels off."""
    x = real_data.test_x[:200].numpy()[..., 0]  # (200, 28, 28) uint8
    images = torch.from_numpy(x)[..., None]
    ours = resize_like_pillow(images, size, uint8_kernel)[..., 0].numpy()
    diff = np.abs(ours.astype(int) - pillow(x, size).astype(int))
    assert ours.dtype == np.uint8 and diff.max() <= 1, diff.max()
    if size[0] < 28:  # downscaling: where antialias matters
        plain = F.interpolate(
            torch.from_numpy(x)[:, None].float(), size=size, mode="bilinear", align_corners=False
        )
        off = np.abs(plain.round()[:, 0].numpy() - pillow(x, size).astype(float))
        assert off.max() > 10


def test_at_the_datas_own_size_the_shipped_network_is_the_trained_one(real_data) -> None:
    """At the data's size the resize is the identity: the same logits, bit for bit, as
    the network on training's own input conversion."""
    config = small_config()
    net = build_model(config).eval()
    x = real_data.test_x[:64]
    with torch.no_grad():
        shipped = Deployed(net, (28, 28), config.image_size)(x[..., 0])
        trained = net(to_input(x, config.image_size, torch.float32))
    assert torch.equal(shipped, trained)


def test_the_program_takes_any_height_and_width_and_batch() -> None:
    """One exported program for (B, H, W) grey images of any size: batch 1 and 5, square,
    oblong, smaller and larger than the data's 28x28, each the same logits as the module
    (torch.export runs the same kernels: float32 exact)."""
    config = small_config()
    net = build_model(config).eval()
    program = export_program(net, config, (28, 28)).module()
    module = Deployed(net, (28, 28), config.image_size).eval()
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 28, 28), (5, 64, 64), (2, 36, 44), (1, 9, 300)]:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        with torch.no_grad():
            assert torch.equal(program(x), module(x)), shape


def test_the_package_follows_the_callers_thread_count(tmp_path) -> None:
    """Compiled in a process set to one thread (fewer than the cores), inductor would bake
    that count into the C++ kernels (no OpenMP region at 1, `num_threads(N)` at other N),
    which torch.set_num_threads cannot change where the package runs; compiled with
    dynamic threads, every parallel region follows the caller's count."""
    import os
    import zipfile

    from nas.deploy.artifact import compile_package

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 or more cores to tell")
    config = small_config()
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = compile_package(
            export_program(build_model(config), config, (28, 28)), tmp_path / "n.cpu.pt2"
        )
    finally:
        torch.set_num_threads(saved)
    with zipfile.ZipFile(path) as z:
        source = "".join(z.read(n).decode() for n in z.namelist() if n.endswith(".cpp"))
    assert "#pragma omp parallel" in source and "num_threads(" not in source
