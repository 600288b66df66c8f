"""Quantization-aware training: fine-tune the float model with fake quantization, to
answer as the float model does.

tensorflow-model-optimization wraps every layer of the logits graph (it needs Keras 2,
which is why the whole pipeline uses tf-keras); training then learns weights that survive
int8 rounding. The loss is distillation from the float model (the cross-entropy to its
softmax on the same augmented image), not the labels: trained on labels, QAT learns a
different model (81 % of the float model's answers kept, measured), where the point is
the same model in int8. The whole graph is quantized: a float logits layer, as the
accuracy-first int8 has, let the converter leave other un-annotated ops in float too.

Two things tfmot gets wrong on this network are avoided: its layout transforms (which
fold conv + batch norm) reorder the inputs of Mixed_6a's and Mixed_7a's concatenations,
so batch norm is folded here first (`fold_batch_norm`) and no transform is applied; and
its activation ranges start at [-6, 6], so they are set from measured ranges first.
"""
from __future__ import annotations

import numpy as np

from build import distributed, float_model
from build.inception_v3 import fold_batch_norm
from build.keras_env import keras, tf
from build.train import TrainConfig, datasets, load_training_data
from build.weights import short_name


class Distillation(keras.Model):
    """Trains `student` to give `teacher`'s answers: the cross-entropy of the student's
    logits to the teacher's softmax on the same (augmented) image. Labels are ignored;
    `agreement` is the share of images whose top-1 the two share."""

    def __init__(self, student: keras.Model, teacher: keras.Model):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.loss_mean = keras.metrics.Mean(name="loss")
        self.agreement = keras.metrics.Mean(name="agreement")

    def call(self, x, training=False):
        return self.student(x, training=training)

    @property
    def metrics(self):
        return [self.loss_mean, self.agreement]

    def _step(self, data, training: bool):
        x = data[0] if isinstance(data, tuple) else data
        target = tf.nn.softmax(self.teacher(x, training=False))
        with tf.GradientTape() as tape:
            logits = self.student(x, training=training)
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(
                target, logits, from_logits=True))
        if training:
            variables = self.student.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        same = tf.equal(tf.argmax(logits, -1), tf.argmax(target, -1))
        self.loss_mean.update_state(loss)
        self.agreement.update_state(tf.cast(same, tf.float32))
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        return self._step(data, training=True)

    def test_step(self, data):
        return self._step(data, training=False)


def quantization_aware(model: keras.Model, card: dict, data: str, val: str | None = None,
                       epochs: int = 2, batch_size: int = 32, learning_rate: float = 1e-5,
                       seed: int = 0, flip: bool = True, min_crop_area: float = 0.25,
                       limit_per_class: int | None = None) -> keras.Model:
    config = TrainConfig(data=data, out="", input_size=tuple(card["input_size"]),
                         epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         val=val, seed=seed, flip=flip, min_crop_area=min_crop_area,
                         limit_per_class=limit_per_class)
    x_train, y_train, x_val, y_val, _ = load_training_data(
        config, card.get("labels"), card["num_classes"])
    train_ds, val_ds = datasets(config, x_train, y_train, x_val, y_val)
    keras.utils.set_random_seed(seed)
    with distributed.strategy().scope():  # one device, or every worker's (WORKERS=N)
        qat, folded = _qat_model(model, card)
        calibrate_ranges(qat, folded, x_val[:32])
        distillation = Distillation(qat, float_model.logits_model(model))
        distillation.compile(optimizer=keras.optimizers.Adam(learning_rate))
    print(f"Quantization-aware training (distillation from the float model) on "
          f"{len(x_train)} images for {epochs} epoch(s)", flush=True)
    distillation.fit(train_ds, validation_data=val_ds, epochs=epochs,
                     verbose=2 if distributed.is_chief() else 0)
    if distributed.cluster() is None:
        return qat
    # The trained weights into a model of this process alone, for the converter: reading
    # them is a collective every worker joins, in the same order.
    weights = qat.get_weights()
    plain, _ = _qat_model(model, card)
    plain.set_weights(weights)
    return plain


def _qat_model(model: keras.Model, card: dict) -> tuple[keras.Model, keras.Model]:
    """The fake-quantized model to train, and the batch-norm-folded float model it wraps."""
    folded = fold_batch_norm(model, input_shape=(*card["input_size"], 3),
                             num_classes=card["num_classes"],
                             depth_multiplier=card["depth_multiplier"],
                             min_depth=card["min_depth"], dropout_keep_prob=None)
    return quantize_without_transforms(folded), folded


def calibrate_ranges(qat: keras.Model, model: keras.Model, pixels: np.ndarray) -> int:
    """Start every activation quantizer at the float model's measured range.

    tfmot starts them at [-6, 6] and moves them by a slow moving average, so a network
    whose activations exceed 6 begins QAT clipped (accuracy collapses to chance) and must
    re-learn what it knew. Returns how many quantizers were set.
    """
    from runtime.preprocessing import normalize
    targets = {}
    for layer in qat.layers:
        names = {short_name(w.name): w for w in layer.weights}
        if "output_min" in names and layer.name.startswith("quant_"):
            targets[layer.name[len("quant_"):]] = (names["output_min"], names["output_max"])
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in targets])
    outputs = probe.predict(normalize(pixels), verbose=0, batch_size=8)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    for (low, high), values in zip(targets.values(), outputs):
        low.assign(min(float(np.min(values)), 0.0))
        high.assign(max(float(np.max(values)), 1e-6))
    for layer in qat.layers:  # the input quantizer: the preprocessing's range
        names = {short_name(w.name): w for w in layer.weights}
        if "quantize_layer_min" in names:
            names["quantize_layer_min"].assign(-1.0)
            names["quantize_layer_max"].assign(1.0)
    return len(targets)


def quantize_without_transforms(model: keras.Model) -> keras.Model:
    """tfmot's default 8-bit scheme with its layout transforms switched off."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras import (
        quantize_layout_transform)

    class NoTransforms(quantize_layout_transform.QuantizeLayoutTransform):
        def apply(self, model, layer_quantize_map):
            return model, layer_quantize_map

    class Scheme(tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme):
        def get_layout_transformer(self):
            return NoTransforms()

    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    with tfmot.quantization.keras.quantize_scope():
        return tfmot.quantization.keras.quantize_apply(annotated, Scheme())
