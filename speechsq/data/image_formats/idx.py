"""The IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

Header: two zero bytes, a type code, the number of dimensions ``n``; then ``n``
big-endian uint32 sizes; then the data, big-endian, row-major. Files may be gzipped.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from speechsq.data.image_formats.errors import ImageDataError

# type code -> numpy dtype (big-endian where it matters)
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise ImageDataError(f"{path}: cannot read IDX file ({err})") from err


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or not) into an array of its stored shape."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ImageDataError(f"{path}: not an IDX file (the first two bytes must be zero)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise ImageDataError(f"{path}: unknown IDX type code 0x{code:02x}")
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise ImageDataError(f"{path}: truncated IDX header ({ndim} dimensions declared)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = IDX_DTYPES[code]
    body = memoryview(data)[4 + 4 * ndim :]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(body) != expected:
        raise ImageDataError(
            f"{path}: IDX header declares shape {dims} ({expected} bytes of data) but the file holds {len(body)} bytes; "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write an array as an IDX file (gzipped when the name ends in ``.gz``)."""
    path = Path(path)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    array = np.ascontiguousarray(array)
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ImageDataError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(IDX_DTYPES[code], copy=False).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
