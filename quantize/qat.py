"""Quantization-aware training: fine-tune the float model with fake quantization, to
answer as the float model does.

tensorflow-model-optimization wraps every layer of the logits graph (it needs Keras 2,
which is why the whole pipeline uses tf-keras); training then learns weights that survive
int8 rounding. The loss is distillation from the float model (the cross-entropy to its
softmax on the same augmented image), not the labels: trained on labels, QAT learns a
different model (81 % of the float model's answers kept, measured), where the point is
the same model in int8. The whole graph is quantized (a logits layer left float in
Keras let the converter leave other un-annotated ops in float too); the CPU file's logits
layer is made float after conversion, as the accuracy-first int8's is
(quantize/logits_weights.float_output).

What tfmot gets wrong on this network is avoided: its layout transforms (which fold
conv + batch norm) reorder the inputs of Mixed_6a's and Mixed_7a's concatenations, so
batch norm is folded here first (`fold_batch_norm`) and no transform is applied; without
them it would round each convolution before its ReLU as well as after, which the device
never does (`quantize_without_transforms`); and its weight and activation ranges start
at [-6, 6], so they are set from the model first (`calibrate_ranges`), where the
post-training int8 recipe puts them, and held there while the weights train.

Measured on the reference model (all 3,925 Imagenette val images, the converted file):
from tfmot's own ranges set to each tensor's extremes, one epoch flipped 44 answers and
moved top-1 by -0.20 points; started as the recipe's int8 (MSE ranges, MSE weight scales,
then bias correction), the file flipped 35 before any training step (+0.00 points) and 35
after an epoch at the default learning rate (-0.05 points); with the kernels on GPTQ's
rounding as the recipe's now are, 27 after an epoch (-0.10 points).
Training from there did not add to it: in training's own simulation of the val split, 99.13 % agreement
at the start, 99.11 / 98.98 / 98.70 % after an epoch at learning rates 3e-7 / 1e-6 / 1e-5
(Adam takes steps of the learning rate's size however small the distillation gradient,
so a larger rate mostly adds noise); hence the small default.

That start still answered further from float than the post-training int8 it copies
(median change of the float top-two logit gap, `drift.gap_change`, against the float
`.tflite`, with a float logits layer: 0.0405 against 0.0286). Three differences, each
now as the int8 has it: the input quantizer on [-1, 1] put every pixel half a step off
the int8 grid (fed so, the post-training int8 itself went 0.0286 -> 0.0380), so the
model reads raw pixels (`pixel_input`); each branch and pool had a range of its own, which
the converter rounded again onto its concatenation's with 17 more ops (`_share_ranges`;
0.0405 -> 0.0391 alone; with pixels too, 0.0326); MSE ranges where percentile answers
closer, chosen by the gap now (0.0326 -> 0.0297). All three: 0.0297 at the start, 24 flips
(0 ties), against 23 (11 ties) before.

Two more now make the start the post-training int8's, range for range and weight for
weight but the stem's GPTQ samples: a max pool's input takes the range of the
concatenation that reads the pool, and an average pool reading a max pool its input's,
as the converter sets them (the file has the int8's ops, no requantizing op behind the
max pools); and the range method is chosen on the file (`calibrate_ranges`). The start
then answers as the int8 does: gap 0.0284 (int8 0.0286), 23 flips; its first two layers
in float (`qat-fallback`) 0.0259, 19 flips (int8-fallback 0.0245, 18). An epoch at the
default rate: 0.0284 and 24 flips, 0.0262 and 21. What is left is the 8-bit rounding of
the activations, and the simulation rounds differently from the file: one step apart on
about a fifth of the values from Mixed_5b on, so training sees noise of the error's own
size. Measured, not kept: training through the file's float final pool and float logits
(the simulation rounds both): 0.0286 / 0.0283 / 0.0294 after an epoch at 3e-7 / 1e-6 /
3e-6; biases only at 1e-4, 0.0304.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from build import distributed, float_model
from build.inception_v3 import fold_batch_norm
from build.keras_env import keras, tf
from build.train import TrainConfig, datasets, load_training_data
from build.weights import short_name
from quantize import (equalization, logits_weights, pool_islands, ranges, recipe,
                      variants, weight_ranges, weight_rounding)
from quantize.activation_stats import TensorStats
from runtime import tflite_graph as tg
from runtime.preprocessing import PIXEL_OFFSET, PIXEL_SCALE, PIXELS_PER_UNIT


class Distillation(keras.Model):
    """Trains `student` to give `teacher`'s answers: the cross-entropy of the student's
    logits to the teacher's softmax on the same (augmented) image, which the teacher reads
    normalised and the student as pixels (`pixel_input`). Labels are ignored; `agreement`
    is the share of images whose top-1 the two share."""

    def __init__(self, student: keras.Model, teacher: keras.Model):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.loss_mean = keras.metrics.Mean(name="loss")
        self.agreement = keras.metrics.Mean(name="agreement")

    def call(self, x, training=False):
        return self.student(to_pixels(x), training=training)

    @property
    def metrics(self):
        return [self.loss_mean, self.agreement]

    def _step(self, data, training: bool):
        x = data[0] if isinstance(data, tuple) else data
        target = tf.nn.softmax(self.teacher(x, training=False))
        with tf.GradientTape() as tape:
            # Inference mode even while training: tfmot would otherwise move each range
            # towards its batch's extremes and reset each kernel's to its largest weight,
            # undoing calibrate_ranges (the weights still learn, through the rounding).
            logits = self.student(to_pixels(x), training=False)
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
                       epochs: int = 2, batch_size: int = 32, learning_rate: float = 3e-7,
                       seed: int = 0, flip: bool = True, min_crop_area: float = 0.25,
                       limit_per_class: int | None = None,
                       calibration: np.ndarray | None = None,
                       held_out: np.ndarray | None = None) -> keras.Model:
    """The fake-quantized model, trained. `calibration`, `held_out`: the run's images
    (`make qat`) its equalization, ranges and weight rounding start from, and its range
    method is chosen on (both), as the post-training int8's are; without them, images
    spread through the validation split."""
    config = TrainConfig(data=data, out="", input_size=tuple(card["input_size"]),
                         epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         val=val, seed=seed, flip=flip, min_crop_area=min_crop_area,
                         limit_per_class=limit_per_class)
    x_train, y_train, x_val, y_val, _ = load_training_data(
        config, card.get("labels"), card["num_classes"])
    train_ds, val_ds = datasets(config, x_train, y_train, x_val, y_val)
    keras.utils.set_random_seed(seed)
    # The same function with every channel's range evened out, as the post-training int8
    # is made (quantize/equalization.py): measured on the reference model, 48 of 3,925
    # answers changed at the start of QAT where the plain model changes 55.
    sample = calibration[:recipe.STATS_IMAGES] if calibration is not None \
        else _spread(x_val, recipe.STATS_IMAGES)  # validation images come class by class
    choice = None if calibration is None or held_out is None \
        else np.concatenate([calibration, held_out])
    equalized, _ = equalization.equalize(model, sample)
    # The start is chosen on the files it converts to, by a model of this process alone;
    # every worker chooses the same and trains from it.
    start, folded = _qat_model(equalized, card)
    calibrate_ranges(start, folded, sample, choice)
    with distributed.strategy().scope():  # one device, or every worker's (WORKERS=N)
        qat = start
        if distributed.cluster() is not None:
            qat, _ = _qat_model(equalized, card)
            qat.set_weights(start.get_weights())
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
    plain, _ = _qat_model(equalized, card)
    plain.set_weights(weights)
    return plain


def _spread(pixels: np.ndarray, count: int) -> np.ndarray:
    """`count` images evenly spaced through `pixels` (every class, not the first)."""
    return pixels[np.linspace(0, len(pixels) - 1, min(count, len(pixels))).astype(int)]


def _qat_model(model: keras.Model, card: dict) -> tuple[keras.Model, keras.Model]:
    """The fake-quantized model to train, and the batch-norm-folded float model it wraps;
    both take raw pixels (`pixel_input`)."""
    folded = pixel_input(fold_batch_norm(model, input_shape=(*card["input_size"], 3),
                                         num_classes=card["num_classes"],
                                         depth_multiplier=card["depth_multiplier"],
                                         min_depth=card["min_depth"], dropout_keep_prob=None))
    return quantize_without_transforms(folded), folded


def pixel_input(folded: keras.Model) -> keras.Model:
    """`folded` taking raw 0..255 pixels: the normalisation folded into its first
    convolution's weights and bias (exact: that convolution pads nothing).

    The input quantizer is then [0, 255], scale 1: every pixel on the int8 grid, as the
    post-training int8's input is. On the normalised [-1, 1] instead every pixel lies half
    a step off it (p - 128.5); fed so, the post-training int8 of the reference model
    answered with a median top-two logit gap change of 0.0380 instead of 0.0286."""
    first = next(layer for layer in folded.layers if isinstance(layer, keras.layers.Conv2D))
    if first.padding != "valid" or not first.use_bias:
        raise ValueError(f"{first.name}: the normalisation folds only into an unpadded "
                         "convolution with a bias")
    model = keras.models.clone_model(folded)
    model.set_weights(folded.get_weights())
    kernel, bias = first.get_weights()
    model.get_layer(first.name).set_weights(
        [kernel * PIXEL_SCALE, bias + PIXEL_OFFSET * kernel.sum(axis=(0, 1, 2))])
    return model


def to_pixels(normalized):
    """The inverse of runtime.preprocessing.normalize, for the images training reads."""
    return (normalized - PIXEL_OFFSET) * PIXELS_PER_UNIT


def cpu_file(qat: keras.Model, pixels: np.ndarray) -> bytes:
    """The CPU file `qat` converts to as `make qat` ships it by default: float logits
    (logits_weights.float_output) and float pools (pool_islands.float_pools: the final
    pool's average not rounded to int8; integer pools answered further from float, top-two
    gap change 0.0404 against 0.0294 on the reference model's 300 choice images).
    `pixels`: the converter's samples for the file's input and output."""
    variant = variants.VARIANTS["qat"]
    converted = variants.convert(qat, variant, variants.representative_dataset(pixels, variant))
    return pool_islands.float_pools(logits_weights.float_output(converted))


def calibrate_ranges(qat: keras.Model, model: keras.Model, pixels: np.ndarray,
                     choice: np.ndarray | None = None) -> int:
    """Start every quantizer where the post-training int8 recipe (quantize/recipe.py)
    puts it, from the float `model` on `pixels`, the range method chosen on `choice`
    (default `pixels`).

    tfmot starts them at [-6, 6] and rounds every weight on [-6, 6] until the first
    training step (measured on the reference model: 1,388 of 3,925 answers changed before
    training). Set here: the weights (`_start_weights`); layer outputs (`output_*`) by the
    recipe's range methods (quantize/ranges.py; one image's extreme does not stretch
    them), the one whose converted file answers closest to float on `choice`, measured
    as the recipe measures its candidates (`recipe.closeness`; `make qat` chooses on the
    run's calibration and held-out images, as the recipe does). Not in the simulation: on
    the reference model it preferred MSE by 2 % (top-two gap change 0.0360 against 0.0368)
    where the file answers closer with percentile (0.0284 against 0.0299 on the val
    split, 23 flips against 30);
    the logits convolution's own output (`post_activation_*`) at the answer range of the
    post-training Coral file; the ranges TFLite shares set equal (`_share_ranges`).
    Returns how many activation quantizers were set.
    """
    for layer in qat.layers:
        names = {short_name(w.name): w for w in layer.weights}
        if "quantize_layer_min" in names:  # the input quantizer: pixels, exactly
            names["quantize_layer_min"].assign(0.0)
            names["quantize_layer_max"].assign(255.0)
    _start_weights(qat, model, pixels)
    targets, logits_layers = _activation_quantizers(qat)
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in targets])
    stats, logits = _activation_stats(probe, list(targets), logits_layers, pixels)
    choice = pixels if choice is None else choice
    reference = model.predict(choice.astype(np.float32), verbose=0)

    def set_ranges(method: str) -> None:
        for name, (low, high) in targets.items():
            chosen = ranges.answer_range(logits[name].reshape(len(pixels), -1)) \
                if name in logits else ranges.choose({name: stats[name]}, method)[name]
            low.assign(min(chosen[0], 0.0))
            high.assign(max(chosen[1], 1e-6))
        _share_ranges(targets, model)

    def closeness(method: str) -> tuple[float, float]:
        set_ranges(method)
        return recipe.closeness(cpu_file(qat, pixels), choice, reference)
    scores = {method: closeness(method) for method in recipe.AUTO_METHODS}
    set_ranges(min(scores, key=scores.get))
    return len(targets)


def _share_ranges(targets: dict, model: keras.Model) -> None:
    """Each concatenation's inputs on the concatenation's range and each average pool's
    output on its input's, as the post-training converter sets them (TFLite's int8 kernels
    want one scale in and out). With a range of their own the converter adds an op behind
    each that rounds them again to the shared scale: 17 on the reference model, where
    sharing took the median top-two gap change of the start 0.0405 -> 0.0391.

    A max pool has no range of its own in the file: it keeps its input's. So a
    concatenation that reads one puts its range on the pool's input (the previous block's
    concatenation, and through it that block's branches), and an average pool that reads
    one takes the pool's input's range, as the converter does."""
    for concat in reversed([layer for layer in model.layers
                            if isinstance(layer, keras.layers.Concatenate)]):
        for source in equalization.inputs_of(concat):  # outer concatenations first: nested ones follow
            source = _through_max_pool(source)
            if concat.name in targets and source.name in targets:
                _copy_range(targets[concat.name], targets[source.name])
    for pool in model.layers:
        if isinstance(pool, keras.layers.AveragePooling2D) and pool.name in targets:
            source = _through_max_pool(equalization.inputs_of(pool)[0])
            if source.name in targets:
                _copy_range(targets[source.name], targets[pool.name])


def _through_max_pool(layer):
    """The layer whose range `layer`'s output has in the file: a max pool's input's."""
    while isinstance(layer, keras.layers.MaxPooling2D):
        layer = equalization.inputs_of(layer)[0]
    return layer


