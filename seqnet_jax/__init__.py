"""seqnet-jax: SeqNet person search (AAAI 2021) in JAX/Flax.

Conventions used across the package:
  * Boxes are float32 ``(x1, y1, x2, y2)`` in pixels, width = x2 - x1 (no +1).
  * Images are NHWC float32, ImageNet-normalised.
  * Person ids ("pids"): ``0`` background, ``1..L`` labeled training identities (contiguous),
    ``UNLABELED_PID`` (-1) a person without identity label.
  * Fixed shapes everywhere: ragged per-image lists are padded and carry a boolean ``valid`` mask.
"""

__version__ = "0.1.0"
