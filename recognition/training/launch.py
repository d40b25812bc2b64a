"""Recognizer training on every GPU (or CPU process) of a node, and across nodes.

One process per GPU is the only way to use several GPUs well (DDP), and only a launcher
(``accelerate launch``) can start those processes: a flow or a script cannot become N
processes itself. So :func:`launch_training` writes the resolved config to a temporary
file, starts ``accelerate launch ... -m synthface.recognition.training CONFIG --resume
latest`` as a child process group — the same entry point a user types by hand, so a run
from a flow and a run from a shell produce the same weights — streams its output lines to
a ``log`` callable, and reads the result the main rank writes (``--result-file``).

Needs no Prefect: ``synthface.flows.training`` wraps it in the ``train-recognizer`` flow.
On CPU the processes talk over gloo (accelerate picks it when no GPU is visible).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from synthface.pipeline.errors import ConfigError, SynthfaceError
from synthface.recognition.config import TrainConfig

ENTRY_MODULE = "synthface.recognition.training"
DEFAULT_MULTI_NODE_PORT = 29500
# The user-facing error line of the entry point (and of every synthface command).
_ERROR_PREFIX = "synthface: error: "
# Launchers prefix worker lines with their rank when asked to; drop that before matching.
_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")
# "SomeError: message": the last line of a Python traceback.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*)?(?:Error|Exception|Interrupt|Exit)\b.*:\s")
# The launchers' own report that a worker failed: says nothing about why.
_LAUNCHER_NOISE = ("CalledProcessError", "ChildFailedError")


class LaunchFailed(SynthfaceError):
    """The launched training failed; the message is its last error line.

    ``crashed``: no ``synthface: error:`` line came out, so the failure was not a
    deterministic input/config error (a killed rank, an out-of-memory kill, a lost peer):
    running again resumes from the last checkpoint and may well succeed.
    """

    def __init__(self, message: str, returncode: int, crashed: bool) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.crashed = crashed

    def __reduce__(self):  # picklable with its fields (Prefect stores a failed task's exception)
        return type(self), (str(self), self.returncode, self.crashed)


@dataclass(frozen=True)
class Topology:
    """Where this launcher's processes sit: ``processes`` per node, ``nodes`` in all.

    Every node runs the same launch with its own ``machine_rank``; node 0's address
    (``main_process_ip``) is where the processes meet.
    """

    processes: int
    nodes: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ConfigError(f"processes: must be >= 1 (got {self.processes})")
        if self.nodes < 1:
            raise ConfigError(f"nodes: must be >= 1 (got {self.nodes})")
        if not 0 <= self.machine_rank < self.nodes:
            raise ConfigError(
                f"machine_rank: must be in 0..{self.nodes - 1} for {self.nodes} node(s) "
                f"(got {self.machine_rank})"
            )
        if self.nodes > 1 and not self.main_process_ip:
            raise ConfigError(
                "main_process_ip: required with nodes > 1 (the address of node 0, "
                "reachable from every node)"
            )
        port = self.main_process_port
        if port is not None and not 1 <= port <= 65535:
            raise ConfigError(f"main_process_port: must be in 1..65535 (got {port})")

    @property
    def world_size(self) -> int:
        return self.processes * self.nodes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def default_processes(device: str) -> int:
    """One process per visible GPU when training may use CUDA, else one."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(
    config_path: str | os.PathLike,
    topology: Topology,
    *,
    result_file: str | os.PathLike | None = None,
    resume: str | None = "latest",
    python: str = sys.executable,
) -> list[str]:
    """The ``accelerate launch`` command line for ``topology`` (module form, so it needs
    no ``accelerate`` script on PATH). A single-node run without a port gets a free one, so
    two runs on one machine do not collide on accelerate's default."""
    cmd = [python, "-m", "accelerate.commands.launch"]
    if topology.distributed:
        port = topology.main_process_port
        if port is None:
            port = DEFAULT_MULTI_NODE_PORT if topology.nodes > 1 else _free_port()
        cmd += ["--multi_gpu", "--num_processes", str(topology.world_size)]
        cmd += ["--num_machines", str(topology.nodes), "--machine_rank", str(topology.machine_rank)]
        if topology.nodes > 1:
            cmd += ["--main_process_ip", str(topology.main_process_ip)]
        cmd += ["--main_process_port", str(port)]
    else:
        cmd += ["--num_processes", "1", "--num_machines", "1"]
    # Precision and compilation come from the config (train.mixed_precision,
    # model.compile); these only silence accelerate's "defaulting to" warnings.
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["-m", ENTRY_MODULE, str(config_path)]
    if resume is not None:
        cmd += ["--resume", resume]
    if result_file is not None:
        cmd += ["--result-file", str(result_file)]
    return cmd


