"""The files nas ships for a trained network, both made from one torch.export program of
the network behind its input conversion (`Deployed`):

  OUT.pt2      the torch.export program: portable (any machine with this PyTorch);
               `torch.export.load(p).module()(images)` runs it through Python node by node
  OUT.cpu.pt2  the same program compiled by AOTInductor into C++ kernels for this machine's
               kind of CPU (its vector instructions): `torch._inductor.aoti_load_package(p)
               (images)`; the faster one, whose latency nas prints for a pick (nas.deploy.timing)

The input contract (docs/commands.md): uint8 images as they come, (B, H, W) for a network
trained on grey images or (B, H, W, C) with its C channels, any batch, height and width
from 2 to 8192; an image of another size than the data's (H0, W0) is first resized to it
with antialiased bilinear on uint8, which is Pillow's BILINEAR (nas's folder loader resizes
so) to within one grey level; then as in training (nas.data.dataset.to_input: bilinear to
the network's input side, [0, 1], normalised inside the network). Output: float32 logits
(B, classes).
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nas.arch.config import ArchConfig
from nas.data.dataset import to_input

__all__ = [
    "MAX_SIDE",
    "Deployed",
    "compile_package",
    "export_program",
    "image_shape",
    "resize_like_pillow",
]

MAX_SIDE = 8192  # the largest height or width the shipped files take
# One compile at a time: trials compile from threads of one process (--concurrency), and
# warnings.catch_warnings and inductor's global config are not safe across threads.
_COMPILE_LOCK = threading.Lock()


def image_shape(h: int, w: int, c: int) -> tuple[int, ...]:
    """One image as the shipped files take it, from the data's (H, W, C): (H, W) for grey,
    (H, W, C) for colour."""
    return (int(h), int(w)) if c == 1 else (int(h), int(w), int(c))


def resize_like_pillow(
    images: torch.Tensor, size: tuple[int, int], uint8_kernel: bool | None = None
) -> torch.Tensor:
    """uint8 (B, H, W, C) -> uint8 (B, h, w, C): antialiased bilinear, within one grey level
    of Pillow's BILINEAR Image.resize; at the same size, the identity. On the CPU it is
    torch's uint8 port of Pillow's fixed-point resample; CUDA has no uint8 kernel for it, so
    there it runs in float32 and rounds (also within one level). `uint8_kernel`: which of
    the two (default: the uint8 kernel on the CPU only)."""
    x = images.permute(0, 3, 1, 2)
    if not (x.device.type == "cpu" if uint8_kernel is None else uint8_kernel):
        x = x.float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    if x.dtype != torch.uint8:
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1)


class Deployed(nn.Module):
    """uint8 images (B, H, W) or (B, H, W, C) of any size -> logits (B, classes): resized
    to the data's size (h, w) as Pillow's bilinear does, then converted as in training."""

    def __init__(
        self,
        net: nn.Module,
        size: tuple[int, int],
        image_size: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.net, self.size, self.image_size, self.dtype = net, size, image_size, dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 3:
            images = images.unsqueeze(-1)
        # Always resized, so that height and width stay dynamic (a branch on the size would
        # fix it at export): at the data's own size the resize is the identity.
        x = resize_like_pillow(images, self.size)
        return self.net(to_input(x, self.image_size, self.dtype))


def export_program(
    model: nn.Module,
    config: ArchConfig,
    shape: tuple[int, ...],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.export.ExportedProgram:
    """The network in eval mode (fp32 on the CPU, what nas.train ships; bf16 on a GPU for
    benchmarks/shipped_latency.py) as a torch.export program of `Deployed`, for the data's
    image shape `shape`, (H, W) grey or (H, W, C) colour, with a dynamic batch, height and
    width."""
    net = copy.deepcopy(model).to(device=device, dtype=dtype)
    net = net.to(memory_format=torch.contiguous_format).eval()
    h, w = shape[:2]
    # an example of neither the data's size nor 1 (export would specialise on either)
    example = torch.zeros(2, h + 3, w + 5, *shape[2:], dtype=torch.uint8, device=device)
    dims = {
        0: torch.export.Dim("batch", min=1, max=1 << 20),
        1: torch.export.Dim("height", min=2, max=MAX_SIDE),
        2: torch.export.Dim("width", min=2, max=MAX_SIDE),
    }
    deployed = Deployed(net, (h, w), config.image_size, dtype).eval()
    with torch.no_grad():
        return torch.export.export(deployed, (example,), dynamic_shapes=(dims,))


def compile_package(program: torch.export.ExportedProgram, path: Path) -> Path:
    """AOTInductor: `program` compiled to C++ kernels for this CPU (or, for a program on
    a GPU, for that GPU), packaged at `path`.

    Needs a C++ compiler (the one PyTorch's inductor finds: $CXX, else c++/g++/clang++);
    RuntimeError if the compile fails, with the compiler's reason."""
    import logging
    import warnings

    # the antialiased resize has no C shim and runs through the proxy executor, which
    # inductor warns of on every compile: the kernel it calls is the one eager calls
    logging.getLogger("torch._inductor.ir").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with _COMPILE_LOCK:
                out = torch._inductor.aoti_compile_and_package(
                    program,
                    package_path=str(path),
                    inductor_configs={
                        # with AOTI_RUNTIME_CHECK_INPUTS=1 the package refuses a wrong dtype
                        # or rank; by default that check also refuses batch 1 (bound 2)
                        "aot_inductor.check_lowerbound": False,
                        # else the kernels bake in this process's thread count (an OpenMP
                        # num_threads clause, which torch.set_num_threads cannot lower): the
                        # package follows the caller's count, as eager does
                        "cpp.dynamic_threads": True,
                    },
                )
        except Exception as e:  # inductor's errors (a compiler missing or failing) vary
            lines = [x for x in str(e).splitlines() if x.strip()] or [type(e).__name__]
            raise RuntimeError(f"AOTInductor could not compile {path.name}: {lines[0]}") from e
    return Path(out)
