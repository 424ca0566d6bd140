"""Loading blend files: every kind of bad file is refused with a reason naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

from runner.datasets import BlendError, DatasetError, load_blend, open_dataset, open_datasets
from support import HSC, write_blend_with


@pytest.fixture
def source(synthetic_set):
    return sorted(synthetic_set.glob("*.npz"))[0]


def test_a_truncated_file_is_not_readable(source, tmp_path):
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(source.read_bytes()[:5000])
    with pytest.raises(BlendError, match="not a readable npz file"):
        load_blend(truncated)


def test_a_corrupt_file_is_not_readable(tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 10)
    with pytest.raises(BlendError, match="not a readable npz file"):
        load_blend(corrupt)


def test_a_missing_key_is_named(source, tmp_path):
    with pytest.raises(BlendError, match="missing key\\(s\\) psfs"):
        load_blend(write_blend_with(tmp_path / "b.npz", source, psfs=None))


def test_nan_images_are_refused(source, tmp_path):
    images = np.load(source)["images"].copy()
    images[2, 10, 10:13] = np.nan
    with pytest.raises(BlendError, match="images has 3 non-finite pixel"):
        load_blend(write_blend_with(tmp_path / "b.npz", source, images=images))


def test_wrong_shapes_are_named(source, tmp_path):
    variance = np.load(source)["variance"][:, :-1]
    with pytest.raises(BlendError, match="variance shape"):
        load_blend(write_blend_with(tmp_path / "b.npz", source, variance=variance))


def test_an_injected_source_without_a_center_is_refused(source, tmp_path):
    matched = np.load(source)["matched"].copy()
    matched["x"][0] = 1.5
    matched["y"][0] = 1.5
    with pytest.raises(BlendError, match="matches no row of centers"):
        load_blend(write_blend_with(tmp_path / "b.npz", source, matched=matched))


def test_pickled_objects_are_never_loaded(source, tmp_path):
    matched = np.array([{"x": 1}], dtype=object)
    path = tmp_path / "b.npz"
    with np.load(source) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["matched"] = matched
    np.savez(path, **arrays)
    with pytest.raises(BlendError, match="not a readable npz file"):
        load_blend(path)


def test_dataset_identity_is_its_content(synthetic_set, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in synthetic_set.glob("*.npz"):
        (copy / path.name).write_bytes(path.read_bytes())
    assert open_dataset(copy).content_hash == open_dataset(synthetic_set).content_hash
    first = sorted(copy.glob("*.npz"))[0]
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    assert open_dataset(copy).content_hash != open_dataset(synthetic_set).content_hash


def test_sets_sharing_a_directory_name_get_distinct_names(synthetic_set, tmp_path):
    other = tmp_path / synthetic_set.name
    other.mkdir()
    (other / "a.npz").write_bytes(next(synthetic_set.glob("*.npz")).read_bytes())
    names = [d.name for d in open_datasets([synthetic_set, other])]
    assert names == [synthetic_set.name, f"{synthetic_set.name}-2"]


def test_an_empty_directory_is_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match=r"holds no \.npz blend files"):
        open_dataset(tmp_path)


@pytest.mark.parametrize(("name", "blends", "injected"), [("set1", 100, 105), ("set3", 14, 16)])
def test_the_real_hsc_blends_ship_with_the_project_and_load(name, blends, injected):
    dataset = open_dataset(HSC / name)
    assert len(dataset.blends) == blends
    assert sum(len(load_blend(b.path).truth) for b in dataset.blends) == injected
    assert all(b.path.stat().st_size < 2 * 2**20 for b in dataset.blends)


def test_the_real_hsc_blends_carry_their_licence_and_readme():
    assert "MIT License" in (HSC / "LICENSE").read_text()
    readme = (HSC / "README.md").read_text()
    assert all(f"`{key}`" in readme for key in ("images", "footprint", "centers", "matched"))
