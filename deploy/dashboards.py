"""Lanes' Grafana dashboards read without Grafana: their panel queries, and a picture of one.

Grafana is not something this project can install, so this draws a dashboard's
panels from what Prometheus answers to the very queries Grafana would send,
laid out on Grafana's 24-column grid. The tests use `panel_queries` to evaluate
every panel of every dashboard against a live Prometheus.

    python -m deploy.dashboards --prometheus http://127.0.0.1:9090 \\
        [--dashboard overview] [--minutes 15] [--out build/dashboard-overview.png]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.prometheus import OBSERVABILITY, Prometheus

DASHBOARDS = OBSERVABILITY / "grafana" / "dashboards"
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")

# Grafana's dark theme, so the picture reads like the real thing.
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLOURS = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0", "#37872d")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    kind: str
    ref: str
    expr: str
    legend: str
    instant: bool


def names() -> list[str]:
    return sorted(path.stem for path in DASHBOARDS.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((DASHBOARDS / f"{name}.json").read_text()))


def substitute(expr: str, rate_interval: str, time_range: str) -> str:
    """Grafana's variables as Grafana would fill them: every value of `$function`, and intervals."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__range", time_range)
        .replace('=~"$function"', '=~".*"')
    )


def panel_queries(name: str, rate_interval: str = "1m", time_range: str = "15m") -> list[PanelQuery]:
    """Every query of every panel of a dashboard, its variables filled in."""
    return [
        PanelQuery(
            dashboard=name,
            panel=panel["title"],
            kind=panel["type"],
            ref=target["refId"],
            expr=substitute(target["expr"], rate_interval, time_range),
            legend=target.get("legendFormat", ""),
            instant=bool(target.get("instant", False)),
        )
        for panel in load(name)["panels"]
        for target in panel.get("targets", ())
    ]


def legend(template: str, labels: dict[str, str]) -> str:
    if not template or template == "__auto":
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), template)


