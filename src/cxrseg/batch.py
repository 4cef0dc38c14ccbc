"""Batch prediction engine behind ``cxrseg predict``: segment radiographs and folders
of them into one output folder (:func:`run_predict`); the command line is
:mod:`cxrseg.cli.predict`.

Output layout (``--out DIR``)::

    DIR/masks/<region>/<case>.png       binary masks {0, 255}, at each input's own resolution
    DIR/heatmaps/<region>/<case>.npy    float16 probability maps (--heatmaps)
    DIR/heatmaps/<region>/<case>.png    8-bit previews of them (--heatmap-png)
    DIR/uncertainty/<region>/<case>.npy float16 disagreement maps (--uncertainty-maps)
    DIR/predictions.csv                 one row per case and region (with --quality: the
                                        estimated Jaccard and the failing checks)
    DIR/errors.csv                      files that failed, with the reason (only if any did)
    DIR/.done/<case>.json               per-case marker, written last (resume)
    DIR/.claims/<case>                  per-case claim of a running ``cxrseg predict``
    DIR/.cxrseg-output                  says "written by cxrseg": never read as ground truth

Masks are PNG by default (``--mask-format gif`` writes SCR-style GIFs); they have the
input's native size, e.g. 2048 x 2048 for a JSRT ``.IMG`` (the SCR reference masks are
1024 x 1024: halve them to compare), except that an input whose longer side exceeds
``--max-output-side`` (default 4096) gets masks scaled down to that side (the aspect ratio
kept; ``height``/``width`` in the CSV and ``area_mm2`` are those of the written mask), which
bounds the memory a huge image needs. Such an image is also decoded at a reduced size.

The output folder is marked as cxrseg output (``.cxrseg-output``): dataset readers never
take its masks as ground truth. A folder that holds an unmarked ``masks/`` (a dataset's
ground truth) and the input folder itself are refused as ``--out``.

Pipeline: a torch ``DataLoader`` decodes and pre-processes images in ``--workers``
processes (they return only the model-sized input, not the full image), batched forward
passes run in ``--streams`` threads (on a CPU, two batches at once with half the torch
threads each: the cores stay busy when the writer or a decoder takes one of them), and a
writer thread resizes probabilities back, thresholds, cleans up and writes the files of
one batch while the next batches run through the model.

Resuming: a case is skipped when its done-marker exists, was made from the same input
content (path, size, modification time and SHA-256 of the file) with the same model,
thresholds, post-processing and output options, and all requested outputs exist;
``--overwrite`` recomputes everything. A rerun with nothing to do reads only the model's
metadata and never loads its weights. Each case to do is first *claimed*
(``.claims/<case>``, created exclusively, holding the process id): a second run on the
same ``--out`` skips the cases a live run has claimed, and claims of dead runs are taken
over. Temporary files left by a killed run (``.<name>.<pid>.<hex>.tmp``) are removed at
the start of the next run on the same folder; they are never read as results.
``predictions.csv`` is rebuilt from the markers at the start and the end of a run and
appended one complete batch at a time in between (one ``write`` on an ``O_APPEND``
file), so a killed run never leaves a corrupt CSV, and the next run repairs it.

Case names are the file stems; stems that occur more than once (``a/x.png`` and
``b/x.png``) are prefixed with their parent folders (``a__x``, ``b__x``).
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import IMAGE_SUFFIXES, is_hidden, pid_alive
from .regions import REGIONS

CSV_COLUMNS = (
    "case",
    "source",
    "region",
    "area_px",
    "area_mm2",
    "height",
    "width",
    "model_id",
    "threshold",
    "est_jaccard",
    "failing_checks",
)
ERROR_COLUMNS = ("path", "case", "reason")
MARKER_VERSION = 2
#: Longer side above which masks are written scaled down (bounds the memory of huge inputs).
DEFAULT_MAX_OUTPUT_SIDE = 4096


# --------------------------------------------------------------------------- inputs


def collect_inputs(inputs, *, exclude=None) -> list[Path]:
    """Image files named by ``inputs`` (files and folders, recursively, sorted).

    Folders named ``masks`` (any case), hidden folders and ``exclude`` (the output
    folder) are skipped; in folders only files with an image suffix
    (:data:`cxrseg.io.IMAGE_SUFFIXES`) are taken, while a file named explicitly is taken
    whatever its suffix. Duplicates (the same file twice) are dropped.

    Raises
    ------
    FileNotFoundError
        An input does not exist.
    """
    excl = Path(exclude).expanduser().resolve() if exclude is not None else None
    out: list[Path] = []
    seen: set[Path] = set()
    missing = []

    def add(f: Path):
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            out.append(f)

    for raw in inputs:
        p = Path(raw).expanduser()
        if not p.exists():
            missing.append(str(raw))
            continue
        if p.is_file():
            add(p)
            continue
        if excl is not None and p.resolve() == excl:
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            keep = []
            for d in sorted(dirnames):
                if is_hidden(d) or d.lower() == "masks":
                    continue
                if excl is not None and (Path(dirpath) / d).resolve() == excl:
                    continue
                keep.append(d)
            dirnames[:] = keep
            for name in sorted(filenames):
                if is_hidden(name) or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                add(Path(dirpath) / name)
    if missing:
        raise FileNotFoundError(f"input not found: {', '.join(missing)}")
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _safe(name: str) -> str:
    s = _UNSAFE.sub("_", name).strip("._")
    return s or "image"


def case_names(files: list[Path]) -> list[str]:
    """A unique, file-system-safe case name per file: its stem, or - for stems that occur
    more than once - the stem prefixed with as many parent folders as needed
    (``a__x``), then the suffix (``x_png``), then a counter."""
    stems = [_safe(f.stem) for f in files]
    names = list(stems)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(stems):
        groups.setdefault(s.lower(), []).append(i)
    for idxs in groups.values():
        if len(idxs) < 2:
            continue
        parents = [[_safe(x) for x in files[i].resolve().parent.parts[1:]] for i in idxs]
        depth = max(len(pp) for pp in parents)
        chosen = None
        for k in range(1, depth + 1):
            cand = ["__".join(pp[-k:] + [stems[i]]) for pp, i in zip(parents, idxs, strict=True)]
            if len({c.lower() for c in cand}) == len(cand):
                chosen = cand
                break
        if chosen is None:
            chosen = [f"{stems[i]}_{_safe(files[i].suffix.lstrip('.')) or 'x'}" for i in idxs]
        for i, c in zip(idxs, chosen, strict=True):
            names[i] = c
    seen: set[str] = set()
    for i, n in enumerate(names):
        base, k = n, 2
        while n.lower() in seen:
            n = f"{base}_{k}"
            k += 1
        seen.add(n.lower())
        names[i] = n
    return names


# --------------------------------------------------------------------------- decoding


def input_key(path) -> dict:
    """What identifies an input's content for resuming: size, mtime (ns) and SHA-256."""
    import hashlib

    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha256": h.hexdigest()}