def _copy_range(source: tuple, target: tuple) -> None:
    for variable, value in zip(target, source):
        variable.assign(value.numpy())


def _start_weights(qat: keras.Model, model: keras.Model, pixels: np.ndarray) -> None:
    """Each kernel's range, per output channel, at its MSE scale (quantize/weight_ranges.py),
    the kernel itself on that int8 grid as GPTQ rounds it (quantize/weight_rounding.py),
    and its bias corrected for the rounding by (W - W_q) E[x], E[x] each tap's own mean
    input (quantize/bias_correction.py's rule): the weights the recipe's int8 has, which
    training then starts from."""
    wrapped = [(layer, {short_name(w.name): w for w in layer.weights}) for layer in qat.layers]
    wrapped = [(layer, names) for layer, names in wrapped if "kernel_min" in names]
    convs = [model.get_layer(layer.layer.name) for layer, _ in wrapped]
    probe = keras.Model(model.inputs, [conv.input for conv in convs])
    for (_, names), inputs in zip(wrapped, _input_correlations(probe, convs, pixels)):
        by_output = np.moveaxis(names["kernel"].numpy().astype(np.float64), -1, 0)
        scales = weight_ranges.mse_scales(by_output)
        shape = (-1,) + (1,) * (by_output.ndim - 1)
        rounded = weight_rounding.gptq_codes(by_output, inputs.total(), scales) \
            * scales.reshape(shape)
        names["kernel"].assign(np.moveaxis(rounded, 0, -1).astype(np.float32))
        names["kernel_min"].assign((-127 * scales).astype(np.float32))
        names["kernel_max"].assign((127 * scales).astype(np.float32))
        if "bias" in names:
            shift = (by_output - rounded).reshape(len(by_output), -1) @ inputs.mean()
            names["bias"].assign((names["bias"].numpy() + shift).astype(np.float32))


