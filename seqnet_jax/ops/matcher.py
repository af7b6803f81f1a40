"""torchvision 0.4 ``Matcher`` as a pure function on numpy (host) or jax (device) arrays."""

from __future__ import annotations

from seqnet_jax.ops.box_ops import array_namespace

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match_boxes(
    iou,
    gt_valid=None,
    high: float = 0.7,
    low: float = 0.3,
    allow_low_quality: bool = True,
):
    """Assign each prediction (column) to a ground-truth box (row).

    Args:
      iou: ``(G, N)`` match quality (IoU of GT ``g`` with prediction ``n``).
      gt_valid: ``(G,)`` bool; padded GT rows (False) are ignored. ``None`` = all valid.
      high, low: thresholds; ``iou < low`` → ``BELOW_LOW_THRESHOLD`` (-1),
        ``low <= iou < high`` → ``BETWEEN_THRESHOLDS`` (-2), else the argmax GT index.
      allow_low_quality: for every valid GT, each prediction whose IoU equals that GT's maximum
        IoU (ties included) gets its own argmax GT back, whatever its IoU.

    Returns:
      ``(N,)`` int32 GT row index (into the padded rows), -1 or -2. All -1 without valid GT.
    """
    xp = array_namespace(iou, gt_valid)
    if iou.ndim != 2:
        raise ValueError(f"match_boxes: iou must be (G, N), got shape {iou.shape}")
    g, n = iou.shape
    if g == 0 or n == 0:
        return xp.full((n,), BELOW_LOW_THRESHOLD, dtype=xp.int32)
    if gt_valid is None:
        gt_valid = xp.ones((g,), dtype=bool)
    elif gt_valid.shape != (g,):
        raise ValueError(f"match_boxes: gt_valid must be ({g},), got shape {gt_valid.shape}")
    # Invalid rows can never win the argmax (real IoUs are >= 0) nor be anyone's best match.
    masked = xp.where(gt_valid[:, None], iou, -1)
    matched_vals = masked.max(axis=0)
    all_matches = xp.argmax(masked, axis=0).astype(xp.int32)
    below = matched_vals < low
    between = (matched_vals >= low) & (matched_vals < high)
    matches = xp.where(
        below, BELOW_LOW_THRESHOLD, xp.where(between, BETWEEN_THRESHOLDS, all_matches)
    )
    if allow_low_quality:
        best_per_gt = masked.max(axis=1)
        is_best = (masked == best_per_gt[:, None]) & gt_valid[:, None]
        matches = xp.where(is_best.any(axis=0), all_matches, matches)
    # Without any valid GT every value is -1 < low (for low > -1), so all are "below".
    return xp.where(gt_valid.any(), matches, BELOW_LOW_THRESHOLD).astype(xp.int32)
