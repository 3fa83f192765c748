# Single entry point: `make install`, `make test`, `make demo`.
# Set SKIP_DETECTRON2=1 if Detectron2 is already importable by $(PYTHON) (e.g. built from source
# in your own environment, together with VENV=/path/to/your/venv).

PYTHON_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SKIP_DETECTRON2 ?= 0
D2_VERSION := 0.7.2
D2_WHEEL := sal_detectron2-$(D2_VERSION)-cp310-none-any.whl
D2_SHA256 := 491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
WHEELHOUSE := $(VENV)/wheelhouse
STAMPS := $(VENV)/.stamps
DEMO_OUT ?= output/demo
PYTEST_ARGS ?=

.PHONY: install test demo lint clean-venv chromium

install: $(STAMPS)/project $(STAMPS)/chromium

$(PY):
	$(PYTHON_SYS) -m venv $(VENV)

$(STAMPS)/torch: | $(PY)
	$(PIP) install --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/requirements: requirements.txt $(STAMPS)/torch
	$(PIP) install --disable-pip-version-check -r requirements.txt
	@touch $@

# Detectron2 has no canonical wheel: take the pinned PyPI build, verify its sha256, and unpack
# it with PyPA's installer (its cp310 tag blocks a plain `pip install` on Python 3.11).
$(STAMPS)/detectron2: $(STAMPS)/requirements
ifeq ($(SKIP_DETECTRON2),1)
	$(PY) -c "import detectron2" || (echo "SKIP_DETECTRON2=1 but detectron2 is not importable by $(PY)" && exit 1)
else
	@mkdir -p $(WHEELHOUSE)
	@if ! echo "$(D2_SHA256)  $(WHEELHOUSE)/$(D2_WHEEL)" | sha256sum -c --status 2>/dev/null; then \
		rm -f $(WHEELHOUSE)/$(D2_WHEEL); \
		$(PIP) download --disable-pip-version-check --no-deps --only-binary=:all: \
			--python-version 3.10 sal-detectron2==$(D2_VERSION) -d $(WHEELHOUSE); \
	fi
	echo "$(D2_SHA256)  $(WHEELHOUSE)/$(D2_WHEEL)" | sha256sum -c
	@if $(PY) -c "import importlib.metadata as m; assert m.version('sal-detectron2') == '$(D2_VERSION)'" 2>/dev/null; then \
		echo "sal-detectron2 $(D2_VERSION) already installed"; \
	else \
		$(PY) -m installer $(WHEELHOUSE)/$(D2_WHEEL); \
	fi
endif
	@touch $@

$(STAMPS)/project: setup.py $(STAMPS)/detectron2
	$(PIP) install --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c "import panoptic_ext"
	@touch $@

# The browser test's Chromium: Debian's package, driven by Playwright (no browser download).
# Installed only where /usr/bin/chromium is missing; where apt-get cannot install it (no apt,
# not root, offline), tests/serve/test_page.py skips and says why. `make chromium` retries.
$(STAMPS)/chromium: | $(PY)
	@if [ -x /usr/bin/chromium ]; then \
		echo "chromium: /usr/bin/chromium"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) || \
		echo "WARNING: apt-get could not install chromium: the browser test will skip"; \
	else \
		echo "WARNING: no apt-get: install Chromium as /usr/bin/chromium for the browser test"; \
	fi
	@mkdir -p $(STAMPS) && touch $@

chromium:
	rm -f $(STAMPS)/chromium
	$(MAKE) $(STAMPS)/chromium

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .

DEMO_CONFIG ?= configs/Synthetic/panoptic_fpn_R_50.yaml
DEMO_OPTS ?=
DATA_ROOT := $${DETECTRON2_DATASETS:-datasets}

# The main job: generate data, train from scratch on CPU (resumes if interrupted), evaluate,
# and draw the validation images.
demo: install
	$(PY) datasets/prepare_synthetic.py
	$(PY) tools/train_net.py --config-file $(DEMO_CONFIG) --resume OUTPUT_DIR $(DEMO_OUT) $(DEMO_OPTS)
	$(PY) tools/demo.py --config-file $(DEMO_CONFIG) \
		--input "$(DATA_ROOT)/synthetic_panoptic/val/0000010000[01]?.jpg" \
		--output $(DEMO_OUT)/pictures --opts MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth
	@echo "Model: $(DEMO_OUT)/model_final.pth"
	@echo "Metrics: $(DEMO_OUT)/inference/synthetic_panoptic_val_separated/metrics.json"
	@echo "Pictures: $(DEMO_OUT)/pictures/"

clean-venv:
	rm -rf $(VENV)
