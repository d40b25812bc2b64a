"""MorphFace (CVPR 2025): identity + 3DMM style conditioning, subject-aware style prior.

No code was released with the paper; this is the project's implementation from its
abstract and secondary descriptions (``docs/generators.md``, "MorphFace"). Modules:
``config`` (the ``morphface`` config section), ``styles`` (style sources: the world's
morphable model, external 3DMM fits), ``prior`` (the style prior), ``model`` (style
encoder, context blending, denoiser), ``generator`` (the registered generator) and
``identities`` (new identities from unlabelled synthetic faces).
"""
