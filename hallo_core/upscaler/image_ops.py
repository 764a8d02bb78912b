"""The OpenCV image operations of the official paste-back, as batched torch functions with OpenCV's conventions.

The official pipeline (facelib `FaceRestoreHelper`, basicsr `RealESRGANer`) does its warps, resizes, erosions and
blurs with OpenCV on the CPU, one 4K frame at a time. These functions compute the same things on whatever device the
frames are on, so a frame never leaves the GPU between decoding and encoding:

* `warp_affine` = `cv2.warpAffine` (bilinear, constant border): pixel centres at integer coordinates, the matrix maps
  source to destination. OpenCV quantises source coordinates to 1/32 pixel and interpolation weights to fixed point;
  ours are exact, so results differ by a fraction of a grey level (tests bound it).
* `resize_lanczos4` = `cv2.resize(..., INTER_LANCZOS4)`: 8-tap Lanczos (a = 4) at OpenCV's sample positions
  `(x + 0.5) * in/out - 0.5`, edge pixels replicated; separable: for integer ratios a 9-tap convolution
  per output phase, otherwise a product with the (banded) resampling matrix.
* `erode` = `cv2.erode` with a k x k box kernel: anchor at k // 2, pixels outside the image ignored.
* `gaussian_blur` = `cv2.GaussianBlur(ksize, sigma)`: OpenCV's kernel (its fixed tables for sizes 1-9 when sigma is
  0) and reflect-101 border.

kornia has similar functions but is not installed here and differs in its border and kernel conventions, so they are
written out (each a few lines of torch).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

# cv2.getGaussianKernel's fixed kernels for sizes 1-9 when sigma <= 0 (OpenCV smallGaussianTab).
_SMALL_GAUSSIAN = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
    9: [4 / 256, 13 / 256, 30 / 256, 51 / 256, 60 / 256, 51 / 256, 30 / 256, 13 / 256, 4 / 256],
}


def warp_affine(images: torch.Tensor, matrices: torch.Tensor | np.ndarray, size: tuple[int, int],
                border_value: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Bilinear affine warp like `cv2.warpAffine(img, M, (w, h), borderMode=BORDER_CONSTANT, borderValue)`.

    images (N, C, H, W) float; matrices (N, 2, 3) or (2, 3), source -> destination pixel coordinates; size (h, w) of
    the output. `border_value` is a scalar or a (C,) tensor.
    """
    n, c, h_in, w_in = images.shape
    h_out, w_out = size
    m = torch.as_tensor(np.asarray(matrices, dtype=np.float64) if not torch.is_tensor(matrices) else matrices,
                        dtype=torch.float64).reshape(-1, 2, 3).expand(n, 2, 3)
    # theta maps normalised output coordinates to normalised input coordinates (align_corners=False):
    # theta = normalise_in @ inverse(M) @ denormalise_out, composed in float64.
    full = torch.zeros(n, 3, 3, dtype=torch.float64)
    full[:, :2] = m.cpu()
    full[:, 2, 2] = 1.0
    inverse = torch.linalg.inv(full)
    denormalise_out = torch.tensor([[w_out / 2, 0, (w_out - 1) / 2], [0, h_out / 2, (h_out - 1) / 2], [0, 0, 1]],
                                   dtype=torch.float64)
    normalise_in = torch.tensor([[2 / w_in, 0, 1 / w_in - 1], [0, 2 / h_in, 1 / h_in - 1], [0, 0, 1]],
                                dtype=torch.float64)
    theta = (normalise_in @ inverse @ denormalise_out)[:, :2].to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, [n, c, h_out, w_out], align_corners=False)
    border = torch.as_tensor(border_value, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
    if not torch.any(border != 0):
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # a constant border c is a zero border around (image - c), shifted back
    return F.grid_sample(images - border, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + border


@lru_cache(maxsize=32)
def _lanczos4_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (n_out, 8) of OpenCV's Lanczos-4 resampling along one axis."""
    taps = np.arange(8)
    position = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    start = np.floor(position)
    frac = (position - start)[:, None]
    d = frac + 3 - taps
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = 4 * np.sin(np.pi * d) * np.sin(np.pi * d / 4) / (np.pi**2 * d**2)
    exact = frac[:, 0] < np.finfo(np.float32).eps  # on a source pixel: copy it (OpenCV's shortcut)
    weights[exact] = (taps == 3).astype(np.float64)
    weights /= weights.sum(axis=1, keepdims=True)
    indices = np.clip(start[:, None].astype(np.int64) - 3 + taps, 0, n_in - 1)  # edge pixels replicated
    return indices, weights


def lanczos4_matrix(n_in: int, n_out: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n_out, n_in) matrix of OpenCV's Lanczos-4 resampling along one axis (for tests and small sizes)."""
    indices, weights = _lanczos4_taps(n_in, n_out)
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.repeat(np.arange(n_out), 8), indices.ravel()), weights.ravel())
    return torch.from_numpy(matrix).to(device=device, dtype=dtype)


