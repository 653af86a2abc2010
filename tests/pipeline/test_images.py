from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unimo_pipe.pipeline.images import load_rgb


def sixteen_bit_ramp() -> np.ndarray:
    return (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64491


def test_a_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    values = sixteen_bit_ramp()
    path = tmp_path / "depth.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    expected = np.rint(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(rgb, np.repeat(expected[:, :, None], 3, axis=2))


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_other_16_bit_grayscale_layouts_are_scaled_the_same_way(tmp_path, mode):
    values = sixteen_bit_ramp()
    if mode == "I;16B":
        image = Image.frombytes(mode, (64, 48), values.astype(">u2").tobytes())
    else:
        image = Image.fromarray(values).convert(mode)
    path = tmp_path / "gray.tif"
    image.save(path)
    assert Image.open(path).mode == mode
    expected = np.rint(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(load_rgb(path))[:, :, 0], expected)