@dataclass
class _ConvOptions:
    """A Keras convolution's geometry as weight_rounding.conv_patches reads it (TFLite's
    option names: Keras' 'same' is TFLite's SAME)."""
    strideH: int
    strideW: int
    dilationHFactor: int
    dilationWFactor: int
    padding: int

    @classmethod
    def of(cls, conv) -> "_ConvOptions":
        padding = tg.PADDING.SAME if conv.padding == "same" else tg.PADDING.VALID
        return cls(*conv.strides, *conv.dilation_rate, padding)


def _input_correlations(probe: keras.Model, convs: list, pixels: np.ndarray
                        ) -> list[weight_rounding.Correlation]:
    """Each convolution's input correlation (GPTQ's H) and mean patch over `pixels`, the
    probe's outputs being the convolutions' inputs."""
    correlations = [weight_rounding.Correlation() for _ in convs]
    options = [(_ConvOptions.of(conv), tuple(conv.kernel_size)) for conv in convs]
    rng = np.random.default_rng(0)
    for outputs in _batches(probe, pixels):
        for correlation, o, (option, kernel) in zip(correlations, outputs, options):
            for image in o:
                correlation.add(weight_rounding.conv_patches(
                    image[np.newaxis], option, kernel, weight_rounding.PATCHES_PER_IMAGE, rng))
    return correlations


