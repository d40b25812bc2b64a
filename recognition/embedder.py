"""One embedding interface over torch checkpoints and insightface ONNX recognizers.

``load_embedder(path)`` accepts a checkpoint directory from :func:`save_recognizer` or
any ``.onnx`` recognizer that insightface would load as ``ArcFaceONNX`` (e.g. a user's
``w600k_r50.onnx``, or our own export). Images go in as aligned RGB uint8 NHWC crops of
the model's input size; embeddings come out L2-normalised float32. ``flip=True`` sums the
features of each image and its mirror before normalising (arcface_torch's evaluation).

Input normalisation follows the model: torch checkpoints and ordinary ONNX recognizers
take (x - 127.5) / 127.5 in RGB; MXNet-converted ONNX models that subtract and scale
inside the graph get raw pixels (insightface's own test for this: a Sub and a Mul among
the first eight nodes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError

DEFAULT_BATCH = 64
# (input side, output size) of the single-output models in insightface's packs that are
# not recognizers; insightface routes them by input side (192: landmarks, 96: attributes).
_PACK_NON_RECOGNIZERS = {
    (192, 212): "2d106det landmark model",
    (192, 3309): "1k3d68 landmark model",
    (96, 3): "genderage attribute model",
}


def _check_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[3] != 3:
        raise InputError(f"images must be N x H x W x 3 RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise InputError(f"images must be uint8, got {arr.dtype}")
    if tuple(arr.shape[1:3]) != tuple(size):
        raise InputError(
            f"images are {arr.shape[1]}x{arr.shape[2]} but the model takes {size[0]}x{size[1]} "
            "aligned crops; resize or align them first"
        )
    return arr


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


class Embedder:
    """Base: batching, flip-sum and normalisation; subclasses run the raw model.

    Attributes:
        input_size: ``(height, width)`` the model takes.
        dim: embedding size.
        source: the path the model came from.
    """

    input_size: tuple[int, int]
    dim: int
    source: str

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        """N x H x W x 3 uint8 RGB -> N x dim float32 un-normalised features."""
        raise NotImplementedError

    def embed_raw(self, images: np.ndarray) -> np.ndarray:
        """Un-normalised features: evaluation needs their norms (XNorm, IJB norm-score)."""
        return self._raw(_check_images(images, self.input_size)).astype(np.float32)

    def embed(
        self, images: np.ndarray, flip: bool = False, batch_size: int = DEFAULT_BATCH
    ) -> np.ndarray:
        """Aligned RGB uint8 crops (N x H x W x 3) -> N x dim L2-normalised float32."""
        arr = _check_images(images, self.input_size)
        out = np.empty((arr.shape[0], self.dim), dtype=np.float32)
        for start in range(0, arr.shape[0], batch_size):
            batch = arr[start : start + batch_size]
            feat = self._raw(batch).astype(np.float32)
            if flip:
                feat = feat + self._raw(np.ascontiguousarray(batch[:, :, ::-1])).astype(np.float32)
            out[start : start + batch.shape[0]] = feat
        return l2_normalize(out)


class TorchEmbedder(Embedder):
    def __init__(self, model, device: str, source: str) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.input_size = tuple(model.input_size)
        self.dim = int(model.embedding_dim)
        self.source = source
        if model.input_channels != 3:
            raise InputError(
                f"{source}: backbone takes {model.input_channels}-channel input, not RGB images"
            )

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        with torch.inference_mode():
            return self.model(x).float().cpu().numpy()


def onnxruntime_distributions() -> list[str]:
    """The installed onnxruntime builds ("name version"); more than one breaks the GPU one."""
    import re
    from importlib.metadata import distributions

    names = {
        re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower(): d.version for d in distributions()
    }
    return [f"{n} {names[n]}" for n in ("onnxruntime", "onnxruntime-gpu") if n in names]


def _providers(device: str) -> list[str]:
    import onnxruntime

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            both = onnxruntime_distributions()
            if len(both) > 1:
                raise InputError(
                    f"device cuda: {' and '.join(both)} are both installed; they share one "
                    "module and the CUDA provider is lost: pip uninstall -y onnxruntime "
                    "onnxruntime-gpu && pip install onnxruntime-gpu"
                )
            raise InputError(
                "device cuda: onnxruntime has no CUDAExecutionProvider "
                "(install the 'gpu' extra: onnxruntime-gpu)"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise InputError(f"device must be cpu or cuda, got {device!r}")


class OnnxEmbedder(Embedder):
    def __init__(self, path: str, device: str, threads: int | None = None) -> None:
        import onnxruntime

        self.source = path
        providers = _providers(device)
        opts = onnxruntime.SessionOptions()
        if threads:  # onnxruntime ignores OMP_NUM_THREADS: a measured run must say it here
            opts.intra_op_num_threads = threads
        try:
            session = onnxruntime.InferenceSession(path, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InputError(f"{path}: not a loadable ONNX model: {exc}") from None
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(outputs) >= 5:  # insightface's own routing rule
            raise InputError(
                f"{path}: {len(outputs)} outputs is a face detector (e.g. a pack's det_10g.onnx), "
                "not a recognizer"
            )
        shape = list(inputs[0].shape) if inputs else []
        if len(inputs) != 1 or len(shape) != 4 or shape[1] != 3:
            raise InputError(
                f"{path}: unexpected input {[(i.name, i.shape) for i in inputs]}; "
                "a recognizer takes one N x 3 x H x W image tensor"
            )
        if not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            raise InputError(f"{path}: input height/width must be fixed, got shape {shape}")
        if len(outputs) != 1 or len(outputs[0].shape) != 2:
            raise InputError(
                f"{path}: unexpected outputs {[(o.name, o.shape) for o in outputs]}; "
                "a recognizer returns one N x D embedding"
            )
        dim = outputs[0].shape[1]
        if not (isinstance(dim, int) and dim > 0):
            raise InputError(
                f"{path}: embedding size must be fixed, got output shape {outputs[0].shape}"
            )
        other = _PACK_NON_RECOGNIZERS.get((int(shape[2]), int(dim)))
        if other is not None:  # one output of N x D looks like an embedding: it is not one
            raise InputError(
                f"{path}: {shape[2]}x{shape[3]} input and {dim} outputs is insightface's "
                f"{other}, not a recognizer (a pack's recognizer is e.g. w600k_r50.onnx)"
            )
        self.session = session
        self.input_name = inputs[0].name
        self.input_size = (int(shape[2]), int(shape[3]))
        self.dim = int(dim)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        # insightface's own wrapper decides where normalisation happens (see module doc);
        # it reuses our session, so nothing is loaded twice.
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        wrapper = ArcFaceONNX(model_file=path, session=session)
        self.input_mean, self.input_std = float(wrapper.input_mean), float(wrapper.input_std)

    def _run(self, blob: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: blob})[0]

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        blob = (batch.transpose(0, 3, 1, 2).astype(np.float32) - self.input_mean) / self.input_std
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        if self.fixed_batch is None or self.fixed_batch == blob.shape[0]:
            return self._run(blob)
        if self.fixed_batch != 1:
            raise InputError(f"{self.source}: model has a fixed batch of {self.fixed_batch}")
        return np.concatenate([self._run(blob[i : i + 1]) for i in range(blob.shape[0])])


def load_embedder(
    path: str | os.PathLike, device: str = "cpu", threads: int | None = None
) -> Embedder:
    """A torch checkpoint directory or an ``.onnx`` recognizer -> :class:`Embedder`.

    ``threads`` caps an ONNX session's intra-op threads (torch follows ``torch.set_num_threads``).
    """
    p = Path(path)
    if p.suffix == ".onnx":
        if not p.is_file():
            raise InputError(f"{p}: no such ONNX file")
        return OnnxEmbedder(str(p), device, threads)
    import torch

    from synthface.recognition.checkpoint import load_recognizer

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device cuda: torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"device must be cpu or cuda, got {device!r}")
    return TorchEmbedder(load_recognizer(p, device="cpu"), device, str(p))
