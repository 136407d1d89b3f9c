"""Stream FHIR resources (plain dicts, parsed with orjson; for pass 2's columnar path also raw NDJSON
lines, see :class:`ResourceStream`) from subject-data inputs.

Inputs: a Bundle file (collection, transaction, batch, searchset, document: each ``entry.resource``),
a single resource JSON file, a ``.ndjson`` file, or a folder of Bulk Data NDJSON files (one or several
resource types per file). Everything is yielded in **chunks** (lists of :class:`Item`), so the memory
held is one chunk, never the input: NDJSON is read line by line; a Bundle is one JSON document and so
is parsed whole (bundles are bounded by their file).

``types`` filters by resource type. For NDJSON the filter is applied *before* parsing where it is safe:
a Bulk Data file named after a type (``Observation.ndjson``, ``Patient1.ndjson``,
``Observation-2.ndjson``) is skipped when that type is not wanted; in mixed files a line whose first
key is ``"resourceType": "X"`` is skipped without parsing when X is not wanted.

``skipped`` (a dict, optional) counts what the filter left out, by resource type (for a file skipped by
its name: its non-blank lines), so the caller can report every resource it did not convert.
``uncounted`` (:func:`iter_chunks`): types whose skipped Bulk Data files need no count (the caller reads
them in another pass): such a file is only opened, so that an unreadable file fails where it did.

:class:`ResourceStream` (pass 2's columnar path) reads the same inputs for a consumer that reads an
NDJSON file's lines itself: the lines of one resource type that start ``{"resourceType":"X"`` it
offers to a typed decoder (a msgspec decoder, ``domains/_obs_json.py``), every other line (and a line
the decoder refuses) it hands back to :meth:`NdjsonLines.other`, the reader's own reading of a line
(same items, errors, filtering and line numbers as :func:`iter_resources`). No generator resume and
no item tuple per line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, cast

import orjson

from ..errors import InputError
from .numbers import give_texts, text_decoder

DEFAULT_CHUNK = 20_000
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
_LEAD_TYPE = re.compile(rb'^\s*\{\s*"resourceType"\s*:\s*"([A-Za-z]+)"')
_FILE_TYPE = re.compile(r"^([A-Z][A-Za-z]+?)(?:[-_.]?\d+)?\.(?:ndjson|jsonl)$")


class Item(NamedTuple):
    """One resource and where it came from (for provenance and reference resolution)."""

    resource: dict[str, Any]
    file: str                 # input file name (no folders: paths may carry PHI-like names)
    full_url: str | None      # Bundle.entry.fullUrl (urn:uuid:... or absolute URL), else None
    line: int | None = None   # 1-based NDJSON line, or Bundle entry index


class NdjsonLines:
    """One NDJSON file of a :class:`ResourceStream`, read by its consumer: ``fh`` (iterate it for the
    lines), ``name``, ``n`` (the number of the last line read: the consumer keeps it, line numbers are
    1-based), ``prefix`` (the typed lines' exact start) and ``other(line, n)`` (any other line: its
    :class:`Item`, or None for a blank line, a type not wanted or an error, recorded as the reader
    records it)."""

    __slots__ = ("fh", "name", "n", "prefix", "other")

    def __init__(self, fh: Any, name: str, prefix: bytes, other: Callable[[bytes, int], Item | None]) -> None:
        self.fh, self.name, self.n, self.prefix, self.other = fh, name, 0, prefix, other


class Chunk(NamedTuple):
    """The next at most ``size`` resources of ``stream`` (what ``extract_columns`` is given when its
    plugin has a ``line_decoder``)."""

    stream: ResourceStream
    size: int


class ResourceStream:
    """The resources of ``paths`` as :func:`iter_resources` gives them, for a consumer that takes them
    part by part (:meth:`part`, :meth:`next_part`): an NDJSON file (but a Bulk file of a type not
    wanted, not read) is an :class:`NdjsonLines` (the consumer reads its lines, decodes those that
    start with ``prefix`` with ``decode`` and gives every other line, and those ``decode`` refuses, to
    ``other``); any other file an iterator of items. Resumable: a consumer may stop within a part and the next one go on.
    ``decode_as``: (resource type, decoder); without it (or when that type is not wanted) every part
    is an iterator of items."""

    def __init__(self, paths: Iterable[Path], *, types: Any = None, skip_types: Any = None,
                 errors: list[tuple[str, int | None, str]] | None = None,
                 decode_as: tuple[str, Callable[[bytes], Any]] | None = None) -> None:
        self._paths = iter(list_input_files(paths))
        self._types, self._skip, self._errors = types, skip_types, errors
        self.decode: Callable[[bytes], Any] | None = None
        self._typed: str | None = None
        if decode_as is not None and _wanted(decode_as[0], types, skip_types) and types is not None:
            self._typed, self.decode = decode_as
        self._part: NdjsonLines | Iterator[Item] | None = None

    def part(self) -> NdjsonLines | Iterator[Item] | None:
        """The part being read (the next file's when the last one is done); None after the last."""
        while self._part is None:
            path = next(self._paths, None)
            if path is None:
                return None
            if self._typed is None or path.suffix.lower() not in NDJSON_SUFFIXES:
                self._part = iter(_iter_file(path, self._types, self._skip, self._errors))
                continue
            declared = file_resource_type(path)
            if declared is not None and not _wanted(declared, self._types, self._skip):
                continue    # (as _iter_file: a Bulk file of a type not wanted is not read)
            name = path.name
            try:
                fh = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 (closed by next_part/close)
            except OSError as exc:
                raise InputError(f"cannot read file ({exc.strerror})", file=name) from None
            self._part = NdjsonLines(fh, name, b'{"resourceType":"' + self._typed.encode() + b'"',
                                     _ndjson_line(name, self._types, self._skip, self._errors, None))
        return self._part

    def next_part(self) -> None:
        """The part being read is done."""
        if isinstance(self._part, NdjsonLines):
            self._part.fh.close()
        self._part = None

    def chunk(self, size: int) -> Chunk:
        return Chunk(self, size)

    def close(self) -> None:
        self.next_part()
        self._paths = iter(())


def list_input_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders into their NDJSON/JSON files (sorted, hidden files skipped)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                              and f.suffix.lower() in NDJSON_SUFFIXES + (".json",)))
        elif p.exists():
            out.append(p)
        else:
            raise InputError("no such file or folder", file=str(p))
    return out


