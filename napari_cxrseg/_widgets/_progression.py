"""Training progression dock: watch a tracked case's sigmoid maps evolve, epoch by epoch.

``cxrseg train --track-case ID`` writes ``progression.npz`` in its run folder: ``probs``
``(E, R, S, S)`` float16 (the case's sigmoid maps after every epoch), ``image (S, S)``,
``epochs``, ``regions`` and ``case_id``. This dock opens such a folder as an image stack:
one heatmap layer ``(E, S, S)`` per region over the case's (pre-processed) image, so
napari's dims slider scrubs through the epochs; the epoch's validation IoU (from
``history.json``) is shown below. The case's ground truth is added, resized to ``S``
like the training targets, when the case is in the open dataset or the run's checkpoint
metadata names its ``data_root``.

The maps are laid over the case at the case's own scale (pixel spacing and the padding
training added to make it square; :func:`case_geometry`), so a 64 px run covers the
chest radiograph instead of landing as a postage stamp in its corner. The dock clears
its layers when another case is opened, and a folder that is not a run says so in the
dock (no error pop-up).

The output folder of ``cxrseg train --per-region`` (one run folder per region) opens as
one progression: a heatmap layer per region. Regions trained for fewer epochs keep their
last map beyond their last epoch, and the epoch line says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from cxrseg.regions import REGIONS, canonical_region

from ._state import _heat_colormap, get_session

__all__ = ["ProgressionWidget", "read_progression", "ground_truth_at", "case_geometry"]


def case_geometry(size: int, shape, spacing=None) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(scale, translate)`` that lay a ``size`` x ``size`` training-resolution map over
    its case: the case of ``shape`` (rows, cols) was padded symmetrically to a square
    (:func:`cxrseg.transforms.pad_to_square`) and resized to ``size``.

    >>> sc, tr = case_geometry(64, (2048, 1024), (0.2, 0.2))  # a portrait case, 0.2 mm pixels
    >>> [round(x, 2) for x in sc + tr]  # 32 case pixels per map pixel; 512 px padded on the left
    [6.4, 6.4, 3.1, -99.3]
    """
    rows, cols = (int(x) for x in shape)
    sy, sx = (float(x) for x in (spacing or (1.0, 1.0)))
    side = max(rows, cols)
    f = side / float(size)
    top, left = (side - rows) // 2, (side - cols) // 2
    scale = (f * sy, f * sx)
    translate = (sy * ((f - 1.0) / 2.0 - top), sx * ((f - 1.0) / 2.0 - left))
    return scale, translate


def read_progression(run_dir: str | Path) -> dict:
    """Read a run folder's ``progression.npz`` (and ``history.json`` if present).

    Raises
    ------
    FileNotFoundError
        No ``progression.npz`` (the run was not started with ``--track-case``).
    ValueError
        The file does not hold what ``cxrseg train`` writes.
    """
    run = Path(run_dir).expanduser()
    f = run / "progression.npz" if run.is_dir() else run
    if not f.is_file() and run.is_dir() and _region_runs(run):
        return _merge_region_runs(run, _region_runs(run))
    if not f.is_file():
        raise FileNotFoundError(f"{run}: no progression.npz (train with --track-case CASE to record one)")
    run = f.parent
    try:
        with np.load(f, allow_pickle=False) as z:
            probs = np.asarray(z["probs"])
            image = np.asarray(z["image"], dtype=np.float32)
            epochs = np.asarray(z["epochs"]).astype(int).tolist() if "epochs" in z else list(range(1, len(probs) + 1))
            regions = [canonical_region(str(r)) for r in np.atleast_1d(z["regions"])]
            case_id = str(z["case_id"]) if "case_id" in z else run.name
    except (KeyError, ValueError, OSError) as exc:
        raise ValueError(
            f"{f}: not a cxrseg progression file (expected probs, image, epochs, regions, case_id: {exc})"
        ) from None
    if probs.ndim != 4 or probs.shape[1] != len(regions) or probs.shape[2:] != image.shape:
        raise ValueError(
            f"{f}: probs of shape {probs.shape} do not match {len(regions)} regions and image {image.shape}"
        )
    history = {}
    hf = run / "history.json"
    if hf.is_file():
        try:
            history = {int(h["epoch"]): h for h in json.loads(hf.read_text())}
        except (ValueError, KeyError, TypeError):
            history = {}
    data_root = None
    for name in ("best.safetensors", "last.safetensors"):
        if (run / name).is_file():
            try:
                from cxrseg.model import read_metadata

                data_root = read_metadata(run / name).get("data_root")
            except ValueError:
                pass
            if data_root:
                break
    return {"run": run, "probs": probs, "image": image, "epochs": epochs, "regions": regions,
            "case_id": case_id, "history": history, "data_root": data_root}


def _region_runs(folder: Path) -> list[Path]:
    """The per-region run folders of a ``cxrseg train --per-region`` output, in region order."""
    return [folder / r for r in REGIONS if (folder / r / "progression.npz").is_file()]


