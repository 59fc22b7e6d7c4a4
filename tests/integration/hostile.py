"""The hostile-input table: each probe, what it was answered, and what it left behind."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    probe: str
    status: int
    json_body: bool
    left: int  # records or markers the refused input left in the database

    @property
    def ok(self) -> bool:
        return 400 <= self.status < 500 and self.json_body and self.left == 0


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)
    new_series: int | None = None  # HTTP metric series added by invented methods

    def lines(self) -> list[str]:
        width = max(len(row.probe) for row in self.rows)
        out = [f"{'probe':<{width}}  status  body  left  verdict"]
        for row in self.rows:
            body = "json" if row.json_body else "HTML"
            out.append(f"{row.probe:<{width}}  {row.status:>6}  {body:>4}  {row.left:>4}  {'ok' if row.ok else 'FAIL'}")
        fivexx = sum(1 for row in self.rows if row.status >= 500)
        html = sum(1 for row in self.rows if not row.json_body)
        left = sum(row.left for row in self.rows)
        out.append(
            f"{len(self.rows)} probes: {fivexx} x 5xx, {html} non-JSON bodies, {left} records left, "
            f"{'?' if self.new_series is None else self.new_series} new metric series from invented methods"
        )
        return out


TABLE = Table()
