#!/usr/bin/env python3
"""Checks unetlab export bundles with the reference ONNX tools.

For every bundle directory given: `onnx.checker.check_model` (full check, with the bundle's
external data if any), then ONNX Runtime (CPU) on the bundle's test vector
(`example_io.safetensors`, batch 2) and on its first item alone (the batch is dynamic), each
compared with the output unetlab's candle model stored there. Bundles with dynamic shapes also
carry `dynamic.*`, a second vector at batch 3 with another latent height, width and token count:
it runs whole and as its first item (batch 1). `--reference BUNDLE=IO` also runs
the bundle on a reference fixture's test vector (`sample`, `timestep`, `encoder_hidden_states`, ...,
`output`) and compares with the reference `output`. With `--bench N` it also times N ONNX Runtime
runs at batch 1 and reports the median.

Exit status 1 if any bundle fails a check or exceeds the tolerance (max |difference|: 1e-4 for
f32 bundles, --f16-tolerance for f16 ones). int8 bundles are judged by quality, not identity: an
input within rounding noise of a quantization step boundary rounds to one step in candle and to
the next in ONNX Runtime, and over hundreds of quantized layers the two int8 computations drift
apart by about as much as either differs from f32. So ONNX Runtime's RMS error against the f32
model's output (`output_f32` in the test vector) must be at most --int8-ratio times candle's int8
RMS error against it. ONNX Runtime also runs every int8 bundle with its QDQ fusion off
(`session.disable_quant_qdq`: DequantizeLinear, then the float op), which computes the exported
quantization exactly as candle does and is always judged so. Its fused int8 kernels are judged
only on CPUs with VNNI: without it, x86 ONNX Runtime multiplies u8 activations by s8 weights with
16-bit intermediate sums that saturate (its quantization guide says so), and its error is then
reported, not judged.

Run by `cargo xtask onnx-check`, which creates the virtual environment and the bundles.
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path):
    """Tensors of a safetensors file as NumPy arrays (the format is a JSON header and raw bytes)."""
    data = pathlib.Path(path).read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    body = data[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        tensors[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"])
    return tensors


def max_abs_diff(a, b):
    return float(np.max(np.abs(a.astype(np.float32) - b.astype(np.float32))))


def rms(a):
    return float(np.sqrt(np.mean(np.square(a.astype(np.float64)))))


def int8_errors(output, io, prefix):
    """(ONNX Runtime's, candle's) int8 RMS error against the f32 output, relative to its RMS."""
    f32 = io[prefix + "output_f32"]
    return rms(output - f32) / rms(f32), rms(io[prefix + "output"] - f32) / rms(f32)


def has_vnni():
    """Whether this CPU has the VNNI dot-product instructions ONNX Runtime's int8 kernels need to
    multiply u8 by s8 without saturating (Linux's /proc/cpuinfo flags)."""
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def unfused_int8_errors(model_path, threads, io, names, dynamic):
    """(ONNX Runtime's, candle's) int8 RMS errors with ONNX Runtime's QDQ fusion off, per vector."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    errors = []
    for prefix in ["", "dynamic."] if dynamic else [""]:
        (output,) = session.run(["output"], {n: io[prefix + n] for n in names})
        errors.append(int8_errors(output, io, prefix))
    return errors


def check_bundle(bundle, f16_tolerance, int8_ratio, bench_runs, threads, reference):
    manifest = json.loads((bundle / "manifest.json").read_text())
    model_path = bundle / "model.onnx"
    onnx.checker.check_model(str(model_path), full_check=True)

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    io = read_safetensors(bundle / "example_io.safetensors")
    names = [i.name for i in session.get_inputs()]
    expected_names = [i["name"] for i in manifest["inputs"]]
    if names != expected_names:
        raise AssertionError(f"graph inputs {names}, the manifest lists {expected_names}")
    feed = {n: io[n] for n in names}
    (output,) = session.run(["output"], feed)
    diff = max_abs_diff(output, io["output"])
    (single,) = session.run(["output"], {n: v[:1] for n, v in feed.items()})
    diff_single = max_abs_diff(single, io["output"][:1])
    int8 = manifest["dtype"] == "int8"
    int8_rms = [int8_errors(output, io, "")] if int8 else []
    shapes = [list(feed["sample"].shape)]
    if manifest.get("dynamic_shapes"):
        resized = {n: io["dynamic." + n] for n in names}
        (output,) = session.run(["output"], resized)
        (single,) = session.run(["output"], {n: v[:1] for n, v in resized.items()})
        diff = max(diff, max_abs_diff(output, io["dynamic.output"]))
        diff_single = max(diff_single, max_abs_diff(single, io["dynamic.output"][:1]))
        shapes.append(list(resized["sample"].shape))
        if int8:
            int8_rms.append(int8_errors(output, io, "dynamic."))
    output_max_abs = float(np.max(np.abs(io["output"].astype(np.float32))))
    tolerance = {"f32": 1e-4, "f16": f16_tolerance}.get(manifest["dtype"])
    if manifest.get("text_encoder"):
        # Bundles of trained runs: the text encoder graph (always f32) against its test vector.
        text_path = bundle / "text_encoder.onnx"
        onnx.checker.check_model(str(text_path), full_check=True)
        text = ort.InferenceSession(str(text_path), options, providers=["CPUExecutionProvider"])
        hidden, pooled = text.run(["hidden_states", "pooled"], {"tokens_one_hot": io["text.tokens_one_hot"]})
        diff = max(diff, max_abs_diff(hidden, io["text.hidden_states"]), max_abs_diff(pooled, io["text.pooled"]))
    reference_diff = None
    if reference is not None:
        ref = read_safetensors(reference)
        missing = [n for n in names if n not in ref]
        if missing:
            raise AssertionError(f"{reference} lacks the graph inputs {missing}")
        (ref_output,) = session.run(["output"], {n: ref[n] for n in names})
        reference_diff = max_abs_diff(ref_output, ref["output"])
    worst = max(diff, diff_single, reference_diff or 0.0)
    within_ratio = lambda errors: all(o <= int8_ratio * c for o, c in errors)
    unfused = (
        unfused_int8_errors(model_path, threads, io, names, manifest.get("dynamic_shapes"))
        if int8
        else []
    )
    kernels_judged = has_vnni()
    if int8:
        ok = within_ratio(unfused) and (within_ratio(int8_rms) or not kernels_judged)
    else:
        ok = worst <= tolerance
    result = {
        "bundle": str(bundle),
        "name": manifest["name"],
        "dtype": manifest["dtype"],
        "opset": manifest["opset"],
        "external_data": "model.onnx.data" in manifest["files"],
        "dynamic_shapes": bool(manifest.get("dynamic_shapes")),
        "checked_sample_shapes": shapes,
        "text_encoder": bool(manifest.get("text_encoder")),
        "max_abs_diff": max(diff, diff_single),
        "reference": str(reference) if reference is not None else None,
        "reference_max_abs_diff": reference_diff,
        "output_max_abs": output_max_abs,
        "int8": manifest.get("int8"),
        "tolerance": tolerance,
        "ok": ok,
        "int8_rms_error_vs_f32": [{"onnxruntime": o, "candle": c} for o, c in int8_rms],
        "int8_unfused_rms_error_vs_f32": [{"onnxruntime": o, "candle": c} for o, c in unfused],
        "int8_kernels_judged": kernels_judged if int8 else None,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }
    if bench_runs:
        one = {n: v[:1] for n, v in feed.items()}
        session.run(["output"], one)  # warm-up
        times = []
        for _ in range(bench_runs):
            start = time.perf_counter()
            session.run(["output"], one)
            times.append(time.perf_counter() - start)
        result["ort_batch1_times_s"] = times
        result["ort_batch1_median_s"] = statistics.median(times)
        result["ort_threads"] = threads or "default"
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", type=pathlib.Path)
    parser.add_argument("--f16-tolerance", type=float, default=1e-2)
    parser.add_argument("--int8-ratio", type=float, default=1.25,
                        help="for int8 bundles: ONNX Runtime's RMS error against f32 at most this times candle's")
    parser.add_argument("--bench", type=int, default=0, metavar="N", help="time N ONNX Runtime runs at batch 1")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    parser.add_argument("--reference", action="append", default=[], metavar="BUNDLE=IO",
                        help="also compare BUNDLE with the reference output in the safetensors file IO")
    args = parser.parse_args()
    references = {}
    for pair in args.reference:
        bundle, sep, io = pair.partition("=")
        if not sep:
            parser.error(f"--reference {pair}: expected BUNDLE=IO")
        references[pathlib.Path(bundle).resolve()] = pathlib.Path(io)
    unknown = set(references) - {b.resolve() for b in args.bundles}
    if unknown:
        parser.error(f"--reference names bundles not being checked: {sorted(map(str, unknown))}")

    results, failed = [], 0
    for bundle in args.bundles:
        try:
            r = check_bundle(bundle, args.f16_tolerance, args.int8_ratio, args.bench, args.threads,
                             references.get(bundle.resolve()))
        except Exception as e:  # report every bundle, then fail
            r = {"bundle": str(bundle), "ok": False, "error": f"{type(e).__name__}: {e}"}
        results.append(r)
        failed += not r["ok"]
        if "error" in r:
            print(f"FAIL {bundle}: {r['error']}")
        else:
            status = "ok  " if r["ok"] else "FAIL"
            line = (f"{status} {r['name']:<14} {r['dtype']} opset {r['opset']}"
                    f"{' external-data' if r['external_data'] else ''}"
                    f"{' +text-encoder' if r['text_encoder'] else ''}"
                    f"{' dynamic' if r['dynamic_shapes'] else ' static'}: onnx.checker passed; "
                    f"ONNX Runtime vs unetlab at samples {r['checked_sample_shapes']} (and batch 1 of each) "
                    f"max |diff| {r['max_abs_diff']:.2e} (|output| up to {r['output_max_abs']:.2f}")
            if r["int8"]:
                errors = ", ".join(f"ONNX Runtime {e['onnxruntime']:.2%}, candle {e['candle']:.2%}"
                                   for e in r["int8_rms_error_vs_f32"])
                unfused = ", ".join(f"{e['onnxruntime']:.2%}" for e in r["int8_unfused_rms_error_vs_f32"])
                judged = ("" if r["int8_kernels_judged"]
                          else "; its fused kernels not judged: this CPU lacks VNNI and they saturate")
                line += (f"); int8: RMS error against f32 {errors}; ONNX Runtime with QDQ fusion off "
                         f"{unfused} (ONNX Runtime at most {args.int8_ratio}x candle's{judged})")
            else:
                line += f", tolerance {r['tolerance']:.0e})"
            if r["reference_max_abs_diff"] is not None:
                line += f"; vs the reference output {r['reference_max_abs_diff']:.2e}"
            if "ort_batch1_median_s" in r:
                line += f"; ORT batch-1 median {r['ort_batch1_median_s']:.3f} s"
            print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"onnx-check: {len(results) - failed} of {len(results)} bundles passed "
          f"(onnx {onnx.__version__}, onnxruntime {ort.__version__})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