def _merge_region_runs(folder: Path, runs: list[Path]) -> dict:
    """One progression of the per-region runs in ``folder`` (see the module docstring)."""
    parts = [read_progression(r) for r in runs]
    first = parts[0]
    for p in parts[1:]:
        if p["case_id"] != first["case_id"] or p["image"].shape != first["image"].shape:
            raise ValueError(
                f"{folder}: the per-region runs tracked different cases or sizes "
                f"({first['run'].name}: {first['case_id']} {first['image'].shape[0]} px, "
                f"{p['run'].name}: {p['case_id']} {p['image'].shape[0]} px)"
            )
    epochs = sorted({e for p in parts for e in p["epochs"]})
    probs = np.zeros((len(epochs), len(parts)) + first["image"].shape, dtype=first["probs"].dtype)
    history: dict[int, dict] = {}
    for j, p in enumerate(parts):
        (region,) = p["regions"]
        for k, e in enumerate(epochs):
            i = int(np.searchsorted(p["epochs"], e, side="right")) - 1  # its last epoch <= e
            if i < 0:
                continue
            probs[k, j] = p["probs"][i, 0]
            h = p["history"].get(p["epochs"][i], {})
            iou = (h.get("val_iou") or {}).get(region)
            entry = history.setdefault(e, {"val_iou": {}, "notes": []})
            if iou is not None:
                entry["val_iou"][region] = float(iou)
            if p["epochs"][i] != e:
                entry["notes"].append(f"{region}: last epoch {p['epochs'][i]}")
    return {"run": folder, "probs": probs, "image": first["image"], "epochs": epochs,
            "regions": [p["regions"][0] for p in parts], "case_id": first["case_id"],
            "history": history, "data_root": next((p["data_root"] for p in parts if p["data_root"]), None)}


def ground_truth_at(case, regions, size: int) -> dict[str, np.ndarray]:
    """A case's masks pre-processed like training targets (pad to square, area resize) at ``size``."""
    import torch

    from cxrseg.transforms import pad_to_square, resize_area

    have = [r for r in regions if r in getattr(case, "mask_paths", {})]
    out = {}
    for r, m in case.load_masks(have).items():
        sq, _ = pad_to_square(np.asarray(m, np.float32), value=0.0)
        out[r] = resize_area(torch.from_numpy(np.ascontiguousarray(sq)), size).numpy() >= 0.5
    return out


def _load_job(run_dir, index) -> dict:
    try:
        prog = read_progression(run_dir)
    except (FileNotFoundError, ValueError) as exc:  # shown in the dock, not as a pop-up
        return {"error": str(exc)}
    case = None
    if index is not None:
        case = index.get(prog["case_id"]) if hasattr(index, "get") else None
    if case is None and prog["data_root"] and Path(prog["data_root"]).is_dir():
        from cxrseg.dataset import DatasetIndex

        case = DatasetIndex(prog["data_root"]).get(prog["case_id"])
    from ._torch_env import torch_call

    prog["truth"] = (torch_call(ground_truth_at, case, prog["regions"], prog["image"].shape[0])
                     if case is not None else {})
    prog["case_shape"] = prog["case_spacing"] = None
    if case is not None:
        try:
            img = case.load_image()
            prog["case_shape"], prog["case_spacing"] = tuple(img.shape), img.spacing
        except (OSError, ValueError):
            pass  # shown at training resolution
    return prog


