"""The drift report for people (Markdown, printed as a table) and the top-1 drift gate."""
from __future__ import annotations

from runtime.errors import InputError

MB = 1e6


def apply_gate(results: dict[str, dict], max_top1_drop: float | None,
               min_agreement: float | None = None) -> dict:
    """Mark each variant pass/fail: top-1 lost on EVAL (points) at most `max_top1_drop`;
    top-1 agreement with float (percent; on EVAL, else on the held-out images) at least
    `min_agreement`."""
    gate = {"max_top1_drop_points": max_top1_drop, "min_agreement_percent": min_agreement,
            "failed": [], "reasons": {}}
    if max_top1_drop is None and min_agreement is None:
        return gate
    for name, entry in results.items():
        reasons = []
        if max_top1_drop is not None:
            change = entry.get("eval", {}).get("top1_change_points")
            if change is None:
                raise InputError("MAX_TOP1_DROP needs a labelled EVAL folder to measure "
                                 "accuracy on.")
            if -change > max_top1_drop:
                reasons.append(f"top-1 {change:+.2f} points")
        if min_agreement is not None:
            agreement = entry.get("eval", entry["drift"])["top1_agreement"]
            if agreement < min_agreement / 100:  # shares compared: 199 of 200 is 99.5 %
                reasons.append(f"agreement {100 * agreement:.2f} %")
        entry["gate"] = "fail" if reasons else "pass"
        if reasons:
            gate["failed"].append(name)
            gate["reasons"][name] = reasons
    return gate


def gate_failures(gate: dict) -> str:
    """`int8 (top-1 -1.20 points), int8-stock (agreement 98.10 %)`."""
    return ", ".join(f"{name} ({', '.join(gate['reasons'][name])})"
                     for name in gate["failed"])


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
    head += ["XNNPACK pieces", "Edge TPU", "convert s", "peak MB"]
    if any("gate" in e for e in report["variants"].values()):
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
        row += [e.get("xnnpack_partitions", "-"), _edgetpu_cell(e),
                f"{e['conversion']['seconds']:.1f}",
                f"{e['conversion']['peak_rss_mb']:.0f}"]
        if "gate" in e:
            row.append(e["gate"].upper())
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def _gate_lines(gate: dict) -> list[str]:
    rules = []
    if gate["max_top1_drop_points"] is not None:
        rules.append(f"at most {gate['max_top1_drop_points']} points of top-1 lost")
    if gate.get("min_agreement_percent") is not None:
        rules.append(f"top-1 agreement at least {gate['min_agreement_percent']} %")
    if not rules:
        return []
    verdict = ("all variants pass" if not gate["failed"] else
               f"failed: {gate_failures(gate)}")
    return [f"Gate: {' and '.join(rules)}; {verdict}.", ""]


def _flip_lines(report: dict) -> list[str]:
    """Where the top-1 answers changed, and why, with 95 % intervals."""
    key = "eval" if any("eval" in e for e in report["variants"].values()) else "drift"
    rows = []
    for name, e in report["variants"].items():
        d = e.get(key)
        if not d or "flips" not in d:
            continue
        low, high = d["top1_agreement_ci95"]
        kinds = d["flips"]
        rows.append(f"| {name} | {100 * d['top1_agreement']:.2f} % ({100 * low:.2f}-"
                    f"{100 * high:.2f}) | {sum(kinds.values())} | {kinds['tie']} | "
                    f"{kinds['saturated']} | {kinds['other']} |")
    if not rows:
        return []
    where = "the EVAL images" if key == "eval" else "the held-out images"
    return [f"## Top-1 flips against float, on {where}", "",
            "A tie: the quantized model's two best classes on the same output value (one "
            "8-bit step); saturated: its best logit at the largest value its 8-bit output "
            "can hold. Agreement with its 95 % (Wilson) interval.", "",
            "| variant | agreement | flips | ties | saturated | other |", "|---|---|---|---|---|---|",
            *rows, ""]


def _gap(step: dict) -> str:
    return f"{step['gap_change']:.4f}" if "gap_change" in step else "-"


def _kl(step: dict) -> str:
    return f"{1000 * step['kl']:.2f}" if "kl" in step else "-"


