"""Utilities every part shares: distributed setup, run folders and logs, seeding, early stopping, box ops, checks.

* :mod:`~rfdetr.util.distributed`, :mod:`~rfdetr.util.seeding`, :mod:`~rfdetr.util.early_stopping`.
* :mod:`~rfdetr.util.run_dir` (run folders, atomic JSON), :mod:`~rfdetr.util.loggers` (JSONL, TensorBoard, W&B).
* :mod:`~rfdetr.util.box_ops`, :mod:`~rfdetr.util.checklist` and :mod:`~rfdetr.util.environment`
  (``validate_setup.py``).
* :mod:`~rfdetr.util.cli` (what every command shares) and :mod:`~rfdetr.util.moved` (old module paths).
"""
