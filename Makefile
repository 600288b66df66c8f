# The way in. `make setup` once, then `make quantize` (the main job) or any stage.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

WEIGHTS ?= auto
INPUT_SIZE ?= 299
NUM_CLASSES ?= 1000
DEPTH_MULTIPLIER ?= 1.0
SEED ?= 0
OUT ?= artifacts
BUILD_ARGS = --weights $(WEIGHTS) --input-size $(INPUT_SIZE) --num-classes $(NUM_CLASSES) \
	--depth-multiplier $(DEPTH_MULTIPLIER) --seed $(SEED)

VARIANTS ?=
CALIB ?= calibration_data
CALIB_SAMPLES ?= 200
EVAL ?=
MAX_TOP1_DROP ?=
MIN_AGREEMENT ?=
FALLBACK_BUDGET ?= 6
EQUALIZE ?= 1
GPTQ ?= 1
MODEL ?=
INT8_POOLS ?= float
QUANTIZE_ARGS = --variants "$(VARIANTS)" --calib $(CALIB) --calib-samples $(CALIB_SAMPLES) \
	$(if $(filter int8,$(INT8_POOLS)),--integer-pools) \
	$(if $(EVAL),--eval $(EVAL)) $(if $(MAX_TOP1_DROP),--max-top1-drop $(MAX_TOP1_DROP)) \
	$(if $(MIN_AGREEMENT),--min-agreement $(MIN_AGREEMENT)) \
	--fallback-budget $(FALLBACK_BUDGET) $(if $(filter 0,$(EQUALIZE)),--no-equalize) \
	$(if $(filter 0,$(GPTQ)),--no-gptq) \
	$(if $(MODEL),--model $(MODEL),$(BUILD_ARGS))

.PHONY: setup setup-peers setup-tflite-runtime test test-fast build train reference quantize qat eval test-arm bundle bench bench-arm clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The device runtime on tflite-runtime (numpy < 2), beside the pipeline's environment;
# tests/test_tflite_runtime.py compares it with ai-edge-litert when it is there.
TFLITE_RUNTIME_VENV := .venv-tflite-runtime
setup-tflite-runtime: $(TFLITE_RUNTIME_VENV)/.installed

$(TFLITE_RUNTIME_VENV)/.installed: requirements-tflite-runtime.txt
	test -x $(TFLITE_RUNTIME_VENV)/bin/python || $(PYTHON) -m venv $(TFLITE_RUNTIME_VENV)
	$(TFLITE_RUNTIME_VENV)/bin/python -m pip install --quiet -r requirements-tflite-runtime.txt
	touch $@

# Optional peers for make bench: ONNX Runtime (tf2onnx) and OpenVINO (NNCF).
setup-peers: $(VENV)/.peers-installed

$(VENV)/.peers-installed: requirements-peers.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-peers.txt
	touch $@

# Two pytest-xdist workers, each taking whole test files (--dist loadfile), so that a
# module's fixtures are built once: most tests wait on one core (TensorFlow on tiny models,
# process start-up), so two share a 2-core machine. (xdist 3.8's loadgroup does not group
# under pytest 9, which no longer reads a node id from the field xdist rewrites.)
test: setup
	$(PY) -m pytest -q --durations=15 -n 2 --dist loadfile tests

test-fast: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

build: setup
	$(PY) -m build $(BUILD_ARGS) --out $(OUT)/float

quantize: setup
	$(PY) -m quantize $(QUANTIZE_ARGS) --out $(OUT)

# WORKERS=N: make train and make qat train on N local workers (tf.distribute), make eval
# RUNNER=beam evaluates on N local Beam workers.
WORKERS ?= 1

# Training: make train DATA=<folder, one sub-folder per class> [VAL=<folder>] writes the
# float model into $(OUT)/float, where make quantize / make qat take it as it is.
DATA ?=
VAL ?=
EPOCHS ?= 10
BATCH_SIZE ?= 32
LEARNING_RATE ?= 1e-3
TRAIN_ARGS ?=
train: setup
	$(PY) -m build.train --data $(DATA) $(if $(VAL),--val $(VAL)) --out $(OUT)/float \
		--input-size $(INPUT_SIZE) --depth-multiplier $(DEPTH_MULTIPLIER) \
		--weights $(WEIGHTS) --epochs $(EPOCHS) --batch-size $(BATCH_SIZE) \
		--learning-rate $(LEARNING_RATE) --seed $(SEED) --workers $(WORKERS) $(TRAIN_ARGS)

# The strong reference model every accuracy figure in benchmarks/ is measured on:
# InceptionV3 (depth multiplier 0.5) trained from random weights on Imagenette's train
# split at 128x128, validated on its val split. About 45 minutes on 2 cores, once: it is
# kept in $(REFERENCE)/float and a rerun is a no-op (an interrupted one resumes).
IMAGENETTE ?= ../shared/datasets/imagenette
REFERENCE ?= artifacts/reference
reference: setup
	test -f $(REFERENCE)/float/model_card.json || \
	$(PY) -m build.train --data $(IMAGENETTE)/train --val $(IMAGENETTE)/val \
		--out $(REFERENCE)/float --input-size 128 --depth-multiplier 0.5 --weights random \
		--epochs 30 --batch-size 32 --learning-rate 2e-3 --seed 0

