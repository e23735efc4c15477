"""Small VGG-style CNN that classifies a masked particle slice as flawed (cracked) or not.

Following the flaw-classification seed paper: the input is a 128 x 128 grey-level slice of one
particle with everything outside the particle's mask set to 0. After a 2x2 average pooling of
the input, blocks of two 3x3 convolutions with batch normalisation and ReLU are followed by 2x2
max pooling; a 10 % dropout and a sigmoid output end the network (it returns the logit). A
particle is sampled with :func:`slice_positions` (10 slices evenly spaced over the central 80 %
of its height) and called flawed when at least 4 slices are flawed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.checkpoint import constructor_args, read_checkpoint, read_metadata, save_checkpoint
from models.fusion import for_inference

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "flaw_cnn.pt"
KIND = "flaw_cnn"
INPUT_SIZE = 128
N_SLICES = 10
HEIGHT_SPAN = 0.8
MIN_FLAWED_SLICES = 4


class FlawCNN(nn.Module):
    """VGG-style slice classifier returning one flaw logit per image.

    Parameters
    ----------
    widths : tuple of int
        Channels of the convolution blocks (each halves the spatial size).
    """

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 48)) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        # the 128 x 128 input is averaged down to 64 x 64 first: the up-scaled particle slices
        # carry no detail finer than 2 pixels, and it quarters the cost on a CPU
        layers: list[nn.Module] = [nn.AvgPool2d(2)]
        c_prev = 1
        for width in self.widths:
            layers += [
                nn.Conv2d(c_prev, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_prev = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.1),
            nn.Linear(c_prev, 32),
            nn.ReLU(inplace=True),
            nn.Linear(32, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flaw logits (B,) for images (B, 1, 128, 128)."""
        return self.head(self.features(x))[:, 0]


def slice_positions(
    z_min: int, z_max: int, n: int = N_SLICES, span: float = HEIGHT_SPAN
) -> np.ndarray:
    """Slice indices evenly spaced over the central ``span`` of a particle's height.

    Parameters
    ----------
    z_min, z_max : int
        First and last slice (inclusive) the particle occupies.
    n : int, optional
        Number of slices.
    span : float, optional
        Central share of the height that is sampled.

    Returns
    -------
    numpy.ndarray
        int64 (n,) slice indices in ``[z_min, z_max]`` (repeated for short particles).
    """
    if z_max < z_min:
        raise ValueError(f"z_max must be >= z_min, got {z_min}, {z_max}")
    height = z_max - z_min
    margin = 0.5 * (1.0 - span) * height
    positions = np.linspace(z_min + margin, z_max - margin, n)
    return np.clip(np.round(positions), z_min, z_max).astype(np.int64)


