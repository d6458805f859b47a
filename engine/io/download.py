"""Download the public left-atrium data and convert it to the shared layout.

Source: the preprocessed 2018 Atrial Segmentation Challenge training set as
published in the GitHub repository ``yulequan/UA-MT``
(``data/2018LA_Seg_Training Set/<CASE_ID>/mri_norm2.h5``, keys ``image`` float32
and ``label`` uint8, 0.625 mm isotropic, 88 slices on axis 2). The data have no
stated licence: research use only, do not redistribute.

Conversion (the one the shared ``la_lgemri_2018_half`` folder was made with):

1. crop every axis to an even size by dropping its last voxel when it is odd;
2. image: mean of every 2x2x2 block (computed in float64, stored float32);
3. label: 1 where at least 4 of the block's 8 voxels are 1 (a tie is foreground);
4. write ``la_XXX.npz`` (``numpy.savez_compressed``: ``image`` float32,
   ``label`` uint8, ``spacing`` float32 ``[1.25, 1.25, 1.25]``), ``XXX`` being
   the case's position among the 100 case ids in sorted order.

Only ``urllib`` is used; files already present are skipped, every file is written
atomically, and a network failure raises :class:`~engine.errors.NetworkError`
naming the URL.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from ..errors import DataError, InputError, NetworkError
from .volumes import atomic_write

__all__ = [
    "DEFAULT_BASE_URL",
    "LA2018_CASE_IDS",
    "LA_SPACING",
    "case_url",
    "reduce_half",
    "convert_la2018",
    "download_la2018",
]

#: Folder of the case folders in the UA-MT repository (raw files, space encoded).
DEFAULT_BASE_URL = "https://raw.githubusercontent.com/yulequan/UA-MT/master/data/2018LA_Seg_Training%20Set"
#: File name inside every case folder.
SOURCE_FILE = "mri_norm2.h5"
#: Voxel size after the 2x reduction (mm).
LA_SPACING = 1.25
_CHUNK = 1 << 16

#: The 100 training case ids, sorted; ``la_XXX.npz`` is case ``LA2018_CASE_IDS[XXX]``.
LA2018_CASE_IDS: tuple[str, ...] = (
    "06SR5RBREL16DQ6M8LWS",
    "0RZDK210BSMWAA6467LU",
    "1D7CUD1955YZPGK8XHJX",
    "1GU15S0GJ6PFNARO469W",
    "1MHBF3G6DCPWHSKG7XCP",
    "23X6SY44VT9KFHR7S7OC",
    "2XL5HSFSE93RMOJDRGR4",
    "38CWS74285MFGZZXR09Z",
    "3C2QTUNI0852XV7ZH4Q1",
    "3DA0T2V6JJ2NLUAV6FWM",
    "4498CA6DZWELOXCBRYRF",
    "45C45I6IXAFGNRO067W9",
    "4CHFJGF6ZUM7CMZTNFQF",
    "4EPVTT1HPA8U60CDUKXE",
    "57SGAJMLCTCH92QUA0EE",
    "5BHTH9RHH3PQT913I59W",
    "5FKQL4K14KCB72Y8YMC2",
    "5HH0WPWIY06DLAFOBQ4M",
    "5QFK2PMHNX7UALK52NNA",
    "5UB5KFD2PK38Z4LS6W80",
    "6799D6LEBH3NSRV1KH27",
    "78NJ5YFQF72BGC8RO51C",
    "7FUCNXB39F78WTOP5K71",
    "8GYK8A9MBRC9TV0FVSRA",
    "8M99G0JLAXG9GLPV0O8G",
    "8RE90C8H5DKF4V6HO8UU",
    "8ZG2TRZ81MAWHZPN9KKG",
    "9DCM2IB45SK6YKQNYUQY",
    "9DHWWP5Y66VDMPXISZ13",
    "9DQYTIU00I4JC0OEOKQQ",
    "A11O45O3NAXWM7T2H8CH",
    "A4R1S23KR0KU2WSYHK2X",
    "A5RNNK0A891WUSC2V624",
    "AT5CRO5JUDBWD4RUPXSQ",
    "BNK95S2SJXEGSW7VAKYU",
    "BXJWOUYP2J3EN4U92517",
    "BYSRSI3H4YTWKMM3MADP",
    "BZUFJX66T0W6ZPVTL9DU",
    "CB5P5W7X310NIIVU7UZV",
    "CBIJFVZ5L9BS0LKWE8YL",
    "CCGAKN4EDT72KC8TTJ76",
    "CLXFYOBQDCVXQ9P7YC07",
    "CMPXO4J23G58J53Q98SZ",
    "CZPMV6KWZ4I7IJJP9FOK",
    "DLKXBV73A55ZTSZ0QQI2",
    "DQ5UYBGR5QP6L692QSG6",
    "DYXSCIWHLSUOZIDDSZ40",
    "E2ZMO66WGS74UKXTZPPQ",
    "EJ5V7SPR4961JWD6SS8V",
    "FGM5NIWN3URY4HF4WNUW",
    "GSC9KNY0VEZXFSGWNF25",
    "HVE7DR3CUA2IM3RC6OMA",
    "HZZ4O0BRKF8S0YX3NNF7",
    "I2VZ7N8H9QYNYT7ZZF1Y",
    "IDWWHGWJ5STOQXSDT6GU",
    "IIY6TYJMTJIZRIZLB9YW",
    "IJJY51YW3W4YJJ7DTVTK",
    "IQYKPTWXVV9H0IHB8YXC",
    "JEC6HJ7SQJXBKVREX03F",
    "JGFOLWJF7YCYD8DPHQNH",
    "K32FD6LRSUSSXGS1YUOX",
    "KM5RYAMP4P4ZP6XWP3Q2",
    "KSNYHUBHHUJTYJ14UQZR",
    "LH4FVU3TQDEC87YGN6FL",
    "LJSDNMND9SHKM7Q4IRHJ",
    "MFTDVMBWFNQ3F5KHBRDR",
    "MJHV7F65TB2A76CQLOC3",
    "MVKIPGBKTNSENNP1S4HB",
    "O5TSIKRD4AIB8K84WIR9",
    "OIRDLE32TXZX942FVZMM",
    "P1OTI3IWJUIB5NRLULLH",
    "PVNXUK681N9BY14K4Z86",
    "Q0MEX9ZIKAGJORSPLQ3Y",
    "Q7J0WYM695R9MA285ZW0",
    "QZC1W0FNR19KJFLOCFLH",
    "R8ER97O9UUN77C02VE2J",
    "RSZY41MT2FGDKHWWL5L2",
    "SN4LF8SGBSRQUPTDSX78",
    "TDDI6L3Y0L9VVFP9MNFS",
    "ULHWPWKKLTE921LQLH1P",
    "UPT6DX9IQY9JAZ7HJKA7",
    "UTBUJIWZMKP64E3N73YC",
    "UZUZZT2W9IUSHL6ASOX3",
    "V0MZOWJ6MU3RMRCV9EXR",
    "VDOF02M8ZHEAADFMS6NP",
    "VG4C826RAAKVMV9BQLVD",
    "VIXBEFTNVHZWKAKURJBN",
    "VQ2L3WM8KEVF6L44E6G9",
    "WBG9WYZ1B25WDT5WAT8T",
    "WMDG2EFA6L2SNDZXIRU0",
    "WNPKE0W404QE9AELX1LR",
    "WSJB9P4JCXUVHBOYFVWL",
    "WW8F5CO4S4K5IM5Z7EXX",
    "X18LU5AOBNNDMLTA0JZL",
    "XYDLYJ5CS19FDBVLJIPI",
    "Y7ZU0B2APPF54WG6PDMF",
    "YDKD1HVHSME6NVMA8I39",
    "Z9GMG63CJLL0VW893BB1",
    "ZIJLJAVQV3FJ6JSQOH1E",
    "ZQPMJ4XEC5A4BISD45P1",
)


def case_url(case_id: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """The URL of one case's ``mri_norm2.h5`` under ``base_url`` (id URL-encoded)."""
    return f"{base_url.rstrip('/')}/{urllib.parse.quote(case_id)}/{SOURCE_FILE}"


