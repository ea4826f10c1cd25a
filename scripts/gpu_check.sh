#!/usr/bin/env bash
# The GPU check, run on a lent GPU machine (offline) from a checkout that carries gpu_bundle/
# (built here by scripts/prepare_gpu_bundle.sh):
#   1. installs gpu_bundle into .gpu_cache/site (once per bundle; PYTHONPATH, no pip index)
#   2. warms FlashInfer's JIT cache (attention at both head dims, CUDA-core decode and fa3
#      prefill + decode at the 8B head shape, the fused ops, the cuBLASLt GEMM module),
#      module builds in parallel, and prints the time;
#      the cache lives in .gpu_cache/ (FLASHINFER_WORKSPACE_BASE), so a rerun on the same warm
#      machine loads the compiled kernels instead of building them
#   3. pytest tests/gpu (but the tensor-parallel tests)
#   3b. tensor parallel (tp 2 over NCCL): tests/gpu/test_tensor_parallel_gpu.py where the
#      machine has several GPUs; skipped, and said so, where it has one
#   4. bench/gpu_bench.py with the time that is left (prefill, decode + bandwidth, shared
#      prefix, overlap scheduling on/off, transformers), then the results JSON is also
#      written as docs/gpu/<card>_results.json (and $OUT/<card>_results.json)
# Writes to $OUT (or .gpu_cache/out): gpu_results.json, gpu_summary.md, pytest.log, bench.log,
# jit.log, check.log. Whole run: GPU_CHECK_BUDGET_S (default 470 s, under 8 minutes).
# GPU_BENCH_ARGS: extra benchmark arguments (e.g. "--decode-kernels fa2,xqa" for a short rerun).
# GPU_TESTS: the tests to run (default tests/gpu).
# GPU_BENCH_SECTIONS: the sections a run takes (default: the targets' numbers, the A/Bs of
# what is new since the last lease, the profile; "all": every section, time permitting).
# GPU_CHECK_DRY_RUN=1: the plumbing only, on a CPU: no bundle, JIT or GPU tests; a tiny model
# through every benchmark section (tests/unit/test_gpu_scripts.py runs it).
#
#   run: bash scripts/gpu_check.sh        (device tool: carry ["gpu_bundle"], timeout_s 540)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-470}
TEST_BUDGET=${GPU_TEST_BUDGET_S:-170}
PY=${PYTHON:-python3}
RES=${OUT:-$ROOT/.gpu_cache/out}
CACHE=$ROOT/.gpu_cache
SITE=$CACHE/site
mkdir -p "$RES" "$CACHE"
exec > >(tee -a "$RES/check.log") 2>&1
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[gpu_check +$(elapsed)s] $*"; }

DRY=${GPU_CHECK_DRY_RUN:-0}
DOCS=${GPU_CHECK_DOCS_DIR:-$ROOT/docs/gpu}
# Results JSON -> <card>_results.json in $RES and $DOCS (card from the JSON's device name).
publish() {
  [ -f "$RES/gpu_results.json" ] || return 0
  card=$($PY -c "import json, sys; sys.path.insert(0, 'bench'); import gpu_bench as g; \
print(g.card_slug(json.load(open('$RES/gpu_results.json'))['device']))")
  mkdir -p "$DOCS"
  cp "$RES/gpu_results.json" "$RES/${card}_results.json"
  cp "$RES/gpu_results.json" "$DOCS/${card}_results.json"
  log "results: $DOCS/${card}_results.json; missing keys: $($PY -c "import json; \
print(json.load(open('$RES/gpu_results.json')).get('missing_keys'))")"
}
if [ "$DRY" = 1 ]; then
  log "dry run (CPU plumbing check)"
  $PY bench/gpu_bench.py --preset tiny --layers 1 --device cpu --budget-s 300 \
    --decode-batches 1,2 --eager-batches "" --prefill-batch 2 --prefill-len 16 \
    --prefill-repeats 1 --decode-context 16 --decode-steps 2 --prefix-requests 2 \
    --prefix-len 32 --prefix-suffix 4 --prefix-new-tokens 2 --hf-decode-batches "" \
    --overlap-batch 2 --overlap-prompt 8 --overlap-output 3 \
    ${GPU_BENCH_TOKENIZER_DIR:+--tokenizer-dir "$GPU_BENCH_TOKENIZER_DIR"} \
    --out-json "$RES/gpu_results.json" --out-md "$RES/gpu_summary.md" \
    --tests-summary "dry run" > "$RES/bench.log" 2>&1
  BENCH_RC=$?
  grep "gpu_bench" "$RES/bench.log" | tail -30
  log "bench: rc $BENCH_RC"
  publish
  exit $BENCH_RC
