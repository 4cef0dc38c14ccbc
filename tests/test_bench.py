"""``cxrseg bench``: the smoke mode runs and prints every ratio line."""

from __future__ import annotations

import json
import re

import pytest
from _tiny_model import make_tiny_checkpoint


def _bench(*argv):
    from cxrseg.cli import main

    return main(["bench", *map(str, argv)])


def test_smoke_prints_all_ratios(tmp_path, capsys):
    rc = _bench("--smoke", "--json", tmp_path / "bench.json")
    assert rc == 0
    text = capsys.readouterr().out
    # [1] five per-region models vs one pass, with speed-ups
    assert "5 per-region U-Nets, fp32, eager, batch 1, contiguous" in text
    assert re.search(r"speed-up of the engine at batch 1 .*: x\d+\.\d\d", text)
    # [2] counted FLOPs and model vs matmul throughput
    assert re.search(r"FlopCounterMode counts \d+\.\d\d GFLOPs per 64x64 image", text)
    assert re.search(r"fp32 batch 1 : model +\d+\.\d GFLOP/s .* matmul/model x\d+\.\d\d", text)
    assert re.search(r"bf16 batch 8 : model", text)
    # [3] decode and [4] folder throughput
    assert re.search(
        r"read_jsrt_img \+ image_to_input +\d+\.\d ms +x\d+\.\d the bare fromfile", text
    )
    assert re.search(r"with workers vs fully serial: x\d+\.\d\d", text)
    res = json.loads((tmp_path / "bench.json").read_text())
    assert set(res) >= {"env", "models", "flops", "decode", "folder"}
    assert res["folder"]["serial"]["streams"] == res["folder"]["workers0"]["streams"] == 1
    assert res["models"]["per_region"]["speedup_vs_baseline"] == pytest.approx(1.0)
    assert all(v["ms_per_case"] > 0 for v in res["models"].values())
    assert res["flops"]["counter_unit"] == "FLOPs"
    assert res["flops"]["flops_per_image"] > 0


def test_flop_counter_convention():
    import torch

    from cxrseg.bench import count_flops, flop_convention

    assert flop_convention() == "FLOPs"
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    n = count_flops(lambda: conv(torch.zeros(2, 4, 10, 10)))
    assert n == 2 * (2 * 10 * 10) * 6 * 4 * 9


