"""The conformance corpus is generated, not edited: regenerating it gives the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtio_balloon_proto.models.synth import SynthOptions, corpus_matrix, synthesize, write_corpus
from virtio_balloon_proto.trace import validate_trace

CORPUS = Path(__file__).resolve().parent.parent / "conformance" / "traces"


def test_corpus_regenerates_byte_identical(tmp_path: Path) -> None:
    n = write_corpus(tmp_path)
    assert n == len(corpus_matrix())
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.glob("*/*.jsonl"))
    # real/ holds captures from real peers, fuzz/ what vbproto fuzz found: recorded, not synthesised
    shipped = sorted(p.relative_to(CORPUS) for p in CORPUS.glob("*/*.jsonl")
                     if p.parent.name not in ("real", "fuzz"))
    assert fresh == shipped, "corpus files differ: run vbproto trace synth --corpus DIR"
    drift = [str(p) for p in fresh if (tmp_path / p).read_bytes() != (CORPUS / p).read_bytes()]
    assert not drift, f"regenerate the corpus (vbproto trace synth --corpus ...): {drift}"


def test_every_corpus_trace_validates() -> None:
    for path in sorted(CORPUS.rglob("*.jsonl")):
        assert validate_trace(path) == [], path


def test_corpus_covers_every_profile_byte_order_and_scenario() -> None:
    seen = {(o.profile, o.endian, o.scenario) for _, o in corpus_matrix()}
    for profile in ("spec", "v3", "hybrid"):
        for endian in ("le", "be"):
            for sc in ("inflate", "deflate", "malformed"):
                assert (profile, endian, sc) in seen
    assert {o.word_size for _, o in corpus_matrix() if o.profile == "v3"} == {32, 64}
    assert any(o.exact for _, o in corpus_matrix())


def test_synthesis_is_deterministic_and_seeded() -> None:
    a = synthesize(SynthOptions("spec", "inflate", pages=512, seed=3))
    b = synthesize(SynthOptions("spec", "inflate", pages=512, seed=3))
    c = synthesize(SynthOptions("spec", "inflate", pages=512, seed=4))
    assert a == b
    assert a[1] != c[1]


def test_streamed_synthesis_writes_the_same_bytes(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """synthesize_to (trace synth: events written as they are made, issue 13) gives the bytes
    write_trace(synthesize()) gives, for every corpus scenario, with a spill every few events
    so that the header-first path and mid-scenario spills are exercised."""
    from virtio_balloon_proto.models import synth
    from virtio_balloon_proto.trace import write_trace

    monkeypatch.setattr(synth, "SPILL_AT", 5)
    for name, opts in corpus_matrix():
        a, b = tmp_path / "whole.jsonl", tmp_path / "streamed.jsonl"
        write_trace(a, *synthesize(opts))
        n = synth.synthesize_to(b, opts)
        assert a.read_bytes() == b.read_bytes(), name
        assert n == len(a.read_bytes().splitlines()) - 1
