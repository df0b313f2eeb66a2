"""Perceptual colour difference: sRGB → CIELAB (D65) and CIEDE2000.

CIEDE2000 as written out by Sharma, Wu & Dalal 2005, "The CIEDE2000 Color-Difference Formula: Implementation
Notes, Supplementary Test Data, and Mathematical Observations" (Color Res. Appl. 30(1)), eqs. 1–22 with
k_L = k_C = k_H = 1; the equation numbers below are theirs. Their Table 1 test pairs are in
tests/training/test_colour_difference.py.
"""

from __future__ import annotations

import numpy as np

# IEC 61966-2-1 (sRGB): linear RGB → XYZ
SRGB_TO_XYZ = np.array([
    [0.4124, 0.3576, 0.1805],
    [0.2126, 0.7152, 0.0722],
    [0.0193, 0.1192, 0.9505],
])
WHITE_D65 = SRGB_TO_XYZ.sum(axis=1)  # sRGB's white is D65: (0.9505, 1, 1.089), so white maps to L* = 100, a* = b* = 0


def srgb_to_lab(rgb) -> np.ndarray:
    """sRGB in 0–255 (…, 3) → CIE 1976 L*a*b* (…, 3) under D65."""
    c = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)  # IEC 61966-2-1 inverse transfer
    xyz = linear @ SRGB_TO_XYZ.T / WHITE_D65
    eps, kappa = (6 / 29) ** 3, (29 / 6) ** 2 / 3  # CIE 15:2004 eq. 8.5: the cube root's linear toe
    f = np.where(xyz > eps, np.cbrt(xyz), kappa * xyz + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def ciede2000(lab1, lab2) -> np.ndarray:
    """ΔE₀₀ between CIELAB colours (…, 3), Sharma et al. 2005 eqs. 1–22 (k_L = k_C = k_H = 1)."""
    lab1, lab2 = np.asarray(lab1, np.float64), np.asarray(lab2, np.float64)
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    # 1. C'_i, h'_i (eqs. 2–7): a* stretched by G so that near-neutral colours get their hue weight
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2  # eq. 3
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))  # eq. 4
    a1p, a2p = (1 + g) * a1, (1 + g) * a2  # eq. 5
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)  # eq. 6
    h1p = np.where((a1p == 0) & (b1 == 0), 0.0, np.degrees(np.arctan2(b1, a1p)) % 360)  # eq. 7
    h2p = np.where((a2p == 0) & (b2 == 0), 0.0, np.degrees(np.arctan2(b2, a2p)) % 360)
    # 2. ΔL', ΔC', ΔH' (eqs. 8–11)
    dLp = L2 - L1  # eq. 8
    dCp = c2p - c1p  # eq. 9
    dh = h2p - h1p
    dhp = np.where(c1p * c2p == 0, 0.0, np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh)))  # eq. 10
    dHp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dhp) / 2)  # eq. 11
    # 3. the weighting functions and ΔE₀₀ (eqs. 12–22)
    Lp_bar = (L1 + L2) / 2  # eq. 12
    Cp_bar = (c1p + c2p) / 2  # eq. 13
    h_sum = h1p + h2p
    hp_bar = np.where(  # eq. 14
        c1p * c2p == 0, h_sum,
        np.where(np.abs(h1p - h2p) <= 180, h_sum / 2, np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)),
    )
    t = (1 - 0.17 * np.cos(np.radians(hp_bar - 30)) + 0.24 * np.cos(np.radians(2 * hp_bar))
         + 0.32 * np.cos(np.radians(3 * hp_bar + 6)) - 0.20 * np.cos(np.radians(4 * hp_bar - 63)))  # eq. 15
    d_theta = 30 * np.exp(-(((hp_bar - 275) / 25) ** 2))  # eq. 16
    r_c = 2 * np.sqrt(Cp_bar**7 / (Cp_bar**7 + 25.0**7))  # eq. 17
    s_l = 1 + 0.015 * (Lp_bar - 50) ** 2 / np.sqrt(20 + (Lp_bar - 50) ** 2)  # eq. 18
    s_c = 1 + 0.045 * Cp_bar  # eq. 19
    s_h = 1 + 0.015 * Cp_bar * t  # eq. 20
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c  # eq. 21
    return np.sqrt((dLp / s_l) ** 2 + (dCp / s_c) ** 2 + (dHp / s_h) ** 2 + r_t * (dCp / s_c) * (dHp / s_h))  # eq. 22


def delta_e00_rgb(rgb1, rgb2) -> np.ndarray:
    """ΔE₀₀ between sRGB colours in 0–255."""
    return ciede2000(srgb_to_lab(rgb1), srgb_to_lab(rgb2))
