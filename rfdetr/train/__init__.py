"""Training: the three stages and the loop they share.

* :mod:`~rfdetr.train.stage1` (detector), :mod:`~rfdetr.train.stage2` (frozen detector + mask head, with the
  :mod:`~rfdetr.train.feature_cache`), :mod:`~rfdetr.train.single_stage` (detector and masks jointly): what each stage
  trains, as a :class:`~rfdetr.train.fit.TrainingJob`.
* :mod:`~rfdetr.train.fit`: the epoch loop around a job (run folder, resume, EMA, best checkpoints, early stopping,
  logs, DDP); :mod:`~rfdetr.train.engine`: one training epoch and one evaluation pass.
* :mod:`~rfdetr.train.optim` (AdamW, parameter groups, schedule, AMP) and :mod:`~rfdetr.train.ema`.
* :mod:`~rfdetr.train.config`: every training default (``TrainConfig``, ``OptimConfig``, ``LossConfig``) and the
  flags derived from them; :mod:`~rfdetr.train.args`: what the training scripts share.
"""
