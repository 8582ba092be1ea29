"""Deployment latency: every export format next to our PyTorch forward and rfdetr 1.11.2's, side by side in one run.

    python bench/bench_deploy.py --upstream-python /work/upstream-venv/bin/python
    python bench/bench_deploy.py --size nano --formats onnx tflite openvino --rounds 6
    python bench/bench_deploy.py --size nano --formats onnx-int8 openvino-int8 --upstream-python ... \
        --weights runs/x/checkpoint_best.pth --dataset DATASET        # INT8 rows and the accuracy block

For each preset (default nano at 384 and seg-nano at 312 px; random weights, batch 1, ``--threads`` threads) it exports
our model to every format of the registry whose packages are installed (float32, float16 weights where the format offers
them, and full-integer INT8 where it offers that: ``-int8``, calibrated on ``--calibration_images`` synthetic shapes
images at the preset's resolution, or on ``--calibration DIR``; openvino also ``-bf16``, a float32 file computed in
bf16, and ``-int8-f32`` / ``-int8-bf16``, INT8 with its float remainder pinned, where ``-int8`` takes the exporter's
``compute="auto"``: see :data:`VARIANTS`), and with ``--upstream-python`` exports rfdetr 1.11.2's
model to the formats it also has (onnx, openvino, litert = tflite, executorch with the xnnpack backend) in its own
interpreter. Then every model runs in its own long-lived worker process (:mod:`harness`), the workers taking turns
``--iters`` runs at a time in a rotating order for ``--rounds`` rounds. Printed per model: median ms, the spread
(min-max of the per-round medians), the ratio to our PyTorch forward, to upstream's and to upstream's OpenVINO IR at
the CPU plugin's default precision (rfdetr's fastest file on a CPU; bf16 on AMX / AVX512-BF16 CPUs), the file size and
the export time; then our fastest file's ratio to that IR. A first line names the CPU, its bf16 / AMX / VNNI flags and
OpenVINO's default precision there.

Our files run through our runner's ``Session`` (what ``rfdetr.deploy.load`` uses); upstream's files run in the same
runtimes with the plainest calls (:data:`_WORKER`'s ``raw`` path), input fixed to the export shape. The PyTorch
forwards are the full eval forward ``predict()`` runs; exported graphs are the single-group export forward.

Random weights say nothing about accuracy. With ``--weights W --dataset D`` an accuracy block follows: W's float32
PyTorch model and each of its exports to ``--formats`` (INT8 calibrated on ``--calibration`` if given, else on D's
train images) scored on D's ``--split`` (COCO bbox and segm mAP50:95 and mAP50), with each file's drop in points
against float32. ``--size`` with no preset skips the timing and prints only the accuracy block.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SERVE, Worker, measure  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = ("nano", "seg-nano")
UPSTREAM_FORMATS = {"onnx": "onnx", "openvino": "openvino", "tflite": "litert", "executorch": "executorch"}

_WORKER = SERVE + r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import logging; logging.disable(logging.WARNING)
import numpy as np, torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
res, threads = cfg["resolution"], cfg["threads"]
x = torch.randn(1, 3, res, res)
impl = cfg["impl"]
if impl == "upstream":
    import rfdetr
    net = getattr(rfdetr, cfg["upstream_name"])(pretrain_weights=None, resolution=res).model.model.eval()
    run = lambda: net(x)
elif impl == "torch":
    from rfdetr.detr import model_class
    net = model_class(cfg["size"])(pretrain_weights=False, resolution=res, device="cpu").model
    run = lambda: net(x)
elif impl == "ours":
    from rfdetr.deploy.export.formats import format_for_file, load_format
    session = load_format(format_for_file(cfg["path"])).Session(cfg["path"], threads)
    pixels = x.numpy()
    run = lambda: session.run(pixels)
else:  # "raw": a file of upstream's, run with each runtime's plainest calls
    path = cfg["path"]
    if path.endswith(".onnx"):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        run = lambda: sess.run(None, feed)
    elif path.endswith(".xml"):
        import openvino as ov
        core = ov.Core()
        model = core.read_model(path)
        if model.inputs[0].get_partial_shape().is_dynamic:
            model.reshape({model.inputs[0]: [1, 3, res, res]})
        config = {"INFERENCE_NUM_THREADS": threads}
        if cfg.get("precision"):  # else the CPU plugin's default: bf16 on CPUs with AMX / AVX512-BF16
            config["INFERENCE_PRECISION_HINT"] = cfg["precision"]
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        pixels = x.numpy()
        run = lambda: request.infer([pixels])
    elif path.endswith(".tflite"):
        from ai_edge_litert.interpreter import Interpreter
        interp = Interpreter(model_path=path, num_threads=threads)
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        data = np.random.default_rng(0).standard_normal(detail["shape"]).astype(detail["dtype"])
        def run():
            interp.set_tensor(detail["index"], data)
            interp.invoke()
    elif path.endswith(".pte"):
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime
        if portable_lib._threadpool_get_thread_count() != threads:  # before loading, as our Session does
            portable_lib._unsafe_reset_threadpool(threads)
        method = Runtime.get().load_program(path).load_method("forward")
        run = lambda: method.execute([x])
    else:
        raise SystemExit(f"no raw runner for {path}")
serve(run, cfg["warmup"])
"""

