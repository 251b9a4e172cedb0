"""The training engine: the model factory, checkpoints of runs, the task protocol and the loop."""
