"""The cWDM denoiser: the published 3D U-Net that maps (x_t, condition, t) to predicted x0.

The architecture and the module names reproduce the published checkpoints' state-dict layout exactly
(docs/METHOD.md, "The denoiser"; ``tests/reference/cwdm_unet_c64_state_dict.tsv``): a guided-diffusion
style U-Net with residual blocks, residual-block down/up-sampling (average pooling / nearest upsampling by 2
along all three axes), concatenation skips, no attention, GroupNorm evaluated in float32, additive timestep
embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError


@dataclass(frozen=True)
class DenoiserConfig:
    """Architecture of the denoiser; the defaults are the published configuration.

    Attributes:
        model_channels: Width of the first level (64 published).
        channel_mult: Width multiplier per level; one down-sampling between consecutive levels.
        num_res_blocks: Residual blocks per level in the encoder (the decoder has one more).
        num_groups: GroupNorm groups; must divide every level's width.
        in_channels: 8 noisy coefficient channels + 24 condition channels.
        out_channels: The 8 predicted coefficient channels.
        dropout: Dropout inside residual blocks (0 published).
    """

    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    num_groups: int = 32
    in_channels: int = 32
    out_channels: int = 8
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        positive = {
            "model_channels": self.model_channels,
            "num_res_blocks": self.num_res_blocks,
            "num_groups": self.num_groups,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not self.channel_mult or any(
            not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in self.channel_mult
        ):
            raise ConfigError(
                f"channel_mult must be a non-empty list of positive integers, got {self.channel_mult!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for mult in self.channel_mult:
            width = mult * self.model_channels
            if width % self.num_groups:
                raise ConfigError(
                    f"num_groups={self.num_groups} must divide every level's width, but level width "
                    f"{width} (model_channels {self.model_channels} x {mult}) is not a multiple of it"
                )

    @property
    def size_multiple(self) -> int:
        """Spatial sizes of the network input must be multiples of this (16 published)."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(t f_k), sin(t f_k)]`` with ``f_k = max_period^(-k / (dim/2))``.

    Args:
        timesteps: ``(B,)`` timestep values (the original 0..T-1 values, also when respaced).
        dim: Embedding width.

    Returns:
        ``(B, dim)`` float32 embedding.
    """
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype, as the published model does."""

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(
            x.dtype
        )


class _Upsample(nn.Module):
    """Nearest-neighbour upsampling by 2 along all three spatial axes."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class ResBlock(nn.Module):
    """Residual block with additive timestep embedding and an optional resampling step.

    Args:
        channels: Input channels.
        emb_channels: Width of the timestep embedding.
        out_channels: Output channels.
        num_groups: GroupNorm groups.
        dropout: Dropout before the second convolution.
        resample: Applied to both the residual path (after the first norm + SiLU) and the skip
            path; ``None`` for a plain block, average pooling or :class:`_Upsample` otherwise.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        num_groups: int,
        dropout: float,
        resample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # Module indices matter: they are the published state-dict keys (in_layers.0, in_layers.2, ...).
        self.in_layers = nn.Sequential(
            GroupNorm32(num_groups, channels),
            nn.SiLU(),
            nn.Conv3d(channels, out_channels, 3, padding=1),
        )
        self.resample = resample
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(num_groups, out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv3d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv3d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.resample is None:
            h = self.in_layers(x)
        else:
            h = self.in_layers[2](self.resample(self.in_layers[1](self.in_layers[0](x))))
            x = self.resample(x)
        emb_out = self.emb_layers(emb).to(h.dtype)
        h = self.out_layers(h + emb_out[:, :, None, None, None])
        return self.skip_connection(x) + h


class _Stage(nn.Sequential):
    """A sequence of layers where residual blocks also receive the timestep embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Denoiser(nn.Module):
    """The cWDM 3D U-Net; ``forward(x, t)`` returns the predicted clean coefficients x0.

    Args:
        config: The architecture; :class:`DenoiserConfig` defaults are the published model.
    """

    def __init__(self, config: DenoiserConfig | None = None) -> None:
        super().__init__()
        cfg = config or DenoiserConfig()
        self.config = cfg
        emb_dim = cfg.time_embed_dim

        def block(ch_in: int, ch_out: int, resample: nn.Module | None = None) -> ResBlock:
            return ResBlock(ch_in, emb_dim, ch_out, cfg.num_groups, cfg.dropout, resample)

        self.time_embed = nn.Sequential(
            nn.Linear(cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        ch = cfg.model_channels
        self.input_blocks = nn.ModuleList([_Stage(nn.Conv3d(cfg.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        last_level = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.input_blocks.append(_Stage(block(ch, mult * cfg.model_channels)))
                ch = mult * cfg.model_channels
                skip_channels.append(ch)
            if level != last_level:
                self.input_blocks.append(_Stage(block(ch, ch, nn.AvgPool3d(2, 2))))
                skip_channels.append(ch)

        self.middle_block = _Stage(block(ch, ch), block(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers: list[nn.Module] = [block(ch + skip_channels.pop(), mult * cfg.model_channels)]
                ch = mult * cfg.model_channels
                if level and i == cfg.num_res_blocks:
                    layers.append(block(ch, ch, _Upsample()))
                self.output_blocks.append(_Stage(*layers))

        self.out = nn.Sequential(
            GroupNorm32(cfg.num_groups, ch), nn.SiLU(), nn.Conv3d(ch, cfg.out_channels, 3, padding=1)
        )
        self._zero_init_outputs()

    def _zero_init_outputs(self) -> None:
        # As published: the last conv of every residual block and the output conv start at zero, so a
        # fresh model is the identity on its skip paths and predicts x0 = 0.
        zeroed = [m.out_layers[3] for m in self.modules() if isinstance(m, ResBlock)] + [self.out[2]]
        for conv in zeroed:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predict the clean scaled coefficients.

        Args:
            x: ``(B, in_channels, D, H, W)``: noisy coefficients x_t (8 channels) then the condition
                (24 channels); D, H, W multiples of ``config.size_multiple``.
            t: ``(B,)`` integer timesteps, original values in 0..T-1.

        Returns:
            ``(B, out_channels, D, H, W)`` predicted x0, in ``x``'s dtype.

        Raises:
            ShapeError: wrong channel count or spatial sizes that are not multiples of the
                down-sampling factor.
        """
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise ShapeError(f"denoiser input must be (B, {cfg.in_channels}, D, H, W), got {tuple(x.shape)}")
        multiple = cfg.size_multiple
        if any(size % multiple for size in x.shape[2:]):
            raise ShapeError(
                f"denoiser spatial sizes must be multiples of {multiple} "
                f"({len(cfg.channel_mult) - 1} down-samplings), got {tuple(x.shape[2:])}"
            )
        if t.shape != (x.shape[0],):
            raise ShapeError(f"timesteps must have shape ({x.shape[0]},), got {tuple(t.shape)}")

        emb = self.time_embed(timestep_embedding(t, cfg.model_channels).to(self.time_embed[0].weight.dtype))
        skips = []
        h = x
        for stage in self.input_blocks:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
