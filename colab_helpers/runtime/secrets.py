"""Secrets never leave the process: names of secret variables and a redactor for anything we write or show.

:func:`redact` and :func:`contains_secret` work on text. :func:`scrub_bytes` makes the bytes of a file safe to
share: it finds secret values in UTF-8, UTF-16 and UTF-32 (with or without a byte-order mark) and 8-bit text,
redacts them in the file's own encoding, and opens gzip, bzip2, xz / lzma, zip and tar data (nested ones too) to
redact inside and pack again. What it cannot check or cannot cut a secret out of is an error, never a pass.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import os
import re
import tarfile
import zipfile
import zlib
from pathlib import PurePosixPath

SECRET_ENV_VARS: tuple[str, ...] = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_TOKEN",
    "WANDB_API_KEY",
    "OPENAI_API_KEY",
    "KAGGLE_KEY",
    "GITHUB_TOKEN",
)
NAME_MARKER = "REDACTED"  # replaces a secret value inside a file name ("***" is not a valid name on Windows)
MAX_UNPACKED_BYTES = 512 * 2**20  # compressed data that unpacks to more than this is not checked, and not shared
_SECRET_NAME = re.compile(r"(TOKEN|API_KEY|SECRET|PASSWORD)", re.IGNORECASE)
_MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words
# Every byte form a secret may take in a file: raw search in these finds it without decoding first.
_ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "latin-1", "cp1252")
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: its mark starts the same way
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")  # control characters that text does not hold
_SNIFF_BYTES = 8192
_MAX_DEPTH = 4  # a zip in a tar in a gzip is fine; deeper nesting is not checked
# Formats we open, by how their data starts, and the file suffixes that promise them.
_PACKED_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),  # an empty zip
)
_PACKED_SUFFIXES = {
    ".gz": "gzip", ".tgz": "gzip", ".bz2": "bzip2", ".tbz2": "bzip2", ".xz": "xz", ".txz": "xz",
    ".lzma": "lzma", ".zip": "zip", ".npz": "zip", ".tar": "tar",
}  # fmt: skip
# Compressed formats the standard library cannot open: they may hold text, so they are never shared unchecked.
_UNOPENABLE_MAGIC = (
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"Rar!\x1a\x07", "rar"),
    (b"LZIP\x01", "lzip"),
)
_UNOPENABLE_SUFFIXES = {
    ".7z": "7z", ".zst": "zstd", ".zstd": "zstd", ".lz4": "lz4", ".rar": "rar", ".br": "brotli", ".lz": "lzip",
    ".z": "compress (.Z)", ".sz": "snappy",
}  # fmt: skip
_UNPACK_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError,
                  RuntimeError, NotImplementedError)  # fmt: skip


def secret_values() -> list[str]:
    """Return the values of every secret-looking environment variable that is set (longest first)."""
    names = set(SECRET_ENV_VARS) | {name for name in os.environ if _SECRET_NAME.search(name)}
    values = {os.environ[name] for name in names if len(os.environ.get(name, "")) >= _MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str, marker: str = "***") -> str:
    """Return ``text`` with every secret value replaced by ``marker`` (``NAME_MARKER`` for file names)."""
    for value in secret_values():
        text = text.replace(value, marker)
    return text


def _patterns() -> set[bytes]:
    """Every secret value in every encoding of ``_ENCODINGS`` it can be written in."""
    found = set()
    for value in secret_values():
        for encoding in _ENCODINGS:
            try:
                found.add(value.encode(encoding))
            except UnicodeEncodeError:
                continue
    return found


def contains_secret(data: str | bytes) -> bool:
    """True when ``data`` contains the value of a secret environment variable.

    Bytes are searched as they are, for the value written in UTF-8, UTF-16, UTF-32 (either byte order) and
    8-bit encodings, so text in any of these is found without decoding; compressed data is not opened (see
    :func:`scrub_bytes`).
    """
    if isinstance(data, str):
        return any(value in data for value in secret_values())
    raw = bytes(data)
    return any(pattern in raw for pattern in _patterns())


def file_contains_secret(path: str | os.PathLike[str], chunk_bytes: int = 16 * 2**20) -> bool:
    """True when the file at ``path`` holds a secret value, as :func:`contains_secret` finds it in bytes.

    The file is read in chunks, so large files (weights) are checked without loading them whole.
    """
    patterns = _patterns()
    if not patterns:
        return False
    overlap = max(len(pattern) for pattern in patterns) - 1
    tail = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            window = tail + chunk
            if any(pattern in window for pattern in patterns):
                return True
            tail = window[-overlap:]
    return False


class SecretCheckError(ValueError):
    """:func:`scrub_bytes` cannot make data safe to share; ``found`` is True when a secret value was seen in it."""

    def __init__(self, reason: str, *, found: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.found = found


def scrub_bytes(data: bytes, name: str = "") -> bytes:
    """Return ``data`` (a file called ``name``) with every secret value redacted; ``data`` itself when it has none.

    Text (UTF-8, UTF-16 / UTF-32 with or without byte-order mark, 8-bit encodings such as latin-1) is redacted
    and written back in its own encoding. gzip, bzip2, xz / lzma, zip and tar data is opened, its contents (and
    member names) redacted the same way, and packed again. Raises :class:`SecretCheckError` when a secret value
    sits in binary data, or when the data cannot be checked (corrupt or unknown compressed data, too large or
    too deeply nested archives): such data must not be shared. With no secret value set there is nothing to
    look for, and ``data`` comes back as it is.
    """
    if not secret_values():
        return data  # nothing to look for
    cleaned = _scrub(data, name.lower(), 0)
    if cleaned is not data and contains_secret(cleaned):
        raise SecretCheckError("a secret value that could not be redacted", found=True)
    return cleaned


def _scrub(data: bytes, name: str, depth: int) -> bytes:
    kind = _packing(data, name)
    if kind is not None:
        if depth >= _MAX_DEPTH:
            raise SecretCheckError(f"{kind} nested more than {_MAX_DEPTH} deep", found=False)
        try:
            return _scrub_packed(kind, data, name, depth)
        except SecretCheckError:
            raise
        except MemoryError:
            raise SecretCheckError(f"{kind} data too large to check", found=False) from None
        except _UNPACK_ERRORS as exc:
            raise SecretCheckError(f"corrupt {kind} data ({type(exc).__name__})", found=False) from None
    if not contains_secret(data):
        return data
    decoded = _decode_text(data)
    if decoded is None:
        raise SecretCheckError("a secret value in binary data", found=True)
    text, encoding, bom = decoded
    return bom + redact(text).encode(encoding)


def _packing(data: bytes, name: str) -> str | None:
    """The compressed or archive format of ``data`` (by its first bytes, else by ``name``'s suffix), or None."""
    suffix = PurePosixPath(name).suffix
    for magic, kind in _UNOPENABLE_MAGIC:
        if data.startswith(magic):
            raise SecretCheckError(f"{kind} data, which cannot be opened to check", found=False)
    for magic, kind in _PACKED_MAGIC:
        if data.startswith(magic):
            return kind
    if data[:3] == b"BZh" and data[3:4].isdigit() and data[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bzip2"
    if data[257:262] == b"ustar" and data[262:263] in (b"\0", b" "):
        return "tar"
    if suffix in _UNOPENABLE_SUFFIXES:
        raise SecretCheckError(f"{_UNOPENABLE_SUFFIXES[suffix]} data, which cannot be opened to check", found=False)
    if suffix == ".lzma":
        return "lzma"  # the old .lzma format has no fixed first bytes
    if suffix in _PACKED_SUFFIXES:  # named as packed data, but it does not start like it
        raise SecretCheckError(f"not valid {_PACKED_SUFFIXES[suffix]} data", found=False)
    return None


def _read_capped(handle: io.BufferedIOBase, kind: str) -> bytes:
    with handle:
        data = handle.read(MAX_UNPACKED_BYTES + 1)
    if len(data) > MAX_UNPACKED_BYTES:
        raise SecretCheckError(f"{kind} data over {MAX_UNPACKED_BYTES // 2**20} MB unpacked", found=False)
    return data


def _scrub_packed(kind: str, data: bytes, name: str, depth: int) -> bytes:
    """Open ``data`` of format ``kind``, scrub what it holds, and pack it again (``data`` itself when unchanged)."""
    if kind == "zip":
        return _scrub_zip(data, depth)
    if kind == "tar":
        return _scrub_tar(data, depth)
    source = io.BytesIO(data)
    if kind == "gzip":
        inner = _read_capped(gzip.GzipFile(fileobj=source), kind)
    elif kind == "bzip2":
        inner = _read_capped(bz2.BZ2File(source), kind)
    else:
        inner = _read_capped(lzma.LZMAFile(source, format=lzma.FORMAT_AUTO), kind)
    cleaned = _scrub(inner, _unpacked_name(name), depth + 1)
    if cleaned is inner and not contains_secret(data):
        return data
    # Packed again without the original header, whose stored file name may hold the secret too.
    if kind == "gzip":
        return gzip.compress(cleaned, mtime=0)
    if kind == "bzip2":
        return bz2.compress(cleaned)
    return lzma.compress(cleaned, format=lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE)


def _unpacked_name(name: str) -> str:
    """``log.txt`` for ``log.txt.gz``, ``x.tar`` for ``x.tgz``: the name that tells what packed data holds."""
    path = PurePosixPath(name)
    if not path.name:
        return name
    return str(path.with_suffix(".tar" if path.suffix in (".tgz", ".tbz2", ".txz") else ""))


def _scrub_zip(data: bytes, depth: int) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        if any(info.flag_bits & 0x1 for info in infos):
            raise SecretCheckError("an encrypted zip", found=False)
        if sum(info.file_size for info in infos) > MAX_UNPACKED_BYTES:
            raise SecretCheckError(f"zip data over {MAX_UNPACKED_BYTES // 2**20} MB unpacked", found=False)
        members = [(info, archive.read(info)) for info in infos]
    cleaned = [(info, _scrub(content, info.filename.lower(), depth + 1)) for info, content in members]
    if all(new is old for (_, old), (_, new) in zip(members, cleaned)) and not contains_secret(data):
        return data
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info, content in cleaned:
            fresh = zipfile.ZipInfo(redact(info.filename, NAME_MARKER), info.date_time)
            fresh.compress_type, fresh.external_attr = info.compress_type, info.external_attr
            archive.writestr(fresh, content)
    return out.getvalue()


def _scrub_tar(data: bytes, depth: int) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        members = archive.getmembers()
        if sum(member.size for member in members if member.isfile()) > MAX_UNPACKED_BYTES:
            raise SecretCheckError(f"tar data over {MAX_UNPACKED_BYTES // 2**20} MB unpacked", found=False)
        contents = [archive.extractfile(m).read() if m.isfile() else b"" for m in members]  # type: ignore[union-attr]
    cleaned = [
        _scrub(content, member.name.lower(), depth + 1) if member.isfile() else content
        for member, content in zip(members, contents)
    ]
    if all(new is old for old, new in zip(contents, cleaned)) and not contains_secret(data):
        return data
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member, content in zip(members, cleaned):
            member.name, member.linkname = redact(member.name, NAME_MARKER), redact(member.linkname, NAME_MARKER)
            member.uname, member.gname = redact(member.uname), redact(member.gname)
            member.pax_headers = {key: redact(value, NAME_MARKER) for key, value in member.pax_headers.items()}
            member.size = len(content) if member.isfile() else 0
            archive.addfile(member, io.BytesIO(content) if member.isfile() else None)
    return out.getvalue()


def _text_like(text: str, *, mostly_ascii: bool = False) -> bool:
    """True when at most 1 in 100 characters of ``text`` is a control character that text does not hold.

    With ``mostly_ascii``, half its characters must be ASCII too: how UTF-16 / UTF-32 without a byte-order mark
    is told from binary data, which decodes as UTF-16 to a run of CJK characters.
    """
    if mostly_ascii and len(text.encode("ascii", "ignore")) * 2 < len(text):
        return False
    return len(_CONTROL.findall(text)) * 100 <= len(text)


def _decode_text(data: bytes) -> tuple[str, str, bytes] | None:
    """``(text, encoding, byte-order mark)`` when ``data`` is text in an encoding we can write back, else None."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding), encoding, bom
            except UnicodeDecodeError:
                continue
    if b"\0" not in data[:_SNIFF_BYTES]:
        try:
            return data.decode("utf-8"), "utf-8", b""
        except UnicodeDecodeError:
            text = data.decode("latin-1")  # any bytes: an 8-bit encoding, written back byte for byte
            return (text, "latin-1", b"") if _text_like(text) else None
    for encoding, width in (("utf-32-le", 4), ("utf-32-be", 4), ("utf-16-le", 2), ("utf-16-be", 2)):
        if len(data) % width:
            continue
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if _text_like(text, mostly_ascii=True):
            return text, encoding, b""
    return None