def square_crop(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The particle's bounding square with a 3-pixel margin, pixels outside ``mask`` set to 0.

    Parameters
    ----------
    image : numpy.ndarray
        (Y, X) normalised slice (:func:`models.crack_unet.normalize_slices`).
    mask : numpy.ndarray
        (Y, X) bool mask of the particle in this slice (cracks included).

    Returns
    -------
    numpy.ndarray
        float32 (side, side), zero-padded where the square leaves the slice; (1, 1) zeros when
        the mask is empty.
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.zeros((1, 1), dtype=np.float32)
    ys, xs = np.nonzero(m)
    cy, cx = 0.5 * (ys.min() + ys.max()), 0.5 * (xs.min() + xs.max())
    half = 0.5 * max(ys.max() - ys.min(), xs.max() - xs.min()) + 3
    y0, x0 = int(np.floor(cy - half)), int(np.floor(cx - half))
    side = int(np.ceil(2 * half)) + 1
    crop = np.zeros((side, side), dtype=np.float32)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + side, m.shape[0]), min(x0 + side, m.shape[1])
    window = (slice(sy0, sy1), slice(sx0, sx1))
    crop[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = np.where(
        m[window], np.asarray(image[window], dtype=np.float32), np.float32(0.0)
    )
    return crop


def resize_crops(crops: list[np.ndarray], size: int = INPUT_SIZE) -> np.ndarray:
    """Bilinear resize of square crops to ``size`` x ``size`` (pixel centres aligned).

    Crops of the same side are resized together in one ``torch.nn.functional.interpolate``
    call (``align_corners=False``: the same sampling as ``skimage.transform.resize`` with
    ``order=1`` inside the image; the crops' zero margins make the edge handling irrelevant).

    Parameters
    ----------
    crops : list of numpy.ndarray
        float32 (side, side) crops from :func:`square_crop`, any sides.
    size : int, optional
        Output side length.

    Returns
    -------
    numpy.ndarray
        float32 (len(crops), size, size); all zeros for an all-zero crop.
    """
    out = np.empty((len(crops), size, size), dtype=np.float32)
    by_side: dict[int, list[int]] = {}
    for i, crop in enumerate(crops):
        if crop.ndim != 2 or crop.shape[0] != crop.shape[1]:
            raise ValueError(f"crop {i} must be square 2-D, got shape {crop.shape}")
        by_side.setdefault(crop.shape[0], []).append(i)
    for indices in by_side.values():
        stack = torch.from_numpy(np.stack([crops[i] for i in indices])).unsqueeze(1)
        resized = torch.nn.functional.interpolate(
            stack, size=(size, size), mode="bilinear", align_corners=False
        )
        out[indices] = resized[:, 0].numpy()
    return out


def prepare_slice(image: np.ndarray, mask: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Masked, square-cropped and resized particle slice: the classifier input.

    Parameters
    ----------
    image, mask : numpy.ndarray
        As for :func:`square_crop`.
    size : int, optional
        Output side length.

    Returns
    -------
    numpy.ndarray
        float32 (size, size); the particle's bounding square with a 3-pixel margin
        (:func:`square_crop`), pixels outside the mask set to 0, resized by
        :func:`resize_crops`. All zeros when the mask is empty.
    """
    return resize_crops([square_crop(image, mask)], size)[0]


def save_flaw_cnn(model: FlawCNN, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Save weights, architecture settings and JSON metadata (training config, scores)."""
    save_checkpoint(model, path, kind=KIND, init={"widths": list(model.widths)}, metadata=metadata)


def load_flaw_cnn(path: str | Path | None = None, *, device: torch.device | None = None) -> FlawCNN:
    """Load the flaw classifier in evaluation mode.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        Weights file; default the shipped :data:`DEFAULT_WEIGHTS`.
    device : torch.device, optional
        Default :func:`models.device.pick_device`.

    Returns
    -------
    FlawCNN
        Network on ``device`` in ``eval()`` mode, batch normalisation folded into the
        convolutions and weights channels-last (:func:`models.fusion.for_inference`; it cannot
        be trained further).
    """
    checkpoint, dev = read_checkpoint(path, DEFAULT_WEIGHTS, "flaw CNN", device=device)
    init = constructor_args(checkpoint, KIND, lambda c: {"widths": c["widths"]})
    model = FlawCNN(widths=tuple(int(w) for w in init["widths"]))
    model.load_state_dict(checkpoint["state_dict"])
    return for_inference(model, dev)


def load_flaw_cnn_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """Training metadata stored with the weights (config, held-out scores)."""
    return read_metadata(path, DEFAULT_WEIGHTS)


@torch.inference_mode()
def predict_flaw_scores(model: FlawCNN, slices: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Flaw probabilities of prepared slices.

    Parameters
    ----------
    model : FlawCNN
        Network in eval mode.
    slices : numpy.ndarray
        float32 (N, 128, 128) from :func:`prepare_slice`.
    batch_size : int, optional
        Images per forward pass.

    Returns
    -------
    numpy.ndarray
        float32 (N,) probabilities.
    """
    arr = np.asarray(slices, dtype=np.float32)
    device = next(model.parameters()).device
    out = np.empty(len(arr), dtype=np.float32)
    for i in range(0, len(arr), batch_size):
        batch = torch.from_numpy(arr[i : i + batch_size]).unsqueeze(1).to(device)
        out[i : i + batch_size] = torch.sigmoid(model(batch)).float().cpu().numpy()
    return out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney statistic, ties counted half).

    Parameters
    ----------
    scores : numpy.ndarray
        (N,) classifier scores.
    labels : numpy.ndarray
        (N,) bool or 0/1 true classes.

    Returns
    -------
    float
        AUC in [0, 1]; NaN when one class is absent.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + 0.5 * (counts - 1) + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
