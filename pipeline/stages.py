"""Content-addressed, resumable stage directories for multi-stage runs (e.g. the benchmark).

A stage is identified by its *inputs*: the resolved config section that shapes its
output plus the keys of the stages it reads. Its directory is named after the hash of
those inputs, ``ROOT/<kind>/<name>-<key[:12]>/``, so changing one input gives a new
directory while every stage whose inputs did not change is found complete and skipped.
A stage is complete when its marker ``stage.json`` exists and names the same key; the
marker is written atomically and *last*, after the stage's work, so a run killed inside
a stage leaves no marker and the next run redoes (or, when the work function itself
resumes, continues) exactly that stage.

Keys never contain paths of the machine that ran them: callers hash config content and
upstream keys, so moving ``ROOT`` or the inputs does not invalidate finished work. Paths
*inside* ``ROOT`` that a stage returns (its data, its model) are stored relative to it
(``@root/...``) and read back under the root of the run that reads them, so a moved or
copied store reads its own files, not the old location's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthface.pipeline.atomic import atomic_write_json
from synthface.pipeline.config import canonical_json, config_hash
from synthface.pipeline.errors import InputError

MARKER = "stage.json"
STAGE_FORMAT = "synthface-stage"
# Bump when a stage's output format changes in a way old outputs cannot satisfy.
STAGE_SCHEMA = 1


def stage_key(kind: str, inputs: Mapping[str, Any]) -> str:
    """sha256 of the stage kind and its inputs (canonical JSON; must be JSON-serialisable)."""
    try:
        canonical_json(inputs)
    except TypeError as exc:
        raise InputError(f"stage {kind!r}: inputs are not JSON-serialisable ({exc})") from None
    return config_hash({"schema": STAGE_SCHEMA, "kind": kind, "inputs": dict(inputs)})


@dataclass(frozen=True)
class Stage:
    """One stage instance: where its output lives and what identifies it."""

    kind: str
    name: str
    key: str
    path: Path

    @property
    def marker(self) -> Path:
        return self.path / MARKER

    def record(self) -> dict | None:
        """The completion record, or ``None`` if the stage has not completed (or is foreign)."""
        try:
            data = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("key") != self.key:
            return None
        return data

    @property
    def complete(self) -> bool:
        return self.record() is not None

    def finish(self, result: Mapping[str, Any], inputs: Mapping[str, Any], seconds: float) -> dict:
        """Write the marker (atomically, last) and return the record."""
        record = {
            "format": STAGE_FORMAT,
            "schema": STAGE_SCHEMA,
            "kind": self.kind,
            "name": self.name,
            "key": self.key,
            "inputs": dict(inputs),
            "result": dict(result),
            "seconds": round(seconds, 3),
        }
        atomic_write_json(self.marker, record)
        return record


ROOT_TOKEN = "@root"


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_strings(v, fn) for v in value]
    return value


def portable_paths(value: Any, root: Path) -> Any:
    """``value`` with every path under ``root`` written as ``@root/...``."""
    prefixes = {str(Path(root)), str(Path(root).resolve())}

    def rel(text: str) -> str:
        for prefix in prefixes:
            if text == prefix or text.startswith(prefix + "/"):
                return ROOT_TOKEN + text[len(prefix) :]
        return text

    return _map_strings(value, rel)


def local_paths(value: Any, root: Path) -> Any:
    """``value`` with ``@root/...`` paths under this run's ``root``."""

    def local(text: str) -> str:
        if text == ROOT_TOKEN or text.startswith(ROOT_TOKEN + "/"):
            return str(Path(root)) + text[len(ROOT_TOKEN) :]
        return text

    return _map_strings(value, local)


def call_directly(label: str, work: Callable[[Path], Mapping[str, Any]], path: Path):
    return work(path)


@dataclass
class StageStore:
    """All stages of one run under ``root``; remembers which ran and which were skipped.

    ``execute(label, work, stage_dir)`` runs a stage's work; an orchestrator passes its
    own (the benchmark flow wraps each stage in a Prefect task), the default calls it.
    """

    root: Path
    execute: Callable[[str, Callable[[Path], Mapping[str, Any]], Path], Mapping[str, Any]] = (
        call_directly
    )
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def stage(self, kind: str, name: str, inputs: Mapping[str, Any]) -> Stage:
        key = stage_key(kind, inputs)
        return Stage(kind, name, key, Path(self.root) / kind / f"{name}-{key[:12]}")

    def run(
        self,
        kind: str,
        name: str,
        inputs: Mapping[str, Any],
        work: Callable[[Path], Mapping[str, Any]],
    ) -> dict:
        """The stage's result: from its marker when complete, else from ``work(stage_dir)``.

        ``work`` writes its outputs inside the directory it is given and returns a small
        JSON-serialisable result (paths, metrics); it is called only when no matching
        marker exists, and may itself resume partial work left in that directory.
        """
        stage = self.stage(kind, name, inputs)
        label = f"{kind}/{name}"
        record = stage.record()
        if record is None:
            # the same inputs under another name (the benchmark's conditioning encoder is
            # the real-all row's seed-0 recognizer): the same work, done once
            stage, record = self._twin(stage)
        if record is not None:
            self.skipped.append(label)
            self.seconds[label] = float(record.get("seconds", 0.0))
            result = local_paths(record["result"], self.root)
            return {**result, "key": stage.key, "dir": str(stage.path)}
        stage.path.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        result = dict(self.execute(label, work, stage.path))
        seconds = time.perf_counter() - t0
        stage.finish(portable_paths(result, self.root), inputs, seconds)
        self.executed.append(label)
        self.seconds[label] = round(seconds, 3)
        return {**result, "key": stage.key, "dir": str(stage.path)}

    def _twin(self, stage: Stage) -> tuple[Stage, dict | None]:
        """A completed stage of the same kind and key under another name, if any."""
        for path in sorted((Path(self.root) / stage.kind).glob(f"*-{stage.key[:12]}")):
            if path == stage.path:
                continue
            twin = Stage(stage.kind, path.name[: -len(stage.key[:12]) - 1], stage.key, path)
            record = twin.record()
            if record is not None:
                return twin, record
        return stage, None
