"""Host-side (numpy) stages between the jitted calls: NMS, target sampling, post-processing."""
