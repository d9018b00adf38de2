# Two entry points (README Quick start): `make demo` and `make test`.
# Each creates .venv with Python 3.11, installs the CPU torch wheel first (so pip never pulls a
# CUDA build), builds elasticdeform from source (its 0.5.1 wheel fails to import with numpy 2),
# then the project.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
CASE ?= $(DATA)/prostate158/001/t2.nii.gz

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q "numpy>=1.24,<2.4" setuptools wheel
	$(BIN)/pip install -q --no-build-isolation --no-binary elasticdeform elasticdeform==0.5.1
	$(BIN)/pip install -q -e ".[test,browser,serve,onnx,pacs]"
	$(BIN)/python -c "import elasticdeform, torch, monai; print('ok: torch', torch.__version__, 'monai', monai.__version__)"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/ensemble predict $(CASE) -o demo_out --report --force
	@echo "outputs in demo_out/"

test: venv
	$(BIN)/python -m pytest -q

# Retrain the bundled default ensemble from scratch (about 10 h on 2 quiet cores; needs TAPS for the
# teacher labels: bash bench/setup_peers.sh). Stage one, the locator, is trained on silver and teacher
# labels only (no expert case, so it serves every fold); then 3 patient-level folds x (2D U-Net, 2.5D
# U-Net, 2D DynUNet, each on its long schedule; the shipped 2.5D DynUNet, DYN25_SCALE below) on a fixed
# schedule (the held-out fold decides nothing), and the ablation members (each family on its short
# schedule, the 2D U-Net without the teacher, the 3D DynUNet scored by bench/candidate_cv.py, and the
# short DynUNet with one change each: per-zone intensity shift, N4 in its preprocessing, and self-training
# on the long members' confident zones, `make bundle-pseudo`; the three families with wide scale
# augmentation, SCALE_AUG below).
# `make bundle-pack` then scores the held-out folds (cross-validated), packs ensemble/models/default
# with its model card, writes the review limits into it and exports ONNX (`make review-limits`), and runs
# the benches: TAPS side by side (plain and with N4) and bench/bundle_ablations.py (one stage vs two,
# margin, flips, teacher, schedule, N4, the DynUNet variants).
# After a retrain, `make review-bench` measures the new bundle on the failure set and re-fits its limits.
BUNDLE_RUNS := runs/bundle
BUNDLE_YAML := ensemble/models/default/ensemble.yaml
# The DynUNet ablations (configs/bundle/dynunet_ablation.yaml): configs/bundle/dynunet2d.yaml with one
# change each, so nothing else can differ.
DYN_ZONE := --set name=dynunet2d_zone --set augment.zone_p=0.3
DYN_N4 := --set name=dynunet2d_n4 --set preprocess.n4=true
# Self-training: each fold trains on its own pseudo labels (make bundle-pseudo); the short DynUNet
# ablation, and the long families as <family>_long_pseudo (configs/bundle/selftrain_ablation.yaml).
PSEUDO_LABELS := --set data.teacher=runs/pseudo/fold_{fold}/labels/datalist.json
DYN_PSEUDO := --set name=dynunet2d_pseudo $(PSEUDO_LABELS)
# Scale augmentation (candidates, not shipped: bench/results/scale_dynunet_cv.json, scale_all_cv.json): zoom
# in [0.7, 1.3] on half the patches instead of [0.9, 1.1] on 30 %, nothing else changed. The DynUNet trains
# from scratch; the two U-Nets fine-tune 50 epochs at lr 0.001 from the same fold's long member (which never
# saw that fold's held-out patients).
SCALE_AUG := --set augment.scale_p=0.5 --set augment.scale_range=0.3
SCALE_FINETUNE := $(SCALE_AUG) --set train.epochs=50 --set train.lr=0.001
# The shipped 2.5D DynUNet (one neighbouring slice each side as channels) with the wide zoom, from scratch, in
# place of the 2.5D U-Net family (bench/results/dynunet25d_cv.json, dynunet25d_ws_cv.json, the card).
DYN25_SCALE := --set name=dynunet25d_scale --set model.context=1 $(SCALE_AUG)
BUNDLE_MEMBERS := $(foreach c,unet2d_long dynunet25d_scale dynunet2d_long,$(foreach f,0 1 2,$(BUNDLE_RUNS)/$(c)/fold_$(f)))
bundle: bundle-train bundle-pack

