#!/usr/bin/env bash
# Every GPU measurement issue 18 still needs, as one device call (docs/perf_notes.md, items 34-44):
#
#   run(command="bash experiments/gpu_session.sh", timeout_s=600)      # the device tool
#
# It runs under the device image's python3 and packages (jax, flax, torch, pytest: no install),
# with fcnn from the working tree on PYTHONPATH, and writes every log and table under $OUT. Each
# step has its own time limit and a failed step does not stop the next. A dry run of the same
# steps on a machine without a GPU, with tiny nets on the CPU:
#
#   OUT=/tmp/gpu_dry DEVICE=cpu QUICK=1 bash experiments/gpu_session.sh
#
# Steps: (1) the tests of the paths that have run only on CPU so far: the max-pool backward's
# argmax (pool_nd.first_max_mask), BatchNorm's written-out derivative, and the custom-VJP convs
# with dZ materialised once (perf_notes item 42) and fusion_barrier's constant-folding guard;
# (2) VGG b512 in f32 and
# bf16 against the JAX peers and torch.compile, with the bf16 matmul peak; (3) LeNet b128 with k
# steps per dispatch. Targets: VGG >= 1.1x the fastest peer and >= 40% of the bf16 peak; LeNet
# >= 2x the fastest peer.
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_session}
DEVICE=${DEVICE:-gpu}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

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
step env 60 python3 -c "import jax, fcnn; print('jax', jax.__version__, 'fcnn', fcnn.__version__, jax.devices())"
step tests 200 python3 -m pytest -q -p no:cacheprovider -n 0 -m "not slow" \
  tests/test_pool.py tests/test_pool_forward.py tests/test_pool_nd.py tests/test_norms.py \
  tests/test_conv.py::test_impls_agree_forward_and_vjp tests/test_conv.py::test_fusion_barrier_is_an_exact_identity_that_survives_xla
step vgg 200 python3 experiments/benchmark.py --device "$DEVICE" --only fcnn,lax,linen,torch_compile \
  --dtypes bf16,f32 --timeout 60 --out "$OUT/vgg" "${vgg[@]}"
step lenet 150 python3 experiments/benchmark.py --device "$DEVICE" --only fcnn_k,fcnn_unroll,lax,linen \
  --dtypes f32 --timeout 60 --out "$OUT/lenet" "${lenet[@]}"
cat "$OUT/vgg/table.md" "$OUT/lenet/table.md" 2>/dev/null
