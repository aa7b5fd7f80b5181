"""Optimisation steps on parameter subsets, with mixed precision and gradient averaging across ranks.

Both loops take several steps per click round, each on another part of the model (docs/interaction.md): the
network (image encoder, fusion, mask decoder, pixel branch), the prompt side (prompt encoder, mean/variance head) and
the weight head. One Adam holds the three as parameter groups; a step updates only the parameters that
received a gradient from its loss (Adam skips parameters whose `.grad` is None).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist

from engine.distributed import mean_over_ranks, world_size
from models import AESPAModel
from utils import InputError

PARAM_GROUPS = {
    "network": ("image_encoder", "fcomb", "mask_decoder", "pixel_branch", "memory"),
    "prompt": ("prompt_encoder", "mean_var_head"),
    "weight": ("weight_head",),
}


def build_optimizer(model: AESPAModel, lr: float) -> torch.optim.Adam:
    """Adam (betas 0.9/0.999) with one parameter group per part of the model, named in `group['name']`."""
    groups = [
        {
            "name": name,
            "params": [p for m in modules if getattr(model, m) is not None for p in getattr(model, m).parameters()],
        }
        for name, modules in PARAM_GROUPS.items()
    ]
    return torch.optim.Adam(
        groups, lr=lr, betas=(0.9, 0.999), fused=True
    )  # fused: one kernel per tensor, 3-4x faster on CPU


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (AVX512-BF16 or AMX, through oneDNN)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an older torch without the query: assume not
        return False


def effective_amp(device: torch.device, amp: str) -> str:
    """The mixed precision a run gets: `-amp bf16|fp16` on CUDA; `-amp bf16` on a CPU with bf16 units; else off."""
    if device.type == "cuda" and amp in AMP_DTYPES:
        return amp
    if device.type == "cpu" and amp == "bf16" and cpu_has_bf16():
        return amp
    return "off"


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast for the mixed precision `effective_amp` gives; float32 (no autocast) otherwise."""
    amp = effective_amp(device, amp)
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


class Diverged(InputError):
    """The training loss became non-finite: the weights are lost from that step on, so the run stops (one line; the
    checkpoints of the epochs finished before are kept)."""


class Stepper:
    """zero-grad, backward (scaled under fp16), average gradients over ranks, step — for one loss at a time."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, amp: str = "off"):
        self.optimizer = optimizer
        self.device = device
        self.amp = effective_amp(device, amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.distributed = world_size() > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.amp)

    def step(self, loss: torch.Tensor) -> None:
        """One optimisation step on the parameters `loss` depends on."""
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.update()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def update(self) -> None:
        if self.distributed:
            self._average_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def check_loss(self, loss: float, where: str) -> None:
        """Diverged when `loss` (a batch's training loss, `where` naming the batch) is not finite."""
        if not math.isfinite(loss):
            lr = self.optimizer.param_groups[0]["lr"]
            raise Diverged(
                f"{where}: the training loss is not finite ({loss}); the run diverged at learning rate {lr:g} "
                "(a smaller -lr may help)"
            )

    def _average_gradients(self) -> None:
        """One all-reduce of all present gradients, flattened (every rank runs the same steps in order)."""
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over the ranks that step together (itself in a single process)."""
        return mean_over_ranks(tensor)

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
