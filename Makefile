# Two commands do everything, set-up included, on a fresh Debian machine as root:
#   make run [SCREENSHOT=out.png]   napari with a sample scan and this plugin's widgets
#   make test                       the whole test suite under a virtual display
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# The CPU torch wheel lies on disk on our machines; elsewhere pip takes it from PyPI.
WHEELS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEBS   := xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
          libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 \
          libdbus-1-3 libfontconfig1 libglib2.0-0 orthanc orthanc-dicomweb dicom3tools
SCREENSHOT ?=

.PHONY: run test setup debs

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The stamp is remade when pyproject.toml changes. torch is pinned to the CPU wheel here;
# pyproject keeps a range for users who bring their own (CUDA, MPS) build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q $(WHEELS) torch==2.13.0
	$(PY) -m pip install -q -e '.[test,codecs,pyqt6,bench]' pydicom-data
	touch $@

setup: debs $(VENV)/.installed

run: setup
	$(PY) -m napari_medattn.launch $(if $(SCREENSHOT),--screenshot $(SCREENSHOT))

test: setup
	QT_API=pyqt6 $(PY) -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)