# Quantization-aware training on DATA, then every variant plus qat and qat-fallback, with the drift report.
QAT_EPOCHS ?= 2
qat: setup
	$(PY) -m quantize $(QUANTIZE_ARGS) --out $(OUT) --qat-data $(DATA) \
		$(if $(VAL),--qat-val $(VAL)) --qat-epochs $(QAT_EPOCHS) --workers $(WORKERS)

# Accuracy on a labelled folder: MODEL=<float folder or .tflite>, or RUN=<quantize OUT>.
# RUNNER=beam evaluates a run as an Apache Beam pipeline: WORKERS=N local processes, or
# BEAM_ARGS="--runner=FlinkRunner ..." for a cluster.
RUN ?=
RUNNER ?= process
BEAM_ARGS ?=
eval: setup
	@case "$(RUNNER)" in process|beam) ;; *) echo "error: RUNNER=$(RUNNER): use process or beam" >&2; exit 2;; esac
	$(PY) -m quantize.evaluate --data $(DATA) $(if $(RUN),--run $(RUN),--model $(MODEL)) \
		$(if $(filter beam,$(RUNNER)),--beam --workers $(WORKERS) $(BEAM_ARGS))

# A deploy bundle of one variant of a quantize run (VARIANT=int8, uint8, ...).
VARIANT ?= int8
bundle: setup
	$(PY) -m quantize.bundle --model $(OUT)/inception_v3_$(VARIANT).tflite

# Benchmarks of the quantize run in OUT (made first if missing): every variant, the float
# Keras model and the peers that are installed, at each of THREADS; writes
# $(BENCH_OUT)/<NAME>.json, .md and .png. EVAL=<labelled folder> adds top-1 drift.
THREADS ?= 1,2
RUNS ?= 30
NAME ?=
PEERS ?= onnxruntime,openvino
EVAL_SAMPLES ?= 500
BENCH_OUT ?= benchmarks/results
bench: setup
	test -f $(OUT)/manifest.json || $(MAKE) quantize
	$(PY) -m benchmarks --run $(OUT) --threads $(THREADS) --runs $(RUNS) --peers $(PEERS) \
		$(if $(NAME),--name $(NAME)) --out $(BENCH_OUT) \
		$(if $(EVAL),--eval $(EVAL) --eval-samples $(EVAL_SAMPLES))

# ARM, proven: the runtime on aarch64 under qemu user mode against x86, same models.
ARM_OUT := artifacts/arm
ARM_IMAGES := calibration_data/skimage_coffee.jpg calibration_data/skimage_chelsea.jpg \
	calibration_data/sklearn_china.jpg
ARM_MODELS := $(ARM_OUT)/models/inception_v3_int8.tflite $(ARM_OUT)/models/inception_v3_uint8.tflite
test-arm: setup
	mkdir -p $(ARM_OUT)
	$(PY) -m quantize --weights random --input-size 96 --depth-multiplier 0.5 --seed 0 \
		--variants int8,uint8 --no-layer-errors --out $(ARM_OUT)/models > $(ARM_OUT)/quantize.log
	bash tests/arm/setup_root.sh
	$(PY) tests/arm/parity.py run --out $(ARM_OUT)/x86.npz --models $(ARM_MODELS) \
		--images $(ARM_IMAGES)
	bash tests/arm/run_arm.sh tests/arm/parity.py run --out $(ARM_OUT)/arm.npz \
		--models $(ARM_MODELS) --images $(ARM_IMAGES)
	$(PY) tests/arm/parity.py compare $(ARM_OUT)/x86.npz $(ARM_OUT)/arm.npz
	@echo "Raspberry Pi OS Bullseye (Python 3.9): requirements-py39.txt, then tflite-runtime"
	SUITE=bullseye bash tests/arm/setup_root.sh requirements-py39.txt site
	SUITE=bullseye bash tests/arm/setup_root.sh requirements-tflite-runtime.txt site-tflite-runtime
	for site in site site-tflite-runtime; do \
	  SUITE=bullseye SITE=$$site bash tests/arm/run_arm.sh tests/arm/parity.py run \
	    --out $(ARM_OUT)/bullseye-$$site.npz --models $(ARM_MODELS) --images $(ARM_IMAGES) && \
	  $(PY) tests/arm/parity.py compare --top1 $(ARM_OUT)/x86.npz \
	    $(ARM_OUT)/bullseye-$$site.npz || exit 1; \
	done

# ARM cost without a board: instructions per inference of every variant of OUT (and
# ONNX=<folder of .onnx peers>, e.g. $(OUT)/bench/peers after make bench) under qemu, as
# a Cortex-A72 (Pi 4) and a Cortex-A76 (Pi 5). Root; installs Debian's qemu-user and gcc.
ONNX ?=
bench-arm: setup
	command -v qemu-aarch64 >/dev/null && command -v gcc >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		 --no-install-recommends qemu-user gcc >/dev/null)
	bash tests/arm/setup_root.sh
	$(if $(ONNX),bash tests/arm/setup_root.sh benchmarks/arm/requirements-ort.txt site-ort)
	$(PY) -m benchmarks.arm_cost --run $(OUT) $(if $(ONNX),--onnx $(ONNX)) \
		$(if $(NAME),--name $(NAME)) --out $(BENCH_OUT)

clean:
	rm -rf artifacts
