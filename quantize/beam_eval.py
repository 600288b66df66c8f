"""`make eval RUN=... RUNNER=beam`: the evaluation of a quantize run as an Apache Beam
pipeline, so it scales past one machine (Flink, Spark, Dataflow) or one core (the
FnApiRunner's worker processes).

It is the in-process evaluation (quantize/evaluate.py) cut into Beam steps, sharing its
code: the listing is split into the same chunks of images, each chunk is read with the
runtime's one preprocessing, the float Keras model sees exactly that chunk (RunInference,
pre-batched: float results depend on the batch in their last bits), each variant's LiteRT
model runs image by image (RunInference), and one CombineFn folds every image's drift in
image order into the same result, flips included, as the in-process evaluation makes.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from build import float_model
from build.keras_env import limit_threads
from quantize import drift, evaluate
from quantize.evaluate import RunModels, Scored
from runtime.classify import Classifier

_log = logging.getLogger()
_level = _log.level
_log.setLevel(logging.ERROR)  # Beam warns at import about Google Cloud clients it may not use
import apache_beam as beam  # noqa: E402
from apache_beam.ml.inference.base import (KeyedModelHandler, ModelHandler,  # noqa: E402
                                           PredictionResult, RunInference)
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
_log.setLevel(_level)

DEFAULT_THREADS = 1  # per worker: workers, not threads, are how Beam scales
RESULT = "result.json"

# An image on its way through the models: (index, path, label, {model: logits}), pixels.
Key = tuple[int, str, int, dict]


class PipelineFailed(RuntimeError):
    """A worker raised: the evaluation has no result."""


class KerasLogits(ModelHandler[np.ndarray, PredictionResult, Any]):
    """The float Keras model of a run, on a worker: logits of pre-batched chunks."""

    def __init__(self, float_dir: Path, threads: int):
        super().__init__()
        self.float_dir, self.threads = float_dir, threads

    def load_model(self):
        limit_threads(self.threads)
        return float_model.load(self.float_dir)[0]

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None
                      ) -> Iterable[PredictionResult]:
        logits = float_model.keras_logits(model, np.stack(batch))
        return [PredictionResult(x, y) for x, y in zip(batch, logits)]


class LiteRTLogits(ModelHandler[np.ndarray, PredictionResult, Any]):
    """A `.tflite` variant on a worker, through the device runtime: one invoke per image
    as on the device, whatever batch Beam forms."""

    def __init__(self, path: Path, threads: int):
        super().__init__()
        self.path, self.threads = path, threads

    def load_model(self):
        return Classifier(self.path, num_threads=self.threads)

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None
                      ) -> Iterable[PredictionResult]:
        logits = drift.tflite_logits(model, np.stack(batch))
        return [PredictionResult(x, y) for x, y in zip(batch, logits)]


class DriftCombineFn(beam.CombineFn):
    """Every image's outcome into the evaluation's result: outcomes are small (a few
    numbers per variant), so they are gathered and folded in image order at the end,
    which makes the sums the in-process evaluation's to the last bit."""

    def __init__(self, models: RunModels, data: Path):
        self.models, self.data = models, data

    def create_accumulator(self) -> list:
        return []

    def add_input(self, accumulator: list, scored: Scored) -> list:
        accumulator.append(scored)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list]) -> list:
        return [scored for accumulator in accumulators for scored in accumulator]

    def extract_output(self, accumulator: list) -> dict:
        return evaluate.summarize(self.models, self.data,
                                  sorted(accumulator, key=lambda scored: scored[0]))


def _read(chunk: list[tuple[int, str, int]], size: tuple[int, int]):
    """A chunk's readable images as one pre-batched element; skipped ones tagged apart."""
    good, skipped = evaluate.read_chunk(chunk, size)
    for outcome in skipped:
        yield beam.pvalue.TaggedOutput("skipped", outcome)
    if good:
        yield [((index, path, label, {}), pixels) for index, path, label, pixels in good]


def _with_logits(element: tuple[Key, PredictionResult], model: str) -> tuple[Key, np.ndarray]:
    (index, path, label, logits), result = element
    return (index, path, label, {**logits, model: result.inference}), result.example


