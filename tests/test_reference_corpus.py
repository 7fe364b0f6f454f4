"""conform run --device reference over the whole shipped corpus: every case passes.

The reference device makes one allowed choice everywhere; a case it fails is a false failure of
the oracle or the runner (at 600bd80 the hybrid decoder's HybridPageSet, a PageSet
subclass, was refused by the adapter's answer check, so the reference failed the 4 hybrid
inflate/deflate cases at suite.device.transport).
"""

from __future__ import annotations

from pathlib import Path

from virtio_balloon_proto.conformance.runner import Runner, discover_cases

CORPUS = Path(__file__).resolve().parent.parent / "conformance" / "traces"


def test_the_reference_device_passes_every_corpus_case() -> None:
    cases = discover_cases(CORPUS)
    assert len(cases) >= 70
    runner = Runner("reference", timeout=5)
    try:
        results = [runner.run_case(c) for c in cases]
    finally:
        runner.close()
    bad = [(r.case_id, r.outcome(), [f.clause for f in r.failures()]) for r in results
           if r.outcome() != "pass"]
    assert bad == [], bad
