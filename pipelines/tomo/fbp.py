"""Filtered back projection in torch, slice chunk by slice chunk.

Back projection is a sparse linear map from filtered sinograms to pixels (two linear
interpolation weights per pixel and angle). It is built once as CSR matrices and applied to a
whole chunk of slices at a time with one sparse-dense product, which is what makes it fast on
a CPU; on a GPU the same code runs on cuSPARSE.
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
from pipelines.tomo.center import estimate_center, opposite_pair
from pipelines.tomo.normalize import DEFAULT_MIN_TRANSMISSION, line_integrals

FilterName = Literal["ramp", "shepp-logan", "cosine", "hann", "hamming"]
_PIXEL_TILE = 16
# filter margin (1) + zero column (1) on each side of the detector
_COLUMN_PAD = 2


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
        description="Approximate bound of the working memory (matrices + slice chunk), MB.",
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
    padded = max(64, int(2 ** np.ceil(np.log2(2 * n))))
    response = fourier_filter(padded, filter_name)[: padded // 2 + 1]
    kernel = torch.as_tensor(response, dtype=sinograms.dtype, device=sinograms.device)
    spectrum = torch.fft.rfft(sinograms, n=padded, dim=-1) * kernel
    filtered = torch.fft.irfft(spectrum, n=padded, dim=-1)
    if margin == 0:
        return filtered[..., :n].contiguous()
    return torch.cat((filtered[..., padded - margin :], filtered[..., : n + margin]), dim=-1)


class BackProjector:
    """Sparse linear back projection for a fixed geometry.

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
    max_matrix_mb : float
        Matrices are split by angle chunks of at most this size.
    cache_matrices : bool
        Keep the matrices between calls (fast); otherwise they are rebuilt angle chunk by
        angle chunk in every call, so only one chunk is in memory at a time.
    """

    def __init__(
        self,
        n_cols: int,
        angles_deg: np.ndarray,
        center: float,
        *,
        circle: bool,
        device: torch.device,
        max_matrix_mb: float = 512.0,
        cache_matrices: bool = True,
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
        self._ys = (rows.ravel()[order] - c).astype(np.float32)
        self._xs = (cols.ravel()[order] - c).astype(np.float32)
        bytes_per_angle = 2 * len(self._ys) * 8 + 8
        # column indices are computed in float32: keep them exact (< 2**24)
        exact_limit = (1 << 24) // (n_cols + 2 * _COLUMN_PAD) - 1
        self.angles_per_matrix = max(
            1, min(exact_limit, int(max_matrix_mb * 1e6 // bytes_per_angle))
        )
        self._starts = list(range(0, len(self.angles), self.angles_per_matrix))
        self._matrices: list[torch.Tensor] | None = None
        if cache_matrices:
            self._matrices = [self._matrix_at(a0) for a0 in self._starts]

    @staticmethod
    def matrix_megabytes(n_cols: int, n_angles: int, circle: bool) -> float:
        """Memory of all back-projection matrices for a geometry, in MB."""
        pixels = n_cols * n_cols * (np.pi / 4 if circle else 1.0)
        return 16.0 * n_angles * pixels / 1e6

    def _matrix_at(self, a0: int) -> torch.Tensor:
        return self._matrix(a0, min(a0 + self.angles_per_matrix, len(self.angles)))

    def _matrix(self, a0: int, a1: int) -> torch.Tensor:
        """CSR matrix (pixels, (a1 - a0) * (n_cols + 4)) of linear interpolation weights.

        The columns are those of the filtered sinograms with a one-column filter margin
        (see :func:`filter_sinograms`) and one more zero column on each side.
        """
        n = self.n_cols + 2 * _COLUMN_PAD
        theta = self.angles[a0:a1]
        cos = np.cos(theta).astype(np.float32)
        sin = np.sin(theta).astype(np.float32)
        t = np.multiply.outer(self._xs, cos)
        t -= np.multiply.outer(self._ys, sin)
        t += np.float32(self.center + _COLUMN_PAD)
        # Positions beyond the detector are clamped onto the zero padding columns.
        np.clip(t, 0, n - 1, out=t)
        i0 = np.floor(t)
        np.minimum(i0, n - 2, out=i0)
        w = np.empty(t.shape + (2,), dtype=np.float32)
        np.subtract(t, i0, out=w[..., 1])
        np.subtract(1.0, w[..., 1], out=w[..., 0])
        idx = np.empty(t.shape + (2,), dtype=np.int32)
        np.add(i0, (np.arange(a1 - a0, dtype=np.float32) * n)[np.newaxis, :], out=t)
        idx[..., 0] = t
        np.add(idx[..., 0], 1, out=idx[..., 1])
        n_pix, per_row = len(self._xs), 2 * (a1 - a0)
        dev = self.device
        crow = torch.arange(0, n_pix * per_row + 1, per_row, dtype=torch.int32, device=dev)
        cols = torch.from_numpy(idx.reshape(-1)).to(dev)
        vals = torch.from_numpy(w.reshape(-1)).to(dev)
        with warnings.catch_warnings():
            # torch marks CSR tensors as beta; the operations used here are stable
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                crow,
                cols,
                vals,
                size=(n_pix, (a1 - a0) * n),
                check_invariants=False,
            )

    def __call__(self, filtered: torch.Tensor) -> torch.Tensor:
        """Back project filtered sinograms.

        Parameters
        ----------
        filtered : torch.Tensor
            (S, A, n_cols + 2) float32 filtered sinograms with a one-column margin
            (``filter_sinograms(..., margin=1)``).

        Returns
        -------
        torch.Tensor
            (S, n_cols, n_cols) float32 slices, scaled by ``pi / (2 A)``.
        """
        n_slices = filtered.shape[0]
        if filtered.shape[-1] != self.n_cols + 2:
            raise ValueError(
                f"filtered must have n_cols + 2 = {self.n_cols + 2} columns (margin=1), "
                f"got {filtered.shape[-1]}"
            )
        acc = torch.zeros((len(self._ys), n_slices), dtype=torch.float32, device=self.device)
        for k, a0 in enumerate(self._starts):
            matrix = self._matrices[k] if self._matrices is not None else self._matrix_at(a0)
            a1 = a0 + matrix.shape[1] // (self.n_cols + 2 * _COLUMN_PAD)
            padded = torch.nn.functional.pad(filtered[:, a0:a1, :], (1, 1))
            dense = padded.reshape(n_slices, -1).T.contiguous()
            acc += torch.sparse.mm(matrix, dense)
        out = torch.zeros((n_slices, self.n_cols * self.n_cols), device=self.device)
        out[:, self.pixels] = acc.T * (np.pi / (2 * len(self.angles)))
        return out.view(n_slices, self.n_cols, self.n_cols)


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
    out = projector(filter_sinograms(data, filter_name, margin=1)).cpu().numpy()
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
        i, j = opposite_pair(angles_deg)
    except ValueError:
        return float(cols // 2)
    pair = projections[[i, j]]
    if params.input_kind == "intensity":
        pair = line_integrals(pair, flat=flat, dark=dark, min_transmission=params.min_transmission)
    return estimate_center(pair, np.asarray(angles_deg)[[i, j]])


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
    # with the same geometry share the cached back projector
    center = round(resolve_center(proj, angles, p, flat, dark), 3)
    padded = max(64, int(2 ** np.ceil(np.log2(2 * cols))))
    # Matrices are kept when they fit in 3/4 of the budget; otherwise they are rebuilt for
    # every chunk of slices (slower) with a quarter of the budget each.
    total_matrix_mb = BackProjector.matrix_megabytes(cols, n_angles, p.circle)
    cache = total_matrix_mb <= 0.75 * p.memory_budget_mb
    matrix_mb = total_matrix_mb + 1 if cache else 0.25 * p.memory_budget_mb
    if cache:
        projector = _cached_projector(
            cols, tuple(angles.tolist()), center, p.circle, str(dev), matrix_mb
        )
    else:
        projector = BackProjector(
            cols,
            angles,
            center,
            circle=p.circle,
            device=dev,
            max_matrix_mb=matrix_mb,
            cache_matrices=False,
        )
    sinogram_mb = p.memory_budget_mb - (total_matrix_mb if cache else matrix_mb)
    bytes_per_slice = n_angles * (padded * 4 * 2 + cols * 8) + cols * cols * 8
    chunk = max(1, int(max(sinogram_mb, 0.25 * p.memory_budget_mb) * 1e6 // bytes_per_slice))
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
        sino = torch.as_tensor(lint, device=dev).permute(1, 0, 2).contiguous()
        volume[r0:r1] = projector(filter_sinograms(sino, p.filter_name, margin=1)).cpu().numpy()
        if progress is not None:
            progress(r1 - r0)
    return volume


@functools.lru_cache(maxsize=1)
def _cached_projector(
    cols: int,
    angles: tuple[float, ...],
    center: float,
    circle: bool,
    device: str,
    max_matrix_mb: float,
) -> BackProjector:
    """The back projector of the last geometry, kept for the next scan with the same one.

    Building the matrices is the fixed cost of a reconstruction; scans repeat their geometry
    at a beamline. ``_cached_projector.cache_clear()`` frees the memory.
    """
    return BackProjector(
        cols,
        np.asarray(angles),
        center,
        circle=circle,
        device=torch.device(device),
        max_matrix_mb=max_matrix_mb,
        cache_matrices=True,
    )


def _rows(frames: np.ndarray, r0: int, r1: int) -> np.ndarray:
    arr = np.asarray(frames)
    return arr[..., r0:r1, :]
