"""The FRCSyn challenge protocol: sub-task rules, training-side thresholds, metrics, packages.

Modules: ``rules`` (tasks, sub-tasks, training-data rules per edition), ``comparisons``
(comparison / ground-truth files), ``threshold`` (thresholds from calibration data),
``metrics`` (accuracy, AVG/SD/TO, FNMR@FMR, AUC, GAP), ``scoring`` (score both systems
into a run directory), ``package`` (zip + validation), ``report``. See ``docs/frcsyn.md``.
"""
