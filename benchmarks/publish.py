"""The one way a benchmark ends: its markdown written under benchmarks/results/ and printed."""

from __future__ import annotations

from pathlib import Path


def publish(lines: list[str], out: Path, *also: Path) -> str:
    """Write ``lines`` as markdown to ``out`` (folders made), print it, and name what was written
    (``out`` and any ``also`` files the benchmark wrote beside it). Returns the text."""
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text + f"\nwritten to {' and '.join(str(p) for p in (out, *also))}")
    return text