# Runs in upstream's interpreter: export its model (random weights) to each format asked for; one JSON line out.
_UPSTREAM_EXPORT = r"""
import json, sys, time, warnings, logging
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
import rfdetr
cfg = json.loads(sys.argv[1])
model = getattr(rfdetr, cfg["upstream_name"])(pretrain_weights=None, resolution=cfg["resolution"])
out = {}
for ours, theirs in cfg["formats"].items():
    # rfdetr needs a backend for ExecuTorch; XNNPACK is the portable CPU one, as ours.
    extra = {"openvino": {"openvino_precision": "float32"}, "executorch": {"backend": "xnnpack"}}.get(theirs, {})
    start = time.perf_counter()
    try:
        path = model.export(output_dir=f"{cfg['dir']}/{theirs}", format=theirs, verbose=False, **extra)
        out[ours] = {"path": str(path), "seconds": time.perf_counter() - start}
    except Exception as err:  # noqa: BLE001 - the bench reports any exporter failure and goes on
        out[ours] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}
print(json.dumps(out))
"""


@dataclass
class Exported:
    """One exported file to time (or why there is none)."""

    name: str
    path: Path | None
    seconds: float
    error: str = ""

    @property
    def megabytes(self) -> float:
        """Size of the model's files (an OpenVINO ``.xml`` with its ``.bin``; metadata JSON not counted)."""
        if self.path is None:
            return float("nan")
        files = [self.path] + ([self.path.with_suffix(".bin")] if self.path.suffix == ".xml" else [])
        return sum(f.stat().st_size for f in files if f.exists()) / 1e6


# Variant suffixes -> export keyword arguments. INT8 files take the exporter's default compute ("auto": their float
# remainder in bf16 on CPUs with native bf16 when the report's check agrees); "-int8-f32" / "-int8-bf16" pin the
# remainder's precision; "-bf16" is a float32 file computed in bf16 (openvino).
VARIANTS: dict[str, dict[str, object]] = {
    "-int8-f32": {"int8": True, "compute": "float32"}, "-int8-bf16": {"int8": True, "compute": "bfloat16"},
    "-int8": {"int8": True}, "-fp16": {"half": True},
    "-bf16": {"compute": "bfloat16"},
}


def split_variant(name: str) -> tuple[str, dict[str, object]]:
    """``"openvino-int8"`` -> ``("openvino", {"int8": True})``; ``"onnx"`` -> ``("onnx", {})``."""
    for suffix, kwargs in VARIANTS.items():
        if name.endswith(suffix):
            return name.removesuffix(suffix), dict(kwargs)
    return name, {}