class ProgressionWidget(QWidget):
    """Dock widget showing a ``--track-case`` training run (see the module docstring)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.progression: dict | None = None
        self.layers: list = []

        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("training run folder (with progression.npz)")
        self.run_edit.returnPressed.connect(self.open_run)
        browse = QPushButton("Folder…")
        browse.clicked.connect(self._browse)
        open_btn = QPushButton("Open")
        open_btn.clicked.connect(self.open_run)
        self.info = QLabel("Open the folder of a run trained with --track-case.")
        self.info.setWordWrap(True)
        self.epoch_label = QLabel("")
        self.epoch_label.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.run_edit, 1)
        row.addWidget(browse)
        row.addWidget(open_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.info)
        lay.addWidget(self.epoch_label)
        lay.addStretch(1)
        napari_viewer.dims.events.current_step.connect(self._on_step)
        self.session.case_changed.connect(self._on_case_changed)
        self.destroyed.connect(lambda *_a, s=self.session, cb=self._on_case_changed: _disconnect(s, cb))

    def _browse(self) -> None:
        start = self.run_edit.text() or str(Path.home())
        d = QFileDialog.getExistingDirectory(self, "Open a training run folder", start)
        if d:
            self.run_edit.setText(d)
            self.open_run()

    def open_run(self, run_dir: str | Path | None = None):
        """Open a run folder (default: the line edit's); returns the worker."""
        from ._workers import start_worker

        run_dir = str(run_dir) if run_dir is not None else self.run_edit.text().strip()
        if not run_dir:
            return None
        self.run_edit.setText(run_dir)
        p = Path(run_dir).expanduser()
        f = p / "progression.npz" if p.is_dir() else p
        if not f.is_file() and not (p.is_dir() and _region_runs(p)):
            self.info.setText(
                f"<span style='color:#E69F00'>Cannot open {run_dir}:</span> "
                + ("no such folder." if not p.exists() else
                   "no progression.npz in it. Choose the folder of a run trained with "
                   "<code>cxrseg train --track-case CASE</code>.")
            )
            return None
        self.info.setText(f"Reading {run_dir} …")
        return start_worker(_load_job, run_dir, self.session.index, context="Open training progression",
                            returned=self._show, errored=lambda e: self.info.setText(f"Cannot open: {e}"),
                            sync=self.session.synchronous)

    def layer_name(self, what: str, case_id: str | None = None) -> str:
        cid = case_id or (self.progression or {}).get("case_id", "")
        return f"{cid} progression {what}"

    def clear(self) -> None:
        """Remove the progression layers."""
        v = self.viewer
        for ly in self.layers:
            if ly in v.layers:
                v.layers.remove(ly)
        self.layers = []
        self.progression = None
        self.epoch_label.setText("")

    def _on_case_changed(self, case_id) -> None:
        if self.progression is not None and case_id != self.progression.get("case_id"):
            cid = self.progression.get("case_id")
            self.clear()
            self.info.setText(f"Cleared the progression of {cid}: another case was opened.")

    def geometry(self, prog: dict) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """``(scale, translate)`` of the progression layers (``None``: training pixels)."""
        size = prog["image"].shape[0]
        if prog.get("case_shape"):
            return case_geometry(size, prog["case_shape"], prog.get("case_spacing"))
        s = self.session
        if s.image is not None and s.case_id == prog["case_id"]:
            return case_geometry(size, s.image.shape, s.image.spacing)
        return None

    def _show(self, prog: dict) -> None:
        from napari.layers import Image, Labels

        from napari_cxrseg._layers import label_colormap, label_features, labels_from_masks

        if "error" in prog:
            self.info.setText(f"<span style='color:#E69F00'>Cannot open:</span> {prog['error']}")
            return
        v = self.viewer
        self.clear()
        self.progression = prog
        geo = self.geometry(prog)
        sc2, tr2 = geo if geo is not None else ((1.0, 1.0), (0.0, 0.0))
        sc3, tr3 = (1.0,) + tuple(sc2), (0.0,) + tuple(tr2)
        cid, probs, regions = prog["case_id"], prog["probs"], prog["regions"]
        md = {"cxrseg": {"kind": "progression", "case_id": cid, "run": str(prog["run"])}}
        self.layers.append(v.add_layer(Image(prog["image"], name=self.layer_name("image"), colormap="gray",
                                             contrast_limits=(0.0, 1.0), metadata=md, scale=sc2,
                                             translate=tr2)))
        if prog["truth"]:
            gt = Labels(labels_from_masks(prog["truth"], prog["image"].shape), name=self.layer_name("ground truth"),
                        colormap=label_colormap(), features=label_features(), opacity=0.8, metadata=md,
                        scale=sc2, translate=tr2)
            gt.contour = 1
            self.layers.append(v.add_layer(gt))
        for j, r in enumerate(regions):
            if r not in REGIONS:
                continue
            self.layers.append(v.add_layer(Image(
                probs[:, j].astype(np.float32), name=self.layer_name(r), colormap=_heat_colormap(r),
                contrast_limits=(0.0, 1.0), blending="additive", opacity=0.8, metadata=md, scale=sc3,
                translate=tr3)))
        nd = v.dims.ndim
        if nd >= 3:
            if nd == 3:
                v.dims.axis_labels = ("epoch", "row", "col")
            v.dims.set_current_step(nd - 3, len(probs) - 1)
        v.reset_view()
        gt_note = "with ground truth" if prog["truth"] else "no ground truth found (open its dataset in Cases)"
        if geo is None:
            gt_note += "; shown at training resolution (its case is not in the open dataset)"
        self.info.setText(
            f"<b>{cid}</b>: {len(probs)} epochs, {len(regions)} region(s), {probs.shape[-1]} px; {gt_note}. "
            "Move the epoch slider below the canvas."
        )
        self._on_step()

    def current_epoch(self) -> int | None:
        """The epoch shown by the dims slider."""
        if self.progression is None:
            return None
        nd = self.viewer.dims.ndim
        if nd < 3:
            return None
        k = int(self.viewer.dims.current_step[nd - 3])
        ep = self.progression["epochs"]
        return ep[min(max(k, 0), len(ep) - 1)]

    def _on_step(self, *_args) -> None:
        ep = self.current_epoch()
        if ep is None:
            return
        h = self.progression["history"].get(ep, {})
        val = h.get("val_iou") or {}
        parts = [f"epoch {ep} / {self.progression['epochs'][-1]}"]
        if "loss" in h:
            parts.append(f"loss {h['loss']:.4f}")
        if val:
            parts.append("val IoU " + ", ".join(f"{k} {v:.3f}" for k, v in val.items() if isinstance(v, (int, float))))
        if h.get("notes"):
            parts.append("; ".join(h["notes"]))
        self.epoch_label.setText(" · ".join(parts))


def _disconnect(session, cb) -> None:
    try:
        session.case_changed.disconnect(cb)
    except Exception:  # noqa: BLE001 - the session may be gone already
        pass
