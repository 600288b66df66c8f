"""`python -m runtime`: classify images or benchmark a model on this device.

    python -m runtime classify --model M [--labels L] [--top-k 5] [--json] IMAGE...
    python -m runtime bench --model M [--threads N] [--runs R]
"""
from __future__ import annotations

import argparse
import json
import sys

from runtime import cli
from runtime.bench import bench
from runtime.classify import Classifier
from runtime.preprocessing import ImageError


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=".tflite file")
    p.add_argument("--threads", type=cli.positive_int,
                   help="interpreter threads (default: all cores)")
    p.add_argument("--edgetpu", action="store_true", default=None,
                   help="use the Edge TPU delegate (automatic for *_edgetpu.tflite)")
    p.add_argument("--device", help="Edge TPU device: usb, usb:N, pci, pci:N")


def classify(args) -> int:
    clf = Classifier(args.model, labels=args.labels, num_threads=args.threads,
                     edgetpu=args.edgetpu, device=args.device)
    results, failures = [], 0
    for image in args.images:
        try:
            top = clf.classify(image, k=args.top_k)
            results.append({"image": image, "top_k": [c._asdict() for c in top]})
        except (ImageError, OSError) as error:
            failures += 1
            results.append({"image": image, "error": str(error)})
            print(f"error: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                continue
            print(r["image"])
            for c in r["top_k"]:
                label = c["label"] if c["label"] is not None else f"class {c['id']}"
                print(f"  {c['score']:.4f}  {c['id']:>4}  {label}")
    return 2 if failures else 0  # an image it cannot read is bad input


def bench_command(args) -> int:
    result = bench(args.model, num_threads=args.threads, runs=args.runs, warmup=args.warmup,
                   edgetpu=args.edgetpu, device=args.device)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']}: {result['input_dtype']} input {result['input_size']}, "
              f"threads {result['threads']}\n"
              f"  init {result['init_ms']} ms; {result['runs']} runs after {result['warmup']} "
              f"warm-up: p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms, "
              f"p99 {result['p99_ms']} ms; peak RSS {result['peak_rss_mb']} MB")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("classify", help="top-k classes of images")
    _model_args(c)
    c.add_argument("--labels", help="labels file, one per line (ImageNet ships built in)")
    c.add_argument("--top-k", type=cli.positive_int, default=5)
    c.add_argument("--json", action="store_true")
    c.add_argument("images", nargs="+")
    b = sub.add_parser("bench", help="latency percentiles, init time, peak memory")
    _model_args(b)
    b.add_argument("--runs", type=cli.positive_int, default=50)
    b.add_argument("--warmup", type=cli.non_negative_int, default=5)
    b.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return classify(args) if args.command == "classify" else bench_command(args)


if __name__ == "__main__":
    sys.exit(cli.run(main))