def _root_cause(lines: list[str]) -> dict[str, str]:
    """The fields of torch elastic's "Root Cause" block (the first rank that failed)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Root Cause")]
    fields: dict[str, str] = {}
    for line in lines[starts[-1] + 1 :] if starts else []:
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("rank", "exitcode", "traceback") and key.strip() not in fields:
            fields[key.strip()] = " ".join(value.split())
    return fields


def error_line(lines: Iterable[str]) -> str | None:
    """The line that says why a launch failed: the entry point's ``synthface: error:``
    line; else, when a rank was killed by a signal, which rank and signal (the others then
    fail with connection errors that only hide it); else the last exception line that is
    not the launcher's own report."""
    lines = [_RANK_PREFIX.sub("", line).strip() for line in lines]
    for line in reversed(lines):
        if line.startswith(_ERROR_PREFIX):
            return line[len(_ERROR_PREFIX) :]
    cause = _root_cause(lines)
    if cause.get("exitcode", "").startswith("-"):
        return f"rank {cause.get('rank', '?')} died: {cause.get('traceback') or cause['exitcode']}"
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line) and not any(n in line for n in _LAUNCHER_NOISE):
            return line
    return None


def _segments(stream, chunk: int = 1 << 16) -> Iterator[tuple[str, bool]]:
    """(text, transient) pieces of a byte stream: a piece ended by ``\\r`` is a progress
    bar's redraw (transient), one ended by ``\\n`` a line."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    fd = stream.fileno()
    while True:
        data = os.read(fd, chunk)
        pending += decoder.decode(data, final=not data)
        # a trailing "\r" may be the first half of "\r\n": wait for the next chunk
        held = "\r" if data and pending.endswith("\r") else ""
        pieces = re.split(r"(\r\n|\r|\n)", pending[: len(pending) - len(held)])
        pending = pieces.pop() + held
        for text, sep in zip(pieces[::2], pieces[1::2], strict=True):
            yield text, sep == "\r"
        if not data:
            if pending:
                yield pending, False
            return


def stream_process(
    cmd: list[str],
    log: Callable[[str], None],
    *,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    progress_every: float = 30.0,
    keep: int = 200,
) -> None:
    """Run ``cmd`` in its own process group, handing each output line to ``log``
    (progress-bar redraws at most every ``progress_every`` seconds). Raises
    :class:`LaunchFailed` with the error line when it fails. If this process is interrupted
    (a cancelled flow run, Ctrl-C) the whole group is terminated: no orphaned ranks keep
    the GPUs."""
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    tail: collections.deque[str] = collections.deque(maxlen=keep)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        with _stop_on_sigterm(proc):
            last_bar = 0.0
            for text, transient in _segments(proc.stdout):
                text = text.rstrip()
                if not text:
                    continue
                if transient:
                    now = time.monotonic()
                    if now - last_bar < progress_every:
                        continue
                    last_bar = now
                else:
                    tail.append(text)
                log(text)
            code = proc.wait()
    finally:
        _stop_group(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    if code != 0:
        why = error_line(tail)
        crashed = not any(_RANK_PREFIX.sub("", t).strip().startswith(_ERROR_PREFIX) for t in tail)
        if why is None:
            why = f"exit status {code}" + (f" ({signal.Signals(-code).name})" if code < 0 else "")
        raise LaunchFailed(f"training launch failed: {why}", code, crashed)


@contextlib.contextmanager
def _stop_on_sigterm(proc: subprocess.Popen) -> Iterator[None]:
    """While the launch runs, SIGTERM to this process (how Prefect cancels a flow run, how
    a batch system ends a job) first stops the launch's process group, which sits in its
    own session and would not get the signal, then does what it did before."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers belong to the main thread; Ctrl-C and errors still stop the group
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame) -> None:
        _stop_group(proc)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """Terminate what is left of the launch's process group (ranks may outlive the launcher)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.1)
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)


def launch_training(
    cfg: TrainConfig,
    topology: Topology | None = None,
    *,
    log: Callable[[str], None] = print,
    env: dict[str, str] | None = None,
    progress_every: float = 30.0,
) -> dict[str, Any]:
    """Train ``cfg`` (resuming its newest checkpoint) in launched processes.

    ``topology`` defaults to one process per visible GPU (one on CPU). Returns the
    entry point's result (``output_dir``, ``global_step``, ``completed``, ``model_dir``,
    ``checkpoint``, ``metrics``, ``validation``) plus ``processes`` and ``nodes``; on a node
    other than 0, which has no main process, only what the output directory shows.
    """
    if topology is None:
        topology = Topology(default_processes(cfg.train.device))
    with tempfile.TemporaryDirectory(prefix="synthface-launch-") as tmp:
        config = Path(tmp) / "config.yaml"
        result = Path(tmp) / "result.json"
        data = {"kind": "recognition", **cfg.model_dump(mode="json")}
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        cmd = launch_command(config, topology, result_file=result)
        log(
            f"launching {topology.processes} process(es) x {topology.nodes} node(s) "
            f"(machine_rank {topology.machine_rank}): {ENTRY_MODULE}"
        )
        stream_process(cmd, log, env=env, progress_every=progress_every)
        summary = json.loads(result.read_text()) if result.is_file() else None
    if summary is None:  # not the main node: the main one reports the model
        summary = {"output_dir": str(cfg.train.output_dir), "model_dir": None, "completed": None}
    return {**summary, "processes": topology.processes, "nodes": topology.nodes}
