"""`make eval`: accuracy of a float model or any `.tflite` on a labelled folder, and the
drift of every variant of a quantize run against its float model on that folder.

Images stream through in small chunks and only running sums are kept, so memory does not
grow with the folder. Flipped images are listed with the float and quantized answers.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from build import float_model, images
from build.keras_env import limit_threads
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


@dataclass(frozen=True)
class RunModels:
    """What evaluating a quantize run needs before any image: the float model's folder and
    card, each variant's file, size and output cap. Plain data, so Beam workers get it."""
    float_dir: Path
    card: dict
    files: dict[str, Path]
    bytes: dict[str, int]
    saturation: dict[str, float | None]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.card["input_size"])


def open_run(run_dir: Path) -> RunModels:
    """The run's models, each variant loaded once here so a broken file stops the
    evaluation before any image is read."""
    manifest = read_json(run_dir / "manifest.json", "manifest")
    float_dir = run_dir / "float" if (run_dir / "float").is_dir() \
        else run_dir / manifest["float_model"]["folder"]
    card = float_model.read_card(float_dir)
    files = {name: run_dir / v["file"] for name, v in manifest["variants"].items()}
    saturation = {name: Classifier(path, num_threads=1).output_ceiling
                  for name, path in files.items()}
    return RunModels(float_dir, card, files,
                     {name: v["bytes"] for name, v in manifest["variants"].items()}, saturation)


def listing(models: RunModels, data: Path, limit: int | None = None
            ) -> list[tuple[int, str, int]]:
    """(index, path, label) of the images to evaluate, in order: the first `limit`."""
    files = images.labelled_files(data, models.card.get("labels"), models.card["num_classes"])
    return [(i, path, label) for i, (path, label) in enumerate(files[:limit])]


# One image's outcome: (index, path, label, {variant: its drift}), or the reason it was
# skipped in place of the drift.
Scored = tuple[int, str, int, "dict[str, drift.ImageDrift] | str"]


def score(models: RunModels, reference: np.ndarray, candidates: dict[str, np.ndarray],
          labels: list[int]) -> list[dict[str, drift.ImageDrift]]:
    """Each image's drift, per variant: the one step both evaluations share."""
    per_variant = {name: drift.image_drift(reference, logits, labels, models.saturation[name])
                   for name, logits in candidates.items()}
    return [{name: rows[i] for name, rows in per_variant.items()} for i in range(len(labels))]


def read_chunk(chunk: list[tuple[int, str, int]], size: tuple[int, int]
               ) -> tuple[list[tuple[int, str, int, np.ndarray]], list[Scored]]:
    """The chunk's readable images, and the others as skipped outcomes."""
    good, skipped = [], []
    for index, path, label in chunk:
        pixels, why = images.try_read(path, size)
        if pixels is None:
            skipped.append((index, path, label, why))
        else:
            good.append((index, path, label, pixels))
    return good, skipped


def _score_in_process(models: RunModels, todo: list[tuple[int, str, int]],
                      threads: int | None) -> Iterator[Scored]:
    model, _ = float_model.load(models.float_dir)
    classifiers = {name: Classifier(path, num_threads=threads)
                   for name, path in models.files.items()}
    with tqdm(total=len(todo), desc="Evaluating", unit="img", file=sys.stderr) as progress:
        for chunk in _chunks(todo, CHUNK):
            good, skipped = read_chunk(chunk, models.size)
            yield from skipped
            if good:
                pixels = np.stack([g[3] for g in good])
                reference = float_model.keras_logits(model, pixels)
                rows = score(models, reference, {name: drift.tflite_logits(c, pixels)
                                                 for name, c in classifiers.items()},
                             [g[2] for g in good])
                yield from ((*g[:3], r) for g, r in zip(good, rows))
            progress.update(len(chunk))


def summarize(models: RunModels, data: Path, scored: Iterable[Scored]) -> dict:
    """The evaluation's result from every image's outcome, folded as they come: give them
    in image order (the in-process stream is; Beam's combine sorts them first)."""
    names = _class_names(models.card, models.card["num_classes"])
    name_of = (lambda i: names[i]) if names else str
    accumulators = {name: drift.DriftAccumulator(with_labels=True, saturation=ceiling)
                    for name, ceiling in models.saturation.items()}
    flipped: dict[str, list[dict]] = {name: [] for name in accumulators}
    skipped = 0
    for _, path, label, rows in scored:
        if isinstance(rows, str):
            skipped += 1
            continue
        for name, row in rows.items():
            accumulators[name].fold(row)
            if not row.agree:
                flipped[name].append({"image": str(Path(path).relative_to(data)),
                                      "label": name_of(label), "float": name_of(row.float_answer),
                                      "quantized": name_of(row.answer)})
    images_seen = next(iter(accumulators.values())).n if accumulators else 0
    result = {"data": str(data), "images": images_seen, "skipped": skipped, "variants": {}}
    for name, accumulator in accumulators.items():
        result["variants"][name] = {**accumulator.result(), "flipped": flipped[name],
                                    "bytes": models.bytes[name]}
    return result