class DecodeDataset:
    """Map-style dataset for a torch ``DataLoader``: reads one image and pre-processes it
    to the model's input size. Errors are returned (not raised) so one bad file does not
    stop the loader. Only the small model input travels back to the main process.

    ``max_side`` decodes huge images at a reduced size (their original shape is still
    reported); ``max_pixels`` refuses larger images before decoding them. ``keep_image``
    also returns the decoded film in [0, 1] (for the native-resolution refinement).
    """

    def __init__(
        self,
        paths: list[str],
        size: int,
        *,
        max_side: int | None = None,
        max_pixels: int | None = None,
        keep_image: bool = False,
    ):
        self.paths = [str(p) for p in paths]
        self.size = int(size)
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.keep_image = bool(keep_image)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from .io import MIN_SIDE, read_image
        from .transforms import image_to_input

        path = self.paths[i]
        try:
            key = input_key(path)
            img = read_image(
                path, max_side=self.max_side, max_pixels=self.max_pixels, min_side=MIN_SIDE
            )
            x, info = image_to_input(img.data, self.size)
            film = None
            if self.keep_image:
                from .predict import as_unit_image

                film = as_unit_image(img.data)
            shape = img.meta.get("original_shape") or img.data.shape
            sp = img.meta.get("original_spacing", img.spacing)
            return {
                "i": i,
                "input": x,
                "info": (info.top, info.left, info.rows, info.cols),
                "shape": tuple(int(s) for s in shape),
                "decoded_shape": tuple(int(s) for s in img.data.shape),
                "spacing": None if sp is None else tuple(float(s) for s in sp),
                "note": img.meta.get("warning"),
                "key": key,
                "error": None,
                "image": film,
            }
        except Exception as exc:  # reported per file, the run goes on
            return {"i": i, "error": _reason(exc)}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, ValueError):
        from .io import describe_oserror

        return describe_oserror(exc)
    msg = str(exc).strip() or type(exc).__name__
    return msg if isinstance(exc, ValueError) else f"{type(exc).__name__}: {msg}"


_ARRAYS = ("input", "image")


def _collate(batch):
    """A worker's batch as it is sent to the main process: the arrays as torch tensors,
    which travel through shared memory instead of being pickled through a pipe."""
    import torch

    for item in batch:
        for k in _ARRAYS:
            a = item.get(k)
            if isinstance(a, np.ndarray) and a.dtype != object:
                if not (a.flags.c_contiguous and a.flags.writeable):  # e.g. a flipped or read-only view
                    a = np.array(a)
                item[k] = torch.from_numpy(a)
    return batch


def _as_arrays(batch):
    """Undo :func:`_collate` in the main process (no copy)."""
    for item in batch:
        for k in _ARRAYS:
            v = item.get(k)
            if v is not None and not isinstance(v, np.ndarray):
                item[k] = v.numpy()
    return batch


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """End this worker process when ``parent`` dies, however it dies (even SIGKILL).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; everywhere: a daemon thread that exits
    the process once its parent id changes (the orphan was re-parented).
    """
    import signal

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the thread suffices
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="cxrseg-parent-watch", daemon=True).start()


class _WorkerInit:
    """``worker_init_fn``: one torch thread, and die with the parent (picklable)."""

    def __init__(self, parent: int):
        self.parent = int(parent)

    def __call__(self, _worker_id: int) -> None:
        import torch

        _die_with_parent(self.parent)
        torch.set_num_threads(1)


def _worker_init(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)


def default_workers() -> int:
    """``min(4, CPUs // 2)``, at least 1."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


# --------------------------------------------------------------------------- files


def _append_lines(path: Path, text: str, header: str | None = None) -> None:
    """Append complete lines with one ``write`` on an ``O_APPEND`` descriptor (a kill
    cannot leave half a line); write ``header`` first if the file is new or empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if header is not None and os.fstat(fd).st_size == 0:
            text = header + text
        data = text.encode("utf-8")
        while data:
            n = os.write(fd, data)
            data = data[n:]
    finally:
        os.close(fd)


