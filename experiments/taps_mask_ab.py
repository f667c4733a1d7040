"""A/B: the taps conv forward with and without its per-tap padding mask (issue 17: the reference skips
the pads' terms as lax does). LeNet-5 layer 1, (64, 28, 28, 1) x (5, 5, 1, 6) SAME, fwd+bwd.

    python experiments/taps_mask_ab.py [--repeats 15] [--target-s 0.2]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per variant")
    p.add_argument("--target-s", type=float, default=0.2, help="seconds per repeat")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be an integer >= 1, got {args.repeats}")
    if not args.target_s > 0:
        p.error(f"--target-s must be > 0 seconds, got {args.target_s}")
    return args


def main(argv=None):
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from _timing import side_by_side
    from fcnn.ops import conv_nd

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 28, 28, 1)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 5, 1, 6)), jnp.float32)
    real = conv_nd._reads_real_pixels

    def make(masked):
        conv_nd._reads_real_pixels = real if masked else (lambda *a: None)
        f = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.tanh(conv_nd.conv(x, w, padding="SAME", impl="taps"))),
                                       argnums=(0, 1)))
        f(x, w)  # trace now, with this mask rule
        return lambda: f(x, w)

    try:
        v = {"masked": make(True), "unmasked": make(False)}
    finally:
        conv_nd._reads_real_pixels = real
    timed = side_by_side(v, repeats=args.repeats, target_s=args.target_s, verbose=True)
    for k, t in timed.items():
        print(k, t)
    return timed


if __name__ == "__main__":
    main()
