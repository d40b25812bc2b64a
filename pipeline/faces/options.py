"""The ``--align`` command-line options, one definition for every command that aligns faces.

``shards from-folder --align`` writes aligned crops; ``frcsyn score --align`` aligns the
images it scores. Both take the same detector / landmarks / policy / size options and
turn them into one validated :class:`~synthface.pipeline.faces.aligner.AlignConfig`.
"""

from __future__ import annotations

import argparse

from synthface.pipeline.faces.align import ALIGNED_SIZE

__all__ = ["add_align_arguments", "align_config"]


def add_align_arguments(
    parser: argparse.ArgumentParser,
    *,
    landmarks_help: str,
    policy_help: str,
    image_format: bool = False,
) -> argparse._ArgumentGroup:
    """``--align``, ``--detector``, ``--landmarks``, ``--face-policy``, ``--aligned-size``,
    ``--det-size``, ``--det-thresh`` (and ``--image-format`` for commands writing crops)."""
    g = parser.add_argument_group("alignment (--align)")
    g.add_argument(
        "--align",
        action="store_true",
        help="detect or look up 5 landmarks and warp each face to the 112x112 ArcFace template",
    )
    g.add_argument("--detector", metavar="DET.onnx", help="insightface SCRFD/RetinaFace model")
    g.add_argument("--landmarks", metavar="FILE", help=landmarks_help)
    g.add_argument(
        "--face-policy", choices=["largest", "skip", "fail"], default="largest", help=policy_help
    )
    g.add_argument(
        "--aligned-size", type=int, default=ALIGNED_SIZE, help=f"crop side (default {ALIGNED_SIZE})"
    )
    g.add_argument("--det-size", type=int, default=640, help="detector input side (default 640)")
    g.add_argument("--det-thresh", type=float, default=0.5, help="face score threshold (0.5)")
    if image_format:
        g.add_argument(
            "--image-format", choices=["jpg", "png"], default="jpg", help="aligned crops as (jpg)"
        )
    return g


def align_config(args: argparse.Namespace, *, landmarks: str | None = None):
    """The :class:`AlignConfig` the options ask for, or None without ``--align``.

    ``landmarks`` replaces the option's own (the sidecar file of a second tree).
    """
    from synthface.pipeline.errors import InputError

    if not args.align:
        if args.detector or args.landmarks:
            raise InputError("--detector and --landmarks only apply with --align")
        return None
    from synthface.pipeline.config import validate_config
    from synthface.pipeline.faces.aligner import AlignConfig

    fields = {
        "detector": args.detector,
        "landmarks": landmarks if landmarks is not None else args.landmarks,
        "policy": args.face_policy,
        "size": args.aligned_size,
        "det_size": args.det_size,
        "det_thresh": args.det_thresh,
    }
    if hasattr(args, "image_format"):
        fields["image_format"] = args.image_format
    return validate_config(fields, AlignConfig, source="--align options")
