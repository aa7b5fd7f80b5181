"""LiteMedSAM's image encoder: a TinyViT (MobileSAM variant) in the key layout of `lite_medsam.pth`.

Resolution flow for a Bx3xSxS image (S a multiple of 4; the project uses multiples of 16):
* `patch_embed`: two 1x1 convolutions at stride 1, so stage 0 runs at the full SxS resolution;
* stage 0: MBConv blocks (inverted residuals), then a merge with stride 2 -> S/2;
* stage 1: windowed-attention blocks, then a merge with stride 2 -> S/4;
* stage 2: windowed-attention blocks, then a merge with stride 1 (MobileSAM keeps the last merge at full
  resolution so the embedding stays a quarter of the input) -> S/4;
* stage 3: windowed-attention blocks; `neck`: 1x1 and 3x3 convolutions to 256 channels -> Bx256x(S/4)x(S/4).

Nothing depends on S except through the input tensor: windows are zero-padded at the bottom/right when the
grid is not a multiple of the window (the padded tokens take part in the attention unmasked, as in the
original), and the attention-bias tables are indexed by the |dy|, |dx| offset inside a window, so they
depend on the window size only. The index table is a non-persistent buffer (absent from the checkpoint),
so the checkpoint's 298 `image_encoder.*` tensors load unchanged at every image size.

Images are Bx3xSxS in [0, 1] with no mean/std normalisation (LiteMedSAM's convention, as MedSAM's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


class ConvBN(nn.Sequential):
    """Bias-free convolution then batch norm (keys `c.*`, `bn.*`); 'same' padding for odd kernels."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))


class PatchEmbed(nn.Module):
    """Bx3xSxS -> BxDxSxS: two pointwise convolutions (`seq.0`, `seq.2`) with a GELU between them."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_chans, embed_dim // 2), nn.GELU(), ConvBN(embed_dim // 2, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual BxCxHxW -> BxCxHxW: expand (1x1), depthwise 3x3, project (1x1), add, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, kernel=3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """BxCxHxW -> BxC'x(H/s)x(W/s): pointwise, depthwise 3x3 with stride s, pointwise (GELUs between)."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, kernel=3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x)


def window_offset_index(window: int) -> torch.Tensor:
    """(w*w)x(w*w) index of the bias column for each (query, key) pair of a window: |dy| * w + |dx|.

    The checkpoint's `attention_biases` has one column per distinct (|dy|, |dx|) offset, numbered in the
    order the offsets first appear from the top-left position, which is row-major: |dy| * w + |dx|.
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # (w*w,)
    return (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()


class Attention(nn.Module):
    """Pre-norm multi-head self-attention inside one window, with a learned bias per head and offset.

    qkv is laid out per head as [q | k | v] (each head_dim wide), unlike SAM's [q | k | v] over all heads.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", window_offset_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxNxC (N = window * window) -> BxNxC."""
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)  # each BxHeadsxNxd
        bias = self.attention_biases[:, self.attention_bias_idxs]  # HeadsxNxN
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Pre-norm two-layer MLP on BxNxC (or BxHxWxC) tokens."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """BxHxWxC -> (B*nH*nW)x(w*w)xC windows after zero-padding H, W up to multiples of w; also (Hp, Wp)."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).transpose(2, 3)  # BxnHxnWxwxwxC
    return x.reshape(-1, window * window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """(B*nH*nW)x(w*w)xC windows -> BxHxWxC, dropping the padding."""
    hp, wp = padded
    c = windows.shape[-1]
    x = windows.view(-1, hp // window, wp // window, window, window, c).transpose(2, 3)  # BxnHxwxnWxwxC
    x = x.reshape(-1, hp, wp, c)
    return x[:, : size[0], : size[1]]


class TinyViTBlock(nn.Module):
    """BxCxHxW -> BxCxHxW: windowed attention (residual), depthwise `local_conv`, MLP (residual)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, kernel=local_conv_size, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.permute(0, 2, 3, 1)  # BxHxWxC
        windows, padded = window_partition(tokens, self.window_size)
        attended = window_unpartition(self.attn(windows), self.window_size, padded, tokens.shape[1:3])
        x = self.local_conv((tokens + attended).permute(0, 3, 1, 2))  # BxCxHxW (not residual)
        tokens = x.permute(0, 2, 3, 1)
        return (tokens + self.mlp(tokens)).permute(0, 3, 1, 2)


class Stage(nn.Module):
    """Blocks at one resolution, then an optional merge to the next stage's width (`downsample`)."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


# The configuration keys of a TinyViT encoder (constructor arguments besides img_size).
TINY_VIT_KEYS = (
    "embed_dims",
    "depths",
    "num_heads",
    "window_sizes",
    "mlp_ratio",
    "mbconv_expand_ratio",
    "local_conv_size",
    "out_chans",
)


class TinyViT(nn.Module):
    """Bx3xSxS image in [0, 1] -> Bx(out_chans)x(S/4)x(S/4) embedding (S = `img_size`, a multiple of 4).

    Stage 0 is convolutional (MBConv, `mbconv_expand_ratio`); stages 1.. use windowed attention. The merges
    after stages 0 and 1 halve the resolution, later ones keep it.
    """

    def __init__(
        self,
        img_size: int,
        embed_dims: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_sizes: Sequence[int],
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if img_size <= 0 or img_size % 4:
            raise ValueError(f"TinyViT image size {img_size} must be a positive multiple of 4")
        if not len(embed_dims) == len(depths) == len(num_heads) == len(window_sizes) >= 2:
            raise ValueError("TinyViT embed_dims, depths, num_heads and window_sizes need one entry per stage (>= 2)")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            if i == 0:
                blocks: list[nn.Module] = [MBConv(dim, mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [
                    TinyViTBlock(dim, num_heads[i], window_sizes[i], mlp_ratio, local_conv_size) for _ in range(depth)
                ]
            last = i == len(depths) - 1
            merge = None if last else PatchMerging(dim, embed_dims[i + 1], stride=2 if i < 2 else 1)
            self.layers.append(Stage(blocks, merge))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def train(self, mode: bool = True) -> TinyViT:
        """Train or eval mode, with the BatchNorm statistics always the pretrained ones: fine-tuning batches are
        small (a few images), and a frozen encoder must give the same embedding in every mode."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS -> Bx(out_chans)x(S/4)x(S/4)."""
        if x.dim() != 4 or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"TinyViT expects Bx3x{self.img_size}x{self.img_size} images, got {tuple(x.shape)}")
        x = self.patch_embed(x)  # BxD0xSxS
        for layer in self.layers:
            x = layer(x)  # S -> S/2 -> S/4 -> S/4 -> S/4
        return self.neck(x)
