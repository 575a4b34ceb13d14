"""Keyframe mask files (plug-and-play KPF masks): ids above 255 and negative ids never wrap,
damaged archives name the path."""
import numpy as np
import pytest

from coprop_jax.eval import keyframe_masks as km


def _big_ids():
  m = np.zeros((4, 6), np.int64)
  m[:2, :3] = 300          # would wrap to 44 through uint8
  m[2:, 3:] = 70000        # beyond 16 bits
  m[0, 5] = 7
  return m


def test_npz_keeps_ids_above_255_on_write_and_resize(tmp_path):
  m = _big_ids()
  path = tmp_path / "k.npz"
  km.write_npz(str(path), {("v", 0): m, ("v", 2): np.array([[0, 1], [2, 255]])})
  src = km.KeyframeMaskSource(str(path))
  np.testing.assert_array_equal(src.get("v", 0), m)
  assert np.load(path)["v/2"].dtype == np.uint8 and np.load(path)["v/0"].dtype == np.int32
  # Nearest-neighbour resize by 2x: every value repeated, nothing wrapped.
  big = km.KeyframeMaskSource(str(path), size=(8, 12)).get("v", 0)
  np.testing.assert_array_equal(big, np.repeat(np.repeat(m, 2, 0), 2, 1))
  clip, present = src.clip_masks("v", [1, 0, 0], (8, 12))
  np.testing.assert_array_equal(clip[0], np.repeat(np.repeat(m, 2, 0), 2, 1))
  assert present.tolist() == [True, False, False]


def test_png_dir_16bit_and_limits(tmp_path):
  m = np.minimum(_big_ids(), 1000)
  km.write_png_dir(str(tmp_path / "p"), {("v", 0): m})
  np.testing.assert_array_equal(km.KeyframeMaskSource(str(tmp_path / "p")).get("v", 0), m)
  with pytest.raises(ValueError, match="mask w/1 has id 70000 > 65535"):
    km.write_png_dir(str(tmp_path / "q"), {("w", 0): m, ("w", 1): _big_ids()})
  assert not (tmp_path / "q").exists()      # checked before anything is written


def test_negative_ids_are_errors(tmp_path):
  neg = np.array([[0, -1], [2, 3]])
  with pytest.raises(ValueError, match="mask v/0: negative id -1"):
    km.write_npz(str(tmp_path / "n.npz"), {("v", 0): neg})
  assert not (tmp_path / "n.npz").exists() and list(tmp_path.iterdir()) == []
  np.savez(tmp_path / "raw.npz", **{"v/0": neg.astype(np.int16)})
  with pytest.raises(ValueError, match=f"{tmp_path / 'raw.npz'}: video 'v' frame 0: negative id"):
    km.KeyframeMaskSource(str(tmp_path / "raw.npz")).get("v", 0)


def test_truncated_npz_names_the_path(tmp_path):
  path = tmp_path / "k.npz"
  km.write_npz(str(path), {("v", t): np.full((16, 16), t, np.int32) for t in range(4)})
  data = path.read_bytes()
  cut = tmp_path / "cut.npz"
  cut.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=f"keyframe masks {cut}: not a readable .npz"):
    km.KeyframeMaskSource(str(cut))
  # Damage inside a member (central directory intact): reading that entry names path and key.
  bad = bytearray(data)
  start = data.index(b"v/1.npy") + 40
  bad[start:start + 20] = b"\xff" * 20
  dam = tmp_path / "damaged.npz"
  dam.write_bytes(bytes(bad))
  src = km.KeyframeMaskSource(str(dam))
  with pytest.raises(ValueError, match=f"{dam}: entry v/1 unreadable"):
    src.get("v", 1)