def _csv_text(rows, columns) -> str:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def _header(columns) -> str:
    return ",".join(columns) + "\n"


def _write_text_atomic(path: Path, text: str) -> None:
    from .io import atomic_write

    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def read_markers(out_dir: Path) -> dict[str, dict]:
    """Case -> done-marker of every readable ``.done/*.json`` under ``out_dir``."""
    d = Path(out_dir) / ".done"
    out = {}
    if not d.is_dir():
        return out
    for f in sorted(d.glob("*.json")):
        try:
            m = json.loads(f.read_text(encoding="utf-8"))
            if isinstance(m, dict) and isinstance(m.get("rows"), list) and m.get("case") == f.stem:
                out[f.stem] = m
        except (OSError, ValueError):
            continue
    return out


def rebuild_csv(out_dir: Path, *, cases=None, name: str = "predictions.csv") -> int:
    """Rewrite ``name`` (atomically) from the done-markers (of ``cases`` only, when given:
    a part's CSV); returns the row count."""
    out_dir = Path(out_dir)
    rows = []
    order = {r: i for i, r in enumerate(REGIONS)}
    keep = None if cases is None else set(cases)
    for _case, m in sorted(read_markers(out_dir).items()):
        if keep is None or _case in keep:
            rows += sorted(m["rows"], key=lambda r: order.get(r.get("region"), 99))
    _write_text_atomic(out_dir / name, _header(CSV_COLUMNS) + _csv_text(rows, CSV_COLUMNS))
    return len(rows)


# --------------------------------------------------------------------------- the run


@dataclass
class PredictSummary:
    """What a :func:`run_predict` call did."""

    out_dir: Path
    total: int = 0
    predicted: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: Cases left to another live run that had claimed them.
    claimed_elsewhere: int = 0
    #: Whether the model's weights were loaded (not when there was nothing to do).
    model_loaded: bool = False

    @property
    def images_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else float("nan")


class OutputWriteError(OSError):
    """The output folder cannot be written (full disk, read-only folder, no permission).

    ``str()`` is one line naming the path and the cause.
    """

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()


def _is_fatal(exc: BaseException) -> bool:
    """Errors of the output folder itself: stop the run rather than fail every case."""
    from .io import is_disk_error

    return isinstance(exc, OSError) and is_disk_error(exc)


@dataclass
class _Case:
    name: str
    path: Path
    source: str


