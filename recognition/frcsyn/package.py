"""FRCSyn submission packages: write ``<subtask>/<dataset>/{proposed,baseline}.txt`` plus a
deterministic ``<subtask>.zip``, and validate a zip before it is uploaded.

The official zip layout is e-mailed to registrants and not public. We follow the
participants' published layout: inside ``<subtask>.zip`` the entries are
``<dataset>/<system>.txt`` at the root (what zipping the ``<subtask>/`` folder's contents
gives), datasets ``agedb``, ``bupt``, ``cfp-fp``, ``rof``, one ``score,decision`` line per
comparison in comparison-file order.

Zip bytes are reproducible: sorted entries, fixed timestamps (1980-01-01), fixed
permissions and compression level, no extra fields.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.errors import InputError
from synthface.recognition.frcsyn.comparisons import read_comparisons
from synthface.recognition.frcsyn.rules import SYSTEMS, get_subtask
from synthface.recognition.frcsyn.scoring import parse_submission, read_run

__all__ = ["ValidationReport", "package_run", "validate_package", "write_deterministic_zip"]

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
WITHOUT_RUN = (
    "no run given: checked the entries, the line count per comparison file and the line "
    "syntax (and that the decisions fit one threshold) only, not the recorded thresholds "
    "nor the order of the lines; pass the run directory for those checks"
)
_SUBTASK_RE = re.compile(r"^([12]\.[123])$")


def write_deterministic_zip(path, entries: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix
            info.external_attr = 0o100644 << 16
            zf.writestr(info, entries[name], compresslevel=9)
    atomic_write_bytes(path, buf.getvalue())


def package_run(run_dir, out_dir) -> Path:
    """Copy a run's score files into ``OUT/<subtask>/<dataset>/<system>.txt``; zip them."""
    run_dir, out = Path(run_dir), Path(out_dir)
    run = read_run(run_dir)
    subtask = run["subtask"]
    entries = {}
    for d in run["datasets"]:
        for system in SYSTEMS:
            src = run_dir / "scores" / d / f"{system}.txt"
            try:
                data = src.read_bytes()
            except OSError:
                raise InputError(f"{src}: missing score file (re-run 'frcsyn score')") from None
            n_lines = data.count(b"\n")
            want = run["num_comparisons"][d]
            if n_lines != want:
                raise InputError(f"{src}: {n_lines} lines but the run scored {want} comparisons")
            entries[f"{d}/{system}.txt"] = data
    for name, data in entries.items():
        atomic_write_bytes(out / subtask / name, data)
    zip_path = out / f"{subtask}.zip"
    write_deterministic_zip(zip_path, entries)
    return zip_path


@dataclass
class ValidationReport:
    zip: str
    subtask: str
    edition: str
    checked: dict = field(default_factory=dict)  # file -> number of lines
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "zip": self.zip,
            "subtask": self.subtask,
            "edition": self.edition,
            "ok": self.ok,
            "checked": self.checked,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def _subtask_from_name(zip_path: Path) -> str | None:
    m = _SUBTASK_RE.match(zip_path.name[: -len(".zip")] if zip_path.name.endswith(".zip") else "")
    return m.group(1) if m else None


