"""``cxrseg predict``: segment radiographs and folders of them with
:func:`cxrseg.batch.run_predict` (the output layout and the resume rules are described
there).

Exit status: 0 when every file was segmented, 1 when any failed (the others are still
done; see ``errors.csv``), 2 for usage errors (bad options, missing inputs, a model that
cannot be loaded), 3 when the output cannot be written (full disk, read-only folder, no
permission: the run stops at once, with one line naming the path and the cause; what was
written is complete and the next run resumes), 130 when interrupted (Ctrl-C, SIGINT) and
143 when terminated (SIGTERM); DataLoader worker processes end with the run, however it
ends.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..batch import DEFAULT_MAX_OUTPUT_SIDE, OutputWriteError, check_out_dir, collect_inputs, run_predict
from . import EXIT_OUTPUT
from ._common import add_refine_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    _add_input_arguments(p)
    _add_model_arguments(p)
    _add_output_arguments(p)
    _add_loading_arguments(p)
    _add_mask_arguments(p)
    _add_quality_arguments(p)
    _add_run_arguments(p)


def _add_input_arguments(p: argparse.ArgumentParser) -> None:
    """The images to segment and the output folder."""
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files (JSRT .IMG, DICOM, PNG/JPEG/TIFF) and folders (searched recursively; "
        "'masks' folders and the output folder are skipped)",
    )
    p.add_argument("--out", "-o", required=True, type=Path, help="output folder")


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model, the regions it predicts, where and how it runs."""
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint (.safetensors), training folder, or a shipped model: 'default' (512 px) "
        "or 'fast' (256 px, about 3x faster, Jaccard 0.002-0.017 lower); default: 'default'",
    )
    p.add_argument(
        "--regions",
        default=None,
        help="all, lungs, clavicles or a comma list (heart,left_clavicle,...); "
        "default: every region the model predicts",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16", "int8"),
        default="auto",
        help="auto: the fastest of fp32/bf16 (fp16 on GPUs) and memory layout as measured on this "
        "machine on first use of the model (a few seconds, then cached); int8: the quantised "
        "network on a CPU (needs the calibration `cxrseg quantize` writes beside the model; "
        "about a second to build, then the fastest on CPUs with VNNI); an explicit value always wins",
    )
    add_refine_argument(p)
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (CUDA graphs on a GPU); pays off only on long runs",
    )
    p.add_argument(
        "--threshold",
        default=None,
        help="probability threshold: one value (0.4), per region (heart=0.4,left_clavicle=0.5) "
        "or both (0.45,heart=0.4); default: the model's (0.5 unless calibrated)",
    )


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    """Probability maps written beside the masks."""
    p.add_argument(
        "--heatmaps",
        action="store_true",
        help="also write float16 probability maps: OUT/heatmaps/<region>/<case>.npy",
    )
    p.add_argument(
        "--heatmap-png",
        action="store_true",
        help="also write 8-bit PNG previews of the probability maps "
        "(OUT/heatmaps/<region>/<case>.png)",
    )


def _add_loading_arguments(p: argparse.ArgumentParser) -> None:
    """Batching and decoding in worker processes."""
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader processes that decode and pre-process images while the model runs "
        "(0: decode in the main process; default: min(4, CPUs/2))",
    )
    p.add_argument(
        "--streams",
        type=int,
        default=None,
        help="batches run through the model at once, each with its share of the CPU's "
        "threads (default: 2 on a CPU with 2 or more threads, else 1; CXRSEG_STREAMS)",
    )