def export_all(model: object, formats: list[str], folder: Path, calibration: Path | None,
               calibration_images: int) -> list[Exported]:
    """``model`` exported to each ``format``, ``format-fp16`` or ``format-int8`` (INT8: calibrated on
    ``calibration``)."""
    out = []
    for name in formats:
        fmt, variant = split_variant(name)
        extra = {"calibration": calibration, "calibration_images": calibration_images} if variant.get("int8") else {}
        start = time.perf_counter()
        try:
            path = model.export(folder / name, format=fmt, **variant, **extra)  # type: ignore[attr-defined]
            out.append(Exported(f"ours {name}", path, time.perf_counter() - start))
        except (ValueError, ImportError, RuntimeError) as err:
            out.append(Exported(f"ours {name}", None, 0.0, f"{type(err).__name__}: {err}"))
    return out


def export_ours(size: str, resolution: int, formats: list[str], folder: Path, calibration: Path | None,
                calibration_images: int) -> list[Exported]:
    """Our model (random weights, seed 0) exported to each format variant (see :func:`export_all`)."""
    import torch

    from rfdetr.detr import model_class

    torch.manual_seed(0)
    model = model_class(size)(pretrain_weights=False, resolution=resolution, device="cpu")
    return export_all(model, formats, folder, calibration, calibration_images)


def synthetic_calibration(folder: Path, resolution: int, count: int) -> Path:
    """A folder of ``count`` synthetic shapes images at ``resolution`` (the INT8 rows' calibration images)."""
    from rfdetr.data.synthetic import SyntheticSpec, write_synthetic_dataset

    spec = SyntheticSpec(splits=(("train", count), ("valid", 1)), width=resolution, height=resolution, seed=7)
    return write_synthetic_dataset(folder, spec) / "train"


def accuracy_block(weights: str, dataset: str, split: str, formats: list[str], folder: Path,
                   calibration: Path | None, calibration_images: int) -> str:
    """COCO mAP of ``weights``' float32 model and of its exports on ``dataset``'s ``split`` (see the module doc)."""
    from rfdetr.deploy import load
    from rfdetr.deploy.runtime.evaluate import evaluate_predictor
    from rfdetr.detr import load_model

    model = load_model(weights, device="cpu")
    rows = [("float32 torch", evaluate_predictor(model, dataset, split, progress=False), "")]
    for e in export_all(model, formats, folder, calibration or Path(dataset), calibration_images):
        rows.append((e.name, evaluate_predictor(load(e.path), dataset, split, progress=False) if e.path else None,
                     e.error))
    reference = rows[0][1]
    types = [t for t in ("bbox", "segm") if t in reference]
    head = "".join(f" {t + ' mAP':>9} {t + ' AP50':>9} {'drop':>6}" for t in types)
    lines = [f"accuracy of {weights} on {dataset} {split} ({reference['images']} images; drop: mAP50:95 points "
             "below float32):", f"  {'model':<24}{head}"]
    for name, result, error in rows:
        if result is None:
            lines.append(f"  {name:<24} not scored: {error}")
            continue
        cells = "".join(f" {result[t]['mAP']:9.3f} {result[t]['mAP50']:9.3f} "
                        f"{100 * (reference[t]['mAP'] - result[t]['mAP']):6.2f}" for t in types)
        lines.append(f"  {name:<24}{cells}")
    return "\n".join(lines)


def export_upstream(python: str, size: str, resolution: int, formats: list[str], folder: Path) -> list[Exported]:
    """rfdetr 1.11.2's model exported by rfdetr itself, in its interpreter (cwd ``/``, no PYTHONPATH)."""
    from rfdetr.config import get_preset

    wanted = {f: UPSTREAM_FORMATS[f] for f in formats if f in UPSTREAM_FORMATS}
    cfg = {"upstream_name": get_preset(size).upstream_name, "resolution": resolution, "formats": wanted,
           "dir": str(folder)}
    proc = subprocess.run([python, "-c", _UPSTREAM_EXPORT, json.dumps(cfg)], capture_output=True, text=True,
                          cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}, timeout=3600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        return [Exported(f"upstream {f}", None, 0.0, f"export process failed: {proc.stderr[-300:]}") for f in wanted]
    result = json.loads(lines[-1])
    return [Exported(f"upstream {UPSTREAM_FORMATS[f]}", Path(r["path"]) if "path" in r else None,
                     r.get("seconds", 0.0), r.get("error", "")) for f, r in result.items()]


