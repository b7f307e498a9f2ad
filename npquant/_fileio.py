"""The one layer every npquant file reader and writer goes through.

Reading treats a file as untrusted: a size it declares is checked against the bytes
actually present before anything is allocated, JSON headers are bounded in size and
nesting and refuse duplicate keys, every exception of the zip, npy and JSON layers
becomes a :class:`FileFormatError` (a ``ValueError``) naming the file and what was
expected, and checksums are verified before a value is returned. Writing is atomic and
gives the file the permissions a plain ``open(path, "w")`` would.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import struct
import tempfile
import zipfile

import numpy as np

#: Largest JSON header any npquant format accepts (bytes), and its deepest nesting.
MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 64
#: Largest npy header inside an ``.npz`` member (NumPy's own default limit).
MAX_NPY_HEADER = 10000
#: dtype kinds an ``.npz`` member may hold: bool, integers, floats, complex, text.
NPY_KINDS = frozenset("biufcUS")
#: deflate cannot expand input more than about 1032:1 (RFC 1951, 258-byte matches).
_DEFLATE_MAX_RATIO = 1032


class FileFormatError(ValueError):
    """A file that is not what the reader expected (corrupt, truncated, wrong format).

    ``path`` is the file (or ``"<bytes>"``); the message names it and what was expected.
    """

    def __init__(self, path, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")


def check_path(path, name: str = "path") -> str:
    """``path`` (``str`` or ``os.PathLike`` of ``str``) as a ``str``; else ``TypeError``
    naming the argument ``name``."""
    if isinstance(path, (str, os.PathLike)):
        p = os.fspath(path)
        if isinstance(p, str):
            if not p or "\0" in p:
                raise ValueError(f"{name} must be a non-empty path without NUL bytes, got {p!r}")
            return p
    raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__}")


def read_bytes(path, name: str = "path") -> bytes:
    """The whole content of the file ``path``. A missing or unreadable file is the
    ``OSError`` of the system (``FileNotFoundError``, ``IsADirectoryError``, ...)."""
    p = check_path(path, name)
    with open(p, "rb") as f:
        return f.read()


# ----------------------------------------------------------------------------- JSON

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


_BRACKETS = np.zeros(256, np.int32)
_BRACKETS[[ord("["), ord("{")]] = 1
_BRACKETS[[ord("]"), ord("}")]] = -1


def _json_depth(raw: bytes) -> int:
    """Deepest bracket nesting of JSON text (strings skipped), without recursion, in
    windows of 16 kB."""
    bare = _JSON_STRING.sub(b"", raw)
    depth = deepest = 0
    for i in range(0, len(bare), 1 << 14):
        level = np.cumsum(_BRACKETS[np.frombuffer(bare, np.uint8, min(1 << 14, len(bare) - i), i)], dtype=np.int32)
        deepest, depth = max(deepest, depth + int(level.max())), depth + int(level[-1])
    return deepest


def _refuse_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw, what: str, where="<bytes>", *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH):
    """Parse UTF-8 JSON text ``raw`` (bytes or str) describing ``what`` of the file
    ``where``: at most ``max_bytes`` long and ``max_depth`` deep, no duplicate object
    keys, no NaN or infinity. Anything else is a :class:`FileFormatError`."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise FileFormatError(where, f"{what} is not UTF-8 JSON") from None
    raw = bytes(raw)
    if len(raw) > max_bytes:
        raise FileFormatError(where, f"{what} is {len(raw)} bytes, more than the {max_bytes} allowed")
    depth = _json_depth(raw)
    if depth > max_depth:
        raise FileFormatError(where, f"{what} nests {depth} levels deep, more than the {max_depth} allowed")

    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise FileFormatError(where, f"{what} has the key {k!r} twice")
            out[k] = v
        return out

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_constant=_refuse_constant)
    except FileFormatError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FileFormatError(where, f"{what} is not valid UTF-8 JSON ({e})") from None


# ------------------------------------------------------------------------------ npz


def read_npz(path, name: str = "path") -> dict:
    """``{key: ndarray}`` of an ``.npz`` file (the ``np.savez`` format), checked.

    Members must be ``.npy`` files, stored or deflated, each key once. Each npy header
    must describe a plain dtype (bool, integer, float, complex or text; never an
    object) whose byte size equals the bytes the member holds, which is checked before
    the data is read, and the member's CRC-32 must match. A missing file is an
    ``OSError``; anything else wrong is a :class:`FileFormatError` naming ``path``.
    """
    p = check_path(path, name)
    return parse_npz(read_bytes(p), p)


