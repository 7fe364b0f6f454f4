"""The encoding analyzer and ``vbproto analyze``: counts come from the encoders' own chains."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from virtio_balloon_proto import analysis as an
from virtio_balloon_proto.cli import main
from virtio_balloon_proto.codecs import hybrid, spec, v3
from virtio_balloon_proto.codecs.buffers import chain_bytes, chain_descriptors
from virtio_balloon_proto.errors import UsageError
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.wire import WireLayout


@pytest.mark.parametrize("layout", [WireLayout(), WireLayout("be", 32, "be", 65536)],
                         ids=["le64-4k", "be32-64k"])
@pytest.mark.parametrize("name", an.SHAPES)
def test_counts_equal_the_encoders_chains(name: str, layout: WireLayout) -> None:
    frames = 300_000
    pages = an.shape(name, frames, 0.3, seed=4, layout=layout)
    a = an.analyze(pages, layout, guest_frames=frames, repeats=1)
    units = frames // layout.frames_per_page
    direct = {
        "spec": spec.encode_pfns(pages, layout),
        "v3": v3.encode_pages(pages, layout, nr_page_bmap=v3.nr_page_bmap_for(units, layout)),
        "hybrid-plain": hybrid.encode_pages(pages, layout, bitmaps=False),
        "hybrid": hybrid.encode_pages(pages, layout),
    }
    assert [r.encoding for r in a.results] == list(an.ENCODINGS)
    for r in a.results:
        chains = direct[r.encoding]
        assert r.error is None and r.round_trip
        assert r.bytes == chain_bytes(chains) == sum(len(s.data) for c in chains for s in c)
        assert r.buffers == len(chains)
        assert r.descriptors == chain_descriptors(chains)
    assert a.frames == len(pages) and a.extents == pages.n_extents
    byname = {r.encoding: r for r in a.results}
    assert byname["hybrid"].bytes <= byname["hybrid-plain"].bytes
    # spec: 4 bytes per frame, no header
    assert byname["spec"].bytes == 4 * len(pages)


def test_known_small_case_by_hand() -> None:
    # frames 0-1023 and 4096: spec 1025 PFNs = 4100 bytes in ceil(1025/256) = 5 buffers;
    # hybrid: order-10 block + order-0 block = 2 records + 8-byte resp_hdr = 24 bytes;
    # v3 (one bitmap page, guest of 4097 frames): window 0, nr_pfn = roundup(4097, 64) = 4160
    # -> bmap_len 520 + 32-byte header = 552 bytes in one chain of two descriptors
    a = an.analyze(PageSet.from_text("0-1023,4096"), repeats=1)
    got = {r.encoding: (r.bytes, r.buffers, r.descriptors) for r in a.results}
    assert got == {"spec": (4100, 5, 5), "v3": (552, 1, 2), "hybrid-plain": (24, 1, 2),
                   "hybrid": (24, 1, 2)}


def test_shapes_are_what_they_say() -> None:
    f = 1 << 20
    dense = an.shape("dense", f, 0.25)
    assert dense == PageSet.from_range(0, f // 4)
    sparse = an.shape("sparse", f, 0.1, seed=1)
    assert abs(len(sparse) / f - 0.1) < 0.01 and sparse.n_extents > len(sparse) // 2
    huge = an.shape("hugepage", f, 0.5, seed=1)
    assert np.all(huge.starts % 512 == 0) and np.all(huge.counts % 512 == 0)
    frag = an.shape("fragmented", f, 0.3, seed=1)
    assert abs(len(frag) / f - 0.3) < 0.05
    runs = frag.counts
    assert runs.max() > 64 * np.median(runs)  # heavy-tailed run lengths
    assert an.shape("fragmented", f, 1.0) == PageSet.from_range(0, f)
    assert not an.shape("sparse", f, 0.0)
    # 64 KiB guest: whole pages
    big = an.shape("sparse", f, 0.2, layout=WireLayout(page_size=65536))
    assert np.all(big.starts % 16 == 0) and np.all(big.counts % 16 == 0)
    with pytest.raises(UsageError):
        an.shape("lumpy", f, 0.1)
    with pytest.raises(UsageError):
        an.shape("sparse", 0, 0.1)


def test_encoding_that_cannot_carry_the_set_is_reported() -> None:
    # a frame above 2^32 - 1 does not fit __virtio32: spec is n/a, the others still work
    a = an.analyze(PageSet.from_text("1,4294967296"), repeats=1)
    r = {x.encoding: x for x in a.results}
    assert r["spec"].error is not None and "32-bit" in r["spec"].error
    assert r["hybrid"].round_trip and r["v3"].round_trip and a.best() == "hybrid-plain"


def test_load_pages_text_and_files(tmp_path: Path) -> None:
    assert an.load_pages("0-1023,4096") == PageSet.from_text("0-1023,4096")
    j = tmp_path / "p.json"
    j.write_text(json.dumps([[0, 1024], [4096, 1]]))
    assert an.load_pages(f"@{j}") == PageSet.from_text("0-1023,4096")
    j.write_text(json.dumps({"pages": [[8, 2]]}))
    assert an.load_pages(f"@{j}") == PageSet.from_text("8-9")
    t = tmp_path / "p.txt"
    t.write_text("0-3,\n 10\n")
    assert an.load_pages(f"@{t}") == PageSet.from_text("0-3,10")
    j.write_text("[[0, 1],")
    with pytest.raises(UsageError, match="not JSON"):
        an.load_pages(f"@{j}")


# --- CLI ----------------------------------------------------------------------------------------
def test_cli_table_and_json() -> None:
    r = CliRunner().invoke(main, ["analyze", "--pages", "0-1023,4096", "--repeats", "1"])
    assert r.exit_code == 0, r.output
    assert "smallest: hybrid-plain" in r.output and "4,100" in r.output
    r = CliRunner().invoke(main, ["analyze", "--shape", "hugepage", "--frames", "65536",
                                  "--density", "0.5", "--json", "--repeats", "1"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.output)
    assert obj["case"] == "hugepage d=0.5" and obj["guest_frames"] == 65536
    assert {x["encoding"] for x in obj["results"]} == set(an.ENCODINGS)
    pages = an.shape("hugepage", 65536, 0.5)
    spec_row = next(x for x in obj["results"] if x["encoding"] == "spec")
    assert spec_row["bytes"] == 4 * len(pages)


@pytest.mark.parametrize("args, msg", [
    (["--pages", "5-3"], "runs backwards"),
    (["--pages", "@/nonexistent/x.json"], "No such file"),
    (["--pages", "1", "--shape", "dense"], "not both"),
    (["--pages", "1", "--plot", "x.png"], "--shape"),
])
def test_cli_errors_are_one_line(args: list[str], msg: str) -> None:
    r = CliRunner().invoke(main, ["analyze", *args])
    assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_cli_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    out = tmp_path / "p.png"
    r = CliRunner().invoke(main, ["analyze", "--shape", "sparse", "--frames", "4096",
                                  "--plot", str(out)])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "vbproto: error: field 'plot': --plot needs matplotlib: "
        "pip install 'virtio-balloon-proto[plot]'"]
    assert not out.exists()


def test_cli_plot_draws_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "p.png"
    r = CliRunner().invoke(main, ["analyze", "--shape", "sparse", "--frames", "16384",
                                  "--repeats", "1", "--plot", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
