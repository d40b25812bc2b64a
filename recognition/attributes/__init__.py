"""Per-image annotations that generator training needs: embeddings, head pose, age.

``annotate`` streams a shard set through the user's recognizer and pose/age models;
``insightface_models`` reads insightface's ``1k3d68.onnx`` and ``genderage.onnx``;
``pose`` turns 3-D landmarks into yaw/pitch/roll; ``world_model`` is the small estimator
the project trains on the procedural world for users without insightface's models;
``cli`` adds ``synthface shards annotate`` and ``synthface recognition train-attributes``.
Heavy imports (torch, onnxruntime) happen inside those modules, not here.
"""
