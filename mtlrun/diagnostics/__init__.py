"""Diagnostics: measurements about training rather than training itself. Task affinity (TAG's lookahead
search and its heatmap), the per-step gradient conflict between tasks, and the gradient norm the loop logs.
Used by the loop (engine/trainer.py) and by `mtlrun affinity`; same layer as the engine."""
