"""Planes through training images (pipeline/inputs/plane_sets.py): their geometry, their images, their ids."""

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, from_dict
from pipeline.inputs.data import DataConfig, load
from pipeline.stages.discovery import DiscoverConfig
from pipeline.inputs.images import translate
from pipeline.inputs.paths import PathConfig, bundle_paths
from pipeline.inputs.plane_sets import PlaneSetConfig, build_planes, bundle_planes, plane_set_id


@pytest.fixture(scope="module")
def digits():
    return load(DataConfig(name="digits"))


def _at(planes, u, v):
    return planes.x0 + u * (planes.x1 - planes.x0) + v * (planes.x2 - planes.x0)


def test_translate_planes_hold_the_image_and_its_shifts(digits):
    planes = bundle_planes(digits, PlaneSetConfig(kind="translate", n_planes=5, seed=3))
    assert planes.config.radius == 1.0 and planes.config.domain == "parallelogram"  # side / 8, resolved
    base = digits.images("train")[torch.from_numpy(planes.plane_id.copy())].double()
    torch.testing.assert_close(_at(planes, 0.5, 0.5), base, rtol=0, atol=1e-12)  # the centre is the image
    right, down = translate(base, 0.0, 1.0), translate(base, 1.0, 0.0)  # by r = 1 px
    torch.testing.assert_close(_at(planes, 1.0, 0.5), right, rtol=0, atol=1e-12)
    torch.testing.assert_close(_at(planes, 0.5, 1.0), down, rtol=0, atol=1e-12)
    torch.testing.assert_close(_at(planes, 0.0, 0.5), 2 * base - right, rtol=0, atol=1e-12)  # the extrapolation
    assert (right - base).abs().max() > 0.5  # the shifts are not nothing
    assert (planes.corner_index == planes.plane_id[:, None]).all()


def test_planes_go_through_the_paths_base_images(digits):
    paths = bundle_paths(digits, PathConfig(kind="circle", n_paths=12, seed=2))
    for kind in ("translate", "images"):
        planes = bundle_planes(digits, PlaneSetConfig(kind=kind, n_planes=12, seed=2))
        np.testing.assert_array_equal(planes.plane_id, paths.base_index)  # plane i and path i: the same image
        np.testing.assert_array_equal(planes.label, paths.label)


def test_image_planes_use_two_other_classes_and_do_not_depend_on_their_number(digits):
    labels = digits.clean_labels
    few = bundle_planes(digits, PlaneSetConfig(kind="images", n_planes=4, seed=5))
    many = bundle_planes(digits, PlaneSetConfig(kind="images", n_planes=10, seed=5))
    assert few.config.domain == "triangle"
    for row in few.corner_index:
        assert len({labels[i] for i in row}) == 3  # three classes
    pos = np.searchsorted(many.plane_id, few.plane_id)
    np.testing.assert_array_equal(many.plane_id[pos], few.plane_id)  # a subset of the bases...
    np.testing.assert_array_equal(many.corner_index[pos], few.corner_index)  # ...with the same planes
    images = digits.images("train").double()
    torch.testing.assert_close(few.x2, images[torch.from_numpy(few.corner_index[:, 2].copy())], rtol=0, atol=0)
    half = bundle_planes(digits, PlaneSetConfig(kind="images", n_planes=4, seed=5, scale=0.5))
    torch.testing.assert_close(half.x1, 0.5 * (few.x0 + few.x1), rtol=0, atol=1e-12)  # shrunk towards x0


def test_bad_plane_configs_are_refused_with_the_reason(digits):
    for kwargs, match in [({"kind": "circle"}, "unknown plane kind 'circle'"), ({"n_planes": 0}, "n_planes"),
                          ({"scale": 0.0}, "scale must be in"), ({"scale": 1.5}, "scale must be in"),
                          ({"radius": -1.0}, "radius must be"), ({"split": "dev"}, "split must be")]:
        with pytest.raises(ValueError, match=match):
            PlaneSetConfig(**kwargs)
    with pytest.raises(ValueError, match="not below the image side"):
        bundle_planes(digits, PlaneSetConfig(radius=8.0))
    with pytest.raises(ValueError, match="needs three images, but the split has only 2"):
        build_planes(torch.zeros(2, 1, 4, 4), np.array([0, 1]), PlaneSetConfig(kind="images", n_planes=1))


def test_discover_config_reads_a_plane_set_from_a_mapping():
    cfg = from_dict(DiscoverConfig, {"planes": {"kind": "images", "n_planes": 3, "scale": 0.2}})
    assert cfg.planes == PlaneSetConfig(kind="images", n_planes=3, scale=0.2)
    assert from_dict(DiscoverConfig, {"planes": None}).planes is None
    with pytest.raises(ConfigError, match="unknown key 'planes.kindd'"):
        from_dict(DiscoverConfig, {"planes": {"kindd": "images"}})
    with pytest.raises(ConfigError, match="unknown plane kind"):
        from_dict(DiscoverConfig, {"planes": {"kind": "lines"}})


def test_plane_set_ids_name_the_config():
    a = PlaneSetConfig(kind="images", n_planes=3)
    assert plane_set_id(a) == plane_set_id({"kind": "images", "n_planes": 3}) and len(plane_set_id(a)) == 8
    assert plane_set_id(a) != plane_set_id(PlaneSetConfig(kind="images", n_planes=4))
    with pytest.raises(TypeError, match="PlaneSetConfig"):
        plane_set_id(PathConfig())
