"""Pure array ops without parameters: boxes, anchors, RoIAlign, matching."""
