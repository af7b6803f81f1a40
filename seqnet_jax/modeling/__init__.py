"""Flax Linen modules of SeqNet: backbone, RPN head, res5 heads, predictors, NAE, OIM, losses."""