def _ratio(worker: Worker, reference: Worker | None) -> str:
    """Median of the per-round ratios of ``worker``'s round medians to ``reference``'s, or ``-``."""
    if reference is None:
        return "-"
    return f"{statistics.median(a / b for a, b in zip(worker.rounds, reference.rounds, strict=True)):.2f}x"


def report(size: str, resolution: int, workers: list[Worker], files: dict[str, Exported], ours: Worker,
           upstream: Worker | None, failed: list[Exported], upstream_ir: Worker | None = None) -> str:
    """The timing table; ``upstream_ir`` is rfdetr's OpenVINO file at the plugin's default precision (the issue's
    reference: rfdetr's fastest file on a CPU), whose column ends with our fastest path's ratio."""
    lines = [f"{size} @ {resolution} (batch 1):",
             f"  {'model':<26} {'median':>9} {'spread':>15} {'vs ours torch':>13} {'vs upstream torch':>17} "
             f"{'vs upstream IR':>14} {'size MB':>8} {'export s':>8}"]
    for w in workers:
        med = statistics.median(w.times)
        spread = f"{min(w.rounds):.0f}-{max(w.rounds):.0f}"
        exported = files.get(w.name)
        size_mb = f"{exported.megabytes:.1f}" if exported else "-"
        export_s = f"{exported.seconds:.0f}" if exported else "-"
        lines.append(f"  {w.name:<26} {med:7.1f}ms {spread:>12} ms {_ratio(w, ours):>13} {_ratio(w, upstream):>17} "
                     f"{_ratio(w, upstream_ir):>14} {size_mb:>8} {export_s:>8}")
    for e in failed:
        lines.append(f"  {e.name:<26} not timed: {e.error}")
    lines.append("  (ratios: median of the per-round ratios; spread: min-max of the per-round medians)")
    if upstream_ir is not None:
        mine = [w for w in workers if w.name.startswith("ours ")]
        if mine:
            best = min(mine, key=lambda w: statistics.median(w.times))
            lines.append(f"  our fastest: {best.name}, {_ratio(best, upstream_ir)} of rfdetr's fastest file "
                         f"({upstream_ir.name}, the CPU plugin's default precision)")
    return "\n".join(lines)


def host_line() -> str:
    """The CPU, its kernel-choosing flags (bf16 / AMX / VNNI ...) and OpenVINO's default precision: what decides the
    fastest file. The CPU part is ``engine="auto"``'s own host key."""
    from rfdetr.deploy.runtime.auto import host_key

    host = host_key(None)
    return (f"host: {host['cpu']}, {host['cpus']} CPUs, flags {' '.join(host['flags']) or 'unknown'}; OpenVINO CPU "
            f"default precision {openvino_default_precision() or 'n/a (not installed)'}")