def _polyphase_kernel(ratio: int) -> np.ndarray:
    """(ratio, 9) weights: output pixel r*i + p reads padded source pixels i .. i+8 (4 px replicate padding)."""
    indices, weights = _lanczos4_taps(64, 64 * ratio)  # any length: away from the edges the taps are periodic
    kernel = np.zeros((ratio, 9))
    for phase in range(ratio):
        row = 32 * ratio + phase  # output pixel of source pixel 32
        offset = indices[row, 0] - 32 + 3  # -1 or 0
        kernel[phase, offset + 1: offset + 9] = weights[row]
    return kernel


def _resample_axis(images: torch.Tensor, n_out: int, dim: int) -> torch.Tensor:
    """Lanczos-4 along dim -2 or -1 of (N, C, H, W)."""
    n, c, h, w = images.shape
    n_in = images.shape[dim]
    if n_out % n_in == 0:  # integer enlargement: a 9-tap convolution per output phase, then interleave
        ratio = n_out // n_in
        kernel = torch.from_numpy(_polyphase_kernel(ratio)).to(images.device, images.dtype)
        flat = images.reshape(n * c, 1, h, w)
        if dim in (-2, 2):
            out = F.conv2d(F.pad(flat, (0, 0, 4, 4), mode="replicate"), kernel.view(ratio, 1, 9, 1))
            return out.view(n, c, ratio, h, w).permute(0, 1, 3, 2, 4).reshape(n, c, h * ratio, w)
        out = F.conv2d(F.pad(flat, (4, 4, 0, 0), mode="replicate"), kernel.view(ratio, 1, 1, 9))
        return out.view(n, c, ratio, h, w).permute(0, 1, 3, 4, 2).reshape(n, c, h, w * ratio)
    matrix = lanczos4_matrix(n_in, n_out, images.device, images.dtype)  # any other size: a (banded) product
    if dim in (-2, 2):
        return torch.matmul(matrix, images)
    return torch.matmul(images, matrix.T)


def resize_lanczos4(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`cv2.resize(img, (w, h), interpolation=INTER_LANCZOS4)` for (N, C, H, W) float images; not clamped."""
    h_in, w_in = images.shape[-2:]
    h_out, w_out = size
    if (h_in, w_in) == (h_out, w_out):
        return images
    return _resample_axis(_resample_axis(images, h_out, -2), w_out, -1)


def _sliding_min(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """min over windows of k consecutive elements along `dim` (length shrinks by k - 1), by doubling: O(log k)."""
    span, mins = 1, x
    while 2 * span <= k:
        n = mins.shape[dim]
        mins = torch.minimum(mins.narrow(dim, 0, n - span), mins.narrow(dim, span, n - span))
        span *= 2
    n = x.shape[dim] - k + 1  # a k-window is the union of two span-windows, span >= k / 2
    return torch.minimum(mins.narrow(dim, 0, n), mins.narrow(dim, k - span, n))


def erode(mask: torch.Tensor, k: int) -> torch.Tensor:
    """`cv2.erode(mask, np.ones((k, k)))` for (N, 1, H, W): minimum over a k x k box anchored at k // 2, pixels
    outside the image ignored; separable."""
    if k <= 0:  # OpenCV replaces an empty kernel with 3 x 3
        k = 3
    if k == 1:
        return mask
    before, after = k // 2, k - 1 - k // 2
    big = torch.finfo(mask.dtype).max
    out = _sliding_min(F.pad(mask, (before, after, 0, 0), value=big), k, -1)
    return _sliding_min(F.pad(out, (0, 0, before, after), value=big), k, -2)


def gaussian_kernel(ksize: int, sigma: float = 0.0) -> np.ndarray:
    """`cv2.getGaussianKernel(ksize, sigma)` as float64."""
    if sigma <= 0 and ksize in _SMALL_GAUSSIAN:
        return np.array(_SMALL_GAUSSIAN[ksize], dtype=np.float64)
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for a given size
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(images: torch.Tensor, ksize: int, sigma: float = 0.0) -> torch.Tensor:
    """`cv2.GaussianBlur(img, (ksize, ksize), sigma)` for (N, C, H, W); reflect-101 border (torch's 'reflect')."""
    if ksize == 1:
        return images
    c = images.shape[1]
    kernel = torch.from_numpy(gaussian_kernel(ksize, sigma)).to(images.device, images.dtype)
    r = ksize // 2
    out = F.pad(images, (r, r, 0, 0), mode=_border_mode(images, r))
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, ksize), groups=c)
    out = F.pad(out, (0, 0, r, r), mode=_border_mode(images, r))
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, ksize, 1), groups=c)


def _border_mode(images: torch.Tensor, radius: int) -> str:
    # reflect needs the pad smaller than the side; a blur wider than the image (tiny faces) falls back to replicate
    return "reflect" if radius < min(images.shape[-2:]) else "replicate"