class _Runner:
    quality: str | None = None  # "quick" / "full": quality columns (cxrseg.quality)
    uncertainty_maps: bool = False

    def __init__(
        self,
        predictor,
        out_dir: Path,
        regions,
        thresholds,
        *,
        heatmaps,
        heatmap_png,
        postprocess,
        mask_format,
        max_output_side,
        log,
    ):
        import socket

        self.pred = predictor
        self.out = out_dir
        self.regions = regions
        self.th = thresholds
        self.heatmaps = heatmaps
        self.heatmap_png = heatmap_png
        self.postprocess = postprocess
        self.mask_format = mask_format
        self.max_output_side = max_output_side
        self.log = log
        self.lock = threading.Lock()
        self.errors: list[tuple[str, str, str]] = []
        self.old_markers: dict[str, dict] = {}
        self.done = 0
        self.fatal: BaseException | None = None
        self.claimed: set[str] = set()
        self.host = socket.gethostname()
        self.csv_name = "predictions.csv"  # a part of a sharded run writes its own
        self.errors_name = "errors.csv"
        self.part_cases: list[str] | None = None  # a part's cases (its CSV lists only them)

    # paths
    def mask_path(self, region, case):
        return self.out / "masks" / region / f"{case}.{self.mask_format}"

    def heat_path(self, region, case, ext="npy"):
        return self.out / "heatmaps" / region / f"{case}.{ext}"

    def marker_path(self, case):
        return self.out / ".done" / f"{case}.json"

    def claim_path(self, case):
        return self.out / ".claims" / case

    def options(self) -> dict:
        """Output options a done case must have been made with (besides thresholds)."""
        opts = {
            "postprocess": bool(self.postprocess),
            "max_output_side": self.max_output_side,
        }
        refine = getattr(self.pred, "refine_id", None)
        if refine is not None:
            opts["refine"] = refine
        return opts

    def settings(self) -> dict:
        return {"model_id": self.pred.model_id, "postprocess": bool(self.postprocess)}

    def is_done(self, c: _Case, marker: dict | None) -> bool:
        if not marker or marker.get("version") != MARKER_VERSION:
            return False
        if marker.get("source") != c.source or marker.get("model_id") != self.pred.model_id:
            return False
        if marker.get("options") != self.options():
            return False
        th = marker.get("thresholds") or {}
        have = {r.get("region") for r in marker.get("rows", [])}
        if self.quality and any("est_jaccard" not in r for r in marker.get("rows", [])):
            return False
        for r in self.regions:
            if r not in have or th.get(r) != self.th[r]:
                return False
            if not self.mask_path(r, c.name).is_file():
                return False
            if self.heatmaps and not self.heat_path(r, c.name).is_file():
                return False
            if self.heatmap_png and not self.heat_path(r, c.name, "png").is_file():
                return False
        # the same content: size and mtime first (cheap), then the hash
        key = marker.get("input") or {}
        try:
            st = os.stat(c.path)
        except OSError:
            return False
        if key.get("size") != st.st_size or key.get("mtime_ns") != st.st_mtime_ns:
            return False
        try:
            return input_key(c.path)["sha256"] == key.get("sha256")
        except OSError:
            return False

    # claims: a second run on the same folder leaves a live run's cases alone
    def claim(self, case: str) -> bool:
        f = self.claim_path(case)
        f.parent.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {self.host}\n".encode()
        for _attempt in range(3):
            try:
                fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._claim_live(f):
                    return False
                try:  # a dead run's claim: take it over
                    f.unlink()
                except FileNotFoundError:
                    pass
                continue
            try:
                os.write(fd, me)
            finally:
                os.close(fd)
            self.claimed.add(case)
            return True
        return False

    def _claim_live(self, f: Path) -> bool:
        try:
            text = f.read_text(encoding="utf-8").split()
            age = time.time() - f.stat().st_mtime
        except (OSError, UnicodeDecodeError):
            return False
        if len(text) < 2:
            return age < 30  # being written right now
        try:
            pid = int(text[0])
        except ValueError:
            return False
        if text[1] != self.host:
            return True  # another machine's run: cannot tell, leave it alone
        return pid != os.getpid() and pid_alive(pid)

    def release(self, case: str) -> None:
        if case in self.claimed:
            self.claimed.discard(case)
            try:
                self.claim_path(case).unlink()
            except OSError:
                pass

    def release_all(self) -> None:
        for case in list(self.claimed):
            self.release(case)

    def error(self, path, case, reason):
        with self.lock:
            self.errors.append((str(path), case, reason))
            try:
                _append_lines(
                    self.out / self.errors_name,
                    _csv_text([{"path": str(path), "case": case, "reason": reason}], ERROR_COLUMNS),
                    header=_header(ERROR_COLUMNS),
                )
            except OSError:
                pass  # a full disk: the error is still reported on stderr and in the summary
        self.release(case)
        self.log(
            f"cxrseg predict: {reason}"
            if str(path) in reason
            else f"cxrseg predict: {path}: {reason}"
        )

    # one batch: native resolution, threshold, clean up, write
    def finish(self, items: list[tuple[_Case, dict]], prob) -> int:
        import torch

        from .postprocess import postprocess as clean

        rows_all = []
        th = torch.tensor(
            [self.th[r] for r in self.regions], dtype=torch.float32, device=prob.device
        ).view(-1, 1, 1)
        for k, (c, item) in enumerate(items):
            if self.fatal is not None:
                break  # the output folder cannot be written: stop at once
            try:
                rows_all += self._finish_one(c, item, prob[k], th, clean)
            except Exception as exc:
                if _is_fatal(exc):
                    self.fatal = exc
                    self.error(c.path, c.name, f"outputs not written: {_reason(exc)}")
                    break
                self.error(c.path, c.name, f"writing outputs failed: {_reason(exc)}")
        if rows_all:
            with self.lock:
                try:
                    _append_lines(
                        self.out / self.csv_name,
                        _csv_text(rows_all, CSV_COLUMNS),
                        header=_header(CSV_COLUMNS),
                    )
                except OSError as exc:  # rebuilt from the markers at the end
                    if self.fatal is None and _is_fatal(exc):
                        self.fatal = exc
        return len(items)

    def _refined_rows(self) -> list[int]:
        refiner = getattr(self.pred, "refiner", None)
        return [] if refiner is None else [j for j, r in enumerate(self.regions) if r in refiner.spec.regions]

    def refine(self, items: list[tuple[_Case, dict]], prob, *, exclusive: bool = True) -> None:
        """The refined regions' maps at the written size, for a whole batch at once (the
        crops of all its films share the refinement network's passes): ``item["refined"]``.
        Run in the thread of the forward passes, so the two networks do not compete for
        the CPU's cores. Should it fail, :meth:`finish` refines one case at a time, each
        failing alone."""
        try:
            self._refine(items, prob, exclusive)
        except Exception as exc:
            for _c, item in items:
                item.pop("refined", None)
            self.log(f"cxrseg predict: refining the batch at once failed ({_reason(exc)}); one case at a time")

    def _refine(self, items: list[tuple[_Case, dict]], prob, exclusive: bool = True) -> None:
        import torch

        rows = self._refined_rows()
        if not rows:
            return
        names = [self.regions[j] for j in rows]
        films, natives = [], []
        with torch.inference_mode():
            for k, (_c, item) in enumerate(items):
                info = self._info(item)
                natives.append(self.pred.to_native(prob[k][rows], info))
                films.append(item["image"])
        # DecodeDataset's films are unit images
        self.pred.refine_natives(films, natives, names, unit=True, exclusive=exclusive)
        for (_c, item), sub in zip(items, natives, strict=True):
            item["refined"] = sub

    def _info(self, item: dict):
        """Where the film sits in the model's input, at the size its masks are written."""
        from .transforms import PadInfo

        h0, w0 = item["shape"]
        h, w = output_shape((h0, w0), self.max_output_side)
        if (h, w) == (h0, w0) and item.get("decoded_shape", (h0, w0)) == (h0, w0):
            return PadInfo(*item["info"])
        side = max(h, w)  # a huge input: masks at the documented smaller size
        return PadInfo((side - h) // 2, (side - w) // 2, h, w)

    def _finish_one(self, c: _Case, item: dict, prob, th, clean) -> list[dict]:
        """Write one case's files and its done-marker; its CSV rows."""
        h0, w0 = item["shape"]
        h, w = output_shape((h0, w0), self.max_output_side)
        masks, heat, qcols = self._masks(c, item, prob, th, clean)
        sp = item["spacing"]
        if sp is not None and (h, w) != (h0, w0):
            sp = (sp[0] * h0 / h, sp[1] * w0 / w)
        rows = self._write_files(c, masks, heat, qcols, sp, (h, w))
        thresholds = self._keep_old_rows(c, item, rows)
        marker = {
            "version": MARKER_VERSION,
            "case": c.name,
            "source": c.source,
            "input": item.get("key"),
            "model_id": self.pred.model_id,
            "model_path": str(self.pred.path),
            "precision": self.pred.precision,
            "postprocess": bool(self.postprocess),
            "options": self.options(),
            "thresholds": thresholds,
            "shape": [h, w],
            "input_shape": [h0, w0],
            "spacing": None if sp is None else list(sp),
            "rows": rows,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if item.get("note"):
            marker["note"] = item["note"]
        _write_text_atomic(self.marker_path(c.name), json.dumps(marker, indent=1))
        self.release(c.name)
        with self.lock:
            self.done += 1
        return [r for r in rows if r["region"] in self.regions]

    def _masks(self, c: _Case, item: dict, prob, th, clean):
        """Probabilities at the written size -> ``(masks, float16 maps or None, quality
        columns)``; the float32 maps are not kept while the files are written."""
        import torch

        info = self._info(item)
        need_maps = bool(self.heatmaps or self.heatmap_png or self.quality)
        native = heat = None
        refined = self._refined_rows()
        sub = item.pop("refined", None)  # the batch's refinement (None: do it here)
        names = [self.regions[j] for j in refined]
        if refined and sub is None:
            with torch.inference_mode():
                sub = self.pred.to_native(prob[refined], info)
            self.pred.refine_native(item["image"], sub, names)
        with torch.inference_mode():
            if need_maps:
                native = self.pred.to_native(prob, info)  # (R, H, W) float32
                for k, j in enumerate(refined):
                    native[j] = sub[k]
                masks_t = native >= th
                heat = native.half().cpu().numpy() if self.heatmaps or self.heatmap_png else None
                masks_np = masks_t.cpu().numpy()
                del masks_t
            else:  # masks only: resized around each region (same masks, less work)
                from .transforms import output_masks

                masks_np = output_masks(prob, info, [self.th[r] for r in self.regions])
                for k, j in enumerate(refined):  # the refined regions: from their refined maps
                    masks_np[j] = (sub[k] >= self.th[names[k]]).cpu().numpy()
        masks = {r: masks_np[j] for j, r in enumerate(self.regions)}
        if self.postprocess:
            masks = clean(masks)
        qcols = {}
        if self.quality:
            from .quality import predict_columns

            qcols = predict_columns(
                self.pred, (item["input"], info), native, self.regions, mode=self.quality,
                thresholds=self.th, case=c.name,
                maps_dir=self.out / "uncertainty" if self.uncertainty_maps else None,
            )
        return masks, heat, qcols

    def _write_files(self, c: _Case, masks: dict, heat, qcols: dict, sp, shape) -> list[dict]:
        """Write the masks (and maps) of one case; its rows, one per region."""
        from .io import atomic_write, write_mask

        h, w = shape
        rows = []
        for j, r in enumerate(self.regions):
            write_mask(masks[r], self.mask_path(r, c.name))
            if self.heatmaps:
                arr = heat[j]
                atomic_write(self.heat_path(r, c.name), lambda fh, a=arr: np.save(fh, a))
            if self.heatmap_png:
                from PIL import Image

                im = Image.fromarray(np.rint(heat[j].astype(np.float32) * 255).astype(np.uint8))
                atomic_write(
                    self.heat_path(r, c.name, "png"), lambda fh, im=im: im.save(fh, format="PNG")
                )
            area = int(np.count_nonzero(masks[r]))
            rows.append(
                {
                    "case": c.name,
                    "source": c.source,
                    "region": r,
                    "area_px": area,
                    "area_mm2": "" if sp is None else f"{area * sp[0] * sp[1]:.3f}",
                    "height": h,
                    "width": w,
                    "model_id": self.pred.model_id,
                    "threshold": f"{self.th[r]:g}",
                    **qcols.get(r, {}),
                }
            )
        return rows

    def _keep_old_rows(self, c: _Case, item: dict, rows: list[dict]) -> dict:
        """Add to ``rows`` (sorted in place) those of regions done earlier with the same
        input, model and options; the thresholds of all of them."""
        old = self.old_markers.get(c.name)
        thresholds = {r: self.th[r] for r in self.regions}
        if (
            old
            and old.get("version") == MARKER_VERSION
            and old.get("source") == c.source
            and old.get("model_id") == self.pred.model_id
            and old.get("options") == self.options()
            and old.get("input") == item.get("key")
        ):
            for row in old.get("rows", []):
                r = row.get("region")
                if r not in self.regions and r in REGIONS and self.mask_path(r, c.name).is_file():
                    rows.append(row)
                    thresholds[r] = (old.get("thresholds") or {}).get(r)
        order = {r: i for i, r in enumerate(REGIONS)}
        rows.sort(key=lambda x: order[x["region"]])
        return thresholds


def output_shape(shape, max_side: int | None) -> tuple[int, int]:
    """The mask size written for an input of ``shape``: the same, or scaled down so that
    the longer side is ``max_side`` (aspect ratio kept)."""
    h, w = int(shape[0]), int(shape[1])
    if max_side is None or max(h, w) <= int(max_side):
        return h, w
    f = int(max_side) / max(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


def check_out_dir(out_dir: Path, inputs) -> None:
    """Refuse an output folder that is an input folder or holds a dataset's ground truth."""
    from .io import IMAGE_SUFFIXES as _SUFFIXES
    from .workspace import is_output

    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a folder")
    resolved = out_dir.resolve()
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir() and p.resolve() == resolved:
            raise ValueError(
                f"--out {out_dir} is the input folder; choose another folder for the "
                f"outputs, e.g. {out_dir / 'predictions'}"
            )
    masks = out_dir / "masks"
    # an output of an older cxrseg (done-markers, no output marker yet) is ours too
    if masks.is_dir() and not is_output(out_dir) and not (out_dir / ".done").is_dir():
        for _dirpath, _dirs, files in os.walk(masks):
            if any(Path(f).suffix.lower() in _SUFFIXES and not f.startswith(".") for f in files):
                raise ValueError(
                    f"--out {out_dir}: {masks} holds masks that cxrseg did not write (a "
                    "dataset's ground truth?); they would be overwritten. Choose another folder"
                )


def run_predict(
    inputs,
    out_dir,
    *,
    predictor,
    regions=None,
    thresholds=None,
    heatmaps: bool = False,
    heatmap_png: bool = False,
    batch_size: int = 8,
    workers: int | None = None,
    streams: int | None = None,
    postprocess: bool = True,
    overwrite: bool = False,
    mask_format: str = "png",
    progress: bool = True,
    overlap: bool = True,
    max_output_side: int | None = DEFAULT_MAX_OUTPUT_SIDE,
    max_pixels: int | None = None,
    log=None,
    quality: str | None = None,
    uncertainty_maps: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    planned=None,
) -> PredictSummary:
    """Segment every image of ``inputs`` with ``predictor`` into ``out_dir`` (see the
    module docstring for the layout and the resume rules).

    Parameters
    ----------
    inputs : list of path-like
        Files and folders (:func:`collect_inputs`).
    out_dir : path-like
    predictor : cxrseg.predict.Predictor or LazyPredictor
        A :class:`LazyPredictor` loads its weights only when a case has to be computed.
    regions : optional
        Regions to write (default: all the model predicts).
    thresholds : float, str or dict, optional
        See :func:`cxrseg.predict.parse_thresholds`; default the model's.
    heatmaps, heatmap_png : bool
        Write float16 ``.npy`` probability maps / 8-bit PNG previews.
    batch_size : int
        Images per forward pass.
    workers : int, optional
        DataLoader worker processes (``None``: :func:`default_workers`, 0 when the run
        fits in one batch).
    streams : int, optional
        Batches run through the model at once, in threads that share the torch threads
        (``None``: :func:`default_streams`; 1 when the run fits in one batch).
    postprocess : bool
        Largest component + hole filling (:func:`cxrseg.postprocess.postprocess`).
    overwrite : bool
        Recompute cases that are done.
    mask_format : {"png", "gif"}
    progress : bool
        Show a tqdm bar.
    overlap : bool
        Write one batch's files in a thread while the next batch runs through the model.
    max_output_side : int or None
        Inputs with a longer side get masks (and heatmaps) scaled down to it and are
        decoded at a reduced size (bounds memory); ``None``: always the native size.
    max_pixels : int, optional
        Refuse larger images before decoding them (default:
        :func:`cxrseg.io.max_pixels`).
    log : callable, optional
        Called with each error line (default: print to stderr).
    quality : {None, "quick", "full"}
        Add ``est_jaccard`` and ``failing_checks`` (:func:`cxrseg.quality.predict_columns`).
    uncertainty_maps : bool
        With ``quality="full"``: write disagreement maps to ``OUT/uncertainty``.
    num_parts, part_id : int
        Segment only part ``part_id`` of ``num_parts`` (:func:`cxrseg.distributed.shard`
        of the sorted input list; case names come from the whole list); the part's
        rows go to ``predictions.part-K-of-N.csv``, its errors to ``errors.part-K-of-N.csv``.
    planned : list of (case name, path), optional
        The cases to segment, already collected and named (a part sent by
        :func:`cxrseg.distributed.run_on_dask`); ``inputs`` is then not searched.

    Returns
    -------
    PredictSummary

    Raises
    ------
    OutputWriteError
        The output folder cannot be written (full disk, read-only, no permission); the
        run stopped at once, what was written is complete.
    """
    import torch
    from tqdm.auto import tqdm

    from .device import tune_allocator

    t_start = time.perf_counter()
    tune_allocator()  # before any thread of the run allocates (one heap for the streams)
    quality = _check_options(batch_size, workers, mask_format, max_output_side, quality, uncertainty_maps, streams)
    out_dir = Path(out_dir).expanduser()
    check_out_dir(out_dir, inputs)
    run = _make_runner(
        predictor, out_dir, regions, thresholds,
        log if log is not None else (lambda msg: tqdm.write(msg, file=sys.stderr)),
        heatmaps=heatmaps, heatmap_png=heatmap_png, postprocess=postprocess, mask_format=mask_format,
        max_output_side=max_output_side, quality=quality, uncertainty_maps=uncertainty_maps,
    )
    cases = _plan_cases(run, inputs, planned, num_parts, part_id)
    summary = PredictSummary(out_dir=out_dir, total=len(cases))
    todo: list[_Case] = []
    try:
        todo = _claim_cases(run, cases, overwrite, summary)
        if todo:
            _predict_cases(run, todo, batch_size, workers, progress, overlap, max_pixels, tqdm, torch, streams)
    finally:
        run.release_all()
    return _summarise(run, summary, len(todo), t_start)


def _check_options(batch_size, workers, mask_format, max_output_side, quality, uncertainty_maps, streams=None):
    """Refuse bad options before anything is read; the quality mode to run."""
    if int(batch_size) < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if workers is not None and int(workers) < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    if streams is not None and int(streams) < 1:
        raise ValueError(f"--streams must be >= 1, got {streams}")
    if mask_format not in ("png", "gif"):
        raise ValueError(f"mask format must be png or gif, got {mask_format!r}")
    if max_output_side is not None and int(max_output_side) < 64:
        raise ValueError(f"--max-output-side must be >= 64, got {max_output_side}")
    if uncertainty_maps and quality == "quick":
        raise ValueError("--uncertainty-maps needs --quality full (quick mode has no augmentation)")
    return quality or ("full" if uncertainty_maps else None)


def _make_runner(predictor, out_dir: Path, regions, thresholds, log, *, max_output_side, quality,
                 uncertainty_maps, **options) -> _Runner:
    """The run's writer, for the regions asked for (all the model's by default) at their
    thresholds (the model's by default)."""
    from .predict import parse_thresholds

    regs = predictor.select(regions)
    th = parse_thresholds(thresholds, regs, default=predictor.thresholds)
    run = _Runner(
        predictor,
        out_dir,
        regs,
        th,
        max_output_side=None if max_output_side is None else int(max_output_side),
        log=log,
        **options,
    )
    run.quality, run.uncertainty_maps = quality, bool(uncertainty_maps)
    return run


def _plan_cases(run: _Runner, inputs, planned, num_parts: int, part_id: int) -> list[_Case]:
    """The cases of this run (of its part): ``planned``, or found in ``inputs`` and named;
    a part writes its own CSVs."""
    from .distributed import check_part, part_names, shard

    check_part(num_parts, part_id)
    out_dir = run.out
    if planned is None:
        files = collect_inputs(inputs, exclude=out_dir)
        if not files:
            raise FileNotFoundError(
                f"no image found in {', '.join(map(str, inputs))} "
                f"(expected {', '.join(IMAGE_SUFFIXES)} files)"
            )
        planned = shard(list(zip(case_names(files), files, strict=True)), num_parts, part_id)
    cases = [_Case(n, Path(f), str(Path(f).resolve())) for n, f in planned]
    if num_parts > 1:
        run.csv_name, run.errors_name = part_names(num_parts, part_id)
        run.part_cases = [c.name for c in cases]
    return cases


def _claim_cases(run: _Runner, cases: list[_Case], overwrite: bool, summary: PredictSummary) -> list[_Case]:
    """Prepare the output folder and claim the cases to compute (the others are done or
    claimed by a live run: counted in ``summary``, the latter logged); returns the
    claimed cases.

    Raises
    ------
    OutputWriteError
        The output folder cannot be written.
    """
    from .io import describe_oserror, sweep_temporary
    from .workspace import mark_output

    out_dir = run.out
    try:
        mark_output(out_dir, "predict")
        sweep_temporary(out_dir)  # a killed run's temporary files, never results
        markers = read_markers(out_dir)
        todo = []
        for c in cases:
            if not overwrite and run.is_done(c, markers.get(c.name)):
                summary.skipped += 1
            elif run.claim(c.name):
                todo.append(c)
            else:
                summary.claimed_elsewhere += 1
        # Markers of cases about to be recomputed go first (their rows would be duplicated).
        for c in todo:
            if c.name in markers:
                run.old_markers[c.name] = markers[c.name]
                run.marker_path(c.name).unlink(missing_ok=True)
        if not summary.claimed_elsewhere:
            (out_dir / run.errors_name).unlink(missing_ok=True)
        rebuild_csv(out_dir, cases=run.part_cases, name=run.csv_name)
    except OSError as exc:
        raise OutputWriteError(
            getattr(exc, "errno", None), f"cannot write the output: {describe_oserror(exc)}"
        ) from exc
    if summary.claimed_elsewhere:
        run.log(
            f"cxrseg predict: {summary.claimed_elsewhere} case(s) are being segmented by "
            f"another run on {out_dir}; left to it"
        )
    return todo


def _summarise(run: _Runner, summary: PredictSummary, n_todo: int, t_start: float) -> PredictSummary:
    """Fill ``summary`` from the finished run; raise if the output became unwritable."""
    from .io import describe_oserror

    summary.predicted = run.done
    summary.errors = list(run.errors)
    summary.failed = len({e[0] for e in run.errors})
    summary.seconds = time.perf_counter() - t_start
    summary.model_loaded = bool(getattr(run.pred, "loaded", True))
    if run.fatal is not None:
        left = n_todo - run.done - summary.failed
        raise OutputWriteError(
            getattr(run.fatal, "errno", None),
            f"cannot write the output: {describe_oserror(run.fatal)}; stopped after "
            f"{run.done} case(s) ({max(left, 0)} not attempted; rerun to resume)",
        ) from run.fatal
    return summary


def _make_loader(run: _Runner, todo: list[_Case], batch_size, workers, max_pixels, torch):
    """A DataLoader decoding ``todo`` in worker processes (in this one for a run of one batch)."""
    n_workers = default_workers() if workers is None else int(workers)
    if workers is None and len(todo) <= batch_size:
        n_workers = 0
    n_workers = min(n_workers, len(todo))
    ds = DecodeDataset(
        [c.path for c in todo],
        run.pred.input_size,
        max_side=run.max_output_side,
        max_pixels=max_pixels,
        keep_image=getattr(run.pred, "refine_id", None) is not None,
    )
    return torch.utils.data.DataLoader(
        ds,
        batch_size=int(batch_size),
        shuffle=False,
        num_workers=n_workers,
        collate_fn=_collate,
        worker_init_fn=_WorkerInit(os.getpid()) if n_workers else None,
        prefetch_factor=2 if n_workers else None,
    )


def _good_items(run: _Runner, todo: list[_Case], batch, bar) -> list:
    """Report a decoded batch's failed files; ``(case, item)`` of the others."""
    good = []
    n_bad = 0
    for item in _as_arrays(batch):
        c = todo[item["i"]]
        if item["error"] is not None:
            run.error(c.path, c.name, item["error"])
            n_bad += 1
        else:
            if item.get("note"):
                run.log(f"cxrseg predict: {c.path}: {item['note']}")
            good.append((c, item))
    bar.update(n_bad)
    return good


def _compute(run: _Runner, good: list, bar, exclusive: bool = True):
    """Run decoded cases through the model and the refinement: ``(items,
    probabilities)``, or None when nothing is left to write."""
    if not good:
        return None
    try:
        prob = run.pred.forward(
            np.stack([it_["input"] for _, it_ in good]), regions=run.regions, exclusive=exclusive
        )
    except Exception as exc:
        for c, _ in good:
            run.error(c.path, c.name, f"model failed: {_reason(exc)}")
        bar.update(len(good))
        return None
    run.refine(good, prob, exclusive=exclusive)
    return good, prob


def default_streams(predictor) -> int:
    """Forward passes run at once by :func:`run_predict` on ``predictor``'s device: 2 on a
    CPU with at least 2 torch threads (each pass then gets half of them), else 1.

    One pass spread over all cores stalls whenever another thread of the run (the
    writer, a decoder) takes one of them: every core waits for the slowest at each
    layer. Two passes of half the threads each keep the cores busy around it.
    ``CXRSEG_STREAMS`` overrides the default.
    """
    import torch

    env = os.environ.get("CXRSEG_STREAMS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"CXRSEG_STREAMS must be a whole number, got {env!r}") from None
        if n < 1:
            raise ValueError(f"CXRSEG_STREAMS must be at least 1, got {n}")
        return n
    if not getattr(predictor, "concurrent", False):
        return 1
    return 2 if torch.get_num_threads() >= 2 else 1


def _predict_cases(run, todo, batch_size, workers, progress, overlap, max_pixels, tqdm, torch, streams=None):
    """Decode, forward and write ``todo`` (claimed cases); stops on a fatal output error."""
    from concurrent.futures import ThreadPoolExecutor

    loader = _make_loader(run, todo, batch_size, workers, max_pixels, torch)
    bar = tqdm(
        total=len(todo),
        desc="predict",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    if streams is None:
        streams = default_streams(run.pred) if len(todo) > int(batch_size) else 1
    streams = max(1, min(int(streams), -(-len(todo) // int(batch_size))))
    threads = torch.get_num_threads()
    compute = None
    if streams > 1:
        # each stream's thread takes this count when it first runs an op
        torch.set_num_threads(max(1, threads // streams))
        compute = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="cxrseg-stream")
    pool = None
    if overlap:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxrseg-writer")
    pending: deque = deque()
    running: deque = deque()

    def drain(limit):
        while len(pending) > limit:
            fut, n = pending.popleft()
            fut.result()
            bar.update(n)

    def write(step):
        if step is None:
            return
        if pool is None:
            bar.update(run.finish(*step))
        else:
            pending.append((pool.submit(run.finish, *step), len(step[0])))
            drain(1)

    it = iter(loader)
    try:
        for batch in it:
            if run.fatal is not None:
                break
            good = _good_items(run, todo, batch, bar)
            if compute is None:
                write(_compute(run, good, bar))
                continue
            running.append(compute.submit(_compute, run, good, bar, False))
            while len(running) >= streams:
                write(running.popleft().result())
        while running:
            write(running.popleft().result())
        drain(0)
    finally:
        for fut in running:
            fut.cancel()
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # workers end with the run, also on an interrupt
        if compute is not None:
            compute.shutdown(wait=True)
            torch.set_num_threads(threads)
        if pool is not None:
            pool.shutdown(wait=True)
        bar.close()
        try:
            rebuild_csv(run.out, cases=run.part_cases, name=run.csv_name)
        except OSError:
            pass  # a full disk: the previous CSV stays; the next run rebuilds it