def file_resource_type(path: Path) -> str | None:
    """The resource type a Bulk Data NDJSON file name declares (``Patient1.ndjson`` -> Patient)."""
    m = _FILE_TYPE.match(path.name)
    return m.group(1) if m else None


def iter_chunks(paths: Iterable[Path], *, types: frozenset[str] | set[str] | None = None,
                skip_types: frozenset[str] | set[str] | None = None,
                chunk_size: int = DEFAULT_CHUNK, errors: list[tuple[str, int | None, str]] | None = None,
                skipped: dict[str, int] | None = None, uncounted: frozenset[str] | set[str] = frozenset()
                ) -> Iterator[list[Item]]:
    """Yield lists of at most ``chunk_size`` items from every input, in input order.

    ``types``: only these resource types (None = all). ``skip_types``: never these.
    Lines that are not JSON objects are recorded in ``errors`` as (file, line, message) and skipped
    (the caller reports them); if ``errors`` is None they raise :class:`InputError`.
    """
    buf: list[Item] = []
    for path in list_input_files(paths):
        for item in cast(Iterator[Item], _iter_file(path, types, skip_types, errors, skipped,
                                                    uncounted=uncounted)):
            buf.append(item)
            if len(buf) >= chunk_size:
                yield buf
                buf = []
    if buf:
        yield buf