def _add_mask_arguments(p: argparse.ArgumentParser) -> None:
    """How the masks are cleaned, stored and sized; the input size limit."""
    p.add_argument(
        "--postprocess",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep each region's largest component and fill holes (default: on)",
    )
    p.add_argument(
        "--mask-format",
        choices=("png", "gif"),
        default="png",
        help="mask file format (default png)",
    )
    p.add_argument(
        "--max-output-side",
        type=int,
        default=DEFAULT_MAX_OUTPUT_SIDE,
        help="inputs whose longer side exceeds this get masks scaled down to it, which "
        f"bounds memory (default {DEFAULT_MAX_OUTPUT_SIDE})",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse images with more pixels than this, before decoding them (default: "
        "$CXRSEG_MAX_PIXELS, else cxrseg.io.DEFAULT_MAX_PIXELS)",
    )


def _add_quality_arguments(p: argparse.ArgumentParser) -> None:
    """The quality estimate and the DICOM Segmentation output."""
    p.add_argument(
        "--quality",
        nargs="?",
        const="full",
        choices=("quick", "full"),
        default=None,
        help="estimate each region's Jaccard without ground truth and list failing plausibility "
        "checks in the CSV (est_jaccard, failing_checks); full (default): with test-time "
        "augmentation, quick: checks and entropy only",
    )
    p.add_argument(
        "--uncertainty-maps",
        action="store_true",
        help="with --quality full: write float16 disagreement maps OUT/uncertainty/<region>/<case>.npy",
    )
    p.add_argument(
        "--dicom-seg", nargs="?", const="binary", choices=("binary", "fractional"), default=None,
        help="also write a DICOM Segmentation per DICOM input, OUT/dicom-seg/<case>.seg.dcm "
        "(binary masks; 'fractional': the probability maps, needs --heatmaps)",
    )


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Resuming, splitting the work into parts or over a cluster, progress."""
    p.add_argument("--overwrite", action="store_true", help="recompute cases that are already done")
    p.add_argument(
        "--num-parts",
        type=int,
        default=1,
        metavar="N",
        help="split the sorted input list into N parts (round robin) and segment only part --part-id; "
        "each part writes predictions.part-K-of-N.csv (merge them with 'cxrseg predict-merge OUT')",
    )
    p.add_argument("--part-id", type=int, default=0, metavar="K", help="the part to segment, 0..N-1 (default 0)")
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on a Dask distributed cluster (tcp://host:8786, or local / local:N for a cluster of N "
        "worker processes on this machine): parts go to the workers, each loads the model once; "
        "needs the [cluster] extra",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_cli(args) -> int:
    from ..predict import LazyPredictor

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if getattr(args, "streams", None) is not None and args.streams < 1:
        raise ValueError(f"--streams must be >= 1, got {args.streams}")
    collect_inputs(args.inputs, exclude=args.out)  # fail fast on missing inputs
    check_out_dir(Path(args.out).expanduser(), args.inputs)
    if getattr(args, "dicom_seg", None) == "fractional" and not args.heatmaps:
        raise ValueError("--dicom-seg fractional stores the probability maps: add --heatmaps")
    if getattr(args, "scheduler", None):
        return _run_dask(args)

    def announce(p):
        if not args.quiet:
            how = f" (auto: {p.autotune.describe()})" if getattr(p, "autotune", None) is not None else ""
            print(
                f"model {p.path.name} ({p.model_id}), device {p.device}, precision {p.precision}{how}"
                + (f", clavicles refined ({p.refine_id})" if p.refine_id else ""),
                file=sys.stderr,
            )

    # the model loads on the first batch: a rerun with every case done never loads it
    predictor = LazyPredictor(
        args.model,
        device=args.device,
        precision=args.precision,
        compile=getattr(args, "compile", None) or None,
        refine=getattr(args, "refine", None),
        on_load=announce,
    )
    predictor.select(args.regions)  # a region the model lacks: before any weight is read
    try:
        s = run_predict(
            args.inputs,
            args.out,
            predictor=predictor,
            regions=args.regions,
            thresholds=args.threshold,
            heatmaps=args.heatmaps,
            heatmap_png=args.heatmap_png,
            batch_size=args.batch_size,
            workers=args.workers,
            streams=getattr(args, "streams", None),
            postprocess=args.postprocess,
            overwrite=args.overwrite,
            mask_format=args.mask_format,
            progress=not args.quiet,
            max_output_side=args.max_output_side,
            max_pixels=args.max_pixels,
            quality=args.quality,
            uncertainty_maps=args.uncertainty_maps,
            num_parts=getattr(args, "num_parts", 1),
            part_id=getattr(args, "part_id", 0),
        )
        if getattr(args, "dicom_seg", None):
            from ..dicom_seg import write_predict_outputs

            segs = write_predict_outputs(args.inputs, args.out, mode=args.dicom_seg, model_id=predictor.model_id)
            print(f"{len(segs)} DICOM SEG file(s) -> {Path(args.out) / 'dicom-seg'}")
    except OutputWriteError as exc:
        print(f"cxrseg predict: error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    busy = f", {s.claimed_elsewhere} left to another run" if s.claimed_elsewhere else ""
    print(
        f"{s.total} image(s): {s.predicted} segmented, {s.skipped} already done, {s.failed} failed"
        f"{busy} -> {s.out_dir}" + (f" (see {s.out_dir / 'errors.csv'})" if s.failed else "")
    )
    return 1 if s.failed else 0


def _run_dask(args) -> int:
    """``cxrseg predict --scheduler``: the parsed predict arguments, run on Dask."""
    from ..distributed import run_on_dask

    if getattr(args, "num_parts", 1) != 1 or getattr(args, "part_id", 0) != 0:
        raise ValueError("--scheduler splits the inputs itself: drop --num-parts/--part-id")
    s = run_on_dask(
        args.inputs,
        args.out,
        scheduler=args.scheduler,
        model=args.model,
        device=args.device,
        precision=args.precision,
        regions=args.regions,
        thresholds=args.threshold,
        heatmaps=args.heatmaps,
        heatmap_png=args.heatmap_png,
        batch_size=args.batch_size,
        postprocess=args.postprocess,
        overwrite=args.overwrite,
        mask_format=args.mask_format,
        progress=not args.quiet,
        refine=getattr(args, "refine", None),
    )
    print(
        f"{s['total']} image(s): {s['predicted']} segmented, {s['skipped']} already done, {s['failed']} failed "
        f"-> {args.out} ({s['parts']} parts on {len(s['workers'])} worker process(es))"
    )
    return 1 if s["failed"] else 0