def format_value(value: float, unit: str | None) -> str:
    if math.isnan(value):
        return "-"
    if unit == "s":
        if value >= 120:
            return f"{value / 60:.1f} min"
        return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit in ("reqps", "ops"):
        return f"{value:.2f}/s"
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def render(prometheus: Prometheus, name: str, out: Path, minutes: float = 15, rate_interval: str = "1m") -> Path:
    """Draw dashboard `name` over the last `minutes` from Prometheus' answers; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to a file
    import matplotlib.pyplot as plt

    board = load(name)
    end = time.time()
    start = end - minutes * 60
    step = max(1.0, (end - start) / 240)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    height = rows * 0.5 + 1.2
    figure = plt.figure(figsize=(22, height), facecolor=BACKGROUND)
    # Gaps between grid rows leave room for each panel's title and the time axis above it.
    grid = figure.add_gridspec(rows, 24, left=0.035, right=0.99, top=1 - 0.9 / height, bottom=0.03)
    grid.update(wspace=1.2, hspace=3.2)
    moment = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    figure.suptitle(
        f"{board['title']}   ·   last {_duration(minutes * 60)}   ·   {moment}",
        color=TEXT,
        fontsize=15,
        x=0.02,
        ha="left",
    )
    for panel in board["panels"]:
        pos = panel["gridPos"]
        axes = figure.add_subplot(grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]])
        _style(axes, panel["title"])
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit")
        targets = [
            (substitute(t["expr"], rate_interval, f"{max(1, round(minutes * 60))}s"), t.get("legendFormat", ""))
            for t in panel["targets"]
        ]
        if panel["type"] == "stat":
            _stat(axes, prometheus, targets, panel, unit)
        elif panel["type"] == "bargauge":
            _bars(axes, prometheus, targets, unit)
        elif panel["type"] == "table":
            _table(axes, prometheus, targets)
        else:
            _lines(axes, prometheus, targets, unit, start, end, step)
            if "min" in defaults:
                axes.set_ylim(bottom=_scaled(defaults["min"], unit))
            if "max" in defaults:
                axes.set_ylim(top=_scaled(defaults["max"], unit))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80, facecolor=BACKGROUND)
    plt.close(figure)
    return out


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _style(axes: Any, title: str) -> None:
    axes.set_facecolor(PANEL)
    axes.set_title(title, color=TEXT, fontsize=10, loc="left")
    axes.tick_params(colors=TEXT, labelsize=7)
    for spine in axes.spines.values():
        spine.set_color(GRID)


def _stat(
    axes: Any, prometheus: Prometheus, targets: list[tuple[str, str]], panel: dict[str, Any], unit: str | None
) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    mappings = panel.get("fieldConfig", {}).get("defaults", {}).get("mappings", [])
    texts = []
    for expr, legend_format in targets:
        for sample in prometheus.query(expr) or [{"metric": {}, "value": [0, "NaN"]}]:
            value = float(sample["value"][1])
            shown = format_value(value, unit)
            for mapping in mappings:
                mapped = mapping.get("options", {}).get(shown)
                shown = mapped["text"] if mapped else shown
            texts.append((legend(legend_format, sample["metric"]) if len(targets) > 1 else "", shown))
    for index, (label, shown) in enumerate(texts):
        x = (index + 0.5) / len(texts)
        colour = "#f2495c" if shown == "down" else COLOURS[0]
        axes.text(x, 0.45, shown, color=colour, fontsize=20, ha="center", va="center", weight="bold")
        if label:
            axes.text(x, 0.12, label, color=TEXT, fontsize=8, ha="center")


def _bars(axes: Any, prometheus: Prometheus, targets: list[tuple[str, str]], unit: str | None) -> None:
    labels, values = [], []
    for expr, legend_format in targets:
        for sample in prometheus.query(expr):
            labels.append(legend(legend_format, sample["metric"]))
            values.append(float(sample["value"][1]))
    if not labels:
        axes.text(0.5, 0.5, "No data", color=TEXT, ha="center", transform=axes.transAxes)
        return
    order = sorted(range(len(labels)), key=lambda i: _sort_key(labels[i]))
    axes.barh([labels[i] for i in order], [values[i] for i in order], color=COLOURS[2])
    axes.grid(axis="x", color=GRID, linewidth=0.5)
    axes.invert_yaxis()


def _table(axes: Any, prometheus: Prometheus, targets: list[tuple[str, str]], limit: int = 12) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    rows = [(sample["metric"], float(sample["value"][1])) for expr, _ in targets for sample in prometheus.query(expr)]
    if not rows:
        axes.text(0.5, 0.5, "No data", color=TEXT, ha="center", transform=axes.transAxes)
        return
    rows.sort(key=lambda row: -row[1] if not math.isnan(row[1]) else 0)
    columns = sorted({key for labels, _ in rows for key in labels})
    cells = [[labels.get(c, "") for c in columns] + [format_value(value, None)] for labels, value in rows[:limit]]
    table = axes.table(cellText=cells, colLabels=[*columns, "value"], loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for cell in table.get_celld().values():
        cell.set_facecolor(PANEL)
        cell.set_edgecolor(GRID)
        cell.get_text().set_color(TEXT)


def _sort_key(label: str) -> tuple[float, str]:
    number = re.search(r"[-+]?(\d+(\.\d+)?|Inf)", label)
    return (float(number.group(0)) if number else math.inf, label)


def _lines(
    axes: Any,
    prometheus: Prometheus,
    targets: list[tuple[str, str]],
    unit: str | None,
    start: float,
    end: float,
    step: float,
) -> None:
    from matplotlib.dates import DateFormatter

    drawn = 0
    for expr, legend_format in targets:
        for series in prometheus.query_range(expr, start, end, step):
            times = [_moment(t) for t, _ in series["values"]]
            values = [_scaled(float(v), unit) for _, v in series["values"]]
            colour = COLOURS[drawn % len(COLOURS)]
            axes.plot(times, values, color=colour, linewidth=1.6, label=legend(legend_format, series["metric"]))
            drawn += 1
    axes.xaxis.set_major_formatter(DateFormatter("%H:%M" if end - start > 1800 else "%H:%M:%S"))
    axes.grid(color=GRID, linewidth=0.5)
    axes.set_xlim(_moment(start), _moment(end))
    if unit:
        axes.set_ylabel({"percentunit": "%", "reqps": "per second", "ops": "per second"}.get(unit, unit), color=TEXT)
    if drawn:
        axes.legend(fontsize=7, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT, loc="upper left")
    else:
        axes.text(0.5, 0.5, "No data", color=TEXT, ha="center", transform=axes.transAxes)


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(float(epoch), UTC)


def _scaled(value: float, unit: str | None) -> float:
    return value * 100 if unit == "percentunit" else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--dashboard", default="overview", choices=names())
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--rate-interval", default="1m")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = args.out or Path("build") / f"dashboard-{args.dashboard}.png"
    prometheus = Prometheus(args.prometheus.rstrip("/"))
    print(render(prometheus, args.dashboard, out, args.minutes, args.rate_interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