def openvino_default_precision() -> str | None:
    """The OpenVINO CPU plugin's default inference precision on this machine (None without openvino)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()


def available_formats() -> list[str]:
    """Every registered format whose packages are installed, with its float16 and INT8 variants where offered."""
    from rfdetr.deploy.export.exporter import int8_formats
    from rfdetr.deploy.export.formats import FORMATS

    int8 = int8_formats()
    out = []
    for name, fmt in FORMATS.items():
        if fmt.missing():
            continue
        out.append(name)
        if fmt.half is not None:
            out.append(f"{name}-fp16")
        if fmt.bf16 is not None:
            out.append(f"{name}-bf16")
        if name in int8:
            out.append(f"{name}-int8")
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", nargs="*", default=list(DEFAULT_SIZES),
                        help="presets to time (none: only the accuracy block)")
    parser.add_argument("--formats", nargs="*", default=None,
                        help="e.g. onnx tflite tflite-fp16 openvino executorch (default: every installed one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed runs per worker and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--upstream-python", "--upstream_python", dest="upstream_python", default=None,
                        help="python of a venv with rfdetr==1.11.2 (and the runtimes), timed in the same run")
    parser.add_argument("--keep", default=None, help="folder to keep the exported files in (default: a temp dir)")
    parser.add_argument("--calibration", default=None,
                        help="images for the INT8 rows' calibration (default: synthetic shapes at the resolution)")
    parser.add_argument("--calibration_images", "--calibration-images", type=int, default=32)
    parser.add_argument("--weights", default=None, help="a trained checkpoint: adds the accuracy block")
    parser.add_argument("--dataset", default=None, help="COCO dataset the accuracy block scores on")
    parser.add_argument("--split", default="valid")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.upstream_python and not Path(args.upstream_python).exists():
        print(f"--upstream-python {args.upstream_python} does not exist", file=sys.stderr)
        return 2
    if bool(args.weights) != bool(args.dataset):
        print("--weights and --dataset go together (the accuracy block scores the weights on the dataset)",
              file=sys.stderr)
        return 2
    import torch

    from rfdetr.config import get_preset

    formats = args.formats if args.formats is not None else available_formats()
    print(f"torch {torch.__version__}, {args.threads} threads, formats {formats}, {args.rounds} rounds x "
          f"{args.iters} runs per worker, one process per model")
    print(host_line())
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_deploy_"))
    given_calibration = Path(args.calibration) if args.calibration else None
    try:
        for size in args.size:
            res = get_preset(size).resolution
            base = {"size": size, "resolution": res, "threads": args.threads, "warmup": args.warmup,
                    "upstream_name": get_preset(size).upstream_name}
            calibration = given_calibration
            if calibration is None and any(f.endswith("-int8") for f in formats):
                calibration = synthetic_calibration(root / size / "calibration", res, args.calibration_images)
            exported = export_ours(size, res, formats, root / size / "ours", calibration, args.calibration_images)
            if args.upstream_python:
                plain = sorted({split_variant(f)[0] for f in formats})
                exported += export_upstream(args.upstream_python, size, res, plain, root / size / "upstream")
            ours = Worker("ours torch", sys.executable, {**base, "impl": "torch"}, str(REPO), _WORKER)
            workers = [ours]
            upstream = None
            if args.upstream_python:
                upstream = Worker("upstream torch", args.upstream_python, {**base, "impl": "upstream"}, None,
                                  _WORKER)
                workers.append(upstream)
            files = {e.name: e for e in exported if e.path is not None}
            default = openvino_default_precision()
            upstream_ir = None
            for e in files.values():
                impl = "ours" if e.name.startswith("ours") else "raw"
                workers.append(Worker(e.name, sys.executable, {**base, "impl": impl, "path": str(e.path)},
                                      str(REPO), _WORKER))
                if e.name == "upstream openvino":
                    upstream_ir = workers[-1]
                    # rfdetr's file runs at the plugin's default precision (bf16 on AMX / AVX512-BF16 CPUs); time it
                    # in f32 too. Our files carry their own precision (openvino-bf16, openvino-int8's compute).
                    if default not in (None, "f32"):
                        workers.append(Worker("upstream openvino (f32)", sys.executable,
                                              {**base, "impl": "raw", "path": str(e.path), "precision": "f32"},
                                              str(REPO), _WORKER))
            not_started = measure(workers, args.rounds, args.iters, tolerant=True)
            failed = [e for e in exported if e.path is None]
            failed += [Exported(name, None, 0.0, f"runtime failed: {err}") for name, err in not_started.items()]
            print(report(size, res, workers, files, ours, upstream, failed, upstream_ir), flush=True)
        if args.weights:
            print(accuracy_block(args.weights, args.dataset, args.split, formats, root / "accuracy",
                                 given_calibration, args.calibration_images), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
