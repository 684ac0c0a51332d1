#!/usr/bin/env bash
# One GPU session in one command: `em` on burn's wgpu backend and the PyTorch twin on CUDA, on the
# same card, then a short MNIST training run of configs/mnist_unet_vit.toml and its samples.
#
# Prepare on a build machine first (scripts/gpu-prepare.sh writes gpu/: the gzipped `em` built
# with `--features wgpu`, MNIST as .gz, the Vulkan loader .deb). On the GPU machine, from the
# repository root, with gpu/ beside it:
#
#   OUT=/some/dir bash bench/gpu_session.sh
#
# Knobs (environment): CONFIG (configs/mnist_unet_vit.toml), DEVICE (wgpu), BATCH (128, the
# config's), BUDGET_S (whole script, 540: a device call may run 600 s), BENCH_S (em bench's
# seconds, 28 % of BUDGET_S), TORCH (1; 0 skips PyTorch), TRAIN_S (seconds of training, 180),
# SAMPLE_S (seconds of sampling, 90), MAX_SAMPLES (5000), REPS (5), PYTHON (python3),
# TRAIN_SETS (more `key=value` overrides for `em train`, space-separated). Every stage's time
# limit is cut to what is left of BUDGET_S, and training to what leaves room for sampling.
# Under $OUT it leaves 7 files: summary.md (both benchmark tables, the training and sampling
# figures, the MNIST classifier score), session.log, gpu-use.csv (the card's utilisation, memory
# and power every 5 s), metrics.jsonl, samples.npy (at most 5,000: a returned file must stay
# under 16 MiB), samples.png, and the final checkpoint's JSON sidecar (its 30 MB of weights stay
# on the machine). Compute FID afterwards on any machine with
#   em fid --images OUT/samples.npy --ref mnist-test:data/mnist
# Each stage has its own time limit, so a slow stage leaves the others' numbers.
set -uo pipefail

DEVICE="${DEVICE:-wgpu}"
BATCH="${BATCH:-128}"
BUDGET_S="${BUDGET_S:-540}"
TRAIN_S="${TRAIN_S:-180}"
SAMPLE_S="${SAMPLE_S:-90}"
MAX_SAMPLES="${MAX_SAMPLES:-5000}"
REPS="${REPS:-5}"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:?set OUT to the folder for results}"
CONFIG="${CONFIG:-configs/mnist_unet_vit.toml}"
work="$(mktemp -d)"
log="$OUT/session.log"
summary="$OUT/summary.md"
mkdir -p "$OUT"
: >"$log"

