"""Face verification evaluation: the insightface 10-fold protocol, IJB-style TAR@FAR, reports.

Modules (import them directly; this package imports nothing so the CLI stays light):

- ``verification``: flip-sum features, pair scores, 10-fold accuracy, VAL@FAR, results.
- ``roc``: ROC as sklearn builds it, TAR@FAR read as insightface reads it, AUC, EER, FNMR@FMR.
- ``ijb``: IJB-B/C meta files, 5-point alignment, media pooling, template scores.
- ``embed``: run an Embedder over ``.bin`` sets and aligned crops (raw + flipped features).
- ``report``: metrics.json, report.md and PNG plots.
"""
