"""`make bench` writes docs/benchmarks.md again each time: the hand-written profile at
its end ("Where the time goes") survives that."""

from __future__ import annotations

from pathlib import Path

from bench.suite import KEPT_HEADING, kept_section


def test_the_hand_written_section_survives_a_new_report(tmp_path: Path) -> None:
    report = tmp_path / "benchmarks.md"
    assert kept_section(report) == ""
    report.write_text("# Benchmarks\n\n| old | figures |\n")
    assert kept_section(report) == ""
    profile = f"{KEPT_HEADING}\n\nStart-up: 150 ms of imports.\n"
    report.write_text(f"# Benchmarks\n\n| old | figures |\n\n{profile}")
    report.write_text("# Benchmarks\n\n| new | figures |\n" + kept_section(report))
    assert report.read_text() == f"# Benchmarks\n\n| new | figures |\n\n{profile}"
