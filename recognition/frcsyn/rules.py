"""FRCSyn tasks, sub-tasks and their training-data rules, per edition.

Sources (see ``docs/frcsyn.md`` for the certainty of each line): the challenge site
``FRCSyn/frcsyn.github.io`` (``WACV2024.md``, ``CVPR2024.md``) and the CodaLab forum post
of 22 Sep 2023 for the 1st edition's datasets. The official CodaLab rules are e-mailed to
registrants and are not public; anything below marked ``unpublished`` is our reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from synthface.pipeline.errors import InputError

__all__ = [
    "BUPT_GROUPS",
    "EDITIONS",
    "SYSTEMS",
    "TASK_DATASETS",
    "SubTask",
    "check_training_data",
    "get_subtask",
    "list_subtasks",
]

# Task 1 evaluates on BUPT-BalancedFace relabelled into 4 ethnicities x 2 genders
# (unofficial: participants' summaries; the group names are ours).
BUPT_GROUPS: tuple[str, ...] = tuple(
    f"{eth}_{sex}"
    for eth in ("African", "Asian", "Caucasian", "Indian")
    for sex in ("female", "male")
)
TASK_DATASETS: dict[int, tuple[str, ...]] = {1: ("bupt",), 2: ("agedb", "bupt", "cfp-fp", "rof")}
SYSTEMS: tuple[str, ...] = ("proposed", "baseline")
EDITIONS: tuple[str, ...] = ("wacv2024", "cvpr2024")


@dataclass(frozen=True)
class SubTask:
    """One FRCSyn sub-task: what may be trained on and how it is ranked."""

    id: str  # "1.1" ... "2.3"
    edition: str
    synthetic_only: bool
    max_synthetic_images: int | None  # None = no limit
    real_data: tuple[str, ...]  # real training sets allowed
    provided_synthetic: tuple[str, ...]  # non-empty: only these synthetic sets (1st edition)
    rule: str  # the rule in words, printed with every result
    source: str

    @property
    def task(self) -> int:
        return int(self.id.split(".")[0])

    @property
    def datasets(self) -> tuple[str, ...]:
        return TASK_DATASETS[self.task]

    @property
    def ranking_metric(self) -> str:
        return "TO" if self.task == 1 else "AVG"

    @property
    def goal(self) -> str:
        return (
            "demographic-bias mitigation (BUPT-BalancedFace, 8 groups)"
            if self.task == 1
            else "overall performance (AgeDB, BUPT, CFP-FP, ROF)"
        )


def _wacv(task: int, sub: int) -> SubTask:
    common = (
        "only the provided datasets; no generative model may create extra data; classical "
        "augmentation (flip, rotation) and any face detector allowed"
    )
    if sub == 1:
        return SubTask(
            id=f"{task}.{sub}",
            edition="wacv2024",
            synthetic_only=True,
            max_synthetic_images=None,
            real_data=(),
            provided_synthetic=("DCFace", "GANDiffFace"),
            rule=f"synthetic only: the provided DCFace (0.5M) and GANDiffFace sets; {common}",
            source="frcsyn.github.io WACV2024.md; CodaLab forum 22 Sep 2023",
        )
    return SubTask(
        id=f"{task}.{sub}",
        edition="wacv2024",
        synthetic_only=False,
        max_synthetic_images=None,
        real_data=("CASIA-WebFace", "FFHQ"),
        provided_synthetic=("DCFace", "GANDiffFace"),
        rule=(
            "real + synthetic: CASIA-WebFace and FFHQ (no identity labels) plus the provided "
            f"DCFace and GANDiffFace sets; {common}"
        ),
        source="frcsyn.github.io WACV2024.md; CodaLab forum 22 Sep 2023",
    )


def _cvpr(task: int, sub: int) -> SubTask:
    src = "frcsyn.github.io CVPR2024.md"
    if sub == 1:
        return SubTask(
            f"{task}.1", "cvpr2024", True, 500_000, (), (),
            "synthetic only, at most 500,000 images (e.g. 10K identities x 50); any generator",
            src,
        )  # fmt: skip
    if sub == 2:
        return SubTask(
            f"{task}.2", "cvpr2024", True, None, (), (),
            "synthetic only, no limit on the number of images; any generator",
            src,
        )  # fmt: skip
    return SubTask(
        f"{task}.3", "cvpr2024", False, 500_000, ("CASIA-WebFace",), (),
        "real + synthetic: the provided CASIA-WebFace (~500K images) plus at most 500,000 "
        "synthetic images",
        src,
    )  # fmt: skip


_TABLE: dict[tuple[str, str], SubTask] = {}
for _t in (1, 2):
    for _s in (1, 2):
        _TABLE[("wacv2024", f"{_t}.{_s}")] = _wacv(_t, _s)
    for _s in (1, 2, 3):
        _TABLE[("cvpr2024", f"{_t}.{_s}")] = _cvpr(_t, _s)


def list_subtasks(edition: str | None = None) -> list[SubTask]:
    return [st for (ed, _), st in sorted(_TABLE.items()) if edition in (None, ed)]


def get_subtask(subtask_id: str, edition: str = "cvpr2024") -> SubTask:
    if edition not in EDITIONS:
        raise InputError(f"unknown FRCSyn edition {edition!r}; choose one of {', '.join(EDITIONS)}")
    try:
        return _TABLE[(edition, subtask_id)]
    except KeyError:
        known = ", ".join(st.id for st in list_subtasks(edition))
        raise InputError(
            f"edition {edition} has no sub-task {subtask_id!r}; choose one of {known}"
        ) from None


def check_training_data(
    subtask: SubTask,
    *,
    synthetic_images: int,
    real_datasets: Sequence[str] = (),
    synthetic_sources: Sequence[str] = (),
) -> list[str]:
    """Violations of the sub-task's training-data rule (empty list = allowed).

    ``synthetic_sources`` names where the synthetic images came from; for the 1st
    edition only the provided sets count (our own generators break its rule).
    """
    problems = []
    if subtask.max_synthetic_images is not None and synthetic_images > subtask.max_synthetic_images:
        problems.append(
            f"{synthetic_images} synthetic images exceed the {subtask.max_synthetic_images} "
            f"allowed in sub-task {subtask.id} ({subtask.edition})"
        )
    if subtask.synthetic_only and real_datasets:
        problems.append(
            f"sub-task {subtask.id} is synthetic-only but real data was used: "
            f"{', '.join(real_datasets)}"
        )
    extra = [d for d in real_datasets if d not in subtask.real_data]
    if not subtask.synthetic_only and extra:
        problems.append(
            f"real data {', '.join(extra)} not allowed in sub-task {subtask.id} "
            f"(allowed: {', '.join(subtask.real_data)})"
        )
    if subtask.provided_synthetic:
        bad = [s for s in synthetic_sources if s not in subtask.provided_synthetic]
        if bad:
            problems.append(
                f"sub-task {subtask.id} ({subtask.edition}) allows only the provided synthetic "
                f"sets {', '.join(subtask.provided_synthetic)}; got {', '.join(bad)}"
            )
    return problems