bundle-train: venv
	$(BIN)/python -m bench.peer_accuracy --teacher runs/teacher --data $(DATA)
	$(BIN)/segment train --config configs/bundle/locator.yaml --fold all --force
	for c in unet2d_long unet25d_long dynunet2d_long dynunet3d unet2d unet25d dynunet2d unet2d_noteacher; do for f in 0 1 2; do \
	  $(BIN)/segment train --config configs/bundle/$$c.yaml --fold $$f --force || exit 1; done; done
	$(MAKE) bundle-pseudo
	for f in 0 1 2; do for v in "$(DYN_ZONE)" "$(DYN_N4)" "$(DYN_PSEUDO)"; do \
	  $(BIN)/segment train --config configs/bundle/dynunet2d.yaml --fold $$f --force $$v || exit 1; done; done
	for c in dynunet2d_long unet25d_long; do for f in 0 1 2; do \
	  $(BIN)/segment train --config configs/bundle/$$c.yaml --fold $$f --force --set name=$${c}_pseudo $(PSEUDO_LABELS) || exit 1; done; done
	for f in 0 1 2; do \
	  $(BIN)/segment train --config configs/bundle/dynunet2d_long.yaml --fold $$f --force --set name=dynunet2d_scale $(SCALE_AUG) || exit 1; \
	  for c in unet2d unet25d; do $(BIN)/segment train --config configs/bundle/$${c}_long.yaml --fold $$f --force \
	    --init-from $(BUNDLE_RUNS)/$${c}_long/fold_$$f --set name=$${c}_scale $(SCALE_FINETUNE) || exit 1; done; \
	  $(BIN)/segment train --config configs/bundle/dynunet2d_long.yaml --fold $$f --force $(DYN25_SCALE) || exit 1; done

# Self-training labels, fold by fold: fold K's shipped members (the three long families) predict the
# teacher studies, and `segment pseudo-label` keeps their zones inside TAPS's glands where confident
# (the DynUNet ablation DYN_PSEUDO trains on them).
bundle-pseudo: venv
	for f in 0 1 2; do \
	  $(BIN)/ensemble predict runs/teacher/datalist.json --probabilities -o runs/pseudo/fold_$$f/pred --force \
	    --set "members=[$(BUNDLE_RUNS)/unet2d_long/fold_$$f,$(BUNDLE_RUNS)/unet25d_long/fold_$$f,$(BUNDLE_RUNS)/dynunet2d_long/fold_$$f]" || exit 1; \
	  $(BIN)/segment pseudo-label --predictions runs/pseudo/fold_$$f/pred --teacher runs/teacher/datalist.json \
	    -o runs/pseudo/fold_$$f/labels --force || exit 1; done

bundle-pack: venv
	$(BIN)/ensemble evaluate --config configs/ensemble/default.yaml --cv --ref $(DATA) -o $(BUNDLE_RUNS)/cv_report --force
	$(BIN)/ensemble pack $(BUNDLE_MEMBERS) --locator $(BUNDLE_RUNS)/locator/fold_all -o ensemble/models/default \
	  --set whole_slice=true --cv-report $(BUNDLE_RUNS)/cv_report --notes configs/bundle/MODEL_CARD_NOTES.md --force
	$(MAKE) review-limits
	$(BIN)/python -m bench.peer_accuracy --data $(DATA) --rerun-ours
	$(BIN)/python -m bench.peer_accuracy --data $(DATA) --set n4=true --out bench/results/peer_taps_n4.json \
	  --cases promise12/Case00 philips/Philips-01 philips/Philips-02 philips/Philips-03 philips/Philips-04 \
	  prostate158/001 prostate158/002 prostate158/021
	$(BIN)/python -m bench.bundle_ablations --data $(DATA)

# What the package ships is made here, by package functions, and stored once:
# - the gland reference of the review's volume and TZ-share checks (mricore/gland_reference.json);
# - the fitted review limits, in the review section of the bundle's ensemble.yaml only (code and the
#   training-side configs/ensemble/default.yaml carry none; a config without them takes the bundle's):
#   `review-limits` fits them on half A of the out-of-sample rows bench/qa_oos.py measured
#   (bench/results/qa_oos.json: every study mapped by members that never saw it) and writes them into
#   the bundle's ensemble.yaml and its ONNX export's; `review-bench` measures those rows again first:
#   the in-sample run (bench/qa_bench.py, 22 min), the calibration folds (bench/calibration_folds.py,
#   about 70 min) and the out-of-sample run, 2 cores.
gland-reference: venv
	$(BIN)/python -m mricore.gland_reference --data $(DATA) --force

CALIBRATION := --config runs/bundle/calibration/ensemble.yaml --locators runs/bundle/locator_calA/fold_all runs/bundle/locator_calB/fold_all

review-limits: venv
	for y in $(BUNDLE_YAML) ensemble/models/default/onnx/ensemble.yaml; do \
	  $(BIN)/python -m mricore.review_limits bench/results/qa_oos.json --config $$y --force || exit 1; done
	$(BIN)/python -m bench.qa_oos --data $(DATA) $(CALIBRATION) --rows bench/results/qa_oos.json

review-bench: venv
	$(BIN)/python -m bench.qa_bench --data $(DATA)
	$(BIN)/python -m bench.calibration_folds --data $(DATA)
	$(BIN)/python -m bench.qa_oos --data $(DATA) $(CALIBRATION)
	$(MAKE) review-limits

# Every published figure (docs/RESULTS.md, docs/candidates.md, the figures of the model card and the
# README's headline block) generated from bench/results/*.json; measures nothing, writes no weights.
results: venv
	$(BIN)/python -m bench.figures

.PHONY: results venv demo test bundle bundle-train bundle-pack bundle-pseudo gland-reference review-limits review-bench