def _recipe_lines(report: dict) -> list[str]:
    """The accuracy-first steps, each with its held-out agreement and SQNR, and what each
    fallback file put in float."""
    parts = []
    for name, e in report["variants"].items():
        recipe = e.get("recipe")
        if recipe and not e.get("fallback"):  # a fallback file's recipe is its base's
            parts += [f"## {name}: what each accuracy-first step bought", "",
                      "Measured on the held-out images against the float model, each row "
                      "adding its step to those above (quantize/recipe.py).", "",
                      "| step | top-1 agreement | flips | median top-two gap change | "
                      "KL divergence (x1000) | SQNR dB |", "|---|---|---|---|---|---|"]
            parts += [f"| {s['step']} | {100 * s['top1_agreement']:.2f} % | {s['flips']} | "
                      f"{_gap(s)} | {_kl(s)} | {s['sqnr_db']:.2f} |" for s in recipe["steps"]]
            parts.append("")
        if e.get("fallback"):
            parts += _fallback_lines(name, e["fallback"])
    return parts


def _fallback_lines(name: str, fallback: dict) -> list[str]:
    """Each first layer a fallback file runs in float, with what it bought."""
    layers = fallback["float_layers"]
    parts = [f"## {name}: layers in float", "",
             f"Within {100 * fallback['budget']:g} % of the multiply-adds, the first layers in "
             "float as far as they lower the median top-two gap change on the calibration "
             "and held-out images (quantize/fallback.py)" +
             (":" if layers else ": none did, so the file is its base's."), ""]
    parts += [f"- `{layer['layer']}` ({layer['multiply_adds'] / 1e6:.1f} M multiply-adds; "
              f"float up to here: median top-two gap change {layer['gap_change']:.4f})"
              for layer in layers]
    return parts + [""]


def markdown(report: dict) -> str:
    """report.md: what was quantized and measured, the table, then each section."""
    parts = ["# Quantization report", ""] + _header_lines(report) + [table(report), ""] + \
        _island_lines(report) + _gate_lines(report["gate"]) + _flip_lines(report) + \
        _recipe_lines(report) + _layer_error_lines(report.get("int8_layer_errors")) + \
        _edgetpu_lines(report) + \
        ["", "Sizes, conversion time and peak resident memory (RSS) are measured in this "
         "run; `manifest.json` holds the checksums and quantization parameters."]
    return "\n".join(parts) + "\n"


def _header_lines(report: dict) -> list[str]:
    fm = report["float_model"]
    h, w = fm["input_size"]
    parts = []
    for warning in report["warnings"]:
        parts += [f"> **{warning}**", "> Drift on an untrained network is noise: its outputs "
                  "are near-uniform, so top-1 agreement says little.", ""]
    parts += [
        f"Float model: InceptionV3 {h}x{w}, {fm['num_classes']} classes, depth multiplier "
        f"{fm['depth_multiplier']}, weights "
        f"{fm['weights_summary']}.",
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
    return parts


def _island_lines(report: dict) -> list[str]:
    islands = [name for name, e in report["variants"].items()
               if "float islands" in e.get("graph", "")]
    if not islands:
        return []
    return [f"CPU graphs of {', '.join(islands)}: "
            f"{report['variants'][islands[0]]['graph']} (XNNPACK has no int8 average "
            "pool; see quantize/pool_islands.py). Every figure above, the Edge TPU "
            "column included, is measured on the file that ships. For the Coral Edge "
            "TPU use `inception_v3_coral.tflite` (all-integer), not these.", ""]


def _layer_error_lines(per_layer: dict | None) -> list[str]:
    if not per_layer:
        return []
    return ["## int8: layers with the largest quantization error", "",
            f"RMS error over the tensor's scale, on {per_layer['images']} held-out "
            f"images (rounding alone gives {per_layer['rounding_noise_rmse_over_scale']:.2f}).",
            "", "| tensor | op | rmse/scale | max abs error |", "|---|---|---|---|"] + \
        [f"| `{r['tensor']}` | {r['op']} | {r['rmse_over_scale']:.3f} | "
         f"{r['max_abs_error']:.4g} |" for r in per_layer["worst"]] + [""]


def _edgetpu_lines(report: dict) -> list[str]:
    parts = []
    tpu_notes = {e["edgetpu"].get("compiler", {}).get("note")
                 for e in report["variants"].values() if "edgetpu" in e} - {None}
    if tpu_notes:
        parts += ["## Edge TPU", "", *sorted(tpu_notes), ""]
    for name, e in report["variants"].items():
        tpu = e.get("edgetpu")
        if tpu and tpu["problems"]:
            first = tpu["problems"][0]
            parts.append(f"- `{name}`: {len(tpu['problems'])} of {tpu['ops']} ops would run on "
                         f"the CPU, the first #{first['index']} {first['op']} "
                         f"({'; '.join(first['why'])})")
    return parts
