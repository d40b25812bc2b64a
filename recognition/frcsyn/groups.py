"""Demographic groups of FRCSyn Task 1 comparisons: an explicit group map, or the path.

Task 1 ranks by accuracy over BUPT-BalancedFace's 8 groups, 4 ethnicities x 2 genders.
BUPT's folders (``Race/Subject/img``) only carry the ethnicity, so the first path
component gives 4 groups, not the challenge's 8. A **group map** says which group each
subject belongs to: a text file with one ``subject,group`` line per subject (``#``
comments and a ``subject,group`` header allowed; a tab may replace the comma), e.g.

    African/m.0abc12,African_male
    m.0xyz99,Asian_female

A comparison's group is the group of its first image's subject. The subject of an image
is its directory (``African/m.0abc12`` for ``African/m.0abc12/0001.jpg``); a map line may
give that whole directory or only its last component (BUPT subject ids are unique).
Every image's subject must be in the map: a missing one is an error naming it, never a
silent fallback. Without a map, the first path component is the group (the rule that
gives BUPT's 4 ethnicities, and our world trees' ``Group/Subject/img`` layout).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from synthface.pipeline.errors import InputError

__all__ = ["GroupMap", "assign_groups"]


@dataclass(frozen=True)
class GroupMap:
    path: Path
    sha256: str
    groups: dict[str, str]  # subject -> group

    @classmethod
    def load(cls, path: str | Path) -> GroupMap:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InputError(f"{path}: cannot read group map ({exc.strerror or exc})") from None
        groups: dict[str, str] = {}
        for lineno, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.replace("\t", ",").split(",")]
            if len(parts) != 2 or not all(parts):
                raise InputError(f"{path}:{lineno}: expected 'subject,group', got {line!r}")
            subject, group = parts
            if lineno == 1 and (subject, group) == ("subject", "group"):
                continue
            subject = subject.strip("/")
            if groups.get(subject, group) != group:
                raise InputError(
                    f"{path}:{lineno}: subject {subject!r} is in group {groups[subject]!r} "
                    f"and in {group!r}"
                )
            groups[subject] = group
        if not groups:
            raise InputError(f"{path}: group map has no 'subject,group' lines")
        return cls(path, hashlib.sha256(raw).hexdigest(), groups)

    def group_of(self, relpath: str) -> str | None:
        subject = PurePosixPath(relpath).parent
        for key in (str(subject), subject.name):
            if key and key != "." and key in self.groups:
                return self.groups[key]
        return None


def assign_groups(
    relpaths: Sequence[str], group_map: GroupMap | None, *, where: str = ""
) -> tuple[list[str], dict]:
    """Group of each comparison (given its first image) and a record of how it was decided.

    The record (``source``, ``groups`` and, with a map, its path and sha256) goes into the
    run's metrics and report, so a reader knows which group set the SD and TO are over.
    """
    if group_map is None:
        groups = [p.split("/", 1)[0] for p in relpaths]
        record = {"source": "first path component"}
    else:
        groups, missing = [], []
        for p in relpaths:
            g = group_map.group_of(p)
            if g is None:
                missing.append(p)
            groups.append(g or "")
        if missing:
            raise InputError(
                f"{group_map.path}: no group for the subject of {len(missing)} "
                f"{where or 'comparison'} images (first: {missing[0]!r})"
            )
        record = {
            "source": "group map",
            "path": str(group_map.path),
            "sha256": group_map.sha256,
        }
    record["groups"] = sorted(set(groups))
    return groups, record