fi

if [ ! -f gpu_bundle/MANIFEST.json ]; then
  log "no gpu_bundle/: run scripts/prepare_gpu_bundle.sh on the CPU machine and carry it"
  exit 2
fi

# 1. Install the bundle (FlashInfer's package folder + cp312 wheels) into a private site dir.
stamp="$SITE/.bundle-$(sha1sum gpu_bundle/MANIFEST.json | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  rm -rf "$SITE" && mkdir -p "$SITE"
  tar -xJf gpu_bundle/flashinfer.tar.xz -C "$SITE" || { log "unpacking flashinfer failed"; exit 3; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    gpu_bundle/wheels/*.whl || { log "installing wheels failed"; exit 3; }
  # Old, fixed mtimes: ninja then sees a restored JIT cache's objects as newer than every
  # header they include (pip stamps files with the install time, forcing a rebuild).
  find "$SITE" -exec touch -h -d @1600000000 {} +
  touch "$stamp"
fi
# A JIT cache brought back by an earlier run ($OUT/jit_cache.tar.xz copied into gpu_bundle/).
if [ -f gpu_bundle/jit_cache.tar.xz ] && [ ! -d "$CACHE/.cache/flashinfer" ]; then
  tar -xJf gpu_bundle/jit_cache.tar.xz -C "$CACHE" && log "restored a FlashInfer (+ Triton) JIT cache"
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export FLASHINFER_WORKSPACE_BASE="$CACHE"   # -> .gpu_cache/.cache/flashinfer/<version>/<arch>
export TRITON_CACHE_DIR="$CACHE/.cache/triton"  # the one-token GEMV's kernels (gemv_cuda.py)
export RADIXRT_GPU_TOKENIZER_DIR="$ROOT/gpu_bundle/tokenizer"
export RADIXRT_CACHE_DIR="$CACHE/radixrt"
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-4}              # nvcc jobs per module build (5 builds at once)
log "installed; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
$PY - <<'EOF' || { echo "import check failed"; exit 4; }
import torch, flashinfer, tvm_ffi, subprocess
nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), flashinfer {flashinfer.__version__},"
      f" tvm_ffi {tvm_ffi.__version__}, {torch.cuda.get_device_name()}, nvcc: {nvcc.splitlines()[-1]}")
EOF

# 2. FlashInfer JIT: decode (head_dim 64: tiny test models, SmolLM2), prefill/tensor-core
#    decode at head_dim 64 and at 128 (Llama-3-8B shape). Parallel processes overlap nvcc.
jit0=$(date +%s)
pids=()
for spec in "4 2 64 decode" "8 2 64 prefill" "32 8 128 both"; do
  set -- $spec
  $PY -c "from radixrt.attention.flashinfer_backend import warmup_kernels as w; import time; \
t=time.time(); w($1, $2, $3, which='$4'); print('jit $spec: %.1f s' % (time.time()-t))" \
    > "$CACHE/jit_$1_$2_$3_$4.log" 2>&1 &
  pids+=($!)
done
# Fused norm / SiLU-and-mul / RoPE (models/fused_cuda.py), and the fa3 prefill kernels the
# benchmark compares with fa2 (their own modules).
$PY -c "from radixrt.models.fused_cuda import verify; import time, torch; t=time.time(); \
print(verify(torch.device('cuda'), torch.bfloat16, 4096, 128, 32, 8, 14336)); \
print('jit fused ops: %.1f s' % (time.time()-t))" > "$CACHE/jit_fused.log" 2>&1 &
pids+=($!)
# The one-token Triton GEMV's block configs, plain and with each prologue fused
# (SiLU-and-mul, add + RMSNorm, RMSNorm), each launched plainly and with PDL
# (models/gemv_cuda.py warm_up); no triton or no PDL: says so.
$PY -c "import time, torch; from radixrt.models import gemv_cuda as g; t=time.time(); \
print('jit triton gemv: %s, %.1f s' % (g.warm_up(torch.device('cuda')), time.time()-t))" \
  > "$CACHE/jit_gemv.log" 2>&1 &
pids+=($!)
# The CUDA-core decode kernel at the 8B shape (its default there is tensor cores): the
# benchmark's decode_kernels section and tests/gpu compare it with fa2 and fa3.
RADIXRT_FLASHINFER_DECODE_KERNEL=cuda-cores $PY -c "from radixrt.attention.flashinfer_backend \
import warmup_kernels as w; import time; t=time.time(); w(32, 8, 128, which='decode'); \
print('jit cuda-core decode 128: %.1f s' % (time.time()-t))" > "$CACHE/jit_cc.log" 2>&1 &
pids+=($!)
RADIXRT_FLASHINFER_PREFILL_BACKEND=fa3 RADIXRT_FLASHINFER_DECODE_KERNEL=fa3 timeout 180 $PY -c "from radixrt.attention.flashinfer_backend \
import warmup_kernels as w; import time; t=time.time(); w(32, 8, 128, which='both'); \
print('jit fa3 prefill + decode: %.1f s' % (time.time()-t))" > "$CACHE/jit_fa3.log" 2>&1 &
fa3_pid=$!
# FlashInfer's cuBLASLt module (models/gemm_cuda.py times its algorithms at load).
$PY -c "import time, torch; from radixrt.models.gemm_cuda import CublasLt; t=time.time(); \
CublasLt(torch.device('cuda')); print('jit cublaslt gemm: %.1f s' % (time.time()-t))" \
  > "$CACHE/jit_lt.log" 2>&1 &
pids+=($!)
# xqa (TensorRT-LLM's decode kernel in FlashInfer) at the 8B head shape: decode_kernels times it.
RADIXRT_FLASHINFER_DECODE_KERNEL=xqa timeout 240 $PY -c "from radixrt.attention.flashinfer_backend \
import warmup_kernels as w; import time; t=time.time(); w(32, 8, 128, which='decode'); \
print('jit xqa decode 128: %.1f s' % (time.time()-t))" > "$CACHE/jit_xqa.log" 2>&1 &
xqa_pid=$!
jit_rc=0
for p in "${pids[@]}"; do wait "$p" || jit_rc=1; done
wait $fa3_pid || log "fa3 prefill JIT failed (the benchmark's fa3 section will say why)"
wait $xqa_pid || { log "xqa decode JIT failed:"; tail -5 "$CACHE/jit_xqa.log"; }
JIT_S=$(( $(date +%s) - jit0 ))
cat "$CACHE"/jit_*.log > "$RES/jit.log"
grep -h "^jit \|^{" "$CACHE"/jit_*.log
log "FlashInfer JIT warm-up: ${JIT_S} s (rc $jit_rc)"
[ $jit_rc -eq 0 ] || tail -40 "$RES/jit.log"
if [ "${GPU_CHECK_STEPS:-all}" = jit ]; then log "done (GPU_CHECK_STEPS=jit)"; exit $jit_rc; fi

# 3. GPU tests.
left=$(( BUDGET - $(elapsed) ))
tbudget=$(( left < TEST_BUDGET ? left : TEST_BUDGET ))
TP_TESTS=tests/gpu/test_tensor_parallel_gpu.py
# GPU_TESTS: the test files or node ids to run instead of all of tests/gpu (a short rerun).
# shellcheck disable=SC2086  # a word list
timeout "$tbudget" $PY -m pytest ${GPU_TESTS:-tests/gpu} -q -rs -p no:cacheprovider \
  --ignore="$TP_TESTS" > "$RES/pytest.log" 2>&1
TEST_RC=$?
tail -25 "$RES/pytest.log"
TESTS=$(grep -E "passed|failed|error|skipped" "$RES/pytest.log" | tail -1)
[ $TEST_RC -eq 124 ] && TESTS="timed out after ${tbudget} s: $TESTS"
log "tests: rc $TEST_RC: $TESTS"

# 3b. Tensor parallel: one rank per GPU, NCCL. Only where the machine has several GPUs.
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU ")
TP_BUDGET=${GPU_TP_BUDGET_S:-150}
if [ "$NGPU" -ge 2 ]; then
  left=$(( BUDGET - $(elapsed) - 60 ))
  tpb=$(( left < TP_BUDGET ? left : TP_BUDGET ))
  if [ $tpb -gt 30 ]; then
    timeout "$tpb" $PY -m pytest "$TP_TESTS" -q -rs -p no:cacheprovider > "$RES/pytest_tp.log" 2>&1
    TP_RC=$?
    tail -15 "$RES/pytest_tp.log"
    TP=$(grep -E "passed|failed|error|skipped" "$RES/pytest_tp.log" | tail -1)
    [ $TP_RC -eq 124 ] && TP="timed out after ${tpb} s: $TP"
    log "tensor parallel (tp 2 on $NGPU GPUs): rc $TP_RC: $TP"
    [ $TP_RC -eq 0 ] || TEST_RC=$TP_RC
    TESTS="$TESTS; tp: rc $TP_RC: $TP"
  else
    log "tensor parallel: no time left ($tpb s)"
  fi
else
  log "tensor parallel: skipped ($NGPU GPU on this machine; tp needs 2 or more)"
fi

# 4. Benchmark with what is left. The earlier A/Bs (fused_ops, prefill_fa3, decode_unfused,
# shared_prefix on the 2026-11-28 lease; decode_kernels, decode_rope_kv on the
# 2026-11-30 one) are in docs/benchmarks.md; a lease's ~4 minutes of benchmark go to the
# targets and what changed since.
SECTIONS=${GPU_BENCH_SECTIONS:-prefill,decode,decode_lt_gemm,decode_unsplit,decode_gemv,profile,transformers,overlap,gemm}
left=$(( BUDGET - $(elapsed) - 10 ))
if [ $left -gt 60 ]; then
  timeout "$left" $PY bench/gpu_bench.py --budget-s $(( left - 15 )) --model-dir "$CACHE/bench-model" \
    --out-json "$RES/gpu_results.json" --out-md "$RES/gpu_summary.md" \
    --jit-seconds "$JIT_S" --tests-summary "rc $TEST_RC: $TESTS" \
    $( [ "$SECTIONS" = all ] || echo "--sections $SECTIONS" ) ${GPU_BENCH_ARGS:-} \
    > "$RES/bench.log" 2>&1
  BENCH_RC=$?
  grep "gpu_bench" "$RES/bench.log" | tail -30
  log "bench: rc $BENCH_RC"
  publish
else
  log "no time left for the benchmark ($left s)"
fi

# A JIT cache small enough to come back (<15 MB): copy it into gpu_bundle/ for the next run.
# FlashInfer's is the one worth most (minutes of nvcc); Triton's goes along while it fits.
if [ -n "${OUT:-}" ] && [ -d "$CACHE/.cache/flashinfer" ]; then
  log "JIT cache on disk: $(du -sh "$CACHE"/.cache/flashinfer "$CACHE"/.cache/triton 2>/dev/null | tr '\n\t' '; ')"
  for dirs in ".cache/flashinfer $( [ -d "$CACHE/.cache/triton" ] && echo .cache/triton )" \
              ".cache/flashinfer"; do
    # shellcheck disable=SC2086  # dirs is a word list
    tar -C "$CACHE" -cf - $dirs | xz -T0 -1 > "$CACHE/jit_cache.tar.xz"
    size=$(stat -c %s "$CACHE/jit_cache.tar.xz")
    log "JIT cache ($dirs) packs to $(( size / 1000000 )) MB"
    if [ "$size" -lt 15000000 ]; then cp "$CACHE/jit_cache.tar.xz" "$OUT/"; break; fi
  done
fi
log "done"
[ $TEST_RC -eq 0 ]
