"""Write one SDTM domain in every requested form: json (Dataset-JSON 1.1), ndjson, csv, xpt.

All SDTM writers (trial design, subject data) go through :func:`write_domain`, so a new output
form is added in one place. File names are the domain in lower case (``dm.json``, ``suppdm.xpt``).

Subject data rows are written in the order of the domain's keys (``schemas/sdtm/domains.csv``, the keySequence
Define-XML declares): numeric keys numerically, text keys by code point, missing values first, ties
in arrival order (:func:`sort_by_keys`). The streamed writer sorts each chunk and merges the sorted
chunks at close (an external merge sort: one block per run in memory, see :class:`ChunkedDomainWriter`).
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import operator
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import orjson
import pandas as pd

from .. import __version__
from ..errors import UsageError
from ..report import ConversionReport
from ..safeio import atomic_path
from .datasetjson import (
    DATASET_JSON_VERSION,
    DEFINE_FILE,
    NUMERIC_TYPES,
    creation_datetime,
    define_oids,
    dtc_json_type_by_lengths,
    iso8601_column,
    write_csv,
    write_dataset_json,
)

SDTM_FORMATS = ("json", "ndjson", "csv", "xpt")
#: rows per orjson call and per write in the streamed writer (buffers of a few hundred kB, used again
#: from one call to the next, instead of one buffer of a whole chunk)
ROWS_PER_CALL = 4096

try:   # pandas' C helper for the longest str of an object array (private API: fall back when absent)
    from pandas._libs.writers import max_len_string_array as _max_len_string_array
except ImportError:  # pragma: no cover
    _max_len_string_array = None


def sort_by_keys(df: pd.DataFrame, domain: str) -> pd.DataFrame:
    """``df`` in the order of the domain's key variables (those it has); stable. Same order as
    the streamed writer gives (:class:`ChunkedDomainWriter`)."""
    return df.iloc[key_order(df, domain)].reset_index(drop=True)


def key_order(df: pd.DataFrame, domain: str) -> np.ndarray:
    """Row positions of ``df`` in key order (see :func:`sort_by_keys`)."""
    from .metadata import load_domain
    identity = np.arange(len(df))
    try:
        meta = load_domain(domain)
    except (KeyError, ValueError, FileNotFoundError):
        return identity
    keys = [k for k in meta.keys if k in df.columns]
    if len(df) < 2 or not keys:
        return identity
    numeric = {v.name for v in meta.variables if v.data_type in NUMERIC_TYPES}
    frame = pd.DataFrame(index=identity)
    for k in keys:
        s = df[k].reset_index(drop=True)
        if k in numeric:
            frame[k] = pd.to_numeric(s, errors="coerce")
        else:
            vals = s.to_numpy(dtype=object)
            frame[k] = ["" if v is None or (isinstance(v, float) and v != v) or v is pd.NA else str(v)
                        for v in vals]
    return frame.sort_values(keys, na_position="first", kind="stable").index.to_numpy()


def write_domain(df: pd.DataFrame, domain: str, outdir: Path, formats: tuple[str, ...], *,
                 study_oid: str, report: ConversionReport | None = None, sort: bool = False,
                 long_text: list[pd.DataFrame] | None = None) -> list[Path]:
    """``sort``: rows in key order (subject data). Trial design datasets keep their derived order:
    their row order carries meaning the keys do not (arm order, criteria order as the sponsor gave
    them; the CDISC pilot's TI is not in IETESTCD order). ``long_text``: XPT text over 200 characters
    is split into SUPP-- rows appended there (general-observation-class domains; see
    :func:`trialbridge.sdtm.xpt.split_long_text`), else refused."""
    bad = [f for f in formats if f not in SDTM_FORMATS]
    if bad:
        raise UsageError(f"unknown --sdtm-format {', '.join(bad)} (choose from {', '.join(SDTM_FORMATS)})")
    if sort:
        df = sort_by_keys(df, domain)
    stem = domain.lower()
    written: list[Path] = []
    for fmt in formats:
        target = outdir / f"{stem}.{fmt}"
        if fmt == "json":
            write_dataset_json(df, domain, target, study_oid=study_oid)
        elif fmt == "ndjson":
            write_dataset_json(df, domain, target, study_oid=study_oid, ndjson=True)
        elif fmt == "csv":
            write_csv(df, domain, target)
        elif fmt == "xpt":
            # XPT v5 is ASCII only: text is spelled in ASCII and every changed value reported;
            # Char lengths are the longest value (FDA TCG), as define.xml Length and Dataset-JSON say
            importlib.import_module("trialbridge.sdtm.xpt").write_xpt(
                df, domain, target, transliterate=True, ascii_report=report, lengths="data",
                long_text=long_text)
        written.append(target)
    return written


class ChunkedDomainWriter:
    """Write one domain from a stream of DataFrame chunks with memory bounded by one chunk.

    Each chunk is serialised once, column by column (vectorised value conversion, then one
    ``orjson.dumps`` per :data:`ROWS_PER_CALL` rows, in arrival order: the order the values lie in
    memory), its rows' records (the row's JSON text after its "[", with "],") put in key order and
    spooled one per line, as the Dataset-JSON file holds them (``[`` record line break; a JSON text
    holds no line break of its own) to a file beside the target, while the row
    count, the byte length of every Char column and which Perm columns carry a value are tracked. A
    chunk is spooled with the columns selected *so far* (Req/Exp always, Perm once any chunk had a
    value); at :meth:`close` the rows of (early) chunks that lack a Perm column first filled later are
    re-serialised, every other row is copied byte for byte. XPT v5 has no way to append, so for
    ``xpt`` the domain is assembled in memory once, at close. Same column rules as :func:`write_domain`.

    Key order with bounded memory (an external merge sort): each chunk is sorted by the domain keys
    (numpy, on integer ranks of the key values) before it is spooled, so every chunk is a sorted run.
    Beside the run, per row, the key values' ids (an id per distinct key value, kept in a small
    vocabulary per key variable: distinct subjects, tests, visits) and the byte lengths of the row and
    its companion line go to a second spool. :meth:`close` merges the runs block by block: it reads
    the next rows' ids of every run, takes every row up to the smallest last key of the runs that have
    more, orders those with one stable numpy sort (ties keep arrival order: run, then position) and
    replays their raw bytes: the spooled lines are the very text of the Dataset-JSON file, so rows
    that follow one another in one run are copied as one slice. Memory: the vocabularies plus one
    block per run, not the domain.

    Speed: the fast paths (text columns checked by one join, columns of one value or of none written
    from one object, floats all whole or none whole converted at once, rows cut at "[" where no value
    holds one, the companion CSV from orjson's output when no value needs quoting) write exactly what
    the general paths write (tests/test_output_fast_paths.py); buffers stay small (a few thousand
    rows) so that they are used again rather than freshly allocated for every chunk.
    """

    #: rows held per run while merging (split over the runs: memory is about this many rows)
    MERGE_ROWS = 100_000
    MERGE_BLOCK_MIN = 256

    def __init__(self, domain: str, outdir: Path, formats: tuple[str, ...], *, study_oid: str,
                 report: ConversionReport | None = None, companion: Path | None = None,
                 companion_csv: Callable[[pd.DataFrame, IO[str], bool], None] | None = None) -> None:
        """``companion``: a CSV written at close from the frames given to :meth:`write` as
        ``companion=`` (one row per domain row, e.g. provenance), in the same (key) order as the
        domain, as ``DataFrame.to_csv(index=False, lineterminator="\\n")`` writes it: frames of integer
        and text columns needing no quoting directly, any other frame by ``companion_csv(frame, fh,
        header)`` (default ``DataFrame.to_csv``; a replacement must write what it writes)."""
        from .metadata import load_domain
        bad = [f for f in formats if f not in SDTM_FORMATS]
        if bad:
            raise UsageError(f"unknown --sdtm-format {', '.join(bad)} (choose from {', '.join(SDTM_FORMATS)})")
        self.domain = load_domain(domain)
        self.formats, self.outdir, self.study_oid, self.report = formats, outdir, study_oid, report
        self.names = self.domain.names
        self.numeric = [v.data_type in NUMERIC_TYPES for v in self.domain.variables]
        self.integer = [v.data_type == "integer" for v in self.domain.variables]
        self.always = [v.core in ("Req", "Exp") for v in self.domain.variables]
        self.lengths = [0] * len(self.names)
        #: where XPT text over 200 characters goes as SUPP-- rows (None: refused), as write_domain's
        self.long_text: list[pd.DataFrame] | None = None
        #: ISO 8601 --DTC columns: the shortest value written (with the longest: the Dataset-JSON dataType)
        self.iso = {i for i, v in enumerate(self.domain.variables) if iso8601_column(v.name, v.data_type)}
        self.shortest = [0] * len(self.names)
        self.present = [False] * len(self.names)
        self.records = 0
        #: key variables the domain has (schemas/sdtm/domains.csv), as column indexes, and the
        #: vocabulary of each
        self.key_cols = [self.names.index(k) for k in self.domain.keys if k in self.names]
        self.vocab = [_KeyVocab(self.numeric[i]) for i in self.key_cols]
        #: the sorted runs, in arrival order
        self.runs: list[_Run] = []
        self.spooled = self.meta_spooled = self.companion_spooled = 0
        outdir.mkdir(parents=True, exist_ok=True)
        stem = domain.lower()
        self.spool_path = outdir / f".{stem}.spool"
        self.meta_spool_path = outdir / f".{stem}.keys.spool"
        self.spool = open(self.spool_path, "wb")  # noqa: SIM115 (closed in close())
        self.meta_spool = open(self.meta_spool_path, "wb")  # noqa: SIM115
        self.companion = companion
        self.companion_csv = companion_csv or (
            lambda df, fh, header: df.to_csv(fh, index=False, header=header, lineterminator="\n"))
        self.companion_header = b""
        self.companion_spool_path = outdir / f".{stem}.companion.spool"
        self.companion_spool = open(self.companion_spool_path, "wb") if companion else None  # noqa: SIM115

    def write(self, df: pd.DataFrame, companion: pd.DataFrame | None = None) -> None:
        if not len(df):
            return
        if (companion is None) != (self.companion is None) or (companion is not None and len(companion) != len(df)):
            raise ValueError(f"{self.domain.domain}: companion rows must be given with every chunk, one per row")
        unknown = [c for c in df.columns if c not in self.names]
        if unknown:
            raise ValueError(f"{self.domain.domain}: columns not in schemas/sdtm metadata: {unknown}")
        n = len(df)
        # 1. the key order: text keys factorised, numeric keys as values; ids ranked; one stable sort
        texts: dict[int, tuple[np.ndarray, list[str]]] = {}   # text column -> (codes, distinct str)

        def text_codes(i: int) -> tuple[np.ndarray, list[str]]:
            if i not in texts:
                # one factorisation gives the distinct values (lengths), the missing ones (-> "")
                codes, uniq = pd.factorize(df[self.names[i]].to_numpy(dtype=object))
                texts[i] = (codes, [u if isinstance(u, str) else str(u) for u in uniq.tolist()])
            return texts[i]

        numbers: dict[int, tuple[list[Any], bool]] = {}

        def numeric_values(i: int) -> tuple[list[Any], bool]:
            if i not in numbers:
                numbers[i] = _numeric_values(df[self.names[i]], self.integer[i])
            return numbers[i]

        ids = []
        for v, i in zip(self.vocab, self.key_cols, strict=True):
            if self.names[i] not in df:
                ids.append(np.full(n, v.missing_id(), dtype=np.int64))
            elif self.numeric[i]:
                vals, filled = numeric_values(i)
                ids.append(v.ids_of(vals) if filled else np.full(n, v.missing_id(), dtype=np.int64))
            else:
                ids.append(v.ids_of_distinct(*text_codes(i)))
        keys = _composite([v.ranks()[x] for v, x in zip(self.vocab, ids, strict=True)],
                          [len(v.values) for v in self.vocab], n)
        order = _stable_order(keys)
        # 2. every column in arrival order (the order the values lie in memory: the serialiser reads
        # them in turn); the serialised rows are put in key order
        cols: list[list[Any] | None] = []
        for i, name in enumerate(self.names):
            if name not in df:
                cols.append(None)
                continue
            if self.numeric[i]:
                vals, filled = numeric_values(i)
                if filled:
                    self.present[i] = True
                cols.append(vals)
                continue
            plain = None if i in texts else _text_values(df[name])
            if plain is not None:
                vals, longest = plain
            else:   # a key, or values that are not all text: through the distinct values
                codes, strs = text_codes(i)
                longest = _longest_utf8(strs)
                if longest:
                    table = np.empty(len(strs) + 1, dtype=object)
                    table[:-1] = strs
                    table[-1] = ""
                    vals = table[codes].tolist()
            if not longest:   # nothing but missing or "": written as "" where selected
                cols.append(None)
                continue
            self.present[i] = True
            self.lengths[i] = max(self.lengths[i], longest)
            if i in self.iso:   # (a few columns; values are text here, "" where missing)
                short = min(filter(None, map(len, vals)))
                self.shortest[i] = min(self.shortest[i], short) if self.shortest[i] else short
            cols.append(vals)
        sel = tuple(self._selected())
        picked: list[list[Any]] = [
            cols[i] or ([None] * n if self.numeric[i] else [""] * n) for i in sel]
        # the rows a few thousand at a time in one orjson call; per row its record (the row text
        # and "],", see _dumped_rows), put in key order and spooled one record per line (a JSON
        # text holds no line break: the spool is cut at line breaks when read back)
        recs = _dumped_rows(picked, n)
        if recs is None:   # a value holds "[": one by one
            records: Sequence[bytes] = [orjson.dumps(r)[1:] + b"," for r in
                                        _in_order(list(zip(*picked, strict=True)), order)]
            lens = np.fromiter(map(len, records), dtype=np.int64, count=n)
        else:   # lengths read in the order the texts were made (and lie in memory), then ordered
            lens = np.fromiter(map(len, recs), dtype=np.int64, count=n)[order]
            records = _in_order(recs, order)
        meta = np.empty((n, len(ids) + 2), dtype=np.int64)
        for j, x in enumerate(ids):
            meta[:, j] = x[order]
        meta[:, len(ids)] = lens + 2   # the spool's line: "[", the record, a line break
        meta[:, len(ids) + 1] = 0
        comp_offset = self.companion_spooled
        if companion is not None:
            meta[:, len(ids) + 1] = self._spool_companion(companion, order, n)
        self.spool.write(b"[")
        _write_joined(self.spool, b"\n[", records)
        self.spool.write(b"\n")
        mbytes = meta.tobytes()
        self.meta_spool.write(mbytes)
        self.runs.append(_Run(self.spooled, self.meta_spooled, comp_offset, n, sel))
        self.spooled += int(lens.sum()) + 2 * n
        self.meta_spooled += len(mbytes)
        self.records += n

    def _spool_companion(self, frame: pd.DataFrame, order: np.ndarray, n: int) -> np.ndarray:
        """Spool the companion lines of a chunk in key order; returns the byte length of each line."""
        assert self.companion_spool is not None
        fast = _csv_lines(frame, order)
        if fast is not None:
            text, lens = fast
            names = io.StringIO()
            csv.writer(names, lineterminator="\n").writerow(list(frame.columns))
            self.companion_header = names.getvalue().encode("utf-8")
            self.companion_spool.write(text)
            self.companion_spooled += len(text)
            return lens
        buf = io.StringIO()
        ordered = frame.iloc[order]
        self.companion_csv(ordered, buf, True)
        head, _, lines = buf.getvalue().partition("\n")
        self.companion_header = head.encode("utf-8") + b"\n"
        if lines.count("\n") == n:
            encoded = lines.encode("utf-8")
            lens = np.fromiter(map(len, encoded[:-1].split(b"\n")), dtype=np.int64, count=n) + 1
        else:
            # a value holds a line break (written quoted, as to_csv quotes it): the records are
            # serialised one by one to know where each ends (rare; read back by length)
            records = []
            for i in range(n):
                one = io.StringIO()
                self.companion_csv(ordered.iloc[i:i + 1], one, False)
                records.append(one.getvalue().encode("utf-8"))
            encoded = b"".join(records)
            lens = np.fromiter(map(len, records), dtype=np.int64, count=n)
        self.companion_spool.write(encoded)
        self.companion_spooled += len(encoded)
        return lens

    def _selected(self) -> list[int]:
        return [i for i in range(len(self.names)) if self.always[i] or self.present[i]]

    def _merged(self, per_row: bool) -> Iterator[tuple[list[bytes], list[bytes] | None, np.ndarray]]:
        """The rows in key order, block by block: (the dataset's lines, the companion's lines, run of
        each piece), as pieces of the spools: a dataset line is ``[`` and the row's record (see
        :meth:`write`) and a line break, the very text of the Dataset-JSON file; a piece is the lines
        of a stretch of rows that come from one run one after another (copied as one slice), or of
        one row (``per_row``). See the class docstring."""
        runs = self.runs
        if not runs:
            return
        nkeys = len(self.vocab)
        width = nkeys + 2
        ranks = [v.ranks() for v in self.vocab]
        sizes = [len(v.values) for v in self.vocab]
        block = max(self.MERGE_BLOCK_MIN, self.MERGE_ROWS // len(runs))
        # per run: rows not yet read, and the read ones not yet emitted (keys, byte lengths)
        state = [_RunState(r) for r in runs]
        with open(self.meta_spool_path, "rb") as meta_fh, open(self.spool_path, "rb") as data_fh, \
                (open(self.companion_spool_path, "rb") if self.companion is not None
                 else contextlib.nullcontext()) as comp_fh:
            def fill(st: _RunState) -> None:
                take = min(block, st.run.n - st.read)
                meta_fh.seek(st.run.meta_offset + st.read * width * 8)
                m = np.frombuffer(meta_fh.read(take * width * 8), dtype=np.int64).reshape(take, width)
                k = _composite([rk[m[:, j]] for j, rk in enumerate(ranks)], sizes, take)
                st.add(k, m[:, nkeys], m[:, nkeys + 1])
                st.read += take

            while True:
                for st in state:
                    if st.read < st.run.n and len(st.keys) < block // 2 + 1:
                        fill(st)
                live = [j for j, st in enumerate(state) if len(st.keys)]
                if not live:
                    return
                more = [j for j in live if state[j].read < state[j].run.n]
                takes: dict[int, int] = {}
                if more:
                    # the bound: the smallest last read key among the runs with rows still unread
                    # (on equal keys the earliest run); every row up to it is final
                    b = min(more, key=lambda j: (state[j].keys[-1], j))
                    bk = state[b].keys[-1]
                    for j in live:
                        st = state[j]
                        takes[j] = (len(st.keys) if j == b else
                                    int(np.searchsorted(st.keys, bk, side="right" if j < b else "left")))
                else:
                    takes = {j: len(state[j].keys) for j in live}
                datas: list[bytes] = []
                comps: list[bytes] = []
                key_parts = []
                run_ids = []
                # per row of the block (runs in turn): its line's start and end in its run's data
                starts, ends, comp_starts, comp_ends = [], [], [], []
                for j, t in takes.items():
                    if not t:
                        continue
                    st = state[j]
                    data, cut = st.read_lines(data_fh, comp_fh, t)
                    datas.append(data[0])
                    comps.append(data[1])
                    starts.append(cut[0])
                    ends.append(cut[1])
                    comp_starts.append(cut[2])
                    comp_ends.append(cut[3])
                    key_parts.append(st.keys[:t])
                    run_ids.append(np.full(t, len(datas) - 1, dtype=np.int64))
                    st.drop(t)
                which = [j for j, t in takes.items() if t]
                if len(datas) == 1 and not per_row:   # one run: its lines as they are
                    yield [datas[0]], ([comps[0]] if comp_fh is not None else None), np.array([which[0]])
                    continue
                order = _stable_order(np.concatenate(key_parts))
                src = np.concatenate(run_ids)[order]
                # the pieces: stretches of rows of one run (in a run, rows are taken in turn)
                first = (np.arange(len(src)) if per_row else
                         np.concatenate([[0], np.flatnonzero(src[1:] != src[:-1]) + 1]))
                last = np.append(first[1:], len(src)) - 1
                lo, hi = np.concatenate(starts)[order], np.concatenate(ends)[order]
                piece_src = src[first].tolist()
                pieces = [datas[r][a:z] for r, a, z in zip(piece_src, lo[first].tolist(), hi[last].tolist(),
                                                         strict=True)]
                comp_pieces = None
                if comp_fh is not None:
                    clo, chi = np.concatenate(comp_starts)[order], np.concatenate(comp_ends)[order]
                    comp_pieces = [comps[r][a:z] for r, a, z in zip(piece_src, clo[first].tolist(),
                                                                    chi[last].tolist(), strict=True)]
                yield pieces, comp_pieces, np.array(which)[src[first]]

    def _row_texts(self, sel: list[int], lines: list[bytes], run_ids: np.ndarray) -> list[bytes]:
        """Dataset lines (one per row) in the final column selection: rows of runs spooled with
        fewer columns re-serialised, those of one run together (one parse, one serialisation)."""
        want = tuple(sel)
        stale = [j for j, r in enumerate(self.runs) if r.sel != want]
        if not stale:
            return lines
        out = list(lines)
        for j in stale:
            at = np.flatnonzero(run_ids == j).tolist()
            if not at:
                continue
            rows = self._reselect(_loads_lines([lines[k] for k in at]), self.runs[j].sel, sel)
            for k, record in zip(at, _records(rows), strict=True):
                out[k] = b"[" + record + b"\n"
        return out

    def _reselect(self, rows: Sequence[Sequence[Any]], chunk_sel: tuple[int, ...], sel: list[int]) -> list[list[Any]]:
        pos = {c: j for j, c in enumerate(chunk_sel)}
        # a column the chunk did not carry had no value in it (else it would have been selected)
        picks = [(pos[i], None) if i in pos else (-1, None if self.numeric[i] else "") for i in sel]
        return [[r[j] if j >= 0 else empty for j, empty in picks] for r in rows]

    def abort(self) -> None:
        """The run failed: the spools are closed and removed, no dataset is written (idempotent)."""
        for fh in (self.spool, self.meta_spool, self.companion_spool):
            if fh is not None:
                fh.close()
        for p in (self.spool_path, self.meta_spool_path, self.companion_spool_path):
            p.unlink(missing_ok=True)

    def close(self) -> list[Path]:
        self.spool.close()
        self.meta_spool.close()
        if self.companion_spool is not None:
            self.companion_spool.close()
        sel = self._selected()
        stem = self.domain.domain.lower()
        targets = [(fmt, self.outdir / f"{stem}.{fmt}") for fmt in self.formats]
        written: list[Path] = []
        try:
            with contextlib.ExitStack() as stack:
                files: dict[str, IO[bytes]] = {}
                for fmt, target in targets:
                    if fmt == "xpt":
                        continue
                    tmp = stack.enter_context(atomic_path(target))
                    files[fmt] = stack.enter_context(open(tmp, "wb"))
                comp_fh: IO[bytes] | None = None
                if self.companion is not None and self.runs:
                    comp_fh = stack.enter_context(open(stack.enter_context(atomic_path(self.companion)), "wb"))
                    comp_fh.write(self.companion_header)
                xpt_rows: list[list[Any]] = []
                head = self.header(sel)
                if "json" in files:
                    files["json"].write(orjson.dumps(head)[:-1] + b',"rows":[')
                if "ndjson" in files:
                    files["ndjson"].write(orjson.dumps(head) + b"\n")
                csv_writer = None
                csv_text = io.StringIO()
                if "csv" in files:
                    csv_writer = csv.writer(csv_text, lineterminator="\n")
                    csv_writer.writerow([self.names[i] for i in sel])
                first = True
                per_row = any(r.sel != tuple(sel) for r in self.runs)   # (rows to re-serialise)
                for lines, comp, run_ids in self._merged(per_row):
                    texts = self._row_texts(sel, lines, run_ids) if per_row else lines
                    # written a few thousand rows at a time: no copy of the whole block's text
                    # (a line is "[", the row's record and a line break: the rows' separator
                    # "],\n[" is in the lines; the last row's ",\n" is taken back at the end)
                    if "json" in files:
                        if first:
                            files["json"].write(b"\n")
                        _write_joined(files["json"], b"", texts)
                    if "ndjson" in files:   # "]\n" after each row: "," taken out before each line break
                        files["ndjson"].write(b"".join(texts).replace(b",\n", b"\n"))
                    if csv_writer is not None or "xpt" in self.formats:
                        rows = _loads_lines(texts)
                        if csv_writer is not None:
                            csv_writer.writerows(["" if v is None else v for v in r] for r in rows)
                            files["csv"].write(csv_text.getvalue().encode("utf-8"))
                            csv_text.seek(0)
                            csv_text.truncate()
                        if "xpt" in self.formats:
                            xpt_rows += rows
                    if comp_fh is not None and comp is not None:
                        _write_joined(comp_fh, b"", comp)
                    first = False
                if "json" in files:
                    if not first:   # the last line's ",\n"
                        files["json"].seek(-2, io.SEEK_CUR)
                    files["json"].write(b"]}\n")
                if csv_writer is not None:
                    files["csv"].write(csv_text.getvalue().encode("utf-8"))
            for fmt, target in targets:
                if fmt == "xpt":   # a v5 file is written whole, so the domain is held in memory once, here
                    frame = pd.DataFrame(xpt_rows, columns=[self.names[i] for i in sel])
                    importlib.import_module("trialbridge.sdtm.xpt").write_xpt(
                        frame, self.domain.domain, target, transliterate=True, ascii_report=self.report,
                        lengths="data",   # the longest value, as define.xml Length says (FDA TCG)
                        long_text=self.long_text)
                written.append(target)
            if self.companion is not None and self.runs:
                written.append(self.companion)
        finally:
            for p in (self.spool_path, self.meta_spool_path, self.companion_spool_path):
                p.unlink(missing_ok=True)
        return written

    def header(self, sel: list[int]) -> dict[str, Any]:
        columns = []
        d = self.domain
        written = {d.variables[i].name for i in sel}
        keys = [k for k in d.keys if k in written]   # numbered over the keys written, as define.xml does
        for i in sel:
            var = d.variables[i]
            col: dict[str, Any] = {"itemOID": f"IT.{d.domain}.{var.name}", "name": var.name,
                                   "label": var.label, "dataType": var.data_type}
            if i in self.iso:   # as build_dataset_json: the define.xml type of the values written
                col["dataType"] = dtc_json_type_by_lengths(self.shortest[i], self.lengths[i])
            if not self.numeric[i]:
                col["length"] = max(self.lengths[i], 1)
            if var.name in keys:
                col["keySequence"] = keys.index(var.name) + 1
            columns.append(col)
        return {"datasetJSONCreationDateTime": creation_datetime(),
                "datasetJSONVersion": DATASET_JSON_VERSION, "fileOID": f"{self.study_oid}/{d.domain}",
                "originator": "trialbridge", "sourceSystem": {"name": "trialbridge", "version": __version__},
                "studyOID": define_oids(self.study_oid)[0],
                "metaDataVersionOID": define_oids(self.study_oid)[1], "metaDataRef": DEFINE_FILE,
                "itemGroupOID": f"IG.{d.domain}", "records": self.records, "name": d.domain,
                "label": d.label, "columns": columns}


class _Run(NamedTuple):
    """One spooled, sorted chunk: where its rows, key ids and companion lines start."""

    offset: int
    meta_offset: int
    companion_offset: int
    n: int
    sel: tuple[int, ...]


class _RunState:
    """A run during the merge: the rows read (keys, byte starts, lengths) and not yet emitted."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.read = 0
        self.keys: np.ndarray = np.empty(0, dtype=np.int64)
        self.lens = np.empty(0, dtype=np.int64)
        self.comp_lens = np.empty(0, dtype=np.int64)
        self.next_byte = run.offset             # spool offset of the first row not yet emitted
        self.next_comp = run.companion_offset

    def add(self, keys: np.ndarray, lens: np.ndarray, comp_lens: np.ndarray) -> None:
        self.keys = np.concatenate([self.keys, keys]) if len(self.keys) else keys
        self.lens = np.concatenate([self.lens, lens]) if len(self.lens) else lens
        self.comp_lens = np.concatenate([self.comp_lens, comp_lens]) if len(self.comp_lens) else comp_lens

    def read_lines(self, fh: IO[bytes], comp_fh: IO[bytes] | None, t: int
                   ) -> tuple[tuple[bytes, bytes], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """The spooled text of the next ``t`` rows (dataset lines, companion lines) and where each
        row's lines start and end in them."""
        ends = np.cumsum(self.lens[:t])
        fh.seek(self.next_byte)
        data = fh.read(int(ends[-1]))
        self.next_byte += len(data)
        comp = b""
        comp_ends = np.cumsum(self.comp_lens[:t])
        if comp_fh is not None:
            comp_fh.seek(self.next_comp)
            comp = comp_fh.read(int(comp_ends[-1]))
            self.next_comp += len(comp)
        return (data, comp), (ends - self.lens[:t], ends, comp_ends - self.comp_lens[:t], comp_ends)

    def drop(self, t: int) -> None:
        self.keys, self.lens, self.comp_lens = self.keys[t:], self.lens[t:], self.comp_lens[t:]


class _KeyVocab:
    """The distinct values of one key variable seen so far, each with a stable id; :meth:`ranks`
    gives each id its place in key order (numbers numerically, missing first; text by code point,
    missing = "")."""

    def __init__(self, numeric: bool) -> None:
        self.numeric = numeric
        self.ids: dict[Any, int] = {}
        self.values: list[Any] = []
        self._ranks: np.ndarray | None = None

    def _id(self, value: Any) -> int:
        got = self.ids.get(value)
        if got is None:
            got = self.ids[value] = len(self.values)
            self.values.append(value)
            self._ranks = None
        return got

    def missing_id(self) -> int:
        """The id of a missing value (numbers: None; text: "")."""
        return self._id(None if self.numeric else "")

    def ids_of(self, values: list[Any]) -> np.ndarray:
        codes, uniq = pd.factorize(np.asarray(values, dtype=object))   # missing -> -1
        table = np.empty(len(uniq) + 1, dtype=np.int64)
        if self.numeric:
            table[:-1] = [self._id(float(u)) for u in uniq.tolist()]
            table[-1] = self._id(None)
        else:
            table[:-1] = [self._id(u if isinstance(u, str) else str(u)) for u in uniq.tolist()]
            table[-1] = self._id("")
        return table[codes]

    def ids_of_distinct(self, codes: np.ndarray, strs: list[str]) -> np.ndarray:
        """Text: ids from a factorisation (codes, distinct values; code -1 = missing = "")."""
        table = np.empty(len(strs) + 1, dtype=np.int64)
        table[:-1] = [self._id(u) for u in strs]
        table[-1] = self._id("")
        return table[codes]

    def ranks(self) -> np.ndarray:
        if self._ranks is None:
            if self.numeric:
                order = sorted(range(len(self.values)), key=lambda j: (self.values[j] is not None,
                                                                        self.values[j] or 0.0))
            else:
                order = sorted(range(len(self.values)), key=self.values.__getitem__)
            ranks = np.empty(len(order), dtype=np.int64)
            ranks[order] = np.arange(len(order))
            self._ranks = ranks
        return self._ranks


def _composite(ranks: list[np.ndarray], sizes: list[int], n: int) -> np.ndarray:
    """One sortable key per row from the ranks of its key values (mixed radix, first key most
    significant); exact Python integers when the product of the radixes passes int64."""
    total = 1
    for s in sizes:
        total *= max(s, 1)
    exact = total >= 2**62
    out = np.zeros(n, dtype=object if exact else np.int64)
    for r, s in zip(ranks, sizes, strict=True):
        out = out * max(s, 1) + (r.astype(object) if exact else r)
    return out


def _write_joined(fh: IO[bytes], sep: bytes, pieces: Sequence[bytes]) -> None:
    """``fh.write(sep.join(pieces))``, :data:`ROWS_PER_CALL` pieces at a time."""
    step = ROWS_PER_CALL
    for q in range(0, len(pieces), step):
        if q:
            fh.write(sep)
        fh.write(sep.join(pieces[q:q + step]))


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")``; keys that fit in 16 bits are sorted as such (numpy sorts
    those by radix, in linear time: the same order)."""
    if keys.dtype != object and len(keys) and keys.min() >= 0 and keys.max() < 2**16:
        keys = keys.astype(np.uint16)
    return np.argsort(keys, kind="stable")


def _longest_utf8(values: Any) -> int:
    """The longest ``str(value)`` in UTF-8 bytes (ASCII text: its length, counted in C)."""
    if len(values) and set(map(type, values)) == {str}:
        if "".join(values).isascii():
            return max(map(len, values))
    return max((len(str(u).encode("utf-8")) for u in values), default=0)


def _text_values(s: pd.Series) -> tuple[list[str], int] | None:
    """A Char column whose values are all text or missing, value by value (missing -> ""), and its
    longest value in UTF-8 bytes (0: nothing but missing or ""); None for any other column (then
    the caller goes through its distinct values). The values are read as few times as can be (one
    join checks that they are all text and gives the ASCII test, one pass the longest): in a large
    chunk most of them are not in the CPU caches."""
    arr = s.to_numpy(dtype=object)
    one = _constant(arr)
    if one is not None:
        return [one] * len(arr), len(one.encode("utf-8"))
    if _all_missing(arr):   # (a column the domain has but the source never fills)
        return [], 0
    got = _blank_missing(arr)
    if got is None:
        return None
    blanked, vals, joined = got
    if blanked is not arr and not joined and pd.isna(arr).all():
        return [], 0
    arr = blanked
    if joined.isascii():
        return vals, _longest_str(arr, vals)
    return vals, max(len(v.encode("utf-8")) for v in set(vals))


def _longest_str(arr: np.ndarray, vals: list[str]) -> int:
    """The length of the longest str of ``arr`` (``vals`` is ``arr.tolist()``): counted in C by
    pandas' own helper (the one ``DataFrame.to_stata`` uses), else value by value."""
    if _max_len_string_array is None:
        return max(map(len, vals))
    return int(_max_len_string_array(arr if arr.flags.writeable else arr.copy()))


def _constant(arr: np.ndarray) -> str | None:
    """The str every value of ``arr`` equals, if there is one: such a column (STUDYID, DOMAIN, a
    resource type) is then written from one object, not from one object per row read in turn.
    A few values are looked at first, so that another column costs next to nothing."""
    first = arr[0] if len(arr) else None
    if type(first) is not str:
        return None
    for v in arr[np.linspace(0, len(arr) - 1, num=min(len(arr), 8)).astype(np.int64)].tolist():
        if type(v) is not str or v != first:
            return None
    try:   # (list.count: the same object is equal without a comparison)
        same = arr.tolist().count(first) == len(arr)
    except (TypeError, ValueError):   # a value that has no truth value when compared (pd.NA)
        return None
    return first if same else None


def _all_missing(arr: np.ndarray) -> bool:
    """Whether every value of ``arr`` is missing (None, NaN, NA); a few values are looked at first."""
    if not len(arr):
        return True
    sample = arr[np.linspace(0, len(arr) - 1, num=min(len(arr), 8)).astype(np.int64)]
    return bool(pd.isna(sample).all()) and bool(pd.isna(arr).all())


def _in_order(rows: list[Any], order: np.ndarray) -> Any:
    """``rows`` (a list) in the order ``order`` gives, as a sequence (one C call)."""
    if len(rows) < 2:
        return rows
    return operator.itemgetter(*order.tolist())(rows)


def _dumped_rows(cols: list[list[Any]], n: int) -> list[bytes] | None:
    """The records of the rows made of ``cols`` (``n`` values each): per row its text without the
    opening bracket and with a comma (``"a",1],``), from one ``orjson.dumps`` per
    :data:`ROWS_PER_CALL` rows, cut at "[" (found by ``memchr``, unlike "],[") where no value holds
    "[" (checked: one piece per row, else None)."""
    step = ROWS_PER_CALL
    records: list[bytes] = []
    for q in range(0, n, step):
        parts = orjson.dumps(list(zip(*[c[q:q + step] for c in cols], strict=True))).split(b"[")
        if len(parts) != min(step, n - q) + 2:   # ["", "", "r1],", ..., "rm]]"]
            return None
        parts[-1] = parts[-1][:-1] + b","
        records += parts[2:]
    return records


def _records(rows: list[Any]) -> list[bytes]:
    """The records (see :func:`_dumped_rows`) of ``rows`` (lists of scalars)."""
    parts = orjson.dumps(rows).split(b"[")
    if len(parts) == len(rows) + 2:
        parts[-1] = parts[-1][:-1] + b","
        return parts[2:]
    return [orjson.dumps(r)[1:] + b"," for r in rows]   # a value holds "["


def _loads_lines(lines: Sequence[bytes]) -> list[list[Any]]:
    """The rows of dataset lines (``[`` and a record and a line break each, see
    :meth:`ChunkedDomainWriter._merged`; or stretches of such lines) as Python values."""
    text = b"".join(lines)
    return orjson.loads(b"[" + text[:-2] + b"]") if text else []


def _csv_text(arr: np.ndarray) -> list[str] | None:
    """The values of a text column of a CSV (missing -> ""), None when one is not text."""
    one = _constant(arr)
    if one is not None:
        return [one] * len(arr)
    got = _blank_missing(arr)
    return got[1] if got is not None else None


def _blank_missing(arr: np.ndarray) -> tuple[np.ndarray, list[str], str] | None:
    """(the values with missing ones as "", as an array and a list, and their join) when every value
    is text or missing; None otherwise. One join checks the types (and gives the ASCII test)."""
    vals = arr.tolist()
    try:
        return arr, vals, "".join(vals)
    except TypeError:   # not all str: missing values, or values of other types
        missing = pd.isna(arr)
        if not missing.any():
            return None
        arr = arr.copy()
        arr[missing] = ""
        vals = arr.tolist()
        try:
            return arr, vals, "".join(vals)
        except TypeError:
            return None


#: the line break put between the rows of a companion chunk (a raw one: orjson escapes those in text)
_LINE_BREAK = orjson.Fragment(b"\n")


def _csv_lines(frame: pd.DataFrame, order: np.ndarray) -> tuple[bytes, np.ndarray] | None:
    """``frame.iloc[order].to_csv(index=False, header=False, lineterminator="\\n")`` in UTF-8 and the
    byte length of each line with its line break, for a frame of integer and text columns (missing
    text -> "") none of whose values needs quoting; None for any other frame (written the general
    way).

    The columns are put in key order (numpy) and their values laid out row after row, with a line
    break after each row, in one list for one ``orjson.dumps`` (no object per row): ``[v,v,\\n,v,v,\\n]``.
    With no backslash in that text, no value held a quote, a backslash or a control character
    (orjson escapes exactly those); with exactly the commas between the values, none held a comma.
    Such values need no quoting: the lines are the text without its quotes, brackets and the commas
    beside the line breaks."""
    n, k = frame.shape
    if n == 0 or k < 2:   # (one column: an empty value would be quoted)
        return None
    width = k + 1
    flat: list[Any] = [_LINE_BREAK] * (n * width)
    for j, name in enumerate(frame.columns):
        s = frame[name]
        dtype = s.dtype
        if dtype.kind in "iu" and not isinstance(dtype, pd.api.extensions.ExtensionDtype):
            flat[j::width] = s.to_numpy()[order].tolist()   # orjson writes an int as str() does
            continue
        if dtype.kind != "O":
            return None
        arr = s.to_numpy(dtype=object)
        one = _constant(arr)
        if one is not None:
            flat[j::width] = [one] * n
            continue
        vals = _csv_text(arr)   # (read in the order the values lie in memory, then put in key order)
        if vals is None:
            return None
        flat[j::width] = _in_order(vals, order)
    try:
        text = orjson.dumps(flat)
    except orjson.JSONEncodeError:   # text that is not UTF-8 (a lone surrogate): the general way
        return None
    if b"\\" in text or text.count(b",") != n * width - 1:
        return None
    arr = np.frombuffer(text.translate(None, b'"'), dtype=np.uint8)
    breaks = np.flatnonzero(arr == 10)
    keep = np.ones(len(arr), dtype=bool)
    keep[[0, -1]] = False   # the brackets
    keep[breaks - 1] = False   # the commas beside the line breaks
    keep[breaks[:-1] + 1] = False
    breaks -= 2 * np.arange(1, n + 1)   # (where they are once those are gone)
    return arr[keep].tobytes(), np.diff(breaks, prepend=-1)


def _numeric_values(s: pd.Series, integer: bool) -> tuple[list[Any], bool]:
    """A numeric column as JSON-ready Python values (missing -> None; integer-valued floats -> int,
    as :func:`trialbridge.sdtm.datasetjson._cell` writes them) and whether any value is present.
    Vectorised for numeric dtypes; any other dtype goes value by value."""
    mask = s.isna().to_numpy()
    if mask.all():
        return [None] * len(mask), False
    if s.dtype.kind in "iuf":
        if s.dtype.kind in "iu" and not mask.any():
            return s.to_numpy().tolist(), True
        arr = s.to_numpy(dtype="float64", na_value=np.nan)
        ok = ~mask
        if integer:
            out = np.full(len(arr), None, dtype=object)
            out[ok] = arr[ok].astype(np.int64).astype(object)
            return out.tolist(), True
        whole = ok & (np.abs(np.where(ok, arr, 0.0)) < 2**53)
        with np.errstate(invalid="ignore"):
            whole &= np.where(ok, arr, 0.5) == np.trunc(np.where(ok, arr, 0.5))
        if whole.all():   # (every value present and whole: ints straight from numpy)
            return arr.astype(np.int64).tolist(), True
        if not whole.any() and ok.all():   # (no whole value: the floats as they are)
            return arr.tolist(), True
        out = arr.astype(object)
        out[whole] = arr[whole].astype(np.int64).astype(object)
        out[mask] = None
        return out.tolist(), True
    vals = s.astype(object).tolist()
    if mask.any():
        for j in mask.nonzero()[0]:
            vals[j] = None
    if integer:
        vals = [None if v is None else int(v) for v in vals]
    else:
        vals = [None if v is None else (int(v) if float(v).is_integer() and abs(v) < 2**53
                                        else float(v)) for v in vals]
    return vals, not mask.all()
