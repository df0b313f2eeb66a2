"""CIEDE2000 against the 34 test pairs of Sharma, Wu & Dalal 2005 (Table 1), and sRGB → CIELAB at known points."""

from __future__ import annotations

import numpy as np
import pytest

from studio.training.colour_difference import ciede2000, delta_e00_rgb, srgb_to_lab

# L1 a1 b1 L2 a2 b2 ΔE00, Sharma et al. 2005 Table 1
SHARMA_2005 = """
50.0000 2.6772 -79.7751 50.0000 0.0000 -82.7485 2.0425
50.0000 3.1571 -77.2803 50.0000 0.0000 -82.7485 2.8615
50.0000 2.8361 -74.0200 50.0000 0.0000 -82.7485 3.4412
50.0000 -1.3802 -84.2814 50.0000 0.0000 -82.7485 1.0000
50.0000 -1.1848 -84.8006 50.0000 0.0000 -82.7485 1.0000
50.0000 -0.9009 -85.5211 50.0000 0.0000 -82.7485 1.0000
50.0000 0.0000 0.0000 50.0000 -1.0000 2.0000 2.3669
50.0000 -1.0000 2.0000 50.0000 0.0000 0.0000 2.3669
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0009 7.1792
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0010 7.1792
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0011 7.2195
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0012 7.2195
50.0000 -0.0010 2.4900 50.0000 0.0009 -2.4900 4.8045
50.0000 -0.0010 2.4900 50.0000 0.0010 -2.4900 4.8045
50.0000 -0.0010 2.4900 50.0000 0.0011 -2.4900 4.7461
50.0000 2.5000 0.0000 50.0000 0.0000 -2.5000 4.3065
50.0000 2.5000 0.0000 73.0000 25.0000 -18.0000 27.1492
50.0000 2.5000 0.0000 61.0000 -5.0000 29.0000 22.8977
50.0000 2.5000 0.0000 56.0000 -27.0000 -3.0000 31.9030
50.0000 2.5000 0.0000 58.0000 24.0000 15.0000 19.4535
50.0000 2.5000 0.0000 50.0000 3.1736 0.5854 1.0000
50.0000 2.5000 0.0000 50.0000 3.2972 0.0000 1.0000
50.0000 2.5000 0.0000 50.0000 1.8634 0.5757 1.0000
50.0000 2.5000 0.0000 50.0000 3.2592 0.3350 1.0000
60.2574 -34.0099 36.2677 60.4626 -34.1751 39.4387 1.2644
63.0109 -31.0961 -5.8663 62.8187 -29.7946 -4.0864 1.2630
61.2901 3.7196 -5.3901 61.4292 2.2480 -4.9620 1.8731
35.0831 -44.1164 3.7933 35.0232 -40.0716 1.5901 1.8645
22.7233 20.0904 -46.6940 23.0331 14.9730 -42.5619 2.0373
36.4612 47.8580 18.3852 36.2715 50.5065 21.2231 1.4146
90.8027 -2.0831 1.4410 91.1528 -1.6435 0.0447 1.4441
90.9257 -0.5406 -0.9208 88.6381 -0.8985 -0.7239 1.5381
6.7747 -0.2908 -2.4247 5.8714 -0.0985 -2.2286 0.6377
2.0776 0.0795 -1.1350 0.9033 -0.0636 -0.5514 0.9082
"""
PAIRS = np.array([[float(v) for v in line.split()] for line in SHARMA_2005.strip().splitlines()])


def test_the_34_published_pairs_to_four_decimals():
    assert PAIRS.shape == (34, 7)
    got = ciede2000(PAIRS[:, :3], PAIRS[:, 3:6])
    np.testing.assert_allclose(got, PAIRS[:, 6], atol=5e-5)
    np.testing.assert_allclose(ciede2000(PAIRS[:, 3:6], PAIRS[:, :3]), PAIRS[:, 6], atol=5e-5)  # symmetric


@pytest.mark.parametrize("row", [6, 8, 10, 12, 14])
def test_hue_wrap_cases_one_by_one(row):
    """Pairs 7–16 straddle the hue wrap-around and neutral axis, where eqs. 10 and 14 branch."""
    assert float(ciede2000(PAIRS[row, :3], PAIRS[row, 3:6])) == pytest.approx(PAIRS[row, 6], abs=5e-5)


def test_srgb_to_lab_known_points():
    np.testing.assert_allclose(srgb_to_lab([255, 255, 255]), [100, 0, 0], atol=1e-9)
    np.testing.assert_allclose(srgb_to_lab([0, 0, 0]), [0, 0, 0], atol=1e-9)
    # the usual published values; the white point's last digits (0.95047 vs 0.9505) move them by ~0.02
    np.testing.assert_allclose(srgb_to_lab([255, 0, 0]), [53.24, 80.09, 67.20], atol=0.05)
    np.testing.assert_allclose(srgb_to_lab([0, 0, 255]), [32.30, 79.19, -107.86], atol=0.05)


def test_identical_colours_differ_by_zero_and_palette_colours_by_much():
    assert float(delta_e00_rgb([40, 170, 60], [40, 170, 60])) == 0.0
    assert float(delta_e00_rgb([220, 30, 35], [40, 170, 60])) > 50
