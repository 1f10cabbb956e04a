import numpy as np
import pytest
import torch
from scipy.ndimage import maximum_filter, minimum_filter
from torchvision import tv_tensors

from parsenet.data.base import DatasetInfo
from parsenet.data.transforms import RandomScale, build_transform, denormalize

INFO = DatasetInfo("toy", ("a", "b", "c", "d"), ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)),
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _pair(h=6, w=8):
    """Labels 0..3 in quadrants; the image's red channel is 60 * label, so pixels can be traced."""
    labels = np.zeros((h, w), np.uint8)
    labels[: h // 2, w // 2:] = 1
    labels[h // 2:, : w // 2] = 2
    labels[h // 2:, w // 2:] = 3
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = 60 * labels
    image[..., 1] = np.arange(w, dtype=np.uint8) * 10  # tells left from right
    return image, labels


def test_validation_transform_normalises_by_hand():
    image = np.full((2, 3, 3), 255, np.uint8)
    image[0, 0] = 0
    labels = np.array([[0, 1, 2], [3, 255, 0]], np.uint8)
    x, y = build_transform(INFO, train=False)(image, labels)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0, 0], torch.full((3,), -2.0))  # (0 - 0.5) / 0.25
    assert torch.allclose(x[:, 1, 2], torch.full((3,), 2.0))  # (1 - 0.5) / 0.25
    assert y.dtype == torch.int64 and y.tolist() == [[0, 1, 2], [3, 255, 0]]


def test_validation_transform_draws_no_random_numbers():
    state = torch.get_rng_state()
    build_transform(INFO, train=False)(*_pair())
    assert torch.equal(state, torch.get_rng_state())


def test_random_scale_resizes_masks_with_nearest_neighbour():
    mask = tv_tensors.Mask(torch.tensor([[0, 1], [2, 3]], dtype=torch.uint8))
    image = tv_tensors.Image(torch.zeros(3, 2, 2, dtype=torch.uint8))
    _, big = RandomScale((2.0, 2.0))(image, mask)
    assert big.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_crop_larger_than_image_pads_labels_with_ignore_and_image_with_mean():
    image, labels = _pair(6, 8)
    x, y = build_transform(INFO, train=True, crop_size=(10, 12), scale_range=(1, 1), flip=False)(image, labels)
    assert x.shape == (3, 10, 12) and y.shape == (10, 12)
    assert (y != 255).sum() == 6 * 8  # every original pixel kept once
    pad = y == 255
    assert x[:, pad].abs().max() < 1 / (255 * 0.25)  # mean colour normalises to ~0
    kept = y[~pad].reshape(6, 8)
    assert np.array_equal(kept.numpy(), labels)  # pasted as a block, not shuffled


def test_no_crop_size_keeps_the_image_shape_after_scaling():
    image, labels = _pair(6, 8)
    x, y = build_transform(INFO, train=True, crop_size=None, scale_range=(0.5, 0.5), flip=False)(image, labels)
    assert x.shape == (3, 6, 8) and y.shape == (6, 8)
    assert (y != 255).sum() == 3 * 4  # the half-size image, padded back to 6 x 8


@pytest.mark.parametrize("seed", range(6))
def test_image_and_labels_stay_aligned_through_scale_crop_flip(seed):
    torch.manual_seed(seed)
    image, labels = _pair(12, 16)
    t = build_transform(INFO, train=True, crop_size=10, scale_range=(1.0, 2.0))
    x, y = t(image, labels)
    red = denormalize(x, INFO)[..., 0].astype(np.int64)  # (10, 10)
    lab = y.numpy()
    # Bilinear pixels vs nearest labels agree exactly where the label is constant over 5 x 5
    # (scale <= 2: bilinear reads input pixels within 2 output pixels); the crop's border is excluded.
    lo = minimum_filter(lab, size=5, mode="constant", cval=-1)
    hi = maximum_filter(lab, size=5, mode="constant", cval=999)
    interior = (lo == hi) & (lab != 255)
    assert interior.sum() >= 4
    assert np.array_equal(red[interior], 60 * lab[interior])


def test_flip_happens_and_moves_image_and_labels_together():
    image, labels = _pair(4, 6)
    t = build_transform(INFO, train=True, crop_size=None, scale_range=(1, 1))
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        x, y = t(image, labels)
        flipped = bool(torch.equal(y, torch.from_numpy(labels[:, ::-1].astype(np.int64))))
        assert flipped or torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
        green = denormalize(x, INFO)[0, :, 1]
        assert np.array_equal(green, image[0, ::-1, 1] if flipped else image[0, :, 1])
        seen.add(flipped)
    assert seen == {True, False}


def test_same_seed_same_output_and_resume_from_saved_rng_state():
    image, labels = _pair(12, 16)
    t = build_transform(INFO, train=True, crop_size=9)
    torch.manual_seed(3)
    run = [t(image, labels) for _ in range(6)]
    torch.manual_seed(3)
    first = [t(image, labels) for _ in range(3)]
    saved = torch.get_rng_state()
    torch.manual_seed(99)  # an interruption that disturbs the RNG
    t(image, labels)
    torch.set_rng_state(saved)
    resumed = first + [t(image, labels) for _ in range(3)]
    for (xa, ya), (xb, yb) in zip(run, resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert any(not torch.equal(run[0][1], r[1]) for r in run[1:])  # the draws do vary


def test_output_does_not_depend_on_thread_count_which_is_restored():
    image, labels = _pair(40, 50)
    t = build_transform(INFO, train=True, crop_size=32)
    before = torch.get_num_threads()
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        outs.append(t(image, labels))
        assert torch.get_num_threads() == threads
    torch.set_num_threads(before)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_denormalize_inverts_the_validation_transform():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x, _ = build_transform(INFO, train=False)(image, np.zeros((5, 7), np.uint8))
    assert np.array_equal(denormalize(x, INFO), image)


def test_bad_scale_range_order():
    with pytest.raises(ValueError, match=r"scale_range \(2.0, 1.0\).*low <= high"):
        build_transform(INFO, train=True, scale_range=(2.0, 1.0))


def test_bad_scale_range_not_positive():
    with pytest.raises(ValueError, match="0 < low"):
        build_transform(INFO, train=True, scale_range=(0, 1))


def test_bad_scale_range_not_a_pair():
    with pytest.raises(ValueError, match="two numbers"):
        build_transform(INFO, train=True, scale_range=(0.5,))


def test_bad_crop_size():
    with pytest.raises(ValueError, match="crop_size 0 must be a positive int"):
        build_transform(INFO, train=True, crop_size=0)


def test_image_that_is_not_rgb():
    with pytest.raises(ValueError, match=r"image has shape \(4, 4\); expected \(H, W, 3\)"):
        build_transform(INFO, train=False)(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