def reduce_half(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 2x reduction of the shared data (module docstring).

    Args:
        image: ``(X, Y, Z)`` float, each axis at least 2.
        label: ``(X, Y, Z)`` with values 0/1.

    Returns ``(image float32, label uint8)`` of shape ``(X//2, Y//2, Z//2)``.
    """
    img, lab = np.asarray(image), np.asarray(label)
    if img.ndim != 3 or img.shape != lab.shape or min(img.shape) < 2:
        raise InputError(
            f"need two 3D arrays of one shape, each axis >= 2; got image {img.shape} and label {lab.shape}"
        )
    half = tuple(n // 2 for n in img.shape)
    crop = tuple(slice(0, 2 * h) for h in half)
    blocks = (half[0], 2, half[1], 2, half[2], 2)
    img_b = img[crop].astype(np.float64).reshape(blocks)
    lab_b = (lab[crop] == 1).reshape(blocks)
    image_half = img_b.mean(axis=(1, 3, 5)).astype(np.float32)
    label_half = (lab_b.sum(axis=(1, 3, 5)) >= 4).astype(np.uint8)
    return image_half, label_half


def _read_source(h5_path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    try:
        with h5py.File(h5_path, "r") as f:
            image = np.asarray(f["image"][()])
            label = np.asarray(f["label"][()])
    except Exception as exc:  # truncated or not h5: the download was bad
        raise DataError(f"{h5_path}: cannot read the source h5 file: {type(exc).__name__}: {exc}") from exc
    if image.ndim != 3 or image.shape != label.shape:
        raise DataError(f"{h5_path}: image {image.shape} and label {label.shape} are not two 3D arrays of one shape")
    if not np.all(np.isin(np.unique(label), (0, 1))):
        raise DataError(f"{h5_path}: label holds values other than 0 and 1")
    return image, label


def convert_la2018(h5_path: Union[str, os.PathLike], npz_path: Union[str, os.PathLike]) -> Path:
    """Convert one source ``mri_norm2.h5`` to a shared-layout ``npz`` (atomically)."""
    image, label = _read_source(Path(h5_path))
    image_half, label_half = reduce_half(image, label)
    spacing = np.full(3, LA_SPACING, dtype=np.float32)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, image=image_half, label=label_half, spacing=spacing)

    return atomic_write(npz_path, write)


def _network_error(url: str, exc: BaseException, timeout: float) -> NetworkError:
    if isinstance(exc, urllib.error.HTTPError):
        return NetworkError(f"{url}: server answered HTTP {exc.code} {exc.reason}")
    if isinstance(exc, urllib.error.URLError):
        return NetworkError(f"{url}: network unreachable: {exc.reason}")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return NetworkError(f"{url}: timed out after {timeout} s")
    return NetworkError(f"{url}: transfer failed: {type(exc).__name__}: {exc}")


def _fetch(url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` into ``dest``; NetworkError on any network failure (only the
    network calls are guarded, so a local disk error keeps its own type)."""
    try:
        resp = urllib.request.urlopen(url, timeout=timeout)
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        raise _network_error(url, exc, timeout) from exc
    with resp, open(dest, "wb") as out:
        expected = resp.headers.get("Content-Length")
        got = 0
        while True:
            try:
                chunk = resp.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _network_error(url, exc, timeout) from exc
            if not chunk:
                break
            out.write(chunk)
            got += len(chunk)
    if expected is not None and expected.isdigit() and int(expected) != got:
        raise NetworkError(f"{url}: transfer cut short ({got} of {expected} bytes)")


def _selected(cases: Optional[Iterable[Union[int, str]]]) -> list[int]:
    if cases is None:
        return list(range(len(LA2018_CASE_IDS)))
    out = []
    for c in cases:
        if isinstance(c, str):
            if c not in LA2018_CASE_IDS:
                raise InputError(f"unknown LA 2018 case id {c!r}")
            out.append(LA2018_CASE_IDS.index(c))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(LA2018_CASE_IDS):
            out.append(int(c))
        else:
            raise InputError(f"case must be an id or an index in [0, {len(LA2018_CASE_IDS)}), got {c!r}")
    return sorted(set(out))


def download_la2018(
    to_dir: Union[str, os.PathLike],
    base_url: str = DEFAULT_BASE_URL,
    cases: Optional[Iterable[Union[int, str]]] = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> list[Path]:
    """Download and convert the left-atrium cases into ``to_dir``.

    Args:
        to_dir: destination folder (created if missing).
        base_url: the folder holding ``<CASE_ID>/mri_norm2.h5``.
        cases: indices (0..99, the position in sorted id order) or case ids;
            None means all 100.
        timeout: seconds for connecting and for each read.
        progress: show a tqdm progress bar over the cases.

    Returns the ``la_XXX.npz`` paths of the selected cases (present or written).
    Existing files are kept as they are.

    Raises:
        NetworkError: a URL could not be fetched (unreachable, timeout, HTTP error).
        DataError: a fetched file is not a readable source h5.
    """
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}")
    folder = Path(to_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create the destination folder: {exc}") from exc
    from tqdm import tqdm

    paths = []
    for idx in tqdm(_selected(cases), desc="LA 2018", unit="case", disable=not progress):
        npz = folder / f"la_{idx:03d}.npz"
        paths.append(npz)
        if npz.exists():
            continue
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{npz.stem}.", suffix=".h5")
        os.close(fd)
        try:
            _fetch(case_url(LA2018_CASE_IDS[idx], base_url), Path(tmp), float(timeout))
            convert_la2018(tmp, npz)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return paths
