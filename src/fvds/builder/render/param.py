"""Image parametrisations: Lucid's Fourier-domain image with 1/f scaling and decorrelated
colour, squashed to [0, 1] by a sigmoid (as torch-lucent's ``param.image(fft=True)``).

Everything here stays in fp32 even under autocast: half-precision FFTs need power-of-two
sizes, and the parametrisation is a negligible share of the work.
"""

from __future__ import annotations

import numpy as np
import torch

# Lucid's square root of the ImageNet colour correlation matrix, normalised by its largest
# column norm.
_COLOR_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02],
                              [0.27, 0.00, -0.05],
                              [0.27, -0.09, 0.03]], dtype=np.float32)
COLOR_CORRELATION = _COLOR_SVD_SQRT / np.max(np.linalg.norm(_COLOR_SVD_SQRT, axis=0))

# Lucid's constant: the image is divided by it, which reduces saturation.
_FFT_MAGIC = 4.0


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Spatial frequency magnitudes of a real 2-D FFT of an h x w image."""
    fy = np.fft.fftfreq(h)[:, None]
    # an odd width keeps one extra frequency, cut off again by the inverse transform
    fx = np.fft.fftfreq(w)[: w // 2 + (2 if w % 2 == 1 else 1)]
    return np.sqrt(fx * fx + fy * fy)


def spectrum_shape(h: int, w: int) -> tuple[int, int, int, int]:
    """Shape of one image's spectrum parameter: (channels, h, w_freqs, real/imag)."""
    fh, fw = rfft2d_freqs(h, w).shape
    return (3, fh, fw, 2)


def init_params(param: str, size: int, seeds: list[int], sd: float) -> torch.Tensor:
    """Initial parameters for a batch, one image per seed, drawn on the CPU.

    Each image's noise depends only on its own seed, so a unit starts from the same image
    whatever batch it is rendered in.
    """
    shape = spectrum_shape(size, size) if param == "fft" else (3, size, size)
    out = torch.empty((len(seeds), *shape))
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        out[i] = torch.randn(shape, generator=g) * sd
    return out


def fft_image(spectrum: torch.Tensor, h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """Unbounded image (B, 3, h, w) from a scaled spectrum (B, 3, h, w_freqs, 2)."""
    freqs = rfft2d_freqs(h, w)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** decay_power
    scale = torch.as_tensor(scale, dtype=torch.float32, device=spectrum.device)
    scale = scale[None, None, ..., None]
    spec = torch.view_as_complex((scale * spectrum.float()).contiguous())
    image = torch.fft.irfftn(spec, s=(h, w), norm="ortho")
    return image[:, :, :h, :w] / _FFT_MAGIC


def to_rgb(image: torch.Tensor, decorrelate: bool = True) -> torch.Tensor:
    """Map an unbounded image to RGB in (0, 1), through the decorrelated colour space."""
    if decorrelate:
        corr = torch.as_tensor(COLOR_CORRELATION.T, device=image.device)
        image = torch.einsum("bchw,cd->bdhw", image, corr)
    return torch.sigmoid(image)


def image_from_params(params: torch.Tensor, param: str, size: int, decorrelate: bool,
                      ) -> torch.Tensor:
    """RGB images (B, 3, size, size) in (0, 1) from the optimised parameters."""
    with torch.autocast(params.device.type, enabled=False):
        raw = fft_image(params, size, size) if param == "fft" else params.float()
        return to_rgb(raw, decorrelate)
