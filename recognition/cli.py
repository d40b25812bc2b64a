"""``synthface recognition ...``: train, export and run face recognizers"""

from __future__ import annotations

import argparse

from synthface.pipeline.cli import add_group, add_json_flag, emit


def register(groups: argparse._SubParsersAction) -> None:
    sub = add_group(groups, "recognition", "train, export and run face recognizers")
    add_train_command(sub)
    add_model_commands(sub)
    add_import_command(sub)


# --------------------------------------------------------------------------- train


def add_train_command(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "train",
        help="train a recognizer on identity shards",
        description="Train a recognizer as CONFIG (configs/recognition/*.yaml) says. Writes "
        "checkpoints, metrics and, when done, the recognizer (model/) to train.output_dir "
        "(relative: under $SYNTHFACE_HOME or the current directory). "
        "Multi-GPU: accelerate launch --multi_gpu --num_processes N -m synthface.recognition.training CONFIG",
    )
    c.add_argument("config", metavar="CONFIG", help="training config (YAML)")
    c.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.max_steps=100 (repeatable)",
    )
    c.add_argument(
        "--resume",
        metavar="latest|DIR",
        help="continue from the newest checkpoint in train.output_dir (latest) or from DIR",
    )
    c.add_argument(
        "--resume-allow-partial",
        action="store_true",
        help="with --resume latest: skip damaged checkpoints for the newest intact one "
        "(it says which it drops and which steps are trained again) instead of failing",
    )
    c.add_argument(
        "--stop-after",
        type=int,
        metavar="STEP",
        help="stop with a checkpoint after global step STEP (schedule unchanged; resume later)",
    )
    c.add_argument(
        "--result-file",
        metavar="PATH",
        help="also write the result as JSON to PATH (main process only; for launchers "
        "such as the train-recognizer flow)",
    )
    add_json_flag(c)
    c.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from synthface.pipeline.config import load_config
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.training import train

    cfg = load_config(args.config, TrainConfig, args.overrides)
    result = train(
        cfg,
        resume=args.resume,
        stop_after=args.stop_after,
        resume_allow_partial=args.resume_allow_partial,
    )
    if not result.is_main_process:  # one report per job under accelerate launch
        return 0
    data = {
        "output_dir": str(result.output_dir),
        "global_step": result.global_step,
        "completed": result.completed,
        "model_dir": str(result.model_dir) if result.model_dir else None,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "metrics": result.metrics,
        "validation": result.validation,
    }
    if getattr(args, "result_file", None):
        from synthface.pipeline.atomic import atomic_write_json

        atomic_write_json(args.result_file, data)
    if result.completed:
        text = f"trained {result.global_step} steps; recognizer saved to {result.model_dir}"
    else:
        text = f"stopped after step {result.global_step}; checkpoint {result.checkpoint}"
    if result.validation:
        text += "; " + ", ".join(f"{k} {v * 100:.2f} %" for k, v in result.validation.items())
    emit(args, data, text)
    return 0


# --------------------------------------------------------------------------- export / embed
# (owner: recognition-models engineer)


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "export",
        help="export a recognizer checkpoint to ONNX (insightface ArcFaceONNX compatible)",
        description="Write CKPT (a directory from save_recognizer / train) as an ONNX model "
        "that insightface.model_zoo.get_model loads as ArcFaceONNX: input 'data' "
        "(N x 3 x H x W, RGB, (x - 127.5) / 127.5), output 'fc1'. The export is checked "
        "against the torch model (max abs diff < 1e-4 after L2 normalisation) before it is kept.",
    )
    c.add_argument("checkpoint", metavar="CKPT", help="recognizer checkpoint directory")
    c.add_argument("--onnx", required=True, metavar="OUT.onnx", help="output file")
    c.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    c.add_argument(
        "--any-size",
        action="store_true",
        help="allow input sizes insightface does not route to ArcFaceONNX (square >= 112, /16)",
    )
    add_json_flag(c)
    c.set_defaults(func=cmd_export)

    c = sub.add_parser(
        "embed",
        help="embed aligned face images or shards into an .npy matrix",
        description="Embed aligned crops with a torch checkpoint directory or any insightface "
        "ONNX recognizer. For --out E.npy, writes E.npy (N x D float32, L2-normalised), "
        "E.keys.txt next to it (one relative path or shard key per row) and, for --shards, "
        "E.labels.npy (N int64 identity labels); each appears complete or not at all. "
        "Progress on stderr when it is a terminal.",
    )
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR", help="folder of images (recursive, sorted)")
    src.add_argument("--shards", metavar="DIR", help="shard dataset directory")
    c.add_argument("--split", default="train", help="shard split (default train)")
    c.add_argument("--model", required=True, metavar="M", help="checkpoint directory or .onnx")
    c.add_argument("--out", required=True, metavar="E.npy", help="output embeddings")
    c.add_argument("--flip", action="store_true", help="sum with the mirrored image's feature")
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--resize", action="store_true", help="resize images to the model input size")
    add_json_flag(c)
    c.set_defaults(func=cmd_embed)


def add_import_command(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "import-arcface",
        help="arcface_torch backbone.pth (iResNet) -> recognizer checkpoint directory",
        description="Load an arcface_torch iResNet state dict (torch.load with "
        "weights_only=True: nothing is unpickled) strictly into the matching backbone and "
        "save it as a checkpoint that export, embed and training take. The architecture is "
        "read from the keys; --arch insists on one.",
    )
    c.add_argument("weights", metavar="BACKBONE.pth", help="arcface_torch state dict")
    c.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to write")
    c.add_argument("--arch", help="r18 r34 r50 r100 r200 (or ir50, ...): refuse anything else")
    c.add_argument(
        "--input-size", type=int, help="training image side (default 112 for a 7x7 fc input)"
    )
    add_json_flag(c)
    c.set_defaults(func=cmd_import_arcface)


def cmd_import_arcface(args: argparse.Namespace) -> int:
    from synthface.recognition.arcface_torch import import_arcface_torch

    info = import_arcface_torch(args.weights, args.out, arch=args.arch, input_size=args.input_size)
    emit(
        args,
        info,
        f"wrote {info['out']}: {info['backbone']} (stages {info['layers']}), "
        f"{info['embedding_dim']}-d, {info['input_size']}x{info['input_size']} input, "
        f"{info['tensors']} tensors loaded strictly",
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from synthface.recognition.export import export_onnx

    info = export_onnx(args.checkpoint, args.onnx, opset=args.opset, allow_any_size=args.any_size)
    emit(
        args,
        info,
        f"wrote {info['path']} (input {info['input_shape']}, {info['embedding_dim']}-d; "
        f"max |torch - onnx| {info['max_abs_diff']:.1e})",
    )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from synthface.recognition.embed_files import embed_to_npy

    info = embed_to_npy(
        args.model,
        args.out,
        images=args.images,
        shards=args.shards,
        split=args.split,
        flip=args.flip,
        device=args.device,
        batch_size=args.batch_size,
        resize=args.resize,
    )
    emit(args, info, f"wrote {info['count']} x {info['dim']} embeddings to {info['out']}")
    return 0