def evaluate_run(run_dir: Path, data: Path, limit: int | None = None,
                 threads: int | None = None) -> dict:
    """Accuracy of the float model and each variant of a run, drift of each against float,
    in this process (quantize/beam_eval.py does the same on Apache Beam)."""
    models = open_run(run_dir)
    if threads:
        limit_threads(threads)
    return checked(summarize(models, data, _score_in_process(
        models, listing(models, data, limit), threads)))


def checked(result: dict) -> dict:
    """`result`, unless no image in its folder could be used."""
    if not result["images"]:
        raise images.DataError(f"No usable labelled image in {result['data']}.")
    return result


def evaluate_model(model_path: Path, data: Path, threads: int | None = None) -> dict:
    """Top-1 and top-5 accuracy of one float model folder or `.tflite` file."""
    if model_path.is_dir():
        model, card = float_model.load(model_path)
        size, num_classes = tuple(card["input_size"]), card["num_classes"]
        run = lambda pixels: float_model.keras_logits(model, pixels)  # noqa: E731
    else:
        classifier = Classifier(model_path, num_threads=threads)
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
    p = argparse.ArgumentParser(
        prog="python -m quantize.evaluate", description=__doc__,
        epilog="With --beam, options this command does not know are Apache Beam's own "
               "(e.g. --runner=FlinkRunner --flink_master=host:8081).")
    p.add_argument("--data", required=True, help="labelled folder, one sub-folder per class")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help="float model folder or .tflite file")
    group.add_argument("--run", help="a make quantize output folder: every variant")
    p.add_argument("--json", help="also write the full result here")
    p.add_argument("--limit", type=cli.positive_int, help="only the first this many images")
    p.add_argument("--threads", type=cli.positive_int,
                   help="CPU threads per model (default: all cores; 1 per worker on Beam)")
    p.add_argument("--beam", action="store_true",
                   help="evaluate the run as an Apache Beam pipeline (default: in this process)")
    p.add_argument("--workers", type=cli.positive_int, default=1,
                   help="Beam's local worker processes (FnApiRunner)")
    p.add_argument("--beam-result", help="where the Beam pipeline writes its result: a "
                   "folder every worker can reach (default: a local temporary folder)")
    args, beam_args = p.parse_known_args(argv)
    if beam_args and not args.beam:
        p.error(f"unrecognized arguments: {' '.join(beam_args)}")
    if args.beam and not args.run:
        p.error("--beam evaluates a run: give --run")
    if args.json:
        check_output(args.json, "file")
    if args.run:
        result = _evaluate_run(args, beam_args)
        if result is None:
            return 1
        print(run_table(result))
        for name, r in result["variants"].items():
            for flip in r["flipped"][:5]:
                print(f"  {name}: {flip['image']} ({flip['label']}): float says "
                      f"{flip['float']}, {name} says {flip['quantized']}")
    else:
        if args.threads:
            limit_threads(args.threads)
        result = evaluate_model(Path(args.model), Path(args.data), args.threads)
        print(f"{result['model']}: top-1 {100 * result['top1']:.2f}%, top-5 "
              f"{100 * result['top5']:.2f}% on {result['images']} images "
              f"({result['skipped']} skipped)")
    if args.json:
        write_json(args.json, result)
    return 0


def _evaluate_run(args, beam_args: list[str]) -> dict | None:
    """The run's evaluation on the chosen runner; None (said) when a Beam worker failed."""
    if not args.beam:
        return evaluate_run(Path(args.run), Path(args.data), args.limit, args.threads)
    from quantize import beam_eval
    try:
        return beam_eval.evaluate_run(Path(args.run), Path(args.data), args.limit,
                                      args.workers, args.threads or beam_eval.DEFAULT_THREADS,
                                      beam_args, args.beam_result)
    except beam_eval.PipelineFailed as error:
        cli.say(str(error))
        return None


if __name__ == "__main__":
    sys.exit(cli.run(main))
