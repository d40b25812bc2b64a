"""Tiny, untrained models and configs for the generation-flow tests (seconds on a CPU).

The weights are random: these tests check orchestration, resume, determinism and QC
plumbing — never image quality — so untrained models are the honest choice here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from synthface.generators.dataset.config import GenerateConfig

DIM = 32
SIZE = 16


def make_tiny_models(root: Path) -> tuple[Path, Path]:
    """Save a tiny recognizer and a tiny ID³ generator conditioned on it; return their dirs."""
    from synthface.generators.base import create_generator
    from synthface.generators.config import GeneratorConfig
    from synthface.recognition import create_backbone, save_recognizer

    torch.manual_seed(0)
    rec_dir = root / "recognizer"
    gen_dir = root / "generator"
    if not (rec_dir / "config.json").is_file():
        model = create_backbone("tiny", input_size=SIZE, embedding_dim=DIM, widths=(8, 8, 16, 16))
        save_recognizer(model.eval(), rec_dir, {"note": "untrained, for tests"})
    if not (gen_dir / "config.json").is_file():
        cfg = GeneratorConfig.model_validate(
            {
                "image_size": SIZE,
                "unet": {
                    "block_out_channels": [16, 16],
                    "norm_num_groups": 8,
                    "cross_attention_dim": 16,
                    "attention_head_dim": 4,
                },
                "conditioning": {"identity_dim": DIM, "identity_tokens": 2, "mlp_hidden": [32]},
                "sampler": {"name": "ddim", "steps": 2, "id_guidance_scale": 0.0},
                "id3": {"anchor_iterations": 5},
                "encoder": {"path": str(rec_dir)},
            }
        )
        create_generator("id3", cfg).save_pretrained(gen_dir)
    return gen_dir, rec_dir


def tiny_config(models: Path, out: Path, **sections) -> GenerateConfig:
    gen_dir, _ = make_tiny_models(models)
    data = {
        "name": "tiny",
        "generator": {"checkpoint": str(gen_dir), "batch_size": 16},
        "identities": {"count": 6, "samples_per_identity": 3, "seed": 1},
        "output": {"dir": str(out), "max_samples_per_shard": 6},
        "report": {"contact_identities": 3, "contact_samples": 3},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return GenerateConfig.model_validate(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """A real ``prefect server start`` on loopback with a PREFECT_HOME of its own, which a
    test can kill and start again on the same home and port (same database, same URL).

    ``env`` is the environment for clients (the flow CLI, ``prefect``): this server's API
    and home, and none of the caller's other PREFECT_* settings.
    """

    def __init__(self, home: Path, port: int | None = None, **settings: str):
        self.home = Path(home)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        base.update(
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            OMP_NUM_THREADS="1",
            **settings,
        )
        self.server_env = base
        self.env = {**base, "PREFECT_API_URL": self.url}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.home / f"server-{self.starts}.log"

    def healthy(self) -> bool:
        import httpx

        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/health", timeout=2).status_code == 200
        return False

    def start(self, timeout: float = 180) -> None:
        """Start and wait until the API answers (the first start also migrates the database)."""
        self.starts += 1
        self.home.mkdir(parents=True, exist_ok=True)
        bin_dir = Path(sys.executable).parent
        with open(self.log, "wb") as log:
            args = ["server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--no-ui"]
            self.proc = subprocess.Popen(
                [bin_dir / "prefect", *args],
                env=self.server_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prefect server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server and its children: no shutdown, as in a crash or OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_group(self.proc)


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM a process started with ``start_new_session``, then SIGKILL its group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_flow_on_temporary_server(cfg: GenerateConfig, tmp_path: Path) -> subprocess.Popen:
    """``synthface flows run generate`` for ``cfg`` in its own session, with no API URL (so
    it starts a temporary Prefect server of its own); output in ``tmp_path/run.log``."""
    import yaml

    config = tmp_path / "flow.yaml"
    config.write_text(yaml.safe_dump({"kind": "generate", **cfg.model_dump(mode="json")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        OMP_NUM_THREADS="1",
    )
    with open(tmp_path / "run.log", "wb") as fh:
        return subprocess.Popen(
            [Path(sys.executable).parent / "synthface", "flows", "run", "generate",
             "--config", config],
            env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        )  # fmt: skip


def cmdline(p) -> str:
    """A psutil process's command line, or "" once it is gone."""
    import psutil

    try:
        return " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""
