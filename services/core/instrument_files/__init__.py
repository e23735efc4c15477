"""Readers of the files real X-ray microscopes and tomography beamlines write.

One entry point, :func:`read_instrument_files`, takes one file, several files or a folder, tells
the format from the files' content (OLE2, HDF5 and TIFF signatures, then the HDF5 datasets) and
returns an :class:`InstrumentScan`: frames, flats, darks, energies (eV), angles (rad), pixel size
(um), exposures (s) and a description of the source. Formats:

``xradia``
    Zeiss/Xradia ``.xrm`` (one frame), ``.txrm`` (a stack) and ``.txm`` (a reconstructed volume),
    OLE2 files read with ``olefile``. Energy from ``ImageInfo/Energy`` where the instrument
    stored it (> 0), else from the file name (``..._08324.0_eV_...``, ``..._8353_0eV``); angles
    from ``ImageInfo/Angles`` (Xradia stores degrees); pixel size ``ImageInfo/PixelSize`` (um);
    exposure ``ImageInfo/ExpTimes`` (s). Reference (flat) frames are the files with a ``ref``
    token in their name at the same energy (as SSRL and APS name them), or the reference image
    embedded in a file (``ReferenceData/Image``).
``fxi``
    NSLS-II FXI (18-ID) HDF5: ``img_xanes`` + ``X_eng`` (keV) for XANES, ``img_tomo`` +
    ``angle`` (degrees) for tomography, ``img_bkg`` flats and ``img_dark`` darks. FXI's exporter
    stores ``img_xanes`` as float transmission ``(I - dark) / (bkg - dark)`` already; integer
    ``img_xanes`` are taken as raw counts.
``dxchange``
    APS Data Exchange HDF5: ``/exchange/data``, ``data_white``, ``data_dark``, ``theta``
    (degrees per the specification unless its ``units`` attribute says radians), pixel size
    ``/measurement/instrument/detection_system/objective/resolution`` (um).
``nxtomo``
    NeXus NXtomo: ``instrument/detector/data`` with ``image_key`` (0 projection, 1 flat, 2 dark,
    3 invalid), ``sample/rotation_angle`` whose ``units`` attribute is required.
``tiff``
    A multi-page TIFF, several TIFF files or a folder of them (sorted by name). Files with a
    ``flat``/``white``/``ref``/``bkg`` token in their name are flats, ``dark`` darks; energies
    from the file names where every frame file carries one; pixel size from ImageJ metadata.

Nothing is guessed from the values: a unit the file does not state by its format's convention
or an attribute is reported unknown (None), and a missing piece the caller needs raises
:class:`InstrumentFileError` naming it.
"""

from services.core.instrument_files.base import (
    InstrumentFileError,
    InstrumentScan,
    energy_from_name,
)
from services.core.instrument_files.detect import (
    detect_format,
    expand_inputs,
    read_instrument_files,
)
from services.core.instrument_files.hdf5 import read_dxchange, read_fxi, read_nxtomo
from services.core.instrument_files.tiff import read_tiff
from services.core.instrument_files.xradia import read_xradia

__all__ = [
    "InstrumentFileError",
    "InstrumentScan",
    "detect_format",
    "energy_from_name",
    "expand_inputs",
    "read_dxchange",
    "read_fxi",
    "read_instrument_files",
    "read_nxtomo",
    "read_tiff",
    "read_xradia",
]
