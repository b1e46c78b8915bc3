"""Append-only files that know their size and checksum at every item boundary.

A stage's output grows by appending; a resume must prove that what it resumes from is what
was written. Each appender keeps the CRC-32 of its content as it writes (for an ``.npy``
file, of the rows after the fixed-size header, which is rewritten at the end), so a
checkpoint can record ``(size, crc)`` and a resume can check the file against it.
"""

from __future__ import annotations

import errno
import mmap
import os
import zlib
from pathlib import Path

import numpy as np

NPY_HEADER = 128  # bytes reserved for the .npy header, rewritten with the final row count
_READ = 1 << 24


def npy_header(shape: tuple[int, ...], dtype: np.dtype | type = np.uint8) -> bytes:
    """A version-1.0 .npy header padded to exactly ``NPY_HEADER`` bytes."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
         "shape": tuple(shape)}
    body = repr(d).encode("latin1")
    pad = NPY_HEADER - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} does not fit the reserved .npy header")
    return (b"\x93NUMPY\x01\x00" + (NPY_HEADER - 10).to_bytes(2, "little")
            + body + b" " * pad + b"\n")


def file_crc(path: str | Path, size: int, skip: int = 0) -> int | None:
    """CRC-32 of bytes ``skip..size`` of ``path``; None when the file is shorter."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < size:
                return None
            f.seek(skip)
            crc, left = 0, size - skip
            while left > 0:
                block = f.read(min(left, _READ))
                if not block:
                    return None
                crc = zlib.crc32(block, crc)
                left -= len(block)
            return crc
    except OSError:
        return None


def _copy_range(src_fd: int, dst_fd: int, src_offset: int, dst_offset: int,
                count: int) -> None:
    """Copy ``count`` bytes between two files, in the kernel where it can
    (``os.copy_file_range``), else by ``pread``/``pwrite`` (another filesystem, an old
    kernel)."""
    while count:
        try:
            n = os.copy_file_range(src_fd, dst_fd, count, src_offset, dst_offset)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = os.pwrite(dst_fd, os.pread(src_fd, min(count, _READ), src_offset),
                          dst_offset)
        if n <= 0:
            raise OSError(errno.EIO, "short copy: the source .npy file is truncated")
        src_offset, dst_offset, count = src_offset + n, dst_offset + n, count - n


class TextAppender:
    """A JSON-lines file opened for appending, with its size and checksum."""

    skip = 0

    def __init__(self, path: Path, size: int = 0, crc: int = 0):
        self.path, self.size, self.crc = path, size, crc
        self.f = open(path, "r+b" if size else "wb")
        self.f.truncate(size)
        self.f.seek(size)

    def write(self, text: str) -> None:
        data = text.encode()
        self.f.write(data)
        self.size += len(data)
        self.crc = zlib.crc32(data, self.crc)

    def sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.sync()
        self.f.close()


class ArrayAppender:
    """Rows appended to an .npy file whose header is fixed when the row count is known."""

    skip = NPY_HEADER

    def __init__(self, path: Path, row_shape: tuple[int, ...], rows: int = 0, crc: int = 0,
                 dtype: np.dtype | type = np.uint8):
        self.path, self.row_shape, self.rows, self.crc = path, tuple(row_shape), rows, crc
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        self.f = open(path, "r+b" if rows else "wb")
        if rows:
            self.f.truncate(NPY_HEADER + rows * self.row_bytes)
            self.f.seek(0, os.SEEK_END)
        else:
            self.f.write(npy_header((0, *self.row_shape), self.dtype))

    @property
    def size(self) -> int:
        return NPY_HEADER + self.rows * self.row_bytes

    def extend(self, rows: np.ndarray) -> None:
        """Append ``rows`` (M, *row_shape) of the file's dtype in one write."""
        if rows.shape[1:] != self.row_shape or rows.dtype != self.dtype:
            raise ValueError(f"{self.path.name}: expected {self.dtype} rows of "
                             f"{self.row_shape}, got {rows.dtype} {rows.shape[1:]}")
        data = np.ascontiguousarray(rows).data
        self.f.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.rows += len(rows)

    def copy_rows(self, src: np.ndarray, rows: np.ndarray) -> None:
        """Append rows ``rows`` (increasing) of ``src``: file to file in the kernel when
        ``src`` is a whole .npy memory map, a run of consecutive rows per call (the dedup
        stage copies most of its input, and the kernel's copy skips a pass through user
        memory: docs/dedup.md), else through memory."""
        rows = np.asarray(rows, np.int64)
        whole_map = isinstance(src, np.memmap) and isinstance(src.base, mmap.mmap)
        if not (whole_map and hasattr(os, "copy_file_range") and len(rows)
                and tuple(src.shape[1:]) == self.row_shape and src.dtype == self.dtype):
            self.extend(np.asarray(src[rows]))
            return
        self.f.flush()
        end = self.f.tell()
        runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
        with open(src.filename, "rb") as source:
            for run in runs:
                a, b = int(run[0]), int(run[-1]) + 1
                count = (b - a) * self.row_bytes
                _copy_range(source.fileno(), self.f.fileno(),
                            src.offset + a * self.row_bytes, end, count)
                self.crc = zlib.crc32(src[a:b].data, self.crc)
                end += count
        self.f.seek(end)  # the buffered writer's position follows the copied bytes
        self.rows += len(rows)

    def sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        """Write the header with the final row count and close."""
        self.f.seek(0)
        self.f.write(npy_header((self.rows, *self.row_shape), self.dtype))
        self.sync()
        self.f.close()