def _batches(probe: keras.Model, pixels: np.ndarray, batch: int = 32):
    """The probe's outputs, as numpy arrays, one batch of `pixels` at a time."""
    for start in range(0, len(pixels), batch):
        outputs = probe(pixels[start:start + batch].astype(np.float32), training=False)
        yield [np.asarray(o) for o in (outputs if isinstance(outputs, list) else [outputs])]


def _activation_stats(probe: keras.Model, names: list[str], keep: list[str],
                      pixels: np.ndarray) -> tuple[dict[str, TensorStats], dict]:
    """Each output's histogram over its extremes on `pixels` (one pass finds them, a
    second counts), and the whole values of the outputs named in `keep` (the logits)."""
    low, high = np.zeros(len(names)), np.full(len(names), 1e-6)
    kept: dict[str, list] = {name: [] for name in keep}
    for outputs in _batches(probe, pixels):
        low = np.minimum(low, [o.min() for o in outputs])
        high = np.maximum(high, [o.max() for o in outputs])
        for name, o in zip(names, outputs):
            if name in kept:
                kept[name].append(o)
    stats = {name: TensorStats(float(lo), float(hi)) for name, lo, hi in zip(names, low, high)}
    for outputs in _batches(probe, pixels):
        for name, o in zip(names, outputs):
            stats[name].add(o)
    return stats, {name: np.concatenate(values) for name, values in kept.items()}


