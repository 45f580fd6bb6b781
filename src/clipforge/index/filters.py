"""Metadata filters, applied exactly: they become a parameterised SQL WHERE clause over the items
table (column names come only from a fixed list, values are always bound parameters)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..errors import DataError

__all__ = ["FIELDS", "OPS", "Condition", "SearchFilter", "parse_time"]

# field -> SQL type check; every stored column except the vector can be filtered on.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": int, "path": str, "folder": str, "caption": str, "sha256": str,
    "size": int, "width": int, "height": int, "added": (int, float), "url": str,
}  # fmt: skip
OPS = ("=", "!=", "<", "<=", ">", ">=", "contains", "startswith", "in")


@dataclass(frozen=True)
class Condition:
    """``field op value``, e.g. ``Condition("width", ">=", 512)`` or ``("folder", "in", [...])``."""

    field: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.field not in FIELDS:
            raise DataError(f"unknown filter field {self.field!r}; choose one of {', '.join(FIELDS)} (or use tags)")
        if self.op not in OPS:
            raise DataError(f"unknown filter operator {self.op!r}; choose one of {', '.join(OPS)}")
        values = self.value if self.op == "in" else [self.value]
        if self.op == "in" and not isinstance(self.value, (list, tuple)):
            raise DataError(f"filter {self.field} in ... needs a list of values, got {self.value!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, FIELDS[self.field]):
                raise DataError(f"filter on {self.field!r} needs {_type_name(FIELDS[self.field])} values, got {v!r}")
            if isinstance(v, int) and not -(2**63) <= v < 2**63:  # SQLite integers are 64-bit
                raise DataError(f"filter value {v} is out of range for {self.field!r}")

    def sql(self) -> tuple[str, list[Any]]:
        col = self.field  # checked against FIELDS: safe to interpolate
        if self.op == "contains":
            return f"instr({col}, ?) > 0", [self.value]
        if self.op == "startswith":
            return f"substr({col}, 1, length(?)) = ?", [self.value, self.value]
        if self.op == "in":
            if not self.value:
                return "0", []
            return f"{col} IN ({','.join('?' * len(self.value))})", list(self.value)
        return f"{col} {self.op} ?", [self.value]


def _type_name(t: type | tuple[type, ...]) -> str:
    return "number" if isinstance(t, tuple) else {int: "integer", str: "text"}[t]


@dataclass(frozen=True)
class SearchFilter:
    """Which items a search may return. Empty filter: everything.

    ``folder``: exact folder (relative to the collection root, '' for the root);
    ``tags``: every one must be among the item's tags; ``added_from``/``added_to``: unix seconds,
    inclusive; ``where``: any other condition on a stored field.
    """

    folder: str | None = None
    tags: tuple[str, ...] = ()
    added_from: float | None = None
    added_to: float | None = None
    where: tuple[Condition, ...] = ()

    def is_empty(self) -> bool:
        return self.folder is None and not self.tags and self.added_from is None and self.added_to is None and not self.where

    def sql(self) -> tuple[str, list[Any]]:
        """-> (``WHERE ...`` clause or '', parameters)."""
        parts: list[str] = []
        params: list[Any] = []
        if self.folder is not None:
            parts.append("folder = ?")
            params.append(self.folder)
        for tag in self.tags:
            parts.append("EXISTS (SELECT 1 FROM json_each(items.tags) WHERE json_each.value = ?)")
            params.append(tag)
        if self.added_from is not None:
            parts.append("added >= ?")
            params.append(float(self.added_from))
        if self.added_to is not None:
            parts.append("added <= ?")
            params.append(float(self.added_to))
        for cond in self.where:
            clause, values = cond.sql()
            parts.append(clause)
            params.extend(values)
        return ("WHERE " + " AND ".join(parts)) if parts else "", params


def parse_time(value: float | int | str | None) -> float | None:
    """Unix seconds, or an ISO 8601 date / date-time (UTC when no zone is given) -> unix seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        when = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise DataError(f"cannot read {value!r} as a date; use unix seconds or ISO 8601 like 2024-05-01T12:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()