def test_accuracy_section_on_phantoms(tmp_path, capsys):
    from cxrseg.phantom import write_phantom_case

    root = tmp_path / "data"
    for i in (1, 2):
        write_phantom_case(root, f"PH{i}", i, image_format="png", size=64)
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.safetensors")
    rc = _bench(
        "--smoke",
        "--only",
        "accuracy",
        "--accuracy-data",
        root,
        "--model",
        ckpt,
        "--json",
        tmp_path / "acc.json",
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "[7] bf16 vs fp32 on 2 real cases" in text
    assert re.search(r"largest \|mean Jaccard change\| \d\.\d{5} < 0\.002: (yes|NO)", text)
    acc = json.loads((tmp_path / "acc.json").read_text())["accuracy"]
    assert set(acc["regions"]) == {
        "heart",
        "left_clavicle",
        "right_clavicle",
        "left_lung",
        "right_lung",
    }
    assert all(0.0 <= v["agreement_mean"] <= 1.0 for v in acc["regions"].values())


def _calibrate_int8(ckpt):
    """Write the int8 calibration of ``ckpt`` (and of its refinement network) from phantoms."""
    from cxrseg.phantom import make_phantom
    from cxrseg.predict import Predictor
    from cxrseg.quantize import calibrate, write_calibration

    p = Predictor(ckpt, device="cpu", precision="fp32")
    q = calibrate(p, [make_phantom(i, size=128).image for i in range(2)])
    ids = {p.path: p.model_id}
    if p.refiner is not None:
        ids[p.refiner.path] = p.refiner.model_id
    write_calibration(q, ids, {})


def test_accuracy_section_compares_int8_when_calibrated(tmp_path, capsys):
    from cxrseg.phantom import write_phantom_case

    root = tmp_path / "data"
    for i in (1, 2):
        write_phantom_case(root, f"PH{i}", i, image_format="png", size=64)
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.safetensors")
    _calibrate_int8(ckpt)
    rc = _bench("--smoke", "--only", "accuracy", "--accuracy-data", root, "--model", ckpt,
                "--json", tmp_path / "acc.json")
    assert rc == 0
    text = capsys.readouterr().out
    assert "[7] bf16 vs fp32 on 2 real cases" in text and "[7] int8 vs fp32 on 2 real cases" in text
    res = json.loads((tmp_path / "acc.json").read_text())
    assert res["accuracy"]["precision"] == "bf16" and res["accuracy_int8"]["precision"] == "int8"
    assert all(0.0 <= v["agreement_mean"] <= 1.0 for v in res["accuracy_int8"]["regions"].values())


def test_bad_options_are_usage_errors(capsys):
    assert _bench("--smoke", "--only", "nonsense") == 2
    assert "unknown sections" in capsys.readouterr().err


@pytest.mark.slow
def test_process_sections_print_their_ratios(tmp_path, capsys):
    """Cold start and whole-process throughput (child processes; tiny model and images);
    a model with a refinement network is timed with it (its passes counted in the model
    time) and without it."""
    from _tiny_model import make_tiny_refiner

    from cxrseg.refine import refiner_path

    ckpt = make_tiny_checkpoint(tmp_path / "tiny.safetensors")
    make_tiny_refiner(refiner_path(ckpt))
    rc = _bench("--smoke", "--only", "coldstart,throughput", "--model", ckpt, "--images", "2",
                "--json", tmp_path / "b.json")
    assert rc == 0
    text = capsys.readouterr().out
    assert "--precision auto chose" in text
    assert re.search(r"process start -> first mask written +\d+\.\d\d s +x\d+\.\d\d the reference", text)
    assert re.search(r"baseline script: 5 per-region .* +\d+\.\d\d s", text)
    assert re.search(r"x\d+\.\d\d the baseline; whole process x\d+\.\d\d its model time", text)
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["coldstart"]["reference_s"] > 0 and res["coldstart"]["ratio"] > 0
    run = res["throughput"]["runs"]["given"]
    assert run["whole_s"] > 0 and run["speedup_vs_baseline"] > 0 and run["refine"] is True
    assert res["throughput"]["runs"]["given-no-refine"]["refine"] is False
    assert re.search(r"cxrseg predict given \(64 px \+ refinement, ", text)
    assert re.search(r"cxrseg predict given-no-refine \(64 px, ", text)
    assert "given-int8" not in res["throughput"]["runs"]  # not calibrated
    # calibrated for int8: the same networks quantised get their own row
    _calibrate_int8(ckpt)
    # three images in batches of two: on 2 or more torch threads, the default run uses two
    # streams, and a row runs it with one
    assert _bench("--smoke", "--only", "throughput", "--model", ckpt, "--images", "3", "--batch-size", "2",
                  "--json", tmp_path / "c.json") == 0
    text = capsys.readouterr().out
    assert re.search(r"cxrseg predict given-int8 \(64 px \+ refinement, int8", text)
    runs = json.loads((tmp_path / "c.json").read_text())["throughput"]["runs"]
    run = runs["given-int8"]
    assert run["precision"] == "int8" and run["refine"] is True and run["whole_s"] > 0
    import torch

    if torch.get_num_threads() >= 2:
        assert runs["given"]["streams"] == 2 and set(runs["given"]["model_s_by_streams"]) == {"1", "2"}
        assert runs["given"]["model_s"] == min(runs["given"]["model_s_by_streams"].values())
        assert runs["given-one-stream"]["streams"] == 1
        assert runs["given-one-stream"]["model_s"] == runs["given"]["model_s"]
        assert re.search(r"cxrseg predict given-one-stream \(64 px \+ refinement, .*, 1 stream\)", text)
    else:
        assert "given-one-stream" not in runs


def test_refine_section_prints_its_cost_ratios(tmp_path, capsys):
    """The clavicle refinement's cost, in this process and as whole processes; skipped (and
    said) for a model without a refinement network."""
    from _tiny_model import make_tiny_refiner

    from cxrseg.refine import refiner_path

    ckpt = make_tiny_checkpoint(tmp_path / "tiny.safetensors")
    assert _bench("--smoke", "--only", "refine", "--model", ckpt, "--images", "2") == 0
    assert "[9] refinement: skipped" in capsys.readouterr().out
    make_tiny_refiner(refiner_path(ckpt))
    rc = _bench("--smoke", "--only", "refine", "--model", ckpt, "--images", "2", "--json", tmp_path / "b.json")
    assert rc == 0
    text = capsys.readouterr().out
    assert re.search(r"predict_batch, with the refinement +\d+\.\d\d s .* x\d+\.\d\d the cost", text)
    assert re.search(r"cxrseg predict \(refinement on\) +\d+\.\d\d s .* x\d+\.\d\d the cost", text)
    res = json.loads((tmp_path / "b.json").read_text())["refine"]
    assert res["api_ratio"] > 0 and res["whole_ratio"] > 0 and res["refine_id"]


@pytest.mark.slow
def test_allocator_section_compares_fresh_processes(tmp_path, capsys):
    """The heap section runs the engine with glibc's defaults and tuned, side by side."""
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.safetensors")
    rc = _bench("--smoke", "--only", "allocator", "--model", ckpt, "--json", tmp_path / "b.json")
    assert rc == 0
    text = capsys.readouterr().out
    assert re.search(r"batch 1: defaults +\d+\.\d ms/image .* tuned +\d+\.\d ms/image .* x\d+\.\d\d", text)
    res = json.loads((tmp_path / "b.json").read_text())["allocator"]
    b1 = res["batches"]["1"] if "1" in res["batches"] else res["batches"][1]
    assert b1["ms_off"] > 0 and b1["ms_on"] > 0
    assert [r["tuned"] for r in b1["runs"]["off"]] == [False]


def test_gui_timings_are_read_from_the_launchers_lines():
    from cxrseg.bench import _gui_timings

    text = ("napari says hello\ncxrseg-gui: timings: window shown at 1700000000.250\n"
            "cxrseg-gui: timings: first prediction shown at 1700000003.750\n"
            "cxrseg-gui: timings: broken at soon\n")
    assert _gui_timings(text) == {"window shown": 1700000000.25, "first prediction shown": 1700000003.75}


@pytest.mark.parametrize("env, why", [
    ({"DISPLAY": None, "WAYLAND_DISPLAY": None}, "no display (run the bench under xvfb-run)"),
    ({"DISPLAY": ":99", "QT_QPA_PLATFORM": "offscreen"}, "QT_QPA_PLATFORM=offscreen has no OpenGL"),
])
def test_gui_section_says_why_it_is_not_measured(tmp_path, capsys, monkeypatch, env, why):
    for k, v in env.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.safetensors")
    assert _bench("--smoke", "--only", "gui", "--model", ckpt, "--json", tmp_path / "b.json") == 0
    text = capsys.readouterr().out
    assert f"[5b] GUI cold start: not measured: {why}" in text
    assert json.loads((tmp_path / "b.json").read_text())["gui"]["skipped"].startswith(why)


@pytest.mark.slow
def test_gui_section_times_fresh_workspaces_against_the_reference(tmp_path, capsys):
    import os

    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (scripts/test.sh runs the tests under xvfb-run)")
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.safetensors")
    assert _bench("--smoke", "--only", "gui", "--model", ckpt, "--json", tmp_path / "b.json") == 0
    text = capsys.readouterr().out
    assert re.search(r"\(reference\) +\d+\.\d\d s", text)
    assert re.search(r"cxrseg-gui \(the model in its prediction process\) +window -> first prediction +"
                     r"\d+\.\d\d s +x\d+\.\d\d the reference", text)
    assert "cxrseg-gui --in-process (the first prediction loads it)" in text
    assert "CXRSEG_WARM_MODEL=1" in text
    sec = json.loads((tmp_path / "b.json").read_text())["gui"]
    assert sec["rounds"] == 1 and sec["reference_s"] > 0
    for tag in ("process", "cold", "warm"):
        (run,) = sec["runs"][tag]
        assert run["window_s"] > 0 and run["first_prediction_s"] > 0
        assert sec[tag]["ratio"] == pytest.approx(run["first_prediction_s"] / sec["reference_s"])
    assert sec["ratio"] == sec["process"]["ratio"]
