"""What ``clipforge index build|add`` report, apart from build.py so that building from
embeddings (bulk.py) reports the same without importing torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BuildReport", "format_report"]


@dataclass
class BuildReport:
    index: str
    added: int = 0
    duplicates: int = 0
    near_duplicates: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> why
    seconds: float = 0.0
    kind: str = "flat"
    total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def format_report(report: BuildReport, show: int = 10) -> str:
    """A few lines for people: counts, then the first unreadable files and why."""
    lines = [
        f"{report.index}: added {report.added}, skipped {report.duplicates} duplicate(s), "
        f"{report.near_duplicates} near duplicate(s), {len(report.unreadable)} unreadable; "
        f"{report.total} items, {report.kind} index, {report.seconds:.1f} s"
    ]
    for path, why in list(report.unreadable.items())[:show]:
        lines.append(f"  unreadable: {path}: {why}")
    if len(report.unreadable) > show:
        lines.append(f"  ... and {len(report.unreadable) - show} more")
    return "\n".join(lines)
