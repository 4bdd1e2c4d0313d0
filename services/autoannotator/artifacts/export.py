"""``export_model``: a Hugging Face classifier folder -> the artifact a specialist serves.

Steps, in order: read the model's labels and settle the ``label_map`` (no guessing); export to
ONNX (optimum, else torch.onnx); check ONNX Runtime against torch on sample texts; optionally
fuse attention and LayerNorm with ONNX Runtime's transformer optimiser (the default for fp16) and
check again; optionally quantise to int8 or convert to fp16 and check again; copy the fast tokenizer and the weights;
compute the sha256; write ``manifest.json``. Everything is written into a staging folder that is
renamed to ``out_dir`` only when complete, so a failed export leaves no half artifact behind.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoannotator.artifacts import convert, parity
from autoannotator.artifacts.exceptions import ExportError, LabelMapError, ParityError
from autoannotator.artifacts.manifest import (
    ONNX_FILE,
    TOKENIZER_DIR,
    WEIGHTS_DIR,
    Manifest,
    derive_label_map,
    file_sha256,
    task_index,
)
from autoannotator.artifacts.metrics import EXPORTS, PARITY_MAX_ABS_DIFF
from autoannotator.wire import now_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportReport:
    """What an export produced and how close ONNX Runtime came to torch."""

    out_dir: Path
    sha256: str
    # |ORT - torch| of the shipped model as parity.COMPARES[precision] says (fp32/fp16: the largest logit
    # difference; int8: the mean probability difference); None: could not run here, see note.
    max_abs_diff: float | None
    precision: str
    exporter: str
    # The same for the fp32 graph before quantisation / conversion (the optimised one when optimised).
    fp32_max_abs_diff: float
    tolerance: float
    manifest: Manifest
    note: str = ""
    # Whether the transformer optimiser fused the graph (details in ``manifest.optimization``).
    optimized: bool = False

    def summary(self) -> str:
        """A few human-readable lines (what ``autoannotator export`` prints)."""
        shipped = "not checked" if self.max_abs_diff is None else f"{self.max_abs_diff:.3g}"
        mapped = [self.manifest.label_map[m] for m in self.manifest.model_labels]
        lines = [
            f"artifact   {self.out_dir}",
            f"exporter   {self.exporter}",
            f"precision  {self.precision}",
            f"optimised  {_describe_optimization(self.manifest.optimization)}",
            f"parity     fp32 logits max |onnx - torch| = {self.fp32_max_abs_diff:.3g}; "
            f"{self.precision} {parity.COMPARES[self.precision]} = {shipped} (tolerance {self.tolerance:g})",
            f"labels     {self.manifest.model_labels} -> {mapped}"
            " (model label -> task label)",
            f"sha256     {self.sha256}",
        ]
        if self.note:
            lines.append(f"note       {self.note}")
        return "\n".join(lines)


def model_labels_of(config: object) -> list[str]:
    """The model's own labels in logit order, from a transformers config's ``id2label``."""
    id2label = getattr(config, "id2label", None) or {}
    count = int(getattr(config, "num_labels", len(id2label)))
    try:
        return [str(id2label[i]) for i in range(count)]
    except KeyError as exc:
        raise ExportError(f"config.json id2label has no entry for class {exc.args[0]} (num_labels={count})") from None


def _describe_optimization(optimization: Mapping[str, object]) -> str:
    if not optimization:
        return "no"
    fused = optimization.get("fused") or {}
    ops = ", ".join(f"{op} x{n}" for op, n in fused.items()) if isinstance(fused, dict) else str(fused)
    return f"yes, {optimization.get('tool')} ({ops or 'nothing fused'})"


def _attention_shape(config: object) -> tuple[int, int]:
    """Heads and hidden size for the optimiser (0 = let it read them from the graph)."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or 0
    return int(heads), int(hidden)


def export_model(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    task_labels: Sequence[str],
    label_map: Mapping[str, str] | None = None,
    max_length: int = 128,
    int8: bool = False,
    fp16: bool = False,
    optimize: bool | None = None,
    sample_texts: Sequence[str] | None = None,
    tolerance: float | None = None,
    include_weights: bool = True,
    prefer: str = convert.OPTIMUM,
    opset: int = convert.DEFAULT_OPSET,
) -> ExportReport:
    """Export the classifier in ``model_dir`` to an artifact in ``out_dir`` (which must not hold files).

    ``label_map`` (model label -> task label) defaults to matching names case-insensitively;
    labels that do not match raise :class:`~autoannotator.artifacts.exceptions.LabelMapError`
    listing them. ``tolerance`` defaults to :data:`parity.TOLERANCES` of the precision; a larger
    difference raises :class:`ParityError`. fp16 parity is checked only where ONNX Runtime can
    run the fp16 graph (the report's ``note`` says when it could not).

    ``optimize`` (default: on for fp16, off otherwise) fuses attention, LayerNorm and GELU with
    ONNX Runtime's transformer optimiser before any precision change; the fused fp32 graph must
    match torch within the fp32 tolerance, and ``manifest.optimization`` records what was fused.
    A trainer exporting for CUDA calls ``export_model(..., fp16=True)`` and gets the same path.
    """
    optimize = fp16 if optimize is None else optimize
    try:
        report = _export(Path(model_dir), Path(out_dir), list(task_labels), label_map, max_length, int8, fp16,
                         optimize, sample_texts, tolerance, include_weights, prefer, opset)
    except ParityError:
        EXPORTS.labels("parity_failed").inc()
        raise
    except LabelMapError:
        EXPORTS.labels("label_map_error").inc()
        raise
    except BaseException:
        EXPORTS.labels("error").inc()
        raise
    EXPORTS.labels("ok").inc()
    if report.max_abs_diff is not None:
        PARITY_MAX_ABS_DIFF.labels(report.precision).set(report.max_abs_diff)
    return report


