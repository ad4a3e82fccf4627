# Set-up and entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
# A tested PyTorch release. On Linux, PyPI's build includes CUDA; where a CPU-only
# wheel of this release is on pip's find-links, pip takes that one instead.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
VIEWER_ASSETS := src/mschange/viewer_assets
NIIVUE := $(VIEWER_ASSETS)/niivue.umd.js

.PHONY: install demo test test-fast lint bench gpu-check check-envs clean pretrained

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(NIIVUE)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# NiiVue for the offline viewer pages, from the npm registry at install time (never at run
# time): the version and checksums are pinned in tools/niivue/package-lock.json.
$(NIIVUE): tools/niivue/package-lock.json
	npm ci --prefix tools/niivue --ignore-scripts --no-audit --no-fund --loglevel=error
	cp tools/niivue/node_modules/@niivue/niivue/dist/niivue.umd.js $(NIIVUE)
	node -p "require('./tools/niivue/node_modules/@niivue/niivue/package.json').version" \
		> $(VIEWER_ASSETS)/niivue.version

demo: install
	$(BIN)/snakemake --cores $(CORES)
	@echo
	@echo "Done. Results are under $(CURDIR)/results/:"
	@echo "  preprocessed pairs   results/preproc/sub-*/"
	@echo "  QC table             results/qc/preprocessing_qc.tsv"
	@echo "  QC figures           results/qc/sub-*_desc-preproc_qc.png"
	@echo "  demo cohort          results/demo/ (cohort sheet: results/demo/cohort.tsv)"
	@echo "  VAEs and loss curves results/vae/encoder-*/"
	@echo "  SuperMix samples     results/supermix/sub-*/"
	@echo "  synthesis figures    results/synthesis/figures/"
	@echo "  change detector      results/detector/model-*/ (model.pt, training log and curve)"
	@echo "  predicted changes    results/predict/model-*/sub-*/ (maps on both grids, lesion table)"
	@echo "  BIDS derivatives     results/derivatives/mschange/ (per test pair: maps, lesion table,"
	@echo "                       summary page sub-*.html, offline viewer sub-*/figures/*_desc-viewer.html)"
	@echo "  evaluation           results/evaluation/ (per pair, method and blob size)"
	@echo "  report               results/report/index.html (tables also in results/report/tables/)"

lint: install
	$(BIN)/ruff check src tests scripts benchmarks tools
	$(BIN)/ruff format --check src tests scripts benchmarks tools
	$(BIN)/mypy
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules

# The unit tests first, stopping at the first failure (a broken unit fails in seconds),
# then the slow ones (HD-BET, ANTs on real data, Snakemake runs).
test: lint
	$(BIN)/pytest -ra -m "not slow" --maxfail=1
	$(BIN)/pytest -ra -m slow

# Unit tests only (seconds): no HD-BET, ANTs-on-real-data or Snakemake runs.
test-fast: install
	$(BIN)/pytest -ra -m "not slow"

bench: install
	$(BIN)/python benchmarks/preprocess_pair.py --repeats 3 --threads $(CORES)
	$(BIN)/python benchmarks/synthesis.py --subject demo01 --repeats 3 --threads $(CORES)
	$(BIN)/python benchmarks/detector.py --subject demo04 --repeats 3 --threads $(CORES)
	$(BIN)/python benchmarks/evaluation.py --subject demo04 --repeats 3 --threads $(CORES)
	$(BIN)/python benchmarks/dag.py --pairs 1000 --repeats 3
	$(BIN)/python benchmarks/sampler.py --threads $(CORES)

# The GPU check (docs/benchmarks.md): the CUDA tests, then one table of training
# throughput in float32 and bf16, peak GPU memory, prediction time and the paper preset's
# projected training time. Without a GPU: the tests on the CPU and a quick mode.
gpu-check: install
	bash benchmarks/gpu_check.sh --out results/gpu_check

# The shipped detector (src/mschange/models/flair-lesions-v1/, docs/pretrained.md),
# reproduced from ../shared/data in $(PRETRAINED_RUN): preprocessing of the 20
# real pairs, lesion painting, training with validation (about 2.5 h on 2 CPU cores),
# then copied into the package with its inference settings and data fingerprints.
DATA ?= ../shared/data
PRETRAINED_RUN ?= runs/pretrained
PRETRAINED_CONFIGS = $(CURDIR)/config.yaml $(CURDIR)/presets/real_training.yaml \
	$(CURDIR)/presets/pretrained_cpu.yaml
VALIDATION_SCANS = isbi2015-test01-01 isbi2015-test02-01 long-patient20-study2 cross-patient26

pretrained: install
	mkdir -p $(PRETRAINED_RUN)
	cd $(PRETRAINED_RUN) && ln -sfn $(abspath $(DATA))/open_ms_data open_ms_data && \
	$(abspath $(BIN))/mschange import-open-ms-data open_ms_data cohort.tsv --all-single \
		--isbi-dir $(abspath $(DATA))/isbi2015 --validation $(VALIDATION_SCANS) && \
	$(abspath $(BIN))/snakemake -s $(CURDIR)/Snakefile --cores $(CORES) \
		--configfile $(PRETRAINED_CONFIGS) && \
	$(abspath $(BIN))/mschange ship-model --configfile $(PRETRAINED_CONFIGS)

# Whether each conda env (envs/*.yaml) resolves on PyPI for its Python, without conda
# (needs the network; a minute or two). tests/test_envs.py checks the envs offline.
check-envs: install
	$(BIN)/python tools/check_envs.py

clean:
	rm -rf results .snakemake
