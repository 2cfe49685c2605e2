"""`hmfusion train`: training and comparing fusion models on multi-view data.

- `command`: its arguments and `main`;
- `loop`: `TrainConfig` and the training loop;
- `model`: the multi-view classifier; `checkpoint`: its saved, verified format;
- `results`: summaries and output files; `distributed`: torchrun set-up and the ranks' agreement.
"""