def iter_resources(paths: Iterable[Path], *, types: Any = None, skip_types: Any = None,
                   errors: list[tuple[str, int | None, str]] | None = None) -> Iterator[Item]:
    """One item at a time (the caller extracts and drops each parsed resource at once: holding
    thousands of parsed dicts costs more in allocation than the parsing itself)."""
    for path in list_input_files(paths):
        yield from _iter_file(path, types, skip_types, errors, None)


def _wanted(rtype: Any, types: Any, skip: Any) -> bool:
    if types is not None and rtype not in types:
        return False
    return not (skip and rtype in skip)


def _iter_file(path: Path, types: Any, skip: Any, errors: list | None,
               skipped: dict[str, int] | None = None,
               uncounted: frozenset[str] | set[str] = frozenset()) -> Iterator[Item]:
    """The items of one file (not a generator itself: an NDJSON file's items come straight from
    :func:`_iter_ndjson`, one generator level less per line)."""
    name = path.name
    if path.suffix.lower() in NDJSON_SUFFIXES:
        declared = file_resource_type(path)
        if declared is not None and not _wanted(declared, types, skip):
            if skipped is not None and declared in uncounted:
                _readable(path, name)
            elif skipped is not None:
                skipped[declared] = skipped.get(declared, 0) + _count_lines(path, name)
            return iter(())
        return _iter_ndjson(path, name, types, skip, errors, skipped)
    return _iter_document(path, name, types, skip, errors, skipped)


def _iter_document(path: Path, name: str, types: Any, skip: Any, errors: list | None,
                   skipped: dict[str, int] | None) -> Iterator[Item]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=name) from None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", file=name) from None
    yield from iter_bundle(obj, name, types, skip, errors, skipped, alt=_Once(raw))


class _Once:
    """The document decoded again with floats kept as their JSON text (numbers.text_decoder), at
    most once, when an Observation first needs its numbers' texts."""

    __slots__ = ("raw", "obj")

    def __init__(self, raw: bytes) -> None:
        self.raw, self.obj = raw, None

    def __call__(self) -> Any:
        if self.obj is None:
            self.obj = text_decoder()(self.raw)
            self.raw = b""
        return self.obj


def _count_lines(path: Path, name: str) -> int:
    try:
        with open(path, "rb", buffering=1 << 20) as fh:
            return sum(1 for line in fh if not line.isspace())
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=name) from None


def _readable(path: Path, name: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=name) from None


def _skip(skipped: dict[str, int] | None, rtype: Any) -> None:
    if skipped is not None:
        key = rtype if isinstance(rtype, str) else "(no resourceType)"
        skipped[key] = skipped.get(key, 0) + 1


def iter_bundle(obj: Any, name: str, types: Any = None, skip: Any = None,
                errors: list | None = None, skipped: dict[str, int] | None = None,
                alt: Callable[[], Any] | None = None) -> Iterator[Item]:
    """Resources of a parsed Bundle (entries' ``resource``) or of a single resource. ``alt``: the same
    document decoded by ``numbers.text_decoder`` (lazily): an Observation's result and range numbers
    then carry their JSON text (numbers.give_texts)."""
    if not isinstance(obj, dict) or "resourceType" not in obj:
        _fail(errors, name, None, "not a FHIR resource (no resourceType)")
        return
    if not isinstance(obj["resourceType"], str):
        _fail(errors, name, None, "not a FHIR resource (resourceType is not a string)")
        return
    if obj["resourceType"] != "Bundle":
        if _wanted(obj["resourceType"], types, skip):
            if alt is not None and obj["resourceType"] == "Observation":
                give_texts(obj, alt)
            yield Item(obj, name, None, None)
        else:
            _skip(skipped, obj["resourceType"])
        return
    for i, entry in enumerate(obj.get("entry") or (), start=1):
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict):
            _fail(errors, name, i, "Bundle entry without a resource")
            continue
        rtype = res.get("resourceType")
        if not isinstance(rtype, str):
            _fail(errors, name, i, "Bundle entry resource without a resourceType string")
            continue
        if rtype == "Bundle":      # nested bundle (e.g. a searchset of documents)
            yield from iter_bundle(res, name, types, skip, errors, skipped,
                                   alt=None if alt is None else _entry_resource(alt, i))
        elif _wanted(rtype, types, skip):
            if alt is not None and rtype == "Observation":
                give_texts(res, _entry_resource(alt, i))
            yield Item(res, name, entry.get("fullUrl"), i)
        else:
            _skip(skipped, rtype)


