"""bench_synth times every profile and category and judges the median against the 1.5 s target."""

from __future__ import annotations

from benchmarks import bench_synth
from pipeline.synth.phantom import SCANNERS


def test_every_profile_and_category_is_timed():
    results = bench_synth.run(studies=1, repeats=1, matrix=64)
    rows = results["studies"]
    assert len(rows) == len(SCANNERS) * len(bench_synth.CATEGORIES)
    assert {(r["scanner"], r["category"]) for r in rows} == {(s, c) for s in SCANNERS for c in bench_synth.CATEGORIES}
    assert all(r["seconds"] > 0 and r["cpu_seconds"] >= 0 for r in rows)
    assert set(results["per_profile"]) == set(SCANNERS)
    assert results["target_met"] == (results["seconds_per_study"]["median"] <= bench_synth.TARGET_SECONDS)
