"""The one place that picks Keras 2 (tf-keras) for the whole pipeline.

tensorflow-model-optimization (quantization-aware training) only works with Keras 2, so
the builder, training, conversion and QAT all use tf-keras; `TF_USE_LEGACY_KERAS=1` makes
`tf.keras` and the TFLite converter agree with it. Import `keras` from here, and import
this module before TensorFlow.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["keras", "tf", "limit_threads"]


def limit_threads(threads: int) -> bool:
    """Run TensorFlow's CPU ops on `threads` threads (intra- and inter-op); False when its
    runtime had already started and kept its own. Float results depend on the thread
    count in the last bits, so runs that must agree exactly use the same count."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        return False
    return True