def _entry_resource(alt: Callable[[], Any], i: int) -> Callable[[], Any]:
    """The resource of entry ``i`` (1-based) of the bundle ``alt()`` (LookupError/TypeError when the
    second decode's shape differs: then the numbers stay floats)."""
    return lambda: alt()["entry"][i - 1]["resource"]


def _iter_ndjson(path: Path, name: str, types: Any, skip: Any, errors: list | None,
                 skipped: dict[str, int] | None = None) -> Iterator[Item]:
    one = _ndjson_line(name, types, skip, errors, skipped)
    try:
        fh = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 (with-block below)
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=name) from None
    with fh:
        for n, line in enumerate(fh, start=1):
            item = one(line, n)
            if item is not None:
                yield item


def _ndjson_line(name: str, types: Any, skip: Any, errors: list | None,
                 skipped: dict[str, int] | None) -> Callable[[bytes, int], Item | None]:
    """The reading of one NDJSON line of file ``name`` (line number ``n``): its :class:`Item`, or None
    for a blank line, a type not wanted (counted in ``skipped``) or an error (recorded in ``errors``)."""
    loads = orjson.loads
    texts = text_decoder()
    lead = _LEAD_TYPE.match
    filtering = types is not None or bool(skip)
    # the usual Bulk Data line starts ``{"resourceType":"X"`` exactly: a wanted X is recognised by one
    # bytes-prefix check (no regex, no second type check); any other spelling takes the general path
    fast_types = frozenset(t for t in types if isinstance(t, str) and _wanted(t, types, skip)
                           ) if types is not None else frozenset()
    fast = tuple(b'{"resourceType":"' + t.encode() + b'"' for t in sorted(fast_types))
    new = tuple.__new__

    def one(line: bytes, n: int) -> Item | None:
        if fast and line.startswith(fast):
            try:
                res = loads(line)
            except orjson.JSONDecodeError as exc:
                _fail(errors, name, n, f"line is not valid JSON ({exc.msg})")
                return None
            # a later duplicate "resourceType" key wins in orjson: checked like any other line
            if type(res) is dict and type(rt := res.get("resourceType")) is str and rt in fast_types:
                if rt == "Observation":
                    give_texts(res, lambda: texts(line))
                return new(Item, (res, name, None, n))
        elif filtering:
            m = lead(line)
            if m is not None and not _wanted(m.group(1).decode(), types, skip):
                _skip(skipped, m.group(1).decode())
                return None
        if not line.strip():
            return None
        try:
            res = loads(line)
        except orjson.JSONDecodeError as exc:
            _fail(errors, name, n, f"line is not valid JSON ({exc.msg})")
            return None
        if not isinstance(res, dict) or "resourceType" not in res:
            _fail(errors, name, n, "line is not a FHIR resource (no resourceType)")
            return None
        if not isinstance(res["resourceType"], str):
            _fail(errors, name, n, "line is not a FHIR resource (resourceType is not a string)")
            return None
        if filtering and not _wanted(res["resourceType"], types, skip):
            _skip(skipped, res["resourceType"])
            return None
        if res["resourceType"] == "Observation":
            give_texts(res, lambda: texts(line))
        return new(Item, (res, name, None, n))
    return one


def _fail(errors: list | None, name: str, line: int | None, msg: str) -> None:
    if errors is None:
        raise InputError(msg, file=name, record=f"line {line}" if line else None)
    errors.append((name, line, msg))
