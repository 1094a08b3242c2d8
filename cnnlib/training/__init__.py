"""Training one run: its config, the loop, evaluation, checkpoints, the device and DDP.

- `config`: `RunConfig`, every field of a run with its default and check, recipes;
- `loop`: optimizers, schedules, the training loop, resume, `train`, `lr_find`;
- `evaluate`: metrics, TTA, predictions;
- `checkpoint`: atomic save, safe load, compact copies, `load_model`;
- `device`: native bf16, the precision `auto` resolves to, the hardware line;
- `distributed`: what the loop uses under torchrun; `launch`: starting N processes with torchrun.
"""
