"""Filtered back projection in torch, slice chunk by slice chunk.

Back projection is a sparse linear map from filtered sinograms to pixels (two linear
interpolation weights per pixel and angle). It is applied to a whole chunk of slices at a time,
one small block of angles after the other: the block's interpolation weights are computed into
buffers that are reused (a CSR matrix of a few MB that stays in cache), its sinogram rows are
filtered, and one sparse-dense product adds the block to all slices of the chunk. Nothing of
the size of (pixels x angles) is ever allocated, so the first call is as fast as the next ones;
on a GPU the same code runs on cuSPARSE.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from models.device import pick_device
from pipelines.tomo.center import center_frame_indices, estimate_center
from pipelines.tomo.normalize import DEFAULT_MIN_TRANSMISSION, line_integrals

FilterName = Literal["ramp", "shepp-logan", "cosine", "hann", "hamming"]
_PIXEL_TILE = 16
# filter margin (1) + zero column (1) on each side of the detector
_COLUMN_PAD = 2
# interpolation weights (2 x float32) and column indices (2 x int32) per pixel and angle
_BYTES_PER_PIXEL_ANGLE = 16
_BLOCK_MEGABYTES = 32.0
"""Size of one angle block's CSR matrix (its buffers are reused from block to block)."""
_MAX_ACCUMULATOR_MB = 128.0
"""Bound of the (pixels, slices) accumulator: each angle block reads and writes it once."""


