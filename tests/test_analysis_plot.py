"""``analyze --plot``: the legend sits inside the picture, below the panels, whatever the
number of panels (issue 10: it was cut off on both sides of a one-panel plot)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from virtio_balloon_proto import analysis as an

matplotlib = pytest.importorskip("matplotlib")


def _sweeps(n: int) -> dict[str, list[tuple[float, an.Analysis]]]:
    return {name: an.sweep(name, 4096, (0.01, 0.1, 0.5)) for name in an.SHAPES[:n]}


@pytest.mark.parametrize("panels", [1, 2, 3, 4])
def test_legend_is_whole_and_below_the_panels(panels: int) -> None:
    import matplotlib.pyplot as plt

    fig = an.plot_figure(_sweeps(panels))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        page = fig.bbox
        (legend,) = fig.legends
        box = legend.get_window_extent(renderer)
        assert [t.get_text() for t in legend.get_texts()] == [
            an._STYLE[e][0] for e in an.ENCODINGS]
        # whole: inside the figure on every side (it stuck out left and right before)
        assert page.x0 <= box.x0 and box.x1 <= page.x1, (box, page)
        assert page.y0 <= box.y0 and box.y1 <= page.y1, (box, page)
        # below every panel, overlapping none of them (tick labels and axis titles included)
        for ax in fig.axes:
            if ax.axison:
                assert box.y1 <= ax.get_tightbbox(renderer).y0 + 1, (ax.get_title(), box)
    finally:
        plt.close(fig)


def test_cli_writes_the_plot(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "one.png"
    r = subprocess.run([sys.executable, "-m", "virtio_balloon_proto", "analyze", "--shape",
                        "dense", "--frames", "4096", "--repeats", "1", "--plot", str(out)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (704, 561)  # 6.4 x 5.1 in at 110 dpi: room for the legend rows