def _activation_quantizers(qat: keras.Model) -> tuple[dict, list[str]]:
    """{float layer name: (min, max) variables} of every activation quantizer, and the
    layers among them whose quantizer is a convolution's own output (the logits)."""
    targets, logits_layers = {}, []
    for layer in qat.layers:
        names = {short_name(w.name): w for w in layer.weights}
        for kind in ("output", "post_activation"):
            if f"{kind}_min" in names and layer.name.startswith("quant_"):
                name = layer.name[len("quant_"):]
                targets[name] = (names[f"{kind}_min"], names[f"{kind}_max"])
                if kind == "post_activation":
                    logits_layers.append(name)
    return targets, logits_layers


def quantize_without_transforms(model: keras.Model) -> keras.Model:
    """tfmot's default 8-bit scheme with its layout transforms switched off, and the
    quantization TFLite will run: a convolution that a ReLU reads is quantized after the
    ReLU only (the converter fuses the two into one op with one output range). Left to
    itself tfmot would also round the convolution's output before the ReLU, on a range
    that spends half its steps on negatives the device never stores."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras import (
        quantize_layout_transform)
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry)

    class NoTransforms(quantize_layout_transform.QuantizeLayoutTransform):
        def apply(self, model, layer_quantize_map):
            return model, layer_quantize_map

    class Scheme(tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme):
        def get_layout_transformer(self):
            return NoTransforms()

    fused = {layer.name for layer in model.layers if _read_by_relu_only(layer)}
    weights_only = registry.Default8BitConvQuantizeConfig(["kernel"], [], False)

    def annotate(layer):
        config = weights_only if layer.name in fused else None
        return tfmot.quantization.keras.quantize_annotate_layer(layer, config)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    with tfmot.quantization.keras.quantize_scope():
        return tfmot.quantization.keras.quantize_apply(annotated, Scheme())


def _read_by_relu_only(layer) -> bool:
    """A convolution whose output only a ReLU reads (the converter fuses the pair)."""
    if not isinstance(layer, keras.layers.Conv2D):
        return False
    readers = equalization.readers_of(layer)
    return len(readers) == 1 and isinstance(readers[0], keras.layers.ReLU)