class ReconParams(BaseModel):
    """Parameters of :func:`reconstruct`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filter_name: FilterName = "ramp"
    center: float | Literal["auto", "detector"] = Field(
        default="auto",
        description=(
            "Rotation axis in detector columns; 'detector' = cols // 2; 'auto' = estimated "
            "from the projections 180 degrees apart, falling back to cols // 2 when the scan "
            "has no such pair."
        ),
    )
    input_kind: Literal["intensity", "line_integral"] = Field(
        default="intensity",
        description="'intensity': raw or flat-corrected frames, -log is taken; 'line_integral'"
        ": projections are already -log(I/I0).",
    )
    min_transmission: float = Field(default=DEFAULT_MIN_TRANSMISSION, gt=0.0, lt=1.0)
    circle: bool = Field(default=True, description="Zero the voxels outside the inscribed circle.")
    memory_budget_mb: float = Field(
        default=4096.0,
        gt=0.0,
        description="Approximate bound of the working memory of one chunk of slices, MB.",
    )


def fourier_filter(size: int, filter_name: FilterName) -> np.ndarray:
    """Frequency response of a reconstruction filter (as in ``skimage.transform.iradon``).

    Parameters
    ----------
    size : int
        Padded projection length (even).
    filter_name : str
        One of ``ramp``, ``shepp-logan``, ``cosine``, ``hann``, ``hamming``.

    Returns
    -------
    numpy.ndarray
        float64 (size,) response on the ``numpy.fft.fftfreq(size)`` frequencies. The ramp is
        the transform of the band-limited spatial ramp (Kak & Slaney eq. 61), which avoids the
        DC offset of a sampled ``|f|``.
    """
    if size < 2 or size % 2:
        raise ValueError(f"size must be even and >= 2, got {size}")
    n = np.concatenate((np.arange(1, size / 2 + 1, 2), np.arange(size / 2 - 1, 0, -2)))
    spatial = np.zeros(size)
    spatial[0] = 0.25
    spatial[1::2] = -1.0 / (np.pi * n) ** 2
    response = 2.0 * np.real(np.fft.fft(spatial))
    if filter_name == "ramp":
        pass
    elif filter_name == "shepp-logan":
        omega = np.pi * np.fft.fftfreq(size)[1:]
        response[1:] *= np.sin(omega) / omega
    elif filter_name == "cosine":
        response *= np.fft.fftshift(np.sin(np.linspace(0, np.pi, size, endpoint=False)))
    elif filter_name == "hamming":
        response *= np.fft.fftshift(np.hamming(size))
    elif filter_name == "hann":
        response *= np.fft.fftshift(np.hanning(size))
    else:
        raise ValueError(f"filter_name must be one of {FilterName.__args__}, got {filter_name!r}")
    # Only the even part acts on real projections (iradon keeps the real part of the inverse
    # transform); symmetrising lets the filter be applied with a real FFT.
    return 0.5 * (response + np.roll(response[::-1], 1))


def _padded_length(n_cols: int) -> int:
    """FFT length of the filter: a power of two >= 2 * n_cols (no circular wrap-around)."""
    return max(64, int(2 ** np.ceil(np.log2(2 * n_cols))))


@functools.lru_cache(maxsize=8)
def _half_spectrum(size: int, filter_name: FilterName) -> torch.Tensor:
    """``fourier_filter(size, filter_name)`` on the ``rfft`` frequencies (float64, cached)."""
    return torch.from_numpy(fourier_filter(size, filter_name)[: size // 2 + 1].copy())


def filter_sinograms(
    sinograms: torch.Tensor, filter_name: FilterName = "ramp", *, margin: int = 0
) -> torch.Tensor:
    """Filter sinograms along the detector axis.

    Parameters
    ----------
    sinograms : torch.Tensor
        (..., N) float32 line integrals, last axis = detector columns.
    filter_name : str
        See :func:`fourier_filter`.
    margin : int, optional
        Also return this many filtered columns beyond each detector edge (the filtered
        signal of a zero-padded projection is not zero there).

    Returns
    -------
    torch.Tensor
        Filtered sinograms, (..., N + 2 * margin), dtype of the input.
    """
    n = sinograms.shape[-1]
    if not 0 <= margin <= n // 2:
        raise ValueError(f"margin must be in [0, {n // 2}], got {margin}")
    padded = _padded_length(n)
    kernel = _half_spectrum(padded, filter_name).to(sinograms.device, sinograms.dtype)
    spectrum = torch.fft.rfft(sinograms, n=padded, dim=-1) * kernel
    filtered = torch.fft.irfft(spectrum, n=padded, dim=-1)
    if margin == 0:
        return filtered[..., :n].contiguous()
    return torch.cat((filtered[..., padded - margin :], filtered[..., : n + margin]), dim=-1)


class BackProjector:
    """Filtered back projection for a fixed geometry, one block of angles at a time.

    Parameters
    ----------
    n_cols : int
        Detector columns; the output slice is ``n_cols x n_cols``.
    angles_deg : numpy.ndarray
        (A,) angles in degrees.
    center : float
        Rotation axis in detector columns.
    circle : bool
        Only reconstruct the inscribed circle (others stay 0).
    device : torch.device
        Computation device.
    block_mb : float
        Size of one angle block's interpolation matrix (its buffers are reused from block to
        block).
    """

    def __init__(
        self,
        n_cols: int,
        angles_deg: np.ndarray,
        center: float,
        *,
        circle: bool,
        device: torch.device,
        block_mb: float = _BLOCK_MEGABYTES,
    ) -> None:
        self.n_cols = n_cols
        self.angles = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
        self.center = float(center)
        self.device = device
        c = n_cols // 2
        rows, cols = np.mgrid[:n_cols, :n_cols]
        keep = ((rows - c) ** 2 + (cols - c) ** 2 <= c**2) if circle else np.ones_like(rows, bool)
        # Pixels are visited tile by tile so that the sinogram rows one tile reads stay in cache.
        tile_key = (rows // _PIXEL_TILE) * n_cols + (cols // _PIXEL_TILE)
        order = np.lexsort((cols.ravel(), rows.ravel(), tile_key.ravel()))
        order = order[keep.ravel()[order]]
        self.pixels = torch.as_tensor(order, device=device)
        self._xs = (cols.ravel()[order] - c).astype(np.float32)[:, np.newaxis]
        self._ys = (rows.ravel()[order] - c).astype(np.float32)[:, np.newaxis]
        per_angle = _BYTES_PER_PIXEL_ANGLE * len(order)
        # column indices are computed in float32: keep them exact (< 2**24)
        exact_limit = (1 << 24) // (n_cols + 2 * _COLUMN_PAD) - 1
        self.angles_per_block = max(
            1, min(len(self.angles), exact_limit, int(block_mb * 1e6 // per_angle))
        )

    @property
    def n_pixels(self) -> int:
        """Number of reconstructed pixels per slice."""
        return len(self._xs)

    def _block_weights(
        self, a0: int, a1: int, t: np.ndarray, i0: np.ndarray, weights: np.ndarray, idx: np.ndarray
    ) -> None:
        """Linear interpolation weights and column indices of angles ``a0:a1``, in place.

        ``t`` and ``i0`` are (pixels, block) float32 scratch buffers, ``weights`` float32 and
        ``idx`` int32 (pixels, block, 2) outputs; only their first ``a1 - a0`` angle columns
        are written. The columns are those of the block's filtered sinograms with a one-column
        filter margin (see :func:`filter_sinograms`) and one more zero column on each side.
        """
        n = self.n_cols + 2 * _COLUMN_PAD
        k = a1 - a0
        theta = self.angles[a0:a1]
        t, i0 = t[:, :k], i0[:, :k]
        np.multiply(self._xs, np.cos(theta).astype(np.float32), out=t)
        np.multiply(self._ys, np.sin(theta).astype(np.float32), out=i0)
        t -= i0
        t += np.float32(self.center + _COLUMN_PAD)
        # Positions beyond the detector are clamped onto the zero padding columns.
        np.clip(t, 0, n - 1, out=t)
        np.floor(t, out=i0)
        np.minimum(i0, n - 2, out=i0)
        np.subtract(t, i0, out=weights[:, :k, 1])
        np.subtract(1.0, weights[:, :k, 1], out=weights[:, :k, 0])
        i0 += (np.arange(k, dtype=np.float32) * n)[np.newaxis, :]
        idx[:, :k, 0] = i0
        np.add(idx[:, :k, 0], 1, out=idx[:, :k, 1])

    def __call__(self, sinograms: torch.Tensor, filter_name: FilterName = "ramp") -> torch.Tensor:
        """Filter and back project sinograms.

        Parameters
        ----------
        sinograms : torch.Tensor
            (S, A, n_cols) float32 line integrals on ``self.device``.
        filter_name : str
            Reconstruction filter, see :func:`fourier_filter`.

        Returns
        -------
        torch.Tensor
            (S, n_cols, n_cols) float32 slices, scaled by ``pi / (2 A)``.
        """
        if sinograms.ndim != 3 or sinograms.shape[1:] != (len(self.angles), self.n_cols):
            raise ValueError(
                f"sinograms must have shape (S, {len(self.angles)}, {self.n_cols}), "
                f"got {tuple(sinograms.shape)}"
            )
        n_slices, n_pix, block = sinograms.shape[0], self.n_pixels, self.angles_per_block
        n = self.n_cols + 2 * _COLUMN_PAD
        t = np.empty((n_pix, block), dtype=np.float32)
        i0 = np.empty_like(t)
        weights = np.empty((n_pix, block, 2), dtype=np.float32)
        idx = np.empty((n_pix, block, 2), dtype=np.int32)
        dense = torch.zeros((block, n, n_slices), dtype=torch.float32, device=self.device)
        acc = torch.zeros((n_pix, n_slices), dtype=torch.float32, device=self.device)
        for a0 in range(0, len(self.angles), block):
            a1 = min(a0 + block, len(self.angles))
            k = a1 - a0
            self._block_weights(a0, a1, t, i0, weights, idx)
            filtered = filter_sinograms(sinograms[:, a0:a1, :], filter_name, margin=1)
            dense[:k, 1:-1, :] = filtered.permute(1, 2, 0)
            matrix = self._csr(idx[:, :k], weights[:, :k], k * n)
            acc.addmm_(matrix, dense[:k].view(k * n, n_slices))
        out = torch.zeros((n_slices, self.n_cols * self.n_cols), device=self.device)
        out[:, self.pixels] = acc.T * (np.pi / (2 * len(self.angles)))
        return out.view(n_slices, self.n_cols, self.n_cols)

    def _csr(self, idx: np.ndarray, weights: np.ndarray, n_columns: int) -> torch.Tensor:
        """CSR matrix (pixels, n_columns) with ``idx.shape[1] * 2`` entries per pixel."""
        per_row = 2 * idx.shape[1]
        dev = self.device
        crow = torch.arange(0, self.n_pixels * per_row + 1, per_row, dtype=torch.int32, device=dev)
        cols = torch.from_numpy(np.ascontiguousarray(idx).reshape(-1)).to(dev)
        vals = torch.from_numpy(np.ascontiguousarray(weights).reshape(-1)).to(dev)
        with warnings.catch_warnings():
            # torch marks CSR tensors as beta; the operations used here are stable
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                crow, cols, vals, size=(self.n_pixels, n_columns), check_invariants=False
            )

    def megabytes_per_slice(self) -> float:
        """Working memory per slice of a chunk (sinogram, accumulator, output), in MB."""
        n_angles = len(self.angles)
        sinogram = n_angles * self.n_cols * 4 * 2
        return (sinogram + self.n_pixels * 4 * 2 + self.n_cols * self.n_cols * 4 * 2) / 1e6


def fbp_sinograms(
    sinograms: np.ndarray,
    angles_deg: np.ndarray,
    *,
    center: float | None = None,
    filter_name: FilterName = "ramp",
    circle: bool = True,
    device: torch.device | None = None,
) -> np.ndarray:
    """Filtered back projection of sinograms (line integrals).

    Parameters
    ----------
    sinograms : numpy.ndarray
        (S, A, N) or (A, N) line integrals.
    angles_deg : numpy.ndarray
        (A,) angles in degrees.
    center : float, optional
        Rotation axis in detector columns; default ``N // 2``.
    filter_name : str
        Reconstruction filter.
    circle : bool
        Zero the voxels outside the inscribed circle.
    device : torch.device, optional
        Default :func:`models.device.pick_device`.

    Returns
    -------
    numpy.ndarray
        float32 (S, N, N), or (N, N) for a single sinogram.
    """
    sino = np.asarray(sinograms)
    single = sino.ndim == 2
    if single:
        sino = sino[np.newaxis]
    if sino.ndim != 3:
        raise ValueError(f"sinograms must be 2-D or 3-D, got shape {sino.shape}")
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if angles.size != sino.shape[1]:
        raise ValueError(f"angles_deg has {angles.size} angles, sinograms have {sino.shape[1]}")
    dev = device if device is not None else pick_device()
    n = sino.shape[2]
    projector = BackProjector(
        n, angles, n // 2 if center is None else center, circle=circle, device=dev
    )
    data = torch.as_tensor(sino, dtype=torch.float32, device=dev)
    out = projector(data, filter_name).cpu().numpy()
    return out[0] if single else out


def resolve_center(
    projections: np.ndarray,
    angles_deg: np.ndarray,
    params: ReconParams,
    flat: np.ndarray | None = None,
    dark: np.ndarray | None = None,
) -> float:
    """Rotation axis used by :func:`reconstruct` for these projections and parameters.

    Parameters
    ----------
    projections, angles_deg, flat, dark
        As for :func:`reconstruct`.
    params : ReconParams
        Reconstruction parameters (``center`` and ``input_kind`` matter).

    Returns
    -------
    float
        Axis position in detector columns.
    """
    cols = projections.shape[2]
    if isinstance(params.center, float | int) and not isinstance(params.center, bool):
        return float(params.center)
    if params.center == "detector":
        return float(cols // 2)
    try:
        needed = center_frame_indices(angles_deg)
    except ValueError:
        return float(cols // 2)
    frames = projections[needed]
    if params.input_kind == "intensity":
        frames = line_integrals(
            frames, flat=flat, dark=dark, min_transmission=params.min_transmission
        )
    return estimate_center(frames, np.asarray(angles_deg)[needed])


def reconstruct(
    projections: np.ndarray,
    angles_deg: np.ndarray,
    *,
    flat: np.ndarray | None = None,
    dark: np.ndarray | None = None,
    params: ReconParams | None = None,
    device: torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Reconstruct a volume from parallel-beam projections.

    Parameters
    ----------
    projections : numpy.ndarray
        (N, rows, cols) frames, any real dtype; rotation axis along the rows.
    angles_deg : numpy.ndarray
        (N,) angles in degrees.
    flat, dark : numpy.ndarray, optional
        Open-beam and dark frames, (rows, cols) or (n, rows, cols); used when
        ``params.input_kind == "intensity"``.
    params : ReconParams, optional
        Filter, centre, memory budget, ...
    device : torch.device, optional
        Default :func:`models.device.pick_device`.
    progress : callable, optional
        Called with the number of slices finished after each chunk.

    Returns
    -------
    numpy.ndarray
        float32 (rows, cols, cols) attenuation per voxel (1/pixel units when the input is a
        line integral in those units). Slice ``r`` is reconstructed from detector row ``r``.
    """
    p = params if params is not None else ReconParams()
    proj = np.asarray(projections)
    if proj.ndim != 3:
        raise ValueError(f"projections must be 3-D (N, rows, cols), got shape {proj.shape}")
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if angles.size != proj.shape[0]:
        raise ValueError(
            f"angles_deg has {angles.size} angles but projections has {proj.shape[0]} frames"
        )
    if p.input_kind == "line_integral" and (flat is not None or dark is not None):
        raise ValueError("flat/dark given but params.input_kind is 'line_integral'")
    n_angles, rows, cols = proj.shape
    dev = device if device is not None else pick_device()
    # a thousandth of a pixel is far below the accuracy of any estimate; rounding lets scans
    # with the same geometry share the back projector
    center = round(resolve_center(proj, angles, p, flat, dark), 3)
    projector = _cached_projector(cols, tuple(angles.tolist()), center, p.circle, str(dev))
    chunk = max(
        1,
        min(
            int(p.memory_budget_mb // projector.megabytes_per_slice()),
            int(_MAX_ACCUMULATOR_MB * 1e6 // (4 * projector.n_pixels)),
        ),
    )
    volume = np.empty((rows, cols, cols), dtype=np.float32)
    for r0 in range(0, rows, chunk):
        r1 = min(r0 + chunk, rows)
        block = proj[:, r0:r1, :]
        if p.input_kind == "intensity":
            lint = line_integrals(
                block,
                flat=None if flat is None else _rows(flat, r0, r1),
                dark=None if dark is None else _rows(dark, r0, r1),
                min_transmission=p.min_transmission,
            )
        else:
            lint = block.astype(np.float32)
        sino = torch.as_tensor(lint, device=dev).permute(1, 0, 2)
        volume[r0:r1] = projector(sino, p.filter_name).cpu().numpy()
        if progress is not None:
            progress(r1 - r0)
    return volume


@functools.lru_cache(maxsize=1)
def _cached_projector(
    cols: int, angles: tuple[float, ...], center: float, circle: bool, device: str
) -> BackProjector:
    """The back projector of the last geometry (its pixel order), kept for the next scan."""
    return BackProjector(
        cols, np.asarray(angles), center, circle=circle, device=torch.device(device)
    )


def _rows(frames: np.ndarray, r0: int, r1: int) -> np.ndarray:
    arr = np.asarray(frames)
    return arr[..., r0:r1, :]


def inside_circle(n: int, margin: int = 2) -> np.ndarray:
    """bool (n, n): pixels well inside the inscribed circle that :func:`reconstruct` fills.

    The circle has its centre at ``n // 2`` and radius ``n // 2 - margin``; scores against a
    phantom are computed there (outside it the reconstruction is 0, and the rim is unreliable).
    """
    yy, xx = np.mgrid[:n, :n]
    return (yy - n // 2) ** 2 + (xx - n // 2) ** 2 < (n // 2 - margin) ** 2