say() { echo "$*" >>"$summary"; }
started=$(date +%s)
# seconds a stage may take: $1, or what is left of BUDGET_S less $2 (kept for later stages)
cap() { local left=$((BUDGET_S - ($(date +%s) - started) - ${2:-0}))
    [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"; }
stage() { echo "== $* ($(date +%T))" | tee -a "$log"; }

# --- the machine: Vulkan loader, the NVIDIA driver's ICD, the binary, the data -------------------
# (the NVIDIA ICD, libGLX_nvidia, needs glvnd's libGLdispatch: the image has neither loader)
if ls gpu/debs/*.deb >/dev/null 2>&1; then
    for f in gpu/debs/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json; do
    if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && [ -f "$icd" ]; then
        export VK_DRIVER_FILES="$icd"
    fi
done
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
{ ldconfig -p | grep -E 'libvulkan|GLdispatch|GLX_nvidia|nvidia-glvk'; cat "${VK_DRIVER_FILES:-/dev/null}"; } >>"$log" 2>&1
em="$work/em"
if [ -f gpu/em.gz ]; then gunzip -c gpu/em.gz >"$em"; else cp "${EM:-target/release/em}" "$em"; fi
chmod +x "$em"
mkdir -p data
[ -e data/mnist ] || ln -s "$(pwd)/gpu/mnist" data/mnist

: >"$summary"
say "# GPU session $(date -u +%FT%TZ)"
say ""
card="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
say "- card: $card; \`em --device $DEVICE\`; batch $BATCH; $(nproc) CPU threads"
say "- Vulkan ICD: ${VK_DRIVER_FILES:-${VK_ICD_FILENAMES:-loader default}}"

# GPU use every 5 s, so the log shows that the work ran on the card (and how busy it kept it)
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -l 5 \
    >"$OUT/gpu-use.csv" 2>>"$log" &
smi=$!

# --- 1. em's benchmark rows on the GPU backend ---------------------------------------------------
stage "em bench"
timeout "$(cap "${BENCH_S:-$((BUDGET_S * 28 / 100))}" $((BUDGET_S * 45 / 100)))" "$em" --quiet --device "$DEVICE" bench --net "$CONFIG" --batch "$BATCH" --reps "$REPS" \
    --phase2-reps 1 >"$work/em_bench.md" 2>>"$log"
echo "em bench exit $?" >>"$log"
say ""
say "## em ($DEVICE)"
cat "$work/em_bench.md" >>"$summary"
row() { grep -F "$1" "$work/em_bench.md" | head -1 | awk -F'|' '{gsub(/ /, "", $3); print $3}'; }
p1_ms="$(row 'phase-1 step')"
p2_ms="$(row 'phase-2 step')"
rate="$(row 'images/s')"
# samples that fit s seconds at the measured rate: at least 16, at most MAX_SAMPLES
fits() { awk -v r="${rate:-0}" -v s="$1" -v m="$MAX_SAMPLES" 'BEGIN {
    n = int(r * s); if (n < 16) n = 16; if (n > m) n = m; print n }'; }

# a phase-2 step the bench did not reach: estimated as 25 phase-1 steps (75 Langevin ∇V + 1 step)
if [ -n "$p1_ms" ] && [ -z "$p2_ms" ]; then
    p2_ms="$(awk -v a="$p1_ms" 'BEGIN { print 25 * a }')"
    say "- phase-2 step not measured in time; estimated as 25 phase-1 steps: $p2_ms ms"
fi

# --- 2. the PyTorch twin on CUDA, same network and batch -----------------------------------------
if [ "${TORCH:-1}" = 1 ]; then
stage "torch bench"
say ""
say "## PyTorch (cuda)"
timeout "$(cap $((BUDGET_S * 22 / 100)) $((BUDGET_S * 45 / 100)))" "$PYTHON" bench/torch_unet_vit.py bench --net mnist --batch "$BATCH" --reps "$REPS" \
    --phase2-reps 1 --device cuda >>"$summary" 2>>"$log"
echo "torch bench exit $?" >>"$log"
fi

# --- 3. train for about TRAIN_S seconds: 3/4 phase 1, 1/4 phase 2 --------------------------------
if [ -n "$p1_ms" ] && [ -n "$p2_ms" ]; then
    TRAIN_S="$(cap "$TRAIN_S" $((SAMPLE_S + 60)))"
    read -r n1 n2 warm ema <<<"$(awk -v t="$TRAIN_S" -v a="$p1_ms" -v b="$p2_ms" 'BEGIN {
        n1 = int(0.75 * t * 1000 / a); if (n1 < 10) n1 = 10;
        n2 = int(0.25 * t * 1000 / b); if (n2 < 1) n2 = 1;
        w = int(n1 / 10); if (w > 500) w = 500;
        e = 1 - 10 / n1; if (e > 0.999) e = 0.999; if (e < 0.9) e = 0.9;
        print n1, n2, w, e }')"
    stage "train: $n1 phase-1 + $n2 phase-2 steps"
    t0=$(date +%s.%N)
    timeout "$(cap $((TRAIN_S * 2 + 60)) $((SAMPLE_S / 2 + 20)))" "$em" --quiet --device "$DEVICE" train --config "$CONFIG" \
        --out "$work/run" --set "train.phase1_steps=$n1" --set "train.phase2_steps=$n2" \
        --set "optim.warmup_steps=$warm" --set "optim.ema_decay_phase1=$ema" \
        --set "train.batch_size=$BATCH" --set "eval.samples=$(fits 20)" --set "log.checkpoint_every=1000000" \
        $(for kv in ${TRAIN_SETS:-}; do printf -- '--set %s ' "$kv"; done) \
        >>"$log" 2>&1
    echo "train exit $?" >>"$log"
    t1=$(date +%s.%N)
    say ""
    say "## training ($CONFIG, batch $BATCH)"
    say "- $n1 phase-1 + $n2 phase-2 steps (warm-up $warm, phase-1 EMA $ema) in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}') s wall, sampling of $(fits 20) evaluation images included"
    tail -1 "$work/run/metrics.jsonl" >>"$summary" 2>/dev/null
    cp "$work/run/metrics.jsonl" "$work/run/samples.png" "$OUT/" 2>>"$log"
    cp "$work/run/checkpoints/final.json" "$OUT/" 2>>"$log"  # the weights (30 MB) stay there

    # --- 4. samples for FID: as many as SAMPLE_S seconds allow at the measured rate --------------
    SAMPLE_S="$(cap "$SAMPLE_S" 20)"
    n="$(fits "$SAMPLE_S")"
    stage "sample $n"
    t0=$(date +%s.%N)
    timeout "$(cap $((SAMPLE_S * 2 + 30)) 10)" "$em" --quiet --device "$DEVICE" sample --run "$work/run" --n "$n" \
        --out "$OUT/samples.npy" >"$work/sample.txt" 2>>"$log"
    echo "sample exit $?" >>"$log"
    t1=$(date +%s.%N)
    say "- $(cat "$work/sample.txt") in $(awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN{printf "%.1f s wall: %.2f images/s", b - a, n / (b - a)}')"
    if [ -f gpu/mnist-classifier.safetensors ]; then
        stage "classifier score"
        say '```'
        timeout "$(cap 60)" "$em" --quiet classifier-score --weights gpu/mnist-classifier.safetensors \
            --samples "$OUT/samples.npy" --ref mnist-test:data/mnist >>"$summary" 2>>"$log"
        say '```'
    fi
else
    say ""
    say "no training: em bench gave no phase-1/phase-2 times (see session.log)"
fi
kill "$smi" 2>/dev/null
stage "done"
cat "$summary"