def validate_package(
    zip_path,
    comparisons_dir,
    *,
    subtask: str | None = None,
    edition: str = "cvpr2024",
    datasets: list[str] | None = None,
    run_dir=None,
    score_range: tuple[float, float] | None = (-1.0, 1.0),
) -> ValidationReport:
    """Check a submission zip; every defect found is listed, none stops the others.

    Always: entry names (``<dataset>/<system>.txt``, no stray files or folders), both
    systems for every dataset, one line per comparison, ``score,decision`` syntax, finite
    scores inside ``score_range``, decisions 1/0, and decisions consistent with *one*
    threshold per system (every 1 scores above every 0). With ``run_dir`` (the
    ``frcsyn score`` output): the recorded threshold reproduces every decision and each
    line equals the run's line for that comparison, which catches reordered lines.
    """
    zip_path = Path(zip_path)
    run = read_run(run_dir) if run_dir is not None else None
    if subtask is None:
        subtask = run["subtask"] if run else _subtask_from_name(zip_path)
    if subtask is None:
        raise InputError(f"{zip_path}: cannot tell the sub-task from the name; pass --subtask")
    if run:
        edition = run["edition"]
    st = get_subtask(subtask, edition)
    expected = list(datasets or (run["datasets"] if run else st.datasets))
    report = ValidationReport(zip=str(zip_path), subtask=subtask, edition=edition)
    problems = report.problems
    if run is None:
        report.warnings.append(WITHOUT_RUN)

    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"{zip_path}: not a readable zip ({exc})") from None
    with zf:
        files = {}
        for info in zf.infolist():
            name = info.filename
            p = PurePosixPath(name)
            if info.is_dir():
                if len(p.parts) != 1 or p.parts[0] not in expected:
                    problems.append(
                        f"{name}: unexpected folder (expected one of {', '.join(expected)})"
                    )
                continue
            if p.is_absolute() or ".." in p.parts:
                problems.append(f"{name}: unsafe entry path")
                continue
            if (
                len(p.parts) != 2
                or p.parts[0] not in expected
                or p.name not in {f"{s}.txt" for s in SYSTEMS}
            ):
                problems.append(
                    f"{name}: unexpected entry; expected <dataset>/<system>.txt with dataset in "
                    f"{{{', '.join(expected)}}} and system in {{{', '.join(SYSTEMS)}}}"
                )
                continue
            files[name] = zf.read(info)

    thresholds = {s: run["thresholds"][s]["value"] for s in SYSTEMS} if run else {}
    per_system = {s: ([], []) for s in SYSTEMS}  # scores, decisions over all datasets
    for d in expected:
        cset = read_comparisons(comparisons_dir, d)
        if run and run.get("comparisons", {}).get(d) not in (None, cset.sha256):
            problems.append(f"{cset.path}: differs from the comparison file the run scored")
        for system in SYSTEMS:
            name = f"{d}/{system}.txt"
            if name not in files:
                problems.append(f"{name}: missing from the zip")
                continue
            text = files[name].decode("utf-8", "replace")
            scores, decisions, bad = parse_submission(text, name)
            problems += bad
            report.checked[name] = int(scores.size)
            if scores.size != len(cset):
                problems.append(
                    f"{name}: {scores.size} lines but {cset.path.name} has {len(cset)} comparisons"
                )
            finite = np.isfinite(scores)
            if score_range is not None:
                lo, hi = score_range
                out = np.flatnonzero(finite & ((scores < lo - 1e-9) | (scores > hi + 1e-9)))
                if out.size:
                    problems.append(
                        f"{name}:{out[0] + 1}: score {scores[out[0]]} outside [{lo}, {hi}]"
                        + (f" ({out.size} lines)" if out.size > 1 else "")
                    )
            ok = finite & (decisions >= 0)
            per_system[system][0].append((name, scores, decisions, ok))
            if run:
                t = thresholds[system]
                wrong = np.flatnonzero(ok & ((scores >= t).astype(np.int8) != decisions))
                if wrong.size:
                    i = wrong[0]
                    problems.append(
                        f"{name}:{i + 1}: decision {decisions[i]} inconsistent with score "
                        f"{scores[i]:.8f} and the recorded threshold {t:.8f}"
                        + (f" ({wrong.size} lines)" if wrong.size > 1 else "")
                    )
                ref_path = Path(run_dir) / "scores" / d / f"{system}.txt"
                if ref_path.is_file():
                    ref = ref_path.read_text().splitlines()
                    got = text.splitlines()
                    diff = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), None)
                    if diff is not None:
                        problems.append(
                            f"{name}:{diff + 1}: line {got[diff]!r} differs from the run's "
                            f"{ref[diff]!r} for comparison {diff + 1} (lines out of order or edited)"
                        )
    if not run:
        # Without the recorded value: some single threshold must explain all decisions.
        for system in SYSTEMS:
            parts = per_system[system][0]
            if not parts:
                continue
            ones = [(n, s[ok & (dd == 1)]) for n, s, dd, ok in parts]
            zeros = [(n, s[ok & (dd == 0)]) for n, s, dd, ok in parts]
            lo1 = (
                min((v.min(), n) for n, v in ones if v.size)
                if any(v.size for _, v in ones)
                else None
            )
            hi0 = (
                max((v.max(), n) for n, v in zeros if v.size)
                if any(v.size for _, v in zeros)
                else None
            )
            if lo1 and hi0 and hi0[0] >= lo1[0]:
                problems.append(
                    f"{system}: decisions fit no single threshold: a 0 at score {hi0[0]:.8f} "
                    f"({hi0[1]}) is not below a 1 at score {lo1[0]:.8f} ({lo1[1]})"
                )
    return report
