"""Faces in real photographs: detection, 5-point landmarks and ArcFace alignment.

``align`` holds the 112x112 ArcFace template and the similarity warp (insightface's
``norm_crop``), ``detect`` runs a user-supplied insightface detection model
(SCRFD/RetinaFace ONNX), ``sidecar`` reads landmarks given in a text file, and
``select`` applies the no-face / several-faces policy. ``shards from-folder --align``
(``synthface.pipeline.shards.folder``) and ``frcsyn score --align``
(``synthface.recognition.frcsyn.loading``) put them together; ``options`` holds their
shared command-line options.
"""
