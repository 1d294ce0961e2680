"""Experiment trackers, the `logger` config group (configs/logger/, several at once: `logger=[csv,tensorboard]`).

One module per tracker; their contract and the rank-0 fan-out the Trainer talks to are in base.py.
metrics.csv is not a tracker: it is the run-dir contract and is always written (mtlrun/engine/records.py).
"""
