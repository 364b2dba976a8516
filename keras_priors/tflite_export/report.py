"""`ExportReport`: what an export produced, saved as JSON beside the .tflite plus a readable
Markdown summary."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .. import io


@dataclass
class ExportReport:
    """Everything an export measured.

    `ops`: TFLite op name -> count (execution graph, no delegate); `tensor_dtypes`: dtype ->
    count over the tensors ops read or write; `float_tensors`: their names when float;
    `edgetpu`: per-op status, tensor-rule violations, predicted partition, compiler log
    (see keras_priors.tflite_export.edgetpu.check); `lowering`: passes applied and layers
    left as they were; `agreement`: Keras vs LiteRT outputs; `latency_ms`: median invoke
    time with XNNPACK per thread count.
    """

    source: str
    output: str
    quantization: str
    target: str
    io_dtype: str | None
    input_shape: list
    tflite_input_shape: list
    input_layout: str = "native"
    file_size_bytes: int = 0
    ops: dict = field(default_factory=dict)
    tensor_dtypes: dict = field(default_factory=dict)
    float_tensors: list = field(default_factory=list)
    io: dict = field(default_factory=dict)
    lowering: dict = field(default_factory=dict)
    edgetpu: dict = field(default_factory=dict)
    agreement: dict | None = None
    latency_ms: dict | None = None
    calibration: dict | None = None
    converter: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self, indent=1):
        return json.dumps(self.to_dict(), indent=indent, default=io.jsonable)

    def save(self, path):
        """Write the JSON report atomically."""
        return io.write_bytes(path, self.to_json().encode())

    def save_markdown(self, path):
        return io.write_bytes(path, self.to_markdown().encode())

    def to_markdown(self):
        lines = [f"# Export of {self.source}", "",
                 f"- output: `{self.output}` ({self.file_size_bytes / 1024:.1f} KiB)",
                 f"- quantization: {self.quantization}, target: {self.target}"
                 + (f", I/O {self.io_dtype}" if self.quantization == "int8" else ""),
                 f"- input shape (Keras): {self.input_shape}; .tflite input: "
                 f"{self.tflite_input_shape} ({self.input_layout})"]
        low = self.lowering or {}
        applied = low.get("applied") or []
        lines.append(f"- layers rewritten by lowering passes: {len(applied)}"
                     + (" (" + ", ".join(sorted({str(a.get('pass', a.get('layer', '?')))
                                                  for a in applied})) + ")" if applied else ""))
        for u in low.get("unsupported") or []:
            lines.append(f"  - not lowered: {u.get('layer')} ({u.get('class')}): {u.get('reason')}")
        lines += ["", "## Ops", "", "| op | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(self.ops.items(), key=lambda kv: -kv[1])]
        lines += ["", "## Tensor dtypes", "", "| dtype | tensors |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(self.tensor_dtypes.items())]
        if self.float_tensors:
            shown = ", ".join(self.float_tensors[:20])
            more = f" ... ({len(self.float_tensors)} in all)" if len(self.float_tensors) > 20 else ""
            lines += ["", f"Float tensors: {shown}{more}"]
        e = self.edgetpu or {}
        if e:
            lines += ["", "## Edge TPU", "", f"- {e['partition']['summary']}",
                      f"- {e['compiler']['message']}"]
            if "parameter_cache" in e:
                lines.append(f"- {e['parameter_cache']['note']}")
            counts = Counter((o["op"], o["maps"], o["device"]) for o in e["ops"])
            lines += ["", "| op | count | maps to the Edge TPU | would run on | why not |",
                      "|---|---|---|---|---|"]
            reasons = {}
            for o in e["ops"]:
                if o["reasons"]:
                    reasons.setdefault(o["op"], o["reasons"][0])
            for (op, maps, device), n in sorted(counts.items()):
                lines.append(f"| {op} | {n} | {'yes' if maps else 'no'} | {device} | "
                             f"{'' if maps else reasons.get(op, '')} |")
            if e["compiler"].get("log"):
                lines += ["", "Compiler log:", "", "```", e["compiler"]["log"].strip(), "```"]
            lines += ["", f"Rules from {e['source']}"]
        if self.agreement:
            a = self.agreement
            lines += ["", "## Agreement with the Keras model", "",
                      f"- {a['examples']} examples, {a['task']}: max abs error "
                      f"{a['max_abs_error']:.3g}, relative {a['relative_error']:.3g}"]
            if "top1_agreement" in a:
                lines.append(f"- top-1 agreement {a['top1_agreement']:.4f} (argmax); "
                             f"{a['top1_agreement_ties']:.4f} counting ties at the top "
                             f"({a['tied_top1']} examples with a tied top value)")
            if "dice" in a:
                lines.append(f"- Dice ({a['label_map']}) {a['dice']:.4f}")
            lines.append(f"- {'passed' if a['passed'] else 'FAILED'}: {a['criterion']}")
        if self.latency_ms:
            lat = self.latency_ms
            threads = [k for k in lat if k.isdigit()]
            lines += ["", "## Latency (LiteRT interpreter, XNNPACK)", "",
                      "| threads | median ms |", "|---|---|"]
            lines += [f"| {t} | {lat[t]:.3f} |" for t in threads]
            lines.append(f"\n{lat['warmup']} warm-up runs, median of {lat['repeats']}.")
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def load(path):
    """An ExportReport from its JSON file."""
    data = json.loads(Path(path).read_text())
    return ExportReport(**data)