def _score(element: tuple[Key, np.ndarray], models: RunModels) -> Scored:
    (index, path, label, logits), _ = element
    reference = logits["float"][None]
    rows = evaluate.score(models, reference, {name: logits[name][None] for name in models.files},
                          [label])
    return index, path, label, rows[0]


def build(pipeline: beam.Pipeline, models: RunModels, data: Path,
          todo: list[tuple[int, str, int]], threads: int) -> beam.PCollection:
    """The evaluation's steps on `pipeline`; a PCollection of its one result."""
    chunks = [todo[i:i + evaluate.CHUNK] for i in range(0, len(todo), evaluate.CHUNK)]
    read = (pipeline
            | "List images" >> beam.Create(chunks)
            | "Spread" >> beam.Reshuffle()
            | "Read and preprocess" >> beam.FlatMap(_read, models.size)
            .with_outputs("skipped", main="images"))
    flowing = (read.images
               | "float (Keras)" >> RunInference(
                   KeyedModelHandler(KerasLogits(models.float_dir, threads)).with_no_batching())
               | "keep float" >> beam.Map(_with_logits, "float"))
    for name, path in models.files.items():
        flowing = (flowing
                   | f"{name} (LiteRT)" >> RunInference(
                       KeyedModelHandler(LiteRTLogits(path, threads)))
                   | f"keep {name}" >> beam.Map(_with_logits, name))
    scored = flowing | "Drift" >> beam.Map(_score, models)
    return ((scored, read.skipped)
            | "All images" >> beam.Flatten()
            | "Combine" >> beam.CombineGlobally(DriftCombineFn(models, data)))


def options(workers: int, extra: Sequence[str] = ()) -> PipelineOptions:
    """Beam's options: its FnApiRunner with `workers` processes unless `extra` (Beam's own
    flags, e.g. --runner=FlinkRunner --flink_master=...) names another runner.

    Named, not left to the DirectRunner: that first tries the Prism runner, fetching its
    binary from GitHub for every pipeline. Offline the fetch fails, leaving an empty
    beam-temp folder in the temporary directory, and it falls back to the FnApiRunner;
    online it would run on Prism, a runner neither tested nor measured here."""
    mode = "multi_processing" if workers > 1 else "in_memory"
    runner = [] if any(flag.startswith("--runner") for flag in extra) \
        else ["--runner=FnApiRunner"]
    return PipelineOptions([*runner, f"--direct_num_workers={workers}",
                            f"--direct_running_mode={mode}",
                            "--default_sdk_harness_log_level=CRITICAL", *extra])


def _cause(error: BaseException) -> str:
    """The last line of a worker's error that names an exception: what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line.split(":")[0] or
             "Exception" in line.split(":")[0]]
    return (named or lines or [type(error).__name__])[-1]


def evaluate_run(run_dir: Path, data: Path, limit: int | None = None, workers: int = 1,
                 threads: int = DEFAULT_THREADS, beam_args: Sequence[str] = (),
                 result_dir: str | None = None) -> dict:
    """evaluate.evaluate_run's result, computed by a Beam pipeline. `result_dir`: where
    the pipeline writes its result (a path every worker can reach on a cluster)."""
    models = evaluate.open_run(run_dir)
    todo = evaluate.listing(models, data, limit)
    with tempfile.TemporaryDirectory() as local:
        where = result_dir or local
        try:
            with _quiet_beam(), beam.Pipeline(options=options(workers, beam_args)) as pipeline:
                (build(pipeline, models, data, todo, threads)
                 | "To JSON" >> beam.Map(_to_json)
                 | "Write" >> beam.io.WriteToText(f"{where}/{RESULT}", shard_name_template=""))
        except Exception as error:  # a worker's exception, wrapped by the runner
            raise PipelineFailed(f"the Beam pipeline failed: {_cause(error)}") from error
        return evaluate.checked(_read_result(f"{where}/{RESULT}"))


@contextlib.contextmanager
def _quiet_beam():
    """Beam's own log lines (workers starting, channels opening, a failing worker's
    traceback) kept off the user's terminal: a failure is said once, with its cause,
    by evaluate_run."""
    beam_log = logging.getLogger("apache_beam")
    level = beam_log.level
    beam_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        beam_log.setLevel(level)


def _to_json(result: dict) -> str:
    import json
    return json.dumps(result)


def _read_result(path: str) -> dict:
    import json
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path) as stream:
        return json.loads(stream.read().decode())
