"""The drift report for people (Markdown, printed as a table) and the top-1 drift gate."""
from __future__ import annotations

MB = 1e6


def apply_gate(results: dict[str, dict], max_top1_drop: float | None) -> dict:
    """Mark each variant pass/fail on its top-1 accuracy loss (points) on the EVAL set."""
    if max_top1_drop is None:
        return {"max_top1_drop_points": None, "failed": []}
    failed = []
    for name, entry in results.items():
        change = entry.get("eval", {}).get("top1_change_points")
        if change is None:
            raise ValueError("MAX_TOP1_DROP needs a labelled EVAL folder to measure "
                             "accuracy on.")
        entry["gate"] = "pass" if -change <= max_top1_drop else "fail"
        if entry["gate"] == "fail":
            failed.append(name)
    return {"max_top1_drop_points": max_top1_drop, "failed": failed}


def _edgetpu_cell(entry: dict) -> str:
    tpu = entry.get("edgetpu")
    if tpu is None:
        return "n/a"
    if tpu["single_subgraph"]:
        return "all ops"
    first = tpu["first_unmapped"]
    return f"{tpu['ops_on_edgetpu']}/{tpu['ops']} ops (stops at {first['op']})"


def table(report: dict) -> str:
    """One row per variant: size, drift against float, accuracy, Edge TPU, cost."""
    with_eval = any("eval" in e for e in report["variants"].values())
    head = ["variant", "size MB", "vs float32", "top-1 agree", "top-5 overlap", "cosine",
            "SQNR dB", "max abs err"]
    if with_eval:
        head += ["top-1 acc", "top-1 change (pts)", "eval top-1 agree"]
    head += ["Edge TPU", "convert s", "peak MB"]
    if report["gate"]["max_top1_drop_points"] is not None:
        head.append("gate")
    base = report["variants"].get("float32", {}).get("bytes")
    rows = []
    for name, e in report["variants"].items():
        d = e["drift"]
        row = [name, f"{e['bytes'] / MB:.1f}",
               f"{base / e['bytes']:.2f}x smaller" if base else "-",
               f"{100 * d['top1_agreement']:.1f}%", f"{100 * d['top5_overlap']:.1f}%",
               f"{d['cosine_similarity']:.4f}", f"{d['sqnr_db']:.1f}",
               f"{d['max_abs_error']:.3g}"]
        if with_eval:
            ev = e.get("eval", {})
            row += [f"{100 * ev['quantized_top1']:.1f}%" if ev else "-",
                    f"{ev['top1_change_points']:+.2f}" if ev else "-",
                    f"{100 * ev['top1_agreement']:.1f}%" if ev else "-"]
        row += [_edgetpu_cell(e), f"{e['conversion']['seconds']:.1f}",
                f"{e['conversion']['peak_rss_mb']:.0f}"]
        if "gate" in e:
            row.append(e["gate"].upper())
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def markdown(report: dict) -> str:
    fm = report["float_model"]
    h, w = fm["input_size"]
    parts = ["# Quantization report", ""]
    for warning in report["warnings"]:
        parts += [f"> **{warning}**", "> Drift on an untrained network is noise: its outputs "
                  "are near-uniform, so top-1 agreement says little.", ""]
    parts += [
        f"Float model: InceptionV3 {h}x{w}, {fm['num_classes']} classes, depth multiplier "
        f"{fm['depth_multiplier']}, weights `{fm['weights']['source']}`.",
        f"Calibration: {report['calibration']['images']} images from "
        f"`{report['calibration']['folder']}` ({report['calibration']['skipped']} skipped). "
        f"Drift against the float Keras model on {report['held_out']['images']} held-out "
        "images never used for calibration"
        + (f", accuracy on {report['evaluation']['images']} labelled images from "
           f"`{report['evaluation']['folder']}`." if "evaluation" in report else "."),
        "",
    ]
    if report["held_out"]["images"] < 20:
        parts += [f"Only {report['held_out']['images']} held-out images: the agreement "
                  "figures are indicative; give CALIB= a folder of a few hundred photos.", ""]
    parts += [table(report), ""]
    islands = [name for name, e in report["variants"].items()
               if "float islands" in e.get("graph", "")]
    if islands:
        parts += [f"CPU graphs of {', '.join(islands)}: "
                  f"{report['variants'][islands[0]]['graph']} (XNNPACK has no int8 average "
                  "pool; see quantize/pool_islands.py). Drift above is measured on these "
                  "files; the Edge TPU check and compile use the all-integer graph "
                  "(`INT8_POOLS=int8` writes that one instead).", ""]
    gate = report["gate"]
    if gate["max_top1_drop_points"] is not None:
        verdict = ("all variants pass" if not gate["failed"] else
                   f"over budget: {', '.join(gate['failed'])}")
        parts += [f"Drift gate: at most {gate['max_top1_drop_points']} points of top-1 lost; "
                  f"{verdict}.", ""]
    per_layer = report.get("int8_layer_errors")
    if per_layer:
        parts += ["## int8: layers with the largest quantization error", "",
                  f"RMS error over the tensor's scale, on {per_layer['images']} held-out "
                  f"images (rounding alone gives {per_layer['rounding_noise_rmse_over_scale']:.2f}).",
                  "", "| tensor | op | rmse/scale | max abs error |", "|---|---|---|---|"]
        parts += [f"| `{r['tensor']}` | {r['op']} | {r['rmse_over_scale']:.3f} | "
                  f"{r['max_abs_error']:.4g} |" for r in per_layer["worst"]]
        parts.append("")
    tpu_notes = {e["edgetpu"]["compiler"].get("note") for e in report["variants"].values()
                 if "edgetpu" in e} - {None}
    if tpu_notes:
        parts += ["## Edge TPU", "", *sorted(tpu_notes), ""]
    for name, e in report["variants"].items():
        tpu = e.get("edgetpu")
        if tpu and tpu["problems"]:
            parts += [f"- `{name}`: first op the compiler cannot map: #{p['index']} {p['op']}"
                      f" ({'; '.join(p['why'])})" for p in tpu["problems"][:3]]
    parts += ["", "Sizes, conversion time and peak resident memory (RSS) are measured in "
              "this run; `manifest.json` holds the checksums and quantization parameters."]
    return "\n".join(parts) + "\n"
