"""Safe input and atomic output.

Reading: a size cap before anything is parsed, orjson for JSON, lxml with entity resolution,
DTD loading and network access off (and huge_tree off) for XML. Every failure is an
:class:`InputError` naming the file. Writing: to a temporary name in the target folder, then
``os.replace``, so a failed run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from lxml import etree

from .errors import InputError

#: Inputs larger than this are refused before parsing (a study record is a few hundred kB).
#: Subject-data paths stream instead and do not use this cap.
MAX_INPUT_BYTES = int(os.environ.get("TRIALBRIDGE_MAX_INPUT_BYTES", 64 * 1024 * 1024))


def read_bytes(path: Path, *, limit: int | None = None) -> bytes:
    limit = MAX_INPUT_BYTES if limit is None else limit
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=str(path)) from None
    if path.is_dir():
        raise InputError("is a folder, not a file", file=str(path))
    if size > limit:
        raise InputError(f"file is {size:,} bytes, over the {limit:,}-byte limit for this input "
                         "(set TRIALBRIDGE_MAX_INPUT_BYTES to raise it)", file=str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=str(path)) from None
    if not data.strip():
        raise InputError("file is empty", file=str(path))
    return data


def parse_json(data: bytes, *, file: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", file=file) from None


def safe_xml_parser() -> etree.XMLParser:
    """An lxml parser that refuses to resolve entities or touch the network."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True)


def parse_xml(data: bytes, *, file: str) -> etree._Element:
    if b"<!ENTITY" in data or b"<!entity" in data:
        # Entity declarations have no place in any format we read; refuse them outright
        # rather than rely on the parser leaving them unexpanded.
        raise InputError("XML declares entities (<!ENTITY>); refused for safety", file=file)
    try:
        root = etree.fromstring(data, parser=safe_xml_parser())
    except etree.XMLSyntaxError as exc:
        raise InputError(f"not well-formed XML ({exc.msg})", file=file) from None
    return root


def looks_like_xml(data: bytes) -> bool:
    head = data.lstrip()[:200]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    return head.startswith(b"<")


def looks_like_json(data: bytes) -> bool:
    head = data.lstrip()[:10]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    return head[:1] in (b"{", b"[")


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def dump_json(obj: Any) -> bytes:
    """Deterministic, readable JSON (2-space indent, keys in insertion order, trailing newline)."""
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n"


def write_json_atomic(target: Path, obj: Any) -> None:
    write_bytes_atomic(target, dump_json(obj))
