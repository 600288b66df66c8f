"""`make eval`: accuracy of a float model or any `.tflite` on a labelled folder, and the
drift of every variant of a quantize run against its float model on that folder.

Images stream through in small chunks and only running sums are kept, so memory does not
grow with the folder. Flipped images are listed with the float and quantized answers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from build import float_model, images
from quantize import drift
from quantize.report import MB
from runtime import cli
from runtime.cards import float_card_of
from runtime.classify import Classifier, read_labels
from runtime.fileio import check_output, read_json, write_json

CHUNK = 32


def _chunks(stream, size: int):
    chunk = []
    for item in stream:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _class_names(card: dict | None, num_classes: int) -> list[str] | None:
    if card and card.get("labels"):
        return card["labels"]
    return read_labels(None, num_classes)


def evaluate_run(run_dir: Path, data: Path, limit: int | None = None) -> dict:
    """Accuracy of the float model and each variant of a run, drift of each against float."""
    manifest = read_json(run_dir / "manifest.json", "manifest")
    model, card = float_model.load(run_dir / "float") if (run_dir / "float").is_dir() \
        else float_model.load(run_dir / manifest["float_model"]["folder"])
    size = tuple(card["input_size"])
    names = _class_names(card, card["num_classes"])
    classifiers = {name: Classifier(run_dir / v["file"])
                   for name, v in manifest["variants"].items()}
    accumulators = {name: drift.DriftAccumulator(with_labels=True,
                                                 saturation=c.output_ceiling)
                    for name, c in classifiers.items()}
    paths, labels_seen, skipped = [], [], {}
    float_answers: list[int] = []
    answers: dict[str, dict[int, int]] = {name: {} for name in classifiers}
    stream = images.stream_labelled(data, size, card.get("labels"), card["num_classes"])
    progress = tqdm(desc="Evaluating", unit="img", file=sys.stderr)
    for chunk in _chunks(stream, CHUNK):
        good = [c for c in chunk if c[1] is not None]
        skipped.update({c[0]: c[3] for c in chunk if c[1] is None})
        if not good:
            continue
        pixels = np.stack([c[1] for c in good])
        labels = [c[2] for c in good]
        reference = drift.keras_logits(model, pixels)
        start = len(paths)
        for name, classifier in classifiers.items():
            candidate = drift.tflite_logits(classifier, pixels)
            before = len(accumulators[name].flipped)
            accumulators[name].add(reference, candidate, labels)
            for i in accumulators[name].flipped[before:]:
                answers[name][i] = int(np.argmax(candidate[i - start]))
        paths += [c[0] for c in good]
        labels_seen += labels
        float_answers += [int(i) for i in np.argmax(reference, 1)]
        progress.update(len(chunk))
        if limit and len(paths) >= limit:
            break
    progress.close()
    if not paths:
        raise images.DataError(f"No usable labelled image in {data}.")
    name_of = (lambda i: names[i]) if names else str
    result = {"data": str(data), "images": len(paths), "skipped": len(skipped), "variants": {}}
    for name, accumulator in accumulators.items():
        r = accumulator.result()
        r["flipped"] = [{"image": str(Path(paths[i]).relative_to(data)),
                         "label": name_of(labels_seen[i]), "float": name_of(float_answers[i]),
                         "quantized": name_of(answers[name][i])} for i in r["flipped"]]
        r["bytes"] = manifest["variants"][name]["bytes"]
        result["variants"][name] = r
    return result


def evaluate_model(model_path: Path, data: Path) -> dict:
    """Top-1 and top-5 accuracy of one float model folder or `.tflite` file."""
    if model_path.is_dir():
        model, card = float_model.load(model_path)
        size, num_classes = tuple(card["input_size"]), card["num_classes"]
        run = lambda pixels: drift.keras_logits(model, pixels)  # noqa: E731
    else:
        classifier = Classifier(model_path)
        card = float_card_of(model_path)
        size, num_classes = classifier.size, classifier.num_classes
        run = lambda pixels: drift.tflite_logits(classifier, pixels)  # noqa: E731
    top1 = top5 = n = 0
    skipped = 0
    stream = images.stream_labelled(data, size, (card or {}).get("labels"), num_classes)
    for chunk in _chunks(stream, CHUNK):
        good = [c for c in chunk if c[1] is not None]
        skipped += len(chunk) - len(good)
        if not good:
            continue
        logits = run(np.stack([c[1] for c in good]))
        top = drift.top_k_indices(logits, min(5, logits.shape[1]))
        y = np.asarray([c[2] for c in good])[:, None]
        top1 += int(np.sum(top[:, :1] == y))
        top5 += int(np.sum(np.any(top == y, axis=1)))
        n += len(good)
    if not n:
        raise images.DataError(f"No usable labelled image in {data}.")
    return {"model": str(model_path), "data": str(data), "images": n, "skipped": skipped,
            "top1": top1 / n, "top5": top5 / n}


def run_table(result: dict) -> str:
    rows = ["| variant | size MB | top-1 | top-5 | top-1 change (pts) | top-1 agreement | "
            "flipped |", "|---|---|---|---|---|---|---|"]
    first = next(iter(result["variants"].values()))
    rows.append(f"| float (Keras) | - | {100 * first['float_top1']:.2f}% | "
                f"{100 * first['float_top5']:.2f}% | - | - | - |")
    for name, r in result["variants"].items():
        rows.append(f"| {name} | {r['bytes'] / MB:.1f} | {100 * r['quantized_top1']:.2f}% | "
                    f"{100 * r['quantized_top5']:.2f}% | {r['top1_change_points']:+.2f} | "
                    f"{100 * r['top1_agreement']:.2f}% | {len(r['flipped'])} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m quantize.evaluate", description=__doc__)
    p.add_argument("--data", required=True, help="labelled folder, one sub-folder per class")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help="float model folder or .tflite file")
    group.add_argument("--run", help="a make quantize output folder: every variant")
    p.add_argument("--json", help="also write the full result here")
    p.add_argument("--limit", type=cli.positive_int, help="stop after about this many images")
    args = p.parse_args(argv)
    if args.json:
        check_output(args.json, "file")
    if args.run:
        result = evaluate_run(Path(args.run), Path(args.data), args.limit)
        print(run_table(result))
        for name, r in result["variants"].items():
            for flip in r["flipped"][:5]:
                print(f"  {name}: {flip['image']} ({flip['label']}): float says "
                      f"{flip['float']}, {name} says {flip['quantized']}")
    else:
        result = evaluate_model(Path(args.model), Path(args.data))
        print(f"{result['model']}: top-1 {100 * result['top1']:.2f}%, top-5 "
              f"{100 * result['top5']:.2f}% on {result['images']} images "
              f"({result['skipped']} skipped)")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
