"""Common corruptions of CIFAR images made on the fly: the CIFAR-10-C / CIFAR-100-C families.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019), corrupt every test image at severities 1..5. The parameters here
are those of their CIFAR code, ``make_cifar_c.py`` in github.com/hendrycks/robustness
(folder ``ImageNet-C/create_c/``, commit 8190fe3); each table names the function of that file
it comes from. The code is this module's own: one call corrupts a whole ``uint8 [N, 3, 32, 32]``
batch with tensor ops on the CPU (float64, as the reference's numpy), and every random draw
comes from one ``torch.Generator`` seeded by ``seed``. Draws follow the batch order, so a set
corrupted in chunks needs one seed per chunk to get independent draws.

What the reference computes is kept, quirks included, so that results compare with the
published CIFAR-10-C ones:

* float results become uint8 by truncation (the reference's ``np.uint8`` of floats);
* glass_blur's "swap" assigns through numpy views, so it copies: each pixel of rows and
  columns 2..31 takes the value of itself or of its up, left or up-left neighbour
  (``randint(-1, 1)`` draws -1 or 0), once (severities 1-3) or twice (4-5);
* motion_blur and snow's streaks are ImageMagick 6's ``MotionBlurImage``: a one-sided
  Gaussian line of ``2 * ceil(radius) + 1`` taps, edge pixels repeated, rounded to its
  16-bit quantum and truncated to 8 bits;
* elastic_transform: the CIFAR table's affine jitter shrinks with severity while the elastic
  part grows (severity 1 is the affine jitter alone), so its mean change falls with severity;
* pixelate and jpeg_compression are Pillow's, one image at a time, as in the reference.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cnnlib._checks import check_int

__all__ = ["CORRUPTIONS", "GROUPS", "NOT_IMPLEMENTED", "SEVERITIES", "corrupt"]

SEVERITIES = (1, 2, 3, 4, 5)
SIZE = 32  # the CIFAR parameters (plasma map, glass loop, elastic points) are for 32 x 32
_F64 = torch.float64

# Every table: Hendrycks & Dietterich (ICLR 2019), make_cifar_c.py, the function named.
# gaussian_noise(): std of the added noise, image in [0, 1].
_GAUSSIAN = (0.04, 0.06, 0.08, 0.09, 0.10)
# shot_noise(): photons per unit of intensity (Poisson rate c * x, divided back by c).
_SHOT = (500, 250, 100, 75, 50)
# impulse_noise(): skimage random_noise 's&p' amount (share of values hit, half salt, half pepper).
_IMPULSE = (0.01, 0.02, 0.03, 0.05, 0.07)
# defocus_blur(): (disk radius, sigma of the 3x3 Gaussian that antialiases the disk in disk()).
_DEFOCUS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
# glass_blur(): (sigma of the two Gaussian blurs, largest pixel shift, passes).
_GLASS = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
# motion_blur(): (radius, sigma) of ImageMagick's motion blur; angle uniform in [-45, 45] degrees.
_MOTION = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
# zoom_blur(): zoom factors averaged with the image; np.arange as the reference writes it
# (its float steps give 7, 12, 16, 21 and 26 factors).
_ZOOM = (np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
         np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01))
# snow(): (flake mean, flake std, zoom, threshold, streak radius, streak sigma, image weight);
# streak angle uniform in [-135, -45] degrees.
_SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
         (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
         (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
# fog(): (fog strength, 'wibbledecay' of plasma_fractal(), mapsize 32: smaller is rougher).
_FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))
# brightness(): added to the HSV value (skimage rgb2hsv / hsv2rgb).
_BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
# contrast(): factor around each image's per-channel mean.
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
# elastic_transform(): (alpha, sigma, affine jitter) in pixels, the reference's IMSIZE * (...).
_ELASTIC = tuple((SIZE * a, SIZE * s, SIZE * j) for a, s, j in (
    (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)))
# pixelate(): side of the intermediate image as a fraction of 32 (PIL BOX down, BOX up).
_PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
# jpeg_compression(): JPEG quality (PIL, default 4:2:0 chroma subsampling).
_JPEG = (80, 65, 58, 50, 40)

_EXTRA = "one of the benchmark's four extra corruptions (its validation set), not of the 15"
NOT_IMPLEMENTED = {
    "frost": "overlays crops of six frost photographs shipped with the benchmark's code "
             "(frost1.png ... frost6.jpg), image files this package does not have",
    "spatter": _EXTRA + "; needs OpenCV's Canny edges, distance transform and equalization",
    **dict.fromkeys(("speckle_noise", "gaussian_blur", "saturate"), _EXTRA),
}


# ----------------------------------------------------------------------------- helpers

def _unit(x: torch.Tensor) -> torch.Tensor:
    return x.to(_F64) / 255.0


def _to_uint8(y: torch.Tensor) -> torch.Tensor:
    # np.uint8(np.clip(y, 0, 1) * 255) in the reference: truncation, not rounding
    return (y.clamp(0, 1) * 255).to(torch.uint8)


def _border(n: int, lo: int, hi: int, mode: str) -> torch.Tensor:
    """Positions lo..hi-1 of an axis of length n mapped inside it: 'nearest' repeats the edge,
    'reflect' mirrors around it (d c b a | a b c d: scipy's reflect), 'reflect101' around the
    edge pixel (d c b | a b c d: OpenCV's default)."""
    i = torch.arange(lo, hi)
    if mode == "nearest":
        return i.clamp(0, n - 1)
    period = 2 * n if mode == "reflect" else 2 * n - 2
    i = i % period
    return torch.where(i >= n, period - i - int(mode == "reflect"), i)


def _pad(y: torch.Tensor, r: int, mode: str) -> torch.Tensor:
    """``y``'s last two axes extended by ``r`` on every side (``_border``'s modes)."""
    h, w = y.shape[-2:]
    return y[..., _border(h, -r, h + r, mode)[:, None], _border(w, -r, w + r, mode)]


def _blur_matrix(n: int, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """The n x n matrix of a correlation with the 1-D ``kernel``, the border folded in."""
    r = len(kernel) // 2
    taps = _border(n, -r, n + r, mode).unfold(0, 2 * r + 1, 1)  # (n, 2r + 1) sources
    out = torch.arange(n)[:, None].expand_as(taps)
    return torch.zeros(n, n, dtype=kernel.dtype).index_put_(
        (out, taps), kernel.expand_as(taps), accumulate=True)


def _correlate(y: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """``y``'s last two axes correlated with a square 2-D ``kernel`` (shifted sums), or with
    a 1-D one along each axis (a separable blur: one matrix product per axis); both faster
    here than a float64 convolution."""
    h, w = y.shape[-2:]
    if kernel.ndim == 1:
        return _blur_matrix(h, kernel, mode) @ (y @ _blur_matrix(w, kernel, mode).T)
    r = kernel.shape[0] // 2
    y = _pad(y, r, mode)
    return sum(k * y[..., i:i + h, j:j + w] for (i, j), k in np.ndenumerate(kernel.numpy()))


def _gauss(sigma: float, truncate: float) -> torch.Tensor:
    # scipy.ndimage.gaussian_filter's kernel (skimage.filters.gaussian calls it)
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=_F64)
    w = torch.exp(-0.5 * t * t / sigma**2)
    return w / w.sum()


# ----------------------------------------------------------------------------- noise

def gaussian_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=gen)  # float32: 4x faster to draw, same statistics
    return _to_uint8(x / 255.0 + _GAUSSIAN[severity - 1] * noise)


def shot_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    c = _SHOT[severity - 1]
    return _to_uint8(torch.poisson(_unit(x) * c, generator=gen) / c)


def impulse_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    hit = torch.rand(x.shape, generator=gen) < _IMPULSE[severity - 1]
    salt = torch.rand(x.shape, generator=gen) < 0.5
    return torch.where(hit, salt.to(torch.uint8) * 255, x)


# ----------------------------------------------------------------------------- blur

def _disk(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference's disk(): an aliased disk on a 17 x 17 grid, normalized, blurred by
    cv2.GaussianBlur (3 x 3, float32), cut to its non-zero support."""
    t = torch.arange(-8, 9, dtype=_F64)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).to(torch.float32)
    g = torch.exp(-torch.arange(-1.0, 2.0, dtype=_F64) ** 2 / (2 * alias_blur**2))
    k = _correlate(disk / disk.sum(), (g / g.sum()).float(), "reflect101")  # cv2's float weights
    keep = k.abs().sum(0) > 0
    return k[keep][:, keep].to(_F64)


def defocus_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    # cv2.filter2D, border reflect101
    return _to_uint8(_correlate(_unit(x), _disk(*_DEFOCUS[severity - 1]), "reflect101"))


def glass_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    _, delta, passes = _GLASS[severity - 1]
    inner = SIZE - 2 * delta
    shifts = torch.randint(-delta, delta, (passes, len(x), 2, inner, inner), generator=gen)
    return _glass(x, severity, shifts)


def _glass(x: torch.Tensor, severity: int, shifts: torch.Tensor) -> torch.Tensor:
    """glass_blur with its draws given: ``shifts[p, n, :, h - 2, w - 2]`` is the reference's
    ``(dx, dy)`` at row h, column w of pass p."""
    sigma, _, passes = _GLASS[severity - 1]
    k = _gauss(sigma, 4.0)  # skimage gaussian: truncate 4, border 'nearest'
    y = (_correlate(_unit(x), k, "nearest") * 255).to(torch.uint8)
    n, c = y.shape[:2]
    pos = torch.arange(2, SIZE)
    # The shift is 1 at every CIFAR severity, so dx, dy are -1 or 0: in the reference's
    # descending loop every read hits a pixel that the pass has not written yet, and one
    # pass is one gather from the image before it.
    for p in range(passes):
        dx, dy = shifts[p, :, 0], shifts[p, :, 1]
        src = ((pos[:, None] + dy) * SIZE + pos[None, :] + dx).flatten(1)
        moved = y.flatten(2).gather(2, src[:, None].expand(n, c, -1))
        y[:, :, 2:, 2:] = moved.view(n, c, SIZE - 2, SIZE - 2)  # y is ours: a new tensor
    return _to_uint8(_correlate(_unit(y), k, "nearest"))


def motion_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    angles = torch.rand(len(x), generator=gen, dtype=_F64) * 90 - 45
    return _motion(x, *_MOTION[severity - 1], angles)


def _motion(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick 6's MotionBlurImage (magick/effect.c) of uint8 images, one angle (degrees)
    per image: tap i at (round(i cos a), round(i sin a)) with weight exp(-i^2 / 2 sigma^2)."""
    width = 2 * math.ceil(radius) + 1  # GetOptimalKernelWidth1D for a radius > 0
    i = torch.arange(width, dtype=_F64)
    k = torch.exp(-i * i / (2 * sigma * sigma))
    k = k / k.sum()
    a = torch.pi * angles[:, None] / 180
    px, py = width * torch.sin(a), width * torch.cos(a)
    ox = torch.ceil(i * py / torch.hypot(px, py) - 0.5).long()  # (N, width), the C code's rounding
    oy = torch.ceil(i * px / torch.hypot(px, py) - 0.5).long()
    h, w = x.shape[-2:]
    rows = (torch.arange(h)[:, None] + oy[:, :, None, None]).clamp(0, h - 1)  # edge pixels
    cols = (torch.arange(w)[None, :] + ox[:, :, None, None]).clamp(0, w - 1)
    src = (rows * w + cols).flatten(2)  # (N, width, h * w)
    flat = x.flatten(2).to(_F64)
    acc = torch.zeros_like(flat)
    for t in range(width):
        acc += k[t] * flat.gather(2, src[:, t, None].expand_as(flat))
    # 8 bits read as a 16-bit quantum (x 257), rounded by ClampToQuantum, truncated back to
    # 8 bits (this matches ImageMagick 6.9.11 Q16 pixel for pixel)
    quantum = torch.floor(acc * 257 + 0.5).clamp(0, 65535)
    return torch.floor(quantum / 257).to(torch.uint8).view_as(x)


def _clipped_zoom(y: torch.Tensor, zoom: float) -> torch.Tensor:
    """The reference's clipped_zoom(): the central ceil(32 / zoom) pixels zoomed by scipy's
    ``zoom(order=1)`` (bilinear with corners aligned, output side round(side * zoom)), then the
    central 32 x 32 cut out."""
    side = math.ceil(SIZE / zoom)
    top = (SIZE - side) // 2
    out = round(side * zoom)
    y = F.interpolate(y[..., top:top + side, top:top + side], size=(out, out), mode="bilinear",
                      align_corners=True)
    trim = (out - SIZE) // 2
    return y[..., trim:trim + SIZE, trim:trim + SIZE]


def zoom_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    zooms = _ZOOM[severity - 1]
    # float32 as in the reference (each zoom computed in float64, as scipy does, then rounded)
    y = _unit(x)
    total = torch.zeros_like(y, dtype=torch.float32)
    for z in zooms:
        total += _clipped_zoom(y, float(z)).float()
    return _to_uint8((y.float() + total) / (len(zooms) + 1))


# ----------------------------------------------------------------------------- weather

def snow(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    flakes = torch.randn(len(x), 1, SIZE, SIZE, generator=gen, dtype=_F64)
    angles = torch.rand(len(x), generator=gen, dtype=_F64) * 90 - 135
    return _snow(x, severity, flakes, angles)


def _snow(x: torch.Tensor, severity: int, flakes: torch.Tensor, angles: torch.Tensor):
    """snow with its draws given: standard normal ``flakes [N, 1, 32, 32]``, streak ``angles``."""
    loc, scale, zoom, threshold, radius, sigma, keep = _SNOW[severity - 1]
    layer = _clipped_zoom(loc + scale * flakes, zoom)
    layer = torch.where(layer < threshold, 0.0, layer)
    layer = _motion(_to_uint8(layer), radius, sigma, angles).to(_F64) / 255
    y = _unit(x)
    grey = 0.299 * y[:, :1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:]  # cv2 RGB2GRAY
    y = keep * y + (1 - keep) * torch.maximum(y, grey * 1.5 + 0.5)
    return _to_uint8(y + layer + layer.flip(-1, -2))


def _plasma(draws: list[torch.Tensor], decay: float) -> torch.Tensor:
    """The reference's plasma_fractal(mapsize=32) (diamond-square on a torus) for a batch,
    in [0, 1]: ``draws[level]`` is uniform in [-1, 1] of shape ``[N, 3, k, k]`` (k = 1, 2, 4,
    8, 16): squares, then the two diamond sets, as the reference draws them."""
    n = len(draws[0])
    m = torch.zeros(n, SIZE, SIZE, dtype=_F64)
    step, wibble = SIZE, 100.0
    for u in draws:
        half = step // 2
        # wibbledmean(): mean of four + wibble * uniform(-wibble, wibble)
        corner = m[:, ::step, ::step]
        square = corner + corner.roll(-1, 1)
        square = square + square.roll(-1, 2)
        m[:, half::step, half::step] = square / 4 + wibble * wibble * u[:, 0]
        dr, ul = m[:, half::step, half::step], m[:, ::step, ::step]
        m[:, ::step, half::step] = (dr + dr.roll(1, 1) + ul + ul.roll(-1, 2)) / 4 + wibble**2 * u[:, 1]
        m[:, half::step, ::step] = (dr + dr.roll(1, 2) + ul + ul.roll(-1, 1)) / 4 + wibble**2 * u[:, 2]
        step, wibble = half, wibble / decay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True)


def fog(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    draws = [torch.rand(len(x), 3, 2**i, 2**i, generator=gen, dtype=_F64) * 2 - 1
             for i in range(int(math.log2(SIZE)))]
    return _fog(x, severity, _plasma(draws, _FOG[severity - 1][1]))


def _fog(x: torch.Tensor, severity: int, haze: torch.Tensor) -> torch.Tensor:
    strength = _FOG[severity - 1][0]
    y = _unit(x)
    top = y.amax((1, 2, 3), keepdim=True)  # the image's brightest value, all channels
    return _to_uint8((y + strength * haze[:, None]) * top / (top + strength))


_HSV_PICK = torch.tensor([[0, 1, 2, 2, 3, 0], [3, 0, 0, 1, 2, 2], [2, 2, 3, 0, 0, 1]])


def brightness(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    # skimage's rgb2hsv, value + c clipped at 1, its hsv2rgb: its arithmetic, step by step
    y = _unit(x)
    r, g, b = y.unbind(1)
    value = y.amax(1)
    delta = value - y.amin(1)
    d = torch.where(delta == 0, 1.0, delta)
    hue = (g - b) / d
    hue = torch.where(g == value, 2.0 + (b - r) / d, hue)  # later channels win ties, as there
    hue = torch.where(b == value, 4.0 + (r - g) / d, hue)
    hue = torch.where(delta == 0, 0.0, (hue / 6.0) % 1.0)
    sat = torch.where(delta == 0, 0.0, delta / torch.where(value == 0, 1.0, value))
    v = (value + _BRIGHTNESS[severity - 1]).clamp(0, 1)
    sector = torch.floor(hue * 6)
    f = hue * 6 - sector
    options = torch.stack([v, v * (1 - f * sat), v * (1 - sat), v * (1 - (1 - f) * sat)])
    # channel c of hsv2rgb's sector k is options[_HSV_PICK[c, k]]: v, q, p or t
    pick = _HSV_PICK[:, sector.long() % 6]  # (3, N, H, W)
    return _to_uint8(options.gather(0, pick).transpose(0, 1))


def contrast(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    y = _unit(x)
    mean = y.mean((2, 3), keepdim=True)
    return _to_uint8((y - mean) * _CONTRAST[severity - 1] + mean)


# ----------------------------------------------------------------------------- digital

def elastic_transform(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    jitter = _ELASTIC[severity - 1][2]
    offsets = (torch.rand(len(x), 3, 2, generator=gen, dtype=_F64) * 2 - 1) * jitter
    noise = torch.rand(len(x), 2, SIZE, SIZE, generator=gen, dtype=_F64) * 2 - 1
    return _elastic(x, severity, offsets, noise)


_POINTS = torch.tensor([[26.0, 26.0], [26.0, 6.0], [6.0, 6.0]], dtype=_F64)  # pts1, as (x, y)


def _sample(y: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """``y [N, C, H, W]`` sampled bilinearly at ``rows, cols [N, H, W]``, mirrored at the
    border ('reflect101' about the edge pixels, 'reflect' about the image edge): mirroring
    the coordinate is mirroring the two neighbours of a linear interpolation."""
    h, w = y.shape[-2:]
    aligned = mode == "reflect101"
    scale = (lambda c, n: 2 * c / (n - 1) - 1) if aligned else (lambda c, n: (2 * c + 1) / n - 1)
    grid = torch.stack([scale(cols, w), scale(rows, h)], -1).to(y.dtype)
    return F.grid_sample(y, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=aligned)


def _elastic(x: torch.Tensor, severity: int, offsets: torch.Tensor, noise: torch.Tensor):
    """elastic_transform with its draws given: ``offsets [N, 3, 2]`` added to the three affine
    points (already scaled by the jitter), ``noise [N, 2, 32, 32]`` uniform in [-1, 1] (the
    dx field, then dy)."""
    alpha, sigma, _ = _ELASTIC[severity - 1]
    n = len(x)
    # cv2.getAffineTransform(pts1, pts2) (float32 points), inverted: warpAffine samples the
    # source at M^-1 (x, y)
    moved = (_POINTS.float() + offsets.float()).to(_F64)
    ones = torch.ones(3, 1, dtype=_F64)
    forward = torch.linalg.solve(torch.cat([_POINTS, ones], 1), moved).transpose(1, 2)  # (N, 2, 3)
    square = torch.cat([forward, torch.tensor([0.0, 0.0, 1.0], dtype=_F64).expand(n, 1, 3)], 1)
    inv = torch.linalg.inv(square)
    # sampled at exact coordinates, as OpenCV 5.1's warpAffine does for float images (versions
    # that round them to 1/32 pixel differ by at most 1/64 pixel)
    grid = torch.arange(SIZE, dtype=_F64)
    sx, sy = (inv[:, i, 0, None, None] * grid + inv[:, i, 1, None, None] * grid[:, None]
              + inv[:, i, 2, None, None] for i in (0, 1))
    y = _sample(_unit(x), sy, sx, "reflect101")
    if alpha == 0:  # severity 1: the affine part alone
        return _to_uint8(y)
    # skimage gaussian(mode='reflect', truncate=3) of the noise, times alpha, as float32
    shift = (_correlate(noise, _gauss(sigma, 3.0), "reflect") * alpha).float().to(_F64)
    ry = grid[:, None] + shift[:, 1]
    rx = grid[None, :] + shift[:, 0]
    return _to_uint8(_sample(y, ry, rx, "reflect"))  # scipy map_coordinates(order=1, 'reflect')


def _per_image(x: torch.Tensor, fn: Callable[[Image.Image], Image.Image]) -> torch.Tensor:
    out = x.permute(0, 2, 3, 1).numpy().copy()
    for img in out:
        img[...] = np.asarray(fn(Image.fromarray(img)).convert("RGB"))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def pixelate(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    # Pillow per image runs 2-5x faster here than a batched float64 copy of its fixed point
    small = int(SIZE * _PIXELATE[severity - 1])
    return _per_image(x, lambda img: img.resize((small, small), Image.BOX).resize(
        (SIZE, SIZE), Image.BOX))


def jpeg_compression(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    quality = _JPEG[severity - 1]

    def roundtrip(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        return Image.open(buf)

    return _per_image(x, roundtrip)


# ----------------------------------------------------------------------------- the API

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]

# The benchmark's four groups, in its order (Table 1 and Figure 1 of the paper).
GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}

CORRUPTIONS: dict[str, Corruption] = {name: globals()[name]
                                      for names in GROUPS.values() for name in names}


def _describe(images) -> str:
    if not isinstance(images, torch.Tensor):
        return type(images).__name__
    return f"a {str(images.dtype).removeprefix('torch.')} tensor of shape {list(images.shape)}"


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``images`` (uint8 ``[N, 3, 32, 32]``) with corruption ``name`` at ``severity`` (1..5).

    Deterministic per ``seed``: the same call returns the same images. The work runs on the
    CPU; the result comes back on the input's device.
    """
    if not isinstance(name, str) or name not in CORRUPTIONS:
        known = isinstance(name, str) and name in NOT_IMPLEMENTED
        why = f" ({NOT_IMPLEMENTED[name]})" if known else ""
        raise ValueError(f"corruption: {name!r} is not available{why}; allowed: "
                         f"{', '.join(CORRUPTIONS)}")
    check_int("severity", severity, 1, 5)
    check_int("seed", seed, 0, 2**63 - 1)
    ok = isinstance(images, torch.Tensor) and images.dtype == torch.uint8
    if not ok or images.ndim != 4 or tuple(images.shape[1:]) != (3, SIZE, SIZE):
        raise ValueError(f"images: {_describe(images)} is not allowed; allowed: a uint8 tensor "
                         f"of shape [N, 3, {SIZE}, {SIZE}]")
    if len(images) == 0:
        return images.clone()
    gen = torch.Generator().manual_seed(seed)
    out = CORRUPTIONS[name](images.detach().cpu(), severity, gen)
    return out.to(images.device)
