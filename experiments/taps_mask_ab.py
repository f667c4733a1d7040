"""A/B: the taps conv forward with and without its per-tap padding mask (issue 17: the reference skips
the pads' terms as lax does). LeNet-5 layer 1, (64, 28, 28, 1) x (5, 5, 1, 6) SAME, fwd+bwd.

    python experiments/taps_mask_ab.py
"""
import sys, jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "experiments")
from _timing import side_by_side
from fcnn.ops import conv_nd
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(64, 28, 28, 1)), jnp.float32); w = jnp.asarray(rng.normal(size=(5, 5, 1, 6)), jnp.float32)
real = conv_nd._reads_real_pixels
def make(masked):
    conv_nd._reads_real_pixels = real if masked else (lambda *a: None)
    f = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.tanh(conv_nd.conv(x, w, padding="SAME", impl="taps"))), argnums=(0, 1)))
    f(x, w)  # trace now, with this mask rule
    return lambda: f(x, w)
v = {"masked": make(True), "unmasked": make(False)}
conv_nd._reads_real_pixels = real
for k, t in side_by_side(v, repeats=15, target_s=0.2).items():
    print(k, t)
