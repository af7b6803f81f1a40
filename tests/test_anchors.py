"""Anchors: the exact (w, h) list of §2.4 and the grid order / offsets."""

import numpy as np

from seqnet_jax.ops.anchors import cell_anchors, grid_anchors

# §2.4: ratio-major (0.5, 1, 2) × sizes (32 … 512); aspect ratio = h / w.
EXPECTED_WH = [
    (46, 22),
    (90, 46),
    (182, 90),
    (362, 182),
    (724, 362),
    (32, 32),
    (64, 64),
    (128, 128),
    (256, 256),
    (512, 512),
    (22, 46),
    (46, 90),
    (90, 182),
    (182, 362),
    (362, 724),
]


def test_cell_anchors_exact():
    c = cell_anchors()
    assert c.shape == (15, 4) and c.dtype == np.float32
    wh = list(zip((c[:, 2] - c[:, 0]).tolist(), (c[:, 3] - c[:, 1]).tolist(), strict=True))
    assert wh == [(float(w), float(h)) for w, h in EXPECTED_WH]
    # symmetric around the origin, integer valued (rounded half to even)
    np.testing.assert_array_equal(c[:, :2], -c[:, 2:])
    np.testing.assert_array_equal(c, np.round(c))
    np.testing.assert_array_equal(c[0], [-23, -11, 23, 11])  # 22.627 → 23, 11.31 → 11


def test_cell_anchors_custom():
    c = cell_anchors((16,), (1.0,))
    np.testing.assert_array_equal(c, [[-8, -8, 8, 8]])


def test_grid_anchors_order_and_shifts():
    cell = cell_anchors()
    fh, fw = 3, 4
    a = grid_anchors(fh, fw, 16, cell)
    assert a.shape == (fh * fw * 15, 4) and a.dtype == np.float32
    for y in range(fh):
        for x in range(fw):
            for k in (0, 7, 14):
                # (y, x, anchor) flattening; shift (16x, 16y), anchors centred on the cell corner
                np.testing.assert_array_equal(
                    a[(y * fw + x) * 15 + k], cell[k] + np.array([16 * x, 16 * y] * 2)
                )
    np.testing.assert_array_equal(grid_anchors(fh, fw), a)  # defaults
