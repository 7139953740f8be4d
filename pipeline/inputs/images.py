"""Images moved in input space: sub-pixel translation, circles of translations, pixel statistics.

The geometry :mod:`pipeline.inputs.paths` builds its anchors from (and
:mod:`pipeline.inputs.plane_sets` its planes' corners). Pure: float64 torch, no files.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["translate", "shifted", "circle_path", "pixel_stats"]


def translate(images: torch.Tensor, dy: float | torch.Tensor, dx: float | torch.Tensor) -> torch.Tensor:
    """Translate images by (sub-)pixel amounts with bilinear interpolation, in float64.

    Output pixel ``(r, c)`` is the input at ``(r - dy, c - dx)`` (positive ``dy`` moves the
    content down, positive ``dx`` right, as ``torch.roll(x, (dy, dx), dims=(-2, -1))``),
    interpolated from its 4 neighbours. Outside the frame the image is extended by replicating
    its border pixels (padding by ``ceil(max shift) + 1``, enough for any shift), so:

    * integer shifts are exact: every output pixel is an input pixel, equal to ``torch.roll``
      wherever roll does not wrap around;
    * no constant fill enters the frame, and the translation commutes with per-channel
      normalisation (the weights sum to 1), so translating normalised images is the same as
      normalising translated raw ones. (Zero padding would not: zero is the mean colour after
      normalisation.)

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` or ``(C, H, W)``, floating point.
    dy, dx : float or torch.Tensor
        Shifts in pixels: scalars, or ``(N,)`` for one shift per image.

    Returns
    -------
    torch.Tensor
        float64, the shape of ``images``.
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be a floating-point torch.Tensor, got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim not in (3, 4):
        raise ValueError(f"images must have shape (N, C, H, W) or (C, H, W), got {tuple(images.shape)}")
    single = images.ndim == 3
    x = images.detach().to(torch.float64)
    if single:
        x = x[None]
    n, c, h, w = x.shape
    shifts = []
    for name, s in (("dy", dy), ("dx", dx)):
        s = torch.as_tensor(s, dtype=torch.float64)
        if s.ndim > 1 or (s.ndim == 1 and s.numel() != n):
            raise ValueError(f"{name} must be a scalar or have shape ({n},), one shift per image; got {tuple(s.shape)}")
        if not torch.isfinite(s).all():
            raise ValueError(f"{name} must be finite, got {s}")
        shifts.append(s.expand(n))
    dy, dx = shifts
    if n == 0:
        return x[0] if single else x
    pad = int(math.ceil(max(dy.abs().max().item(), dx.abs().max().item()))) + 1
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")

    # Bilinear = linear along rows, then along columns. With shift s = i + f (i = floor(s)),
    # output index p reads the input at p - i - f: between p - i (weight 1 - f) and
    # p - i - 1 (weight f). For integer shifts f = 0 and the result is the input, exactly.
    def lerp(t, shift, dim, size):
        i = torch.floor(shift)
        f = (shift - i).view(n, 1, 1, 1)
        near = pad + torch.arange(size)[None] - i.long()[:, None]  # (N, size) indices into padded
        view = (n, 1, size, 1) if dim == 2 else (n, 1, 1, size)
        shape = list(t.shape)
        shape[dim] = size

        def take(idx):
            return torch.gather(t, dim, idx.view(view).expand(shape))

        return (1 - f) * take(near) + f * take(near - 1)

    out = lerp(lerp(padded, dy, 2, h), dx, 3, w)
    return out[0] if single else out


def circle_path(image: torch.Tensor, anchors: int, radius: float) -> torch.Tensor:
    """Anchors of the closed circular translation path of one image (or of each of a batch).

    Anchor ``j`` is the image translated by ``dx = r cos θ_j``, ``dy = r sin θ_j``,
    ``θ_j = 2πj/M`` (:func:`translate`): anchor 0 is shifted ``r`` to the right, and the base
    image itself is not on the path.

    Parameters
    ----------
    image : torch.Tensor
        ``(C, H, W)``, or ``(N, C, H, W)`` for N paths at once.
    anchors : int
        ``M``.
    radius : float
        ``r`` in pixels.

    Returns
    -------
    torch.Tensor
        float64 ``(M, C, H, W)``, or ``(N, M, C, H, W)``.
    """
    if image.ndim not in (3, 4):
        raise ValueError(f"image must have shape (C, H, W) or (N, C, H, W), got {tuple(image.shape)}")
    single = image.ndim == 3
    batch = image[None] if single else image
    theta = 2 * math.pi * torch.arange(anchors, dtype=torch.float64) / anchors
    out = shifted(batch, radius * torch.sin(theta), radius * torch.cos(theta))
    return out[0] if single else out


def shifted(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` images, each translated by every one of the ``(M,)`` shifts: ``(N, M, C, H, W)``."""
    n, m = images.shape[0], dy.numel()
    flat = images.repeat_interleave(m, dim=0)  # image-major: rows i*m .. i*m+m-1 belong to image i
    return translate(flat, dy.repeat(n), dx.repeat(n)).view(n, m, *images.shape[1:])


def pixel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and population std of ``(N, C, H, W)`` images, float64 ``(C, H, W)`` each.

    For ``"noise"`` paths: pass the *normalised* training images (``bundle.images("train")``),
    so the noise lives in the space the network sees. Accumulated in float64 chunk by chunk
    (a float64 copy of CIFAR's training set would take 1.1 GB).
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got {tuple(images.shape)}")
    n = images.shape[0]
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    for part in images.split(chunk):
        total += part.double().sum(0)
    mean = total / n
    sq = torch.zeros_like(mean)
    for part in images.split(chunk):  # two passes: no cancellation in E[x^2] - E[x]^2
        sq += ((part.double() - mean) ** 2).sum(0)
    return mean, (sq / n).sqrt()
