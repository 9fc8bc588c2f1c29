#!/usr/bin/env bash
# The whole kface pipeline on the bundled synthetic K-Face sample (sample_data/), end to end:
# extract -> crop -> split -> train -> export -> enroll -> identify -> evaluate, plus a training
# set made from photos without annotation files (step 3b), accuracy as deployed (step 7b), then
# the paper's sub-center cleaning (clean) and model inversion (invert).
# Run through `make demo` (which installs kface into .venv first). Takes a few minutes on 2 cores.
# Everything is written to demo_workspace/ (override with KFACE_DEMO_WORKDIR).
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLE="$PWD/sample_data"
export KFACE_WORKDIR="${KFACE_DEMO_WORKDIR:-$PWD/demo_workspace}"
rm -rf "$KFACE_WORKDIR"
mkdir -p "$KFACE_WORKDIR"
step() { printf '\n\033[1;36m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "1. Extract the tutorial's selection (S001; L1, L3; E01-E03; C6-C9) from the K-Face zips" \
  kface extract "$SAMPLE"
step "   ... plus dark lights and wider camera angles, to see later what they cost" \
  kface extract "$SAMPLE" --lux L6,L7 --expr E01 --angle C7
step "" kface extract "$SAMPLE" --lux L1 --expr E01 --angle C1,C5,C10

step "2. Crop 112x112 faces aligned to the ArcFace template" kface crop
step "3. Identity-disjoint train/val/test split with verification pairs (test: 10 people no choice ever sees)" \
  kface split --val-ids 8 --test-ids 10 --seed 0
# Your own photos: no annotation files, any names, any folder depth. Four of the sample people
# become "my_photos/<name>/<light>/*.jpg" with Korean names; crop finds their faces with the
# detector (as `kface identify` will) and writes a training set `kface split` and `kface train` read.
python3 - <<'PY'
import os, shutil
from pathlib import Path
ws = Path(os.environ["KFACE_WORKDIR"])
raw = ws / "raw" / "Middle"
names = ["김민준", "이서연", "박지호", "최수아"]
for name, ident in zip(names, sorted(p.name for p in raw.iterdir())):
    for photo in sorted((raw / ident).rglob("*.jpg")):
        light, cam = photo.parts[-3], photo.stem  # .../S001/<L>/<E>/<C>.jpg
        dst = ws / "my_photos" / name / light / f"{photo.parts[-2]}_{cam}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, dst)  # the photo only: no .txt annotation
print("my_photos/: 4 people, photos without annotation files")
PY
step "3b. Own photos without annotation files -> a training set (detector landmarks), in workspace own/" \
  kface crop "$KFACE_WORKDIR/my_photos" -w "$KFACE_WORKDIR/own"
step "" kface split --faces "$KFACE_WORKDIR/own/faces/my_photos" --val-ids 2 -w "$KFACE_WORKDIR/own"

step "4. Train a MobileFaceNet from scratch with ArcFace (shipped config: demo_mbf)" \
  kface train --config demo_mbf --name demo
step "5. Export the best model to ONNX (checks itself against torch)" \
  kface export --model "$KFACE_WORKDIR/runs/demo" --out "$KFACE_WORKDIR/demo.onnx"

# A gallery of the test people (seen by no training and no choice): one frontal photo each, with
# its K-Face landmark file; probes: other photos of them, and of three people who are not enrolled.
python3 - <<'PY'
import os, shutil
from pathlib import Path
ws = Path(os.environ["KFACE_WORKDIR"])
raw = ws / "raw" / "Middle"
people = sorted(p.name for p in (ws / "split" / "test").iterdir())
train = sorted(p.name for p in (ws / "split" / "train").iterdir())
def copy(src_rel, dst):
    src = raw / src_rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src.with_suffix(".jpg"), dst.with_suffix(".jpg"))
    shutil.copy(src.with_suffix(".txt"), dst.with_suffix(".txt"))
for i in people:
    copy(f"{i}/S001/L1/E01/C7", ws / "people" / i / "L1_E01_C7")
for i in people[:4] + train[:3]:
    copy(f"{i}/S001/L3/E02/C8", ws / "probes" / f"{i}_L3_E02_C8")
print(f"people/: {len(people)} enrolled test identities; probes/: 4 of them + 3 unknown people")
PY
step "6. Enroll the test people into an HDF5 gallery with a FAISS index" \
  kface enroll "$KFACE_WORKDIR/people" --model "$KFACE_WORKDIR/demo.onnx"
step "7. Evaluate on the test split: verification, identification, per condition; thresholds for FAR 1% (1:1) and FPIR 10% (1:N) chosen on val, measured again on test" \
  kface evaluate --model "$KFACE_WORKDIR/demo.onnx" --target-far 1e-2 --target-fpir 1e-1 --save-threshold --name demo
step "7b. Accuracy as deployed: the test faces aligned again from their photos by the detector, as identify does" \
  kface evaluate --model "$KFACE_WORKDIR/demo.onnx" --landmarks detect --name demo-deployed --no-conditions
step "8. Identify the probes: 4 enrolled people in other light/expression/angle, and 3 people who are not enrolled" \
  kface identify "$KFACE_WORKDIR/probes" --model "$KFACE_WORKDIR/demo.onnx" --annotate "$KFACE_WORKDIR/annotated"

step "9. The paper's sub-center ArcFace on the same data (a quick 2-epoch run, K=3 sub-centers per identity)" \
  kface train --config demo_mbf --loss subcenter --epochs 2 --val-pairs none --name demo-sub
step "   ... flags the training images far from their identity's dominant sub-center (CSV + contact sheet)" \
  kface clean demo-sub --sheet-max 12
FIRST="$(ls "$KFACE_WORKDIR/people" | head -n 1)"
step "10. Invert a gallery template back into a face (BatchNorm prior; torch weights of the demo run)" \
  kface invert --model "$KFACE_WORKDIR/runs/demo" --name "$FIRST" --out "$KFACE_WORKDIR/inverted.png" --steps 100

printf '\n\033[1;32mDemo finished.\033[0m Workspace: %s (runs/demo, gallery.h5, reports/demo, annotated/, reports/clean-demo-sub, inverted.png)\n' "$KFACE_WORKDIR"
