#!/usr/bin/env bash
# Every GPU measurement issue 18 still needs, as one device call (docs/perf_notes.md, items 34-44):
#
#   pip install --target .gpu_pkgs --no-deps dm-haiku==0.0.17 jmp      # here, once (git ignores it)
#   run(command="bash experiments/gpu_session.sh", timeout_s=600, carry=[".gpu_pkgs"])   # the device tool
#
# It runs under the device image's python3 and packages (jax, flax, torch, pytest: no install; the
# H200 image has no dm-haiku, the fastest LeNet peer on the H100, so it travels in .gpu_pkgs, pure
# Python), with fcnn from the working tree on PYTHONPATH, and writes every log and table under
# $OUT. Each step has its own time limit and a failed step does not stop the next. A dry run of the same
# steps on a machine without a GPU, with tiny nets on the CPU:
#
#   OUT=/tmp/gpu_dry DEVICE=cpu QUICK=1 bash experiments/gpu_session.sh
#
# Budget: the device lends 15 minutes a session, starting the machine included (minutes), and one
# call may run 600 s. So the step limits below add up to 515 s (env 30 + vgg 245 + lenet 140 + tests
# 90 + render 10), each at least its workers' worst case (benchmark.py's --timeout per worker
# process, one worker per framework, after a ~15 s bf16 matmul-peak process), leaving ~1.5 minutes of
# the call for slack (torch.compile's VGG worker took ~35 s on the H100, 25 s of it compiling). The
# measurements the targets need come first:
# (1) VGG b512 in f32 and bf16 against the JAX peers and torch.compile, with the bf16 matmul peak
#     (targets: >= 1.1x the fastest peer, >= 40% of the peak);
# (2) LeNet b128 with k steps per dispatch (target: >= 2x the fastest peer);
# (3) the tests of the paths that have run only on CPU so far: the max-pool backward's argmax
#     (pool_nd.first_max_mask), BatchNorm's written-out derivative, the custom-VJP convs with dZ
#     materialised once (perf_notes item 42) and fusion_barrier's constant-folding guard;
# (4) a table from the partial results of a benchmark step its limit cut short.
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_session}
DEVICE=${DEVICE:-gpu}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.gpu_pkgs${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1  # a missing peer is skipped

if [ "$QUICK" = 1 ]; then
  vgg=(--quick --nets vgg:2) lenet=(--quick --nets lenet:8)
else
  vgg=(--nets vgg:512 --repeats 5 --target-s 0.2) lenet=(--nets lenet:128 --repeats 5 --target-s 0.2)
fi

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log to $OUT/NAME.log, say how it ended
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "   exit $? ($name)"
  tail -n 2 "$OUT/$name.log"
}

(nvidia-smi || echo "no nvidia-smi") > "$OUT/nvidia-smi.txt" 2>&1
step env 30 python3 -c "import jax, fcnn; print('jax', jax.__version__, 'fcnn', fcnn.__version__, jax.devices())"
step vgg 245 python3 experiments/benchmark.py --device "$DEVICE" --only fcnn,lax,linen,haiku,torch_compile \
  --dtypes bf16,f32 --timeout 45 --out "$OUT/vgg" "${vgg[@]}"
step lenet 140 python3 experiments/benchmark.py --device "$DEVICE" --only fcnn_k,fcnn_unroll,lax,linen,haiku \
  --dtypes f32 --timeout 25 --out "$OUT/lenet" "${lenet[@]}"
step tests 90 python3 -m pytest -q -p no:cacheprovider -n 0 -m "not slow" tests/test_pool_nd.py tests/test_norms.py \
  tests/test_conv.py::test_impls_agree_forward_and_vjp tests/test_conv.py::test_fusion_barrier_is_an_exact_identity_that_survives_xla
for part in vgg lenet; do  # a step cut short leaves results.partial.json (one row per finished worker)
  if [ ! -s "$OUT/$part/table.md" ] && [ -s "$OUT/$part/results.partial.json" ]; then
    timeout 10 python3 experiments/benchmark.py --render "$OUT/$part/results.partial.json" > "$OUT/$part/table.md" 2>&1
  fi
done
cat "$OUT/vgg/table.md" "$OUT/lenet/table.md" 2>/dev/null
