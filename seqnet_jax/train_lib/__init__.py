"""Training: train state, optimizer and LR schedule, the staged train step and the loop."""
