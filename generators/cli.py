"""``synthface generator ...``: train and sample diffusion face generators, make anchors.

torch, diffusers and accelerate are imported inside the commands so ``synthface --help``
stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from synthface.pipeline.cli import add_group, add_json_flag, emit
from synthface.pipeline.errors import InputError


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _step_logger(args: argparse.Namespace):
    """A training step's record as one ``key=value`` line (nothing under ``--json``)."""

    def log(rec: dict) -> None:
        if not args.json:
            print(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()
                ),
                flush=True,
            )

    return log


def cmd_train(args: argparse.Namespace) -> int:
    from synthface.generators.config import GeneratorConfig
    from synthface.generators.training import train_generator
    from synthface.pipeline.config import load_config

    _threads(args)
    cfg = load_config(args.config, GeneratorConfig, args.set)

    log = _step_logger(args)
    result = train_generator(
        cfg,
        steps=args.steps,
        resume=not args.no_resume,
        log=log,
        resume_allow_partial=args.resume_allow_partial,
    )
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`: rank 0 reports
        return 0
    summary, final_text = _finished(result, cfg.train)
    emit(args, summary, f"trained to step {summary['step']}; generator: {final_text}")
    return 0


def _finished(result: dict, train) -> tuple[dict, str]:
    """The run's summary and how to print its model; a rerun of a finished run names its
    existing ``final/`` instead of "n/a"."""
    final = result["final"]
    done_before = final is None and result["step"] >= train.steps
    if done_before and (Path(train.output_dir) / "final").is_dir():
        final = Path(train.output_dir) / "final"
    text = "n/a" if final is None else str(final) + (" (finished before)" if done_before else "")
    summary = {"step": result["step"], "final": str(final) if final else None}
    return {**summary, "output_dir": train.output_dir}, text


def cmd_train_autoencoder(args: argparse.Namespace) -> int:
    from synthface.generators.autoencoder_training import (
        AutoencoderTrainConfig,
        train_autoencoder,
    )
    from synthface.pipeline.config import load_config

    _threads(args)
    cfg = load_config(args.config, AutoencoderTrainConfig, args.set)

    log = _step_logger(args)
    result = train_autoencoder(
        cfg,
        steps=args.steps,
        resume=not args.no_resume,
        log=log,
        device=args.device,
        resume_allow_partial=args.resume_allow_partial,
    )
    summary, final_text = _finished(result, cfg.train)
    q = result["quality"]
    if q is None and summary["final"] is not None:  # finished before: its stored report
        with contextlib.suppress(OSError, ValueError):
            q = json.loads((Path(summary["final"]) / "quality.json").read_text())
    summary["quality"] = q
    text = f"trained to step {summary['step']}; autoencoder: {final_text}"
    if q:
        text += f"\n  held-out: PSNR {q['psnr_db']:.2f} dB, SSIM {q['ssim']:.3f}, L1 {q['l1']:.4f} ({q['images']} images)"
    emit(args, summary, text)
    return 0


def sample_config(args: argparse.Namespace):
    """The ``GenerateConfig`` that ``generator sample`` runs (the same as the flow's)."""
    from synthface.generators.dataset.config import GenerateConfig
    from synthface.pipeline.config import validate_config

    gen = {
        "checkpoint": args.checkpoint,
        "encoder": args.encoder,
        "device": args.device,
        "allow_cpu_fallback": False,
        "precision": args.precision,
        "compile": args.compile,
    }
    for key in ("sampler", "steps", "guidance_scale", "id_guidance_scale", "batch_size"):
        if getattr(args, key) is not None:
            gen[key] = getattr(args, key)
    if args.sampler_option:
        gen["sampler_options"] = dict(args.sampler_option)
    data = {
        "generator": gen,
        "identities": {
            "count": args.identities,
            "samples_per_identity": args.per_identity,
            "seed": args.seed,
            "anchors": args.anchors,
            "anchor_region": args.anchor_region,
        },
        "output": {
            "dir": args.out,
            "image_format": args.ext,
            "max_samples_per_shard": args.max_samples_per_shard,
            "image_size": args.image_size,
        },
        "qc": {"recognizer": args.qc_recognizer},
        "report": {"enabled": not args.no_report},
    }
    if args.threads:
        data["runner"] = {"torch_threads": args.threads}
    return validate_config(data, GenerateConfig, "generator sample")


def cmd_sample(args: argparse.Namespace) -> int:
    from synthface.generators.dataset import generate_dataset

    cfg = sample_config(args)
    summary = generate_dataset(cfg)
    info = {
        "out": args.out,
        "identities": summary["num_identities"],
        "per_identity": args.per_identity,
        "shards": summary["num_shards"],
        **summary,
    }
    emit(
        args,
        info,
        f"wrote {summary['num_identities']} x {args.per_identity} images "
        f"({summary['num_shards']} shards) to {args.out}",
    )
    return 0


def cmd_anchors(args: argparse.Namespace) -> int:
    import time

    from synthface.generators.id3.anchors import (
        anchors_within,
        packing_stats,
        random_unit_vectors,
        save_anchors,
        tammes_anchors,
    )
    from synthface.pipeline.embedding_space import read_anchor_space

    _threads(args)
    packing = {
        "iterations": args.iterations,
        "block": args.block,
        "seed": args.seed,
        "device": args.device,
    }
    t0 = time.perf_counter()
    if args.within:
        from synthface.generators.dataset import load_anchors

        ref = load_anchors(args.within, args.dim, field="--within")
        if len(ref) < 3:
            raise InputError(f"--within: {args.within}: holds {len(ref)} rows, need >= 3")
        anchors = anchors_within(ref, args.n, variance=args.variance, **packing)
    else:
        anchors = tammes_anchors(args.n, args.dim, **packing)
    seconds = time.perf_counter() - t0
    save_anchors(args.out, anchors)
    space = _declare_space(args.out, read_anchor_space(args.within) if args.within else None)
    ours = packing_stats(anchors, args.block)
    rand = packing_stats(random_unit_vectors(args.n, args.dim, args.seed + 12345), args.block)
    data = {
        "n": args.n,
        "dim": args.dim,
        "seconds": round(seconds, 2),
        "out": args.out,
        "embedding_space": space,
        "anchors": ours,
        "random": rand,
    }
    text = (
        f"{args.n} x {args.dim} anchors in {seconds:.1f}s -> {args.out}\n"
        f"  anchors: min angle {ours['min_angle_deg']:.2f} deg, max NN cos {ours['max_nn_cos']:.4f}, "
        f"mean NN cos {ours['mean_nn_cos']:.4f}\n"
        f"  random:  min angle {rand['min_angle_deg']:.2f} deg, max NN cos {rand['max_nn_cos']:.4f}, "
        f"mean NN cos {rand['mean_nn_cos']:.4f}"
    )
    emit(args, data, text)
    return 0


def _declare_space(anchors: str, space: str | None) -> str | None:
    """Write (or remove a stale) ``<anchors>.json`` sidecar for freshly written anchors."""
    from synthface.pipeline.embedding_space import sidecar_path, write_anchor_space

    if space is None:
        sidecar_path(anchors).unlink(missing_ok=True)  # the old file's claim no longer holds
    else:
        write_anchor_space(anchors, space)
    return space


def cmd_identities(args: argparse.Namespace) -> int:
    """New identities from the generator's empty-context faces (MorphFace)."""
    import time

    from synthface.generators.base import load_generator
    from synthface.generators.dataset import load_anchors
    from synthface.generators.encoder import load_identity_encoder
    from synthface.generators.id3.anchors import save_anchors
    from synthface.generators.morphface.identities import novel_identities
    from synthface.pipeline.errors import ConfigError

    _threads(args)
    gen = load_generator(args.checkpoint)
    if not hasattr(gen, "generate_unconditional"):
        raise ConfigError(
            f"{args.checkpoint}: a {gen.name!r} generator; new identities from empty-context "
            "faces need a morphface generator (use `generator anchors` for Tammes anchors)"
        )
    enc_path = args.encoder or gen.config.encoder.path
    if enc_path is None:
        raise ConfigError("--encoder: the checkpoint names no identity encoder; give one")
    encoder = load_identity_encoder(enc_path, differentiable=False)
    dim = gen.config.conditioning.identity_dim
    training = None
    if args.training:
        training = load_anchors(args.training, dim, field="--training")
    t0 = time.perf_counter()
    anchors, stats = novel_identities(
        gen,
        encoder,
        args.n,
        training=training,
        max_cos=args.max_cos,
        max_cos_training=args.max_cos_training,
        seed=args.seed,
        batch=args.batch_size,
        max_candidates=args.max_candidates,
        steps=args.steps,
    )
    save_anchors(args.out, anchors)
    from synthface.pipeline.embedding_space import recognizer_fingerprint

    space = _declare_space(args.out, recognizer_fingerprint(enc_path))
    data = {
        **stats,
        "out": args.out,
        "embedding_space": space,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    text = (
        f"{args.n} new identities from {stats['candidates']} empty-context faces -> {args.out}\n"
        f"  max cos between new: {stats['max_cos_between_new']}, "
        f"to training: {stats['max_cos_to_training']}"
    )
    emit(args, data, text)
    return 0


def cmd_import_uiface(args: argparse.Namespace) -> int:
    from synthface.generators.uiface.convert import import_uiface

    config = None
    if args.config:
        from synthface.generators.config import GeneratorConfig
        from synthface.pipeline.config import load_config

        config = load_config(args.config, GeneratorConfig, None)
    info = import_uiface(
        args.unet,
        args.vq_encoder,
        args.vq_decoder,
        args.out,
        config,
        embedding_space=args.embedding_space,
        encoder=args.encoder,
    )
    emit(
        args,
        info,
        f"imported UIFace ({info['layout']} weights, {info['unet_parameters']:,} UNet + "
        f"{info['autoencoder_parameters']:,} VQ-f4 parameters; contexts in embedding space "
        f"{info['embedding_space']}) -> {info['out']}",
    )
    return 0


def cmd_region(args: argparse.Namespace) -> int:
    from synthface.generators.checkpoint import read_generator_config
    from synthface.generators.encoder import load_identity_encoder
    from synthface.generators.region import (
        fit_identity_region,
        load_identity_region,
        save_identity_region,
    )

    _threads(args)
    cfg = read_generator_config(args.checkpoint)
    encoder_path = args.encoder or cfg.encoder.path
    if encoder_path is None:
        raise InputError(
            f"{args.checkpoint}: the checkpoint names no conditioning encoder; give --encoder"
        )
    if args.encoder and cfg.encoder.path and args.encoder != cfg.encoder.path:
        print(
            f"synthface: warning: --encoder {args.encoder} is not the checkpoint's conditioning "
            f"encoder ({cfg.encoder.path}); the region is only meaningful in the space the "
            "generator is conditioned on",
            file=sys.stderr,
        )
    data = cfg.model_copy(deep=True)
    data.data.path = args.data
    data.data.source = args.source
    data.encoder.path = encoder_path
    encoder = load_identity_encoder(encoder_path, differentiable=False)
    region = fit_identity_region(
        data, encoder, max_images_per_identity=args.max_images_per_identity
    )
    path = save_identity_region(args.checkpoint, region)
    region = load_identity_region(args.checkpoint)
    own = region.neighbour_cosines()
    info = {
        "region": str(path),
        **region.meta,
        "dim": region.dim,
        "axes": int(region.axes.shape[0]),
        "training_nearest_neighbour_cos": {
            "mean": round(float(own.mean()), 4),
            "max": round(float(own.max()), 4),
        },
    }
    emit(
        args,
        info,
        f"{path}: {region.num_identities} training identities ({info['num_images']} images), "
        f"{info['axes']} principal axes; nearest-neighbour cos mean "
        f"{info['training_nearest_neighbour_cos']['mean']:.3f}",
    )
    return 0


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (got {text})")
    return value


def _option(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (got {text!r})")
    return key, yaml.safe_load(value)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def _add_training_args(c: argparse.ArgumentParser, config_help: str) -> None:
    """What every resumable trainer of this group takes: config, overrides, step, resume."""
    c.add_argument("config", help=config_help)
    c.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)"
    )
    c.add_argument("--steps", type=_positive, help="stop at this global step (resume later)")
    c.add_argument(
        "--no-resume",
        action="store_true",
        help="start over (refused while train.output_dir holds checkpoints)",
    )
    c.add_argument(
        "--resume-allow-partial",
        action="store_true",
        help="skip damaged checkpoints for the newest intact one (it says which it drops "
        "and which steps are trained again) instead of failing",
    )
    c.add_argument("--threads", type=_positive, help="torch CPU threads")
    add_json_flag(c)


def register(groups: argparse._SubParsersAction) -> None:
    sub = add_group(groups, "generator", "train and sample diffusion face generators")

    c = sub.add_parser(
        "train",
        help="train (or resume) a generator from a config",
        description="Train (or resume) a generator as CONFIG says. Writes checkpoints and, "
        "when done, the generator (final/) to train.output_dir (relative: under "
        "$SYNTHFACE_HOME or the current directory).",
    )
    _add_training_args(c, "configs/generators/*.yaml")
    c.set_defaults(func=cmd_train)

    c = sub.add_parser(
        "train-autoencoder",
        help="train (or resume) a latent-space autoencoder (VQModel/AutoencoderKL) on shards",
        description="Train (or resume) the autoencoder that CONFIG (kind autoencoders) describes. "
        "Writes checkpoints and, when done, final/: a diffusers directory that a generator "
        "config's autoencoder.path loads, with quality.json (PSNR/SSIM/L1 on held-out images) "
        "and contact_sheet.png (originals over reconstructions).",
    )
    _add_training_args(c, "configs/autoencoders/*.yaml")
    c.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    c.set_defaults(func=cmd_train_autoencoder)

    c = sub.add_parser(
        "sample",
        help="render an identity-set dataset (shards) from a checkpoint",
        description="The generate-synthetic steps without Prefect. Writes the dataset "
        "directory OUT: shards/, records/, qc/, plan/, views/qc.json, report/ (unless "
        "--no-report), dataset.json and its index files. Progress on stderr when it is a "
        "terminal.",
    )
    c.add_argument("checkpoint", help="generator directory (train's final/ or a checkpoint)")
    c.add_argument("--identities", type=_positive, required=True)
    c.add_argument("--per-identity", type=_positive, required=True)
    c.add_argument("--out", required=True, help="output dataset directory")
    c.add_argument(
        "--anchors",
        help=".npy of identity anchors or contexts (default: Tammes anchors); a sidecar "
        'F.npy.json {"space": ...} declares their embedding space',
    )
    c.add_argument(
        "--anchor-region",
        choices=["auto", "data", "sphere"],
        default="auto",
        help="where Tammes anchors are packed (sphere: the whole hypersphere, the explicit "
        "choice an imported model without a training-identity region needs)",
    )
    c.add_argument(
        "--image-size",
        type=_positive,
        help="resize images (antialiased) to this many pixels before encoding and QC "
        "(uiface's reference: 112; default: the generator's size)",
    )
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp_2m"])
    c.add_argument("--steps", type=_positive)
    c.add_argument("--guidance-scale", type=float)
    c.add_argument("--id-guidance-scale", type=float)
    c.add_argument(
        "--encoder",
        help="identity encoder for identity guidance (and QC when --qc-recognizer is not given)",
    )
    c.add_argument("--batch-size", type=_positive)
    c.add_argument(
        "--sampler-option",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="generator-specific sampler switch, repeatable (uiface: two_stage=false, "
        "injection=false, switch_threshold=0.006, switch_bound=500)",
    )
    c.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto: bf16 autocast on a GPU, fp32 on the CPU",
    )
    c.add_argument(
        "--compile", action="store_true", help="torch.compile the denoiser (long GPU runs)"
    )
    c.add_argument("--ext", choices=["jpg", "png"], default="png")
    c.add_argument("--max-samples-per-shard", type=_positive, default=2000)
    c.add_argument(
        "--device",
        choices=["cpu", "cuda", "auto"],
        default="auto",
        help="default auto: cuda when available",
    )
    c.add_argument(
        "--qc-recognizer",
        help="evaluation recognizer for QC (default: the generator's identity encoder)",
    )
    c.add_argument("--no-report", action="store_true", help="skip the contact sheet report")
    c.add_argument("--threads", type=_positive, help="torch CPU threads (default 1)")
    add_json_flag(c)
    c.set_defaults(func=cmd_sample)

    c = sub.add_parser(
        "import-uiface",
        help="convert UIFace's released UNet and VQ-f4 files into a uiface generator directory",
    )
    c.add_argument("--unet", required=True, help="ema_averaged_model_*.ckpt (or model_*.ckpt)")
    c.add_argument("--vq-encoder", required=True, help="first_stage_encoder_state_dict.pt")
    c.add_argument("--vq-decoder", required=True, help="first_stage_decoder_state_dict.pt")
    c.add_argument("--out", required=True, help="generator directory to write")
    c.add_argument(
        "--config", help="generator config describing the model (default: uiface_128.yaml)"
    )
    space = c.add_mutually_exclusive_group()
    space.add_argument(
        "--embedding-space",
        metavar="NAME",
        help="name of the space the model's contexts live in, recorded in the checkpoint "
        "(default: elasticface); anchors files and QC recognizers are checked against it",
    )
    space.add_argument(
        "--encoder",
        metavar="PATH",
        help="your copy of the conditioning recognizer (ElasticFace): its weights' sha256 "
        "becomes the recorded space and it becomes the checkpoint's encoder",
    )
    add_json_flag(c)
    c.set_defaults(func=cmd_import_uiface)

    c = sub.add_parser(
        "region",
        help="store the region of a generator's training identities in its checkpoint",
        description=(
            "Embed the training identities with the generator's conditioning encoder and "
            "write identity_region.safetensors into the checkpoint (training does this at its "
            "end; use this for checkpoints made without it). Generation then packs new "
            "identities' anchors inside that region and keeps them away from every training "
            "identity (identities.anchor_region, identities.novelty_max_cos)."
        ),
    )
    c.add_argument("checkpoint", help="generator directory (train's final/)")
    c.add_argument("--data", required=True, help="the generator's training data")
    c.add_argument("--source", choices=["shards", "folder"], default="shards")
    c.add_argument("--encoder", help="conditioning encoder (default: the checkpoint's)")
    c.add_argument("--max-images-per-identity", type=_positive, default=16)
    c.add_argument("--threads", type=_positive, help="torch CPU threads")
    add_json_flag(c)
    c.set_defaults(func=cmd_region)

    c = sub.add_parser("anchors", help="Tammes identity anchors on the unit hypersphere")
    c.add_argument("--n", type=_positive, required=True, help="number of identities")
    c.add_argument("--dim", type=_positive, default=512)
    c.add_argument("--out", required=True, help="output .npy")
    c.add_argument("--iterations", type=int, default=200)
    c.add_argument("--block", type=_positive, default=4096)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cpu")
    c.add_argument(
        "--within",
        metavar="EMB.npy",
        help="pack the anchors inside the region these real identity embeddings occupy "
        "(e.g. per-identity means of the training set) instead of the whole sphere",
    )
    c.add_argument(
        "--variance", type=_share, default=0.95, help="with --within: share of spread kept"
    )
    c.add_argument("--threads", type=_positive, help="torch CPU threads")
    add_json_flag(c)
    c.set_defaults(func=cmd_anchors)

    c = sub.add_parser(
        "identities",
        help="new identities from a MorphFace generator's empty-context faces, kept apart",
    )
    c.add_argument("checkpoint", help="morphface generator directory")
    c.add_argument("--n", type=_positive, required=True, help="number of identities")
    c.add_argument("--out", required=True, help="output .npy (use as --anchors of sample)")
    c.add_argument("--encoder", help="conditioning encoder (default: the checkpoint's)")
    c.add_argument(
        "--training",
        metavar="EMB.npy",
        help="embeddings of the training identities that new ones must stay away from",
    )
    c.add_argument("--max-cos", type=float, help="between new identities (default: config)")
    c.add_argument(
        "--max-cos-training", type=float, help="to any training identity (default: config)"
    )
    c.add_argument("--max-candidates", type=_positive, help="faces to try (default 20 x n)")
    c.add_argument("--steps", type=_positive, help="sampler steps per candidate face")
    c.add_argument("--batch-size", type=_positive, default=64)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=_positive, help="torch CPU threads")
    add_json_flag(c)
    c.set_defaults(func=cmd_identities)