def parse_npz(data: bytes, where="<bytes>") -> dict:
    """:func:`read_npz` of the bytes ``data`` of a file named ``where`` in messages."""
    if data[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise FileFormatError(where, f"not an .npz file: expected a zip archive, the file starts with {data[:4]!r}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - zipfile raises many types on corrupt input
        raise FileFormatError(where, f"not a readable .npz (zip) archive ({_describe(e)})") from None
    out = {}
    with zf:
        _check_tiling(zf, data, where)
        for info in zf.infolist():
            key = _member_key(info, where)
            if key in out:
                raise FileFormatError(where, f"the array {key!r} is stored twice")
            try:
                out[key] = _read_member(zf, info, len(data), where)
            except FileFormatError:
                raise
            except Exception as e:  # noqa: BLE001 - zip/zlib/npy layers raise many types
                raise FileFormatError(where, f"member {info.filename!r} is corrupt ({_describe(e)})") from None
    return out


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


_LOCAL = struct.Struct("<4s5H3I2H")  # a zip local file header (30 bytes)


def _check_tiling(zf: zipfile.ZipFile, data: bytes, where) -> None:
    """The members, then the central directory, must fill the archive from byte 0 with
    no gap: bytes no entry accounts for mean a damaged directory (which would otherwise
    silently drop arrays)."""
    pos = 0
    for info in sorted(zf.infolist(), key=lambda i: i.header_offset):
        if info.header_offset != pos or pos + _LOCAL.size > len(data):
            raise FileFormatError(
                where,
                f"damaged zip directory: member {info.filename!r} starts at byte {info.header_offset}, expected {pos}",
            )
        *_, nlen, xlen = _LOCAL.unpack_from(data, pos)
        pos += _LOCAL.size + nlen + xlen + info.compress_size
        if info.flag_bits & 0x08:  # a data descriptor follows: optional signature, CRC, sizes
            pos += 16 if data[pos : pos + 4] == b"PK\x07\x08" else 12
            if info.file_size >= 0xFFFFFFFF or info.compress_size >= 0xFFFFFFFF:
                pos += 8
    if zf.start_dir != pos:
        raise FileFormatError(
            where, f"damaged zip directory: the members end at byte {pos}, the directory starts at {zf.start_dir}"
        )


def _member_key(info: zipfile.ZipInfo, where) -> str:
    if not info.filename.endswith(".npy") or len(info.filename) == 4:
        raise FileFormatError(where, f"member {info.filename!r} is not an .npy array")
    if info.flag_bits & 0x1:
        raise FileFormatError(where, f"member {info.filename!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FileFormatError(
            where, f"member {info.filename!r} uses compression method {info.compress_type}; expected stored or deflated"
        )
    return info.filename[:-4]


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive_bytes: int, where) -> np.ndarray:
    name = info.filename
    if info.compress_size > archive_bytes:
        raise FileFormatError(
            where, f"member {name!r} claims {info.compress_size} bytes, more than the {archive_bytes}-byte file"
        )
    stored = info.compress_type == zipfile.ZIP_STORED
    if stored and info.file_size != info.compress_size:
        raise FileFormatError(
            where, f"stored member {name!r} has size {info.file_size} but holds {info.compress_size} bytes"
        )
    if not stored and info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 64:
        raise FileFormatError(
            where,
            f"deflated member {name!r} claims {info.file_size} bytes from "
            f"{info.compress_size}, beyond what deflate can expand to",
        )
    with zf.open(info) as f:
        dtype, shape, fortran, hlen = _read_npy_header(f, name, where)
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        if hlen + nbytes != info.file_size:
            raise FileFormatError(
                where,
                f"member {name!r} declares {dtype.str} of shape {shape} "
                f"({nbytes} bytes), but holds {info.file_size - hlen} bytes of data",
            )
        buf = _read_exact(f, nbytes, name, where)
        if f.read(1):  # reaching the end is also where zipfile checks the CRC-32
            raise FileFormatError(where, f"member {name!r} has bytes after its data")
    arr = np.frombuffer(buf, dtype) if nbytes else np.zeros(0, dtype)
    return arr.reshape(shape, order="F" if fortran else "C")


def _read_exact(f, n: int, name: str, where) -> bytearray:
    # Grow with the data actually read: a declared size is never allocated up front.
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(n - len(buf), 1 << 22))
        if not chunk:
            raise FileFormatError(where, f"member {name!r} is truncated: {len(buf)} of {n} data bytes")
        buf += chunk
    return buf


