"""The coordinate check of bench/coord_check.py (widths 64 to 512, a few Adam steps): under mup every layer's output
keeps its size as the encoder widens; the same check on standard sees a layer grow, so it can see a violation."""

import pytest
import torch

from bench.coord_check import TOLERANCE, coordinate_sizes, slopes


@pytest.fixture(scope="module")
def slopes_by_parametrization() -> dict[str, dict[str, float]]:
    # One thread: the matrices are small, and on a busy 2-core machine two threads waited on each other for five
    # times as long (50 s against 10 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: slopes(coordinate_sizes(name)) for name in ("standard", "mup")}
    finally:
        torch.set_num_threads(threads)


def test_every_layer_keeps_its_size_across_widths_under_mup(slopes_by_parametrization):
    mup = slopes_by_parametrization["mup"]
    assert all(abs(slope) <= TOLERANCE for slope in mup.values()), f"slopes per doubling: {mup}"


def test_the_same_check_sees_the_standard_parametrization_grow_with_width(slopes_by_parametrization):
    standard = slopes_by_parametrization["standard"]
    assert any(abs(slope) > TOLERANCE for slope in standard.values()), f"slopes per doubling: {standard}"
