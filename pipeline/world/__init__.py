"""The procedural face world: a parametric 2.5-D face model with demographic groups.

Labelled faces whose identity and style factors are known, rendered fast on CPU
with MorphFace-style normal/albedo/shading maps. It stands in for CASIA/FFHQ
(training data), LFW/CFP-FP/AgeDB/ROF/BUPT (verification protocols) and a 3DMM
(style conditions) on machines that cannot download any of them. See docs/world.md.

Names are imported lazily so that ``synthface --help`` (which loads
``synthface.pipeline.world.cli``) does not pay for numpy and the renderer.
"""

_EXPORTS = {
    "synthface.pipeline.world.coefficients": (
        "HAIR_STYLES",
        "IDENTITY_FIELDS",
        "OCCLUDERS",
        "STYLE_FIELDS",
        "StyleConditions",
        "group_of",
        "sample_identity",
        "sample_style",
        "stack",
    ),
    "synthface.pipeline.world.dataset": ("WORLD_VERSION", "make_world_dataset", "render_from_meta"),
    "synthface.pipeline.world.groups": ("GROUPS", "GROUP_NAMES", "NUM_GROUPS", "Group"),
    "synthface.pipeline.world.protocols": ("PROTOCOLS", "make_pairs", "make_protocol"),
    "synthface.pipeline.world.render": ("MIN_SIZE", "RenderOutput", "render"),
    "synthface.pipeline.world.sheet": ("contact_sheet", "write_sheet"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'synthface.pipeline.world' has no attribute {name!r}")