def _read_npy_header(f, name: str, where):
    pre = f.read(10)
    if len(pre) < 10 or pre[:6] != b"\x93NUMPY":
        raise FileFormatError(where, f"member {name!r} is not an .npy array (no npy magic)")
    major = pre[6]
    if major == 1:
        hlen, start = struct.unpack("<H", pre[8:10])[0], 10
    elif major in (2, 3):
        more = f.read(2)
        if len(more) < 2:
            raise FileFormatError(where, f"member {name!r}: truncated npy header")
        hlen, start = struct.unpack("<I", pre[8:10] + more)[0], 12
    else:
        raise FileFormatError(where, f"member {name!r}: npy format version {major}.{pre[7]}; expected 1, 2 or 3")
    if hlen > MAX_NPY_HEADER:
        raise FileFormatError(where, f"member {name!r}: npy header of {hlen} bytes, more than {MAX_NPY_HEADER}")
    raw = f.read(hlen)
    if len(raw) < hlen:
        raise FileFormatError(where, f"member {name!r}: truncated npy header")
    try:
        text = raw.decode("utf-8" if major == 3 else "latin1")
        header = _literal_header(text)
    except Exception as e:  # noqa: BLE001 - any failure to parse a <= 10 kB header
        raise FileFormatError(where, f"member {name!r}: corrupt npy header ({_describe(e)})") from None
    return (*_check_npy_header(header, name, where), start + hlen)


def _literal_header(text: str):
    import ast

    return ast.literal_eval(text)  # what NumPy itself uses: literals only, no code


def _check_npy_header(h, name, where):
    if not isinstance(h, dict) or set(h) != {"descr", "fortran_order", "shape"}:
        raise FileFormatError(where, f"member {name!r}: npy header must be a dict of descr, fortran_order and shape")
    try:
        dtype = np.lib.format.descr_to_dtype(h["descr"])
    except Exception as e:  # noqa: BLE001
        raise FileFormatError(
            where, f"member {name!r}: npy dtype {h['descr']!r:.40} is not valid ({_describe(e)})"
        ) from None
    if dtype.hasobject or dtype.kind not in NPY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise FileFormatError(where, f"member {name!r}: dtype {dtype} is not a plain numeric or text dtype")
    shape = h["shape"]
    if not (isinstance(shape, tuple) and len(shape) <= 32 and all(type(d) is int and d >= 0 for d in shape)):
        raise FileFormatError(where, f"member {name!r}: npy shape {shape!r:.60} is not a tuple of sizes")
    if not isinstance(h["fortran_order"], bool):
        raise FileFormatError(where, f"member {name!r}: npy fortran_order must be True or False")
    return dtype, shape, h["fortran_order"]


def npz_bytes(arrays: dict) -> bytes:
    """The ``.npz`` bytes of ``{key: array}`` (as ``np.savez`` writes them)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# -------------------------------------------------------------------------- writing


def _umask() -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no other portable read: set and restore at once
    os.umask(mask)
    return mask


def destination(path, name: str = "path") -> str:
    """The file that writing ``path`` replaces: ``path`` itself, or the final target when
    ``path`` is a symbolic link (followed, as ``open(path, "w")`` would). Raises
    ``IsADirectoryError`` if it is a directory and ``FileNotFoundError`` /
    ``NotADirectoryError`` if its folder does not exist, naming the path."""
    p = os.path.realpath(check_path(path, name))
    if os.path.isdir(p):
        raise IsADirectoryError(f"cannot write {os.fspath(path)!r}: it is a directory")
    folder = os.path.dirname(p)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"cannot write {os.fspath(path)!r}: the folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"cannot write {os.fspath(path)!r}: {folder!r} is not a folder")
    return p


def atomic_write(path, write, name: str = "path") -> None:
    """Call ``write(file)`` on a temporary file in the destination's folder, then rename
    it over the destination: a reader never sees a half-written file, and a failure
    leaves no temporary behind.

    The new file gets the permissions of the file it replaces, or ``0o666`` minus the
    umask for a new file (as ``open(path, "w")``). A symbolic link is followed: its
    target is replaced and the link kept (see :func:`destination`).
    """
    dest = destination(path, name)
    try:
        st = os.stat(dest)
        mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None
    except FileNotFoundError:
        mode = None
    if mode is None:
        mode = 0o666 & ~_umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".npquant-", dir=os.path.dirname(dest))
    except OSError as e:  # name the destination, not the temporary file
        raise type(e)(f"cannot write {os.fspath(path)!r}: {(e.strerror or str(e)).lower()}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