def _export(
    model_dir: Path,
    out_dir: Path,
    task_labels: list[str],
    label_map: Mapping[str, str] | None,
    max_length: int,
    int8: bool,
    fp16: bool,
    optimize: bool,
    sample_texts: Sequence[str] | None,
    tolerance: float | None,
    include_weights: bool,
    prefer: str,
    opset: int,
) -> ExportReport:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if int8 and fp16:
        raise ExportError("choose one of int8 and fp16, not both")
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"output {out_dir} already exists and is not an empty folder")
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    tol = parity.TOLERANCES[precision] if tolerance is None else tolerance

    config = AutoConfig.from_pretrained(model_dir)
    model_labels = model_labels_of(config)
    mapping = dict(label_map) if label_map is not None else derive_label_map(model_labels, task_labels)
    manifest = Manifest(
        created_ms=now_ms(),
        model_labels=model_labels,
        label_map=mapping,
        task_labels=task_labels,
        max_length=max_length,
        precision=precision,
        has_weights=include_weights,
    )
    task_index(manifest)  # raises LabelMapError before any expensive work

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{model_dir}: the tokenizer is not a fast (tokenizers) tokenizer; specialists need one")
    texts = list(sample_texts or parity.SAMPLE_TEXTS)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        fp32_path = staging / "model.fp32.onnx"
        exporter = convert.to_onnx(model_dir, fp32_path, opset=opset, prefer=prefer)
        log.info("exported %s to ONNX with %s", model_dir, exporter)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        reference = parity.torch_logits(model, tokenizer, texts, max_length)
        fp32_diff = parity.max_abs_diff(parity.ort_logits(fp32_path, tokenizer, texts, max_length), reference)
        fp32_tol = parity.TOLERANCES["fp32"] if tolerance is None or precision != "fp32" else tol
        if fp32_diff > fp32_tol:
            raise ParityError(f"fp32 ONNX logits differ from torch by {fp32_diff:.3g} > {fp32_tol:g}",
                              fp32_diff, fp32_tol)
        if optimize:
            fp32_diff = _optimize(fp32_path, config, manifest, tokenizer, texts, max_length, reference, fp32_tol)
        shipped_diff: float | None = fp32_diff
        note = ""
        final = staging / ONNX_FILE
        if precision == "fp32":
            fp32_path.rename(final)
        else:
            (convert.quantize_int8 if int8 else convert.convert_fp16)(fp32_path, final)
            fp32_path.unlink()
            shipped_diff, note = _check_variant(final, tokenizer, texts, max_length, reference, precision)
            if shipped_diff is not None and shipped_diff > tol:
                raise ParityError(f"{precision} ONNX {parity.COMPARES[precision]} differ from torch by "
                                  f"{shipped_diff:.3g} > {tol:g}",
                                  shipped_diff, tol)
        tokenizer.save_pretrained(staging / TOKENIZER_DIR)
        if include_weights:
            shutil.copytree(model_dir, staging / WEIGHTS_DIR, ignore=shutil.ignore_patterns("*.onnx", ".*"))
        manifest.sha256 = file_sha256(final)
        manifest.parity_max_abs_diff = shipped_diff
        manifest.source = f"export of {model_dir.name} with {exporter}"
        manifest.validate(str(staging))
        manifest.write(staging)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportReport(
        out_dir=out_dir,
        sha256=manifest.sha256,
        max_abs_diff=shipped_diff,
        precision=precision,
        exporter=exporter,
        fp32_max_abs_diff=fp32_diff,
        tolerance=tol,
        manifest=manifest,
        note=note,
        optimized=bool(manifest.optimization),
    )


def _optimize(fp32_path: Path, config: object, manifest: Manifest, tokenizer: object, texts: list[str],
              max_length: int, reference: object, tolerance: float) -> float:
    """Replace the fp32 graph at ``fp32_path`` by its fused form, check it against torch, record it."""
    fused_path = fp32_path.with_name("model.fused.onnx")
    heads, hidden = _attention_shape(config)
    optimization = convert.optimize_transformer(fp32_path, fused_path, num_heads=heads, hidden_size=hidden)
    diff = parity.max_abs_diff(parity.ort_logits(fused_path, tokenizer, texts, max_length), reference)
    if diff > tolerance:
        raise ParityError(f"optimised fp32 ONNX logits differ from torch by {diff:.3g} > {tolerance:g}",
                          diff, tolerance)
    fused_path.replace(fp32_path)
    optimization["parity_max_abs_diff"] = diff
    manifest.optimization = optimization
    log.info("optimised the graph: %s; fp32 parity %.3g", optimization["fused"], diff)
    return diff


def _check_variant(path: Path, tokenizer: object, texts: list[str], max_length: int, reference: object,
                   precision: str) -> tuple[float | None, str]:
    """Parity of an int8/fp16 graph; fp16 may be unrunnable on this machine's providers (then: None and why)."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if precision == "fp16" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        logits = parity.ort_logits(path, tokenizer, texts, max_length, providers)
    except Exception as exc:  # only fp16 is allowed to be unrunnable here, re-raised otherwise
        if precision != "fp16":
            raise
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.warning("fp16 parity not checked: ONNX Runtime cannot run the fp16 model here (%s)", reason)
        return None, f"fp16 parity not checked: ONNX Runtime cannot run it on {providers} ({reason})"
    if precision == "int8":
        return parity.mean_abs_diff(parity.softmax(logits), parity.softmax(reference)), ""
    return parity.max_abs_diff(logits, reference), ""
