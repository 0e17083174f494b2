"""The synthetic default dataset: determinism, layout rules and the look-alike design."""

import cv2
import numpy as np
import pytest

from ciss_tf.data import synthetic as syn

SIZE = (64, 72)
# Radius 3: the shadow ring is 3 pixels wide at this size, inside the 4-pixel margin.
RING = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))


@pytest.fixture(scope="module")
def scenes():
    return [syn.generate_example(3, "train", i, *SIZE) for i in range(80)]


def test_deterministic_for_a_seed_and_different_otherwise():
    image, label = syn.generate_example(5, "train", 7, *SIZE)
    again_image, again_label = syn.generate_example(5, "train", 7, *SIZE)
    assert image.tobytes() == again_image.tobytes() and label.tobytes() == again_label.tobytes()
    for other in (
        syn.generate_example(6, "train", 7, *SIZE),
        syn.generate_example(5, "val", 7, *SIZE),
    ):
        assert not np.array_equal(image, other[0]) and not np.array_equal(label, other[1])


def test_shapes_types_and_class_range(scenes):
    for image, label in scenes:
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
        assert label.shape == SIZE and label.dtype == np.uint8
        assert label.max() < syn.NUM_CLASSES


def test_every_image_has_two_host_regions_and_lookalikes_on_two(scenes):
    two_lookalike_classes = 0
    for _, label in scenes:
        present = set(np.unique(label).tolist())
        assert len(present & set(syn.BACKGROUNDS)) >= 2
        assert len(present & set(syn.LOOKALIKE_OF_HOST)) >= 2
        two_lookalike_classes += len(present & {syn.BIRD, syn.BOAT, syn.CAR}) >= 2
    # Placement can fail in a crowded image, but rarely.
    assert two_lookalike_classes >= 0.95 * len(scenes)


def test_lookalike_class_is_the_class_of_the_surrounding_region(scenes):
    checked = 0
    for _, label in scenes:
        for host, lookalike in syn.LOOKALIKE_OF_HOST.items():
            count, components = cv2.connectedComponents((label == lookalike).astype(np.uint8))
            for k in range(1, count):
                blob = components == k
                # The shadow ring and beyond: still inside the host region.
                ring = cv2.dilate(blob.astype(np.uint8), RING).astype(bool) & ~blob
                assert set(np.unique(label[ring]).tolist()) <= {host, syn.BALLOON}
                checked += 1
    assert checked > 100


def test_lookalikes_share_appearance_statistics(scenes):
    pixels = {c: [] for c in range(syn.NUM_CLASSES)}
    for image, label in scenes:
        for c in range(syn.NUM_CLASSES):
            pixels[c].append(image[label == c].astype(np.float64))
    stats = {c: (np.concatenate(p).mean(0), np.concatenate(p).std(0)) for c, p in pixels.items()}
    for a, b in ((syn.BIRD, syn.BOAT), (syn.BIRD, syn.CAR), (syn.BOAT, syn.CAR)):
        np.testing.assert_allclose(stats[a][0], stats[b][0], atol=6)
        np.testing.assert_allclose(stats[a][1], stats[b][1], atol=4)
    # The tolerance is far below the gap between classes that do differ in appearance.
    for a, b in ((syn.SKY, syn.WATER), (syn.WATER, syn.ROAD), (syn.BIRD, syn.BALLOON)):
        assert np.abs(stats[a][0] - stats[b][0]).max() > 40


def test_reflections_look_like_sky_but_carry_the_host_label(scenes):
    with_reflection = 0
    for image, label in scenes:
        sky_like = np.abs(image.astype(int) - (135, 185, 235)).max(-1) < 45
        hidden = sky_like & np.isin(label, syn.REFLECTION_HOSTS)
        with_reflection += hidden.sum() >= 30
    assert with_reflection >= 0.2 * len(scenes)
