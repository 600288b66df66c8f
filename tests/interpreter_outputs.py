"""Each model's outputs on some photos, with whichever TFLite interpreter is installed.

Run by tests/test_tflite_runtime.py inside the tflite-runtime environment (make
setup-tflite-runtime: tflite-runtime with numpy < 2, nothing else of the pipeline), so it
imports only the device runtime. Prints JSON: per model, the dequantized outputs per image on
the default (XNNPACK) and on the reference kernels, or the runtime's one-sentence error when
the interpreter cannot load the model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root
from runtime import preprocessing  # noqa: E402
from runtime.classify import Classifier  # noqa: E402
from runtime.interpreter import RuntimeLoadError, interpreter_name  # noqa: E402


def outputs(model: str, images: list[str]) -> dict:
    found = {}
    for kernels in ("default", "reference"):
        try:
            classifier = Classifier(model, num_threads=1, kernels=kernels)
        except RuntimeLoadError as error:
            return {"error": str(error)}
        found[kernels] = [classifier.outputs(preprocessing.load_image(image)).tolist()
                          for image in images]
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--images", nargs="+", required=True)
    args = p.parse_args()
    found = {Path(m).name: outputs(m, args.images) for m in args.models}
    print(json.dumps({"interpreter": interpreter_name(), "models": found}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
