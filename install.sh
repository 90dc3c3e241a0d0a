#!/usr/bin/env bash
# Installs speechprune on a fresh Debian machine: the Debian packages it reads (real speech), then a virtual
# environment with the package and its pinned dependencies. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"

# real speech for evaluation; TTS engines and text corpora for synthetic training speech; an English word list
DEBS=(asterisk-core-sounds-en-wav asterisk-core-sounds-en espeak-ng flite fortunes bible-kjv bible-kjv-text wamerican)
# out-of-domain English evaluation speech (speechprune.data.sources; ~790 MB installed, drascula pulls in scummvm)
DEBS+=(drascula warzone2100-data tuxpaint-stamps-default ktuberling-data klettres-data saytime)
# real English without transcripts for recovery and calibration, never evaluated on (speechprune.data.unlabelled;
# ~245 MB: game voices and amateur radio; megaglest-data and openarena-data also work but hold minutes per 350 MB)
DEBS+=(flight-of-the-amazon-queen hedgewars-data codec2-examples)
# English text for language models (speechprune.data.text, the english-text corpus, with fortunes and bible-kjv-text
# above; ~25 MB): the 1913 Webster's, and Spurgeon's Treasury of David exported by mod2imp
DEBS+=(dict-gcide libsword-utils sword-comm-tdavid)
# multilingual speech (speechprune.data.asterisk, speechprune.data.fillets; ~260 MB installed): the Asterisk
# prompts in es, fr, it, ru (the -wav package by name: the plain one holds the texts but pulls in -gsm) and
# Fish Fillets NG in cs, nl
DEBS+=(asterisk-core-sounds-{es,fr,it,ru}-wav asterisk-core-sounds-{es,fr,it,ru} fillets-ng-data fillets-ng-data-cs
       fillets-ng-data-nl)
# read Russian sentences (speechprune.data.festvox; a 179 MB package, ~240 MB installed; it pulls in festival, which
# speechprune does not use: it reads the voice's recordings and texts)
DEBS+=(festvox-ru)
missing=()
for p in "${DEBS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# the Debian packages download and unpack while pip fills the virtual environment (neither needs the other)
apt_pid=""
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  ( $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
       >/dev/null ) &
  apt_pid=$!
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch==2.13.0 is pinned in pyproject.toml: the CPU wheel; an unpinned torch would pull a CUDA build.
# the openvino extra: OpenVINO GenAI's Whisper pipeline, the second peer beside faster-whisper (docs/dependencies.md);
# ray: job lists (sweeps, ablations) on a Ray cluster (--executor ray), tested here on a 2-CPU local one;
# federated: Flower's simulation engine (federated fine-tuning with federated dropout), tested with 2 clients
.venv/bin/python -m pip install -q -e ".[test,openvino,ray,federated]"
if [ -n "$apt_pid" ] && ! wait "$apt_pid"; then
  echo "install.sh: apt-get could not install: ${missing[*]}" >&2
  exit 1
fi
echo "installed: $(.venv/bin/speechprune --help >/dev/null && echo ok) ($(.venv/bin/python -c 'import speechprune; print(speechprune.__version__)'))"
