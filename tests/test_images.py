import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from erf.images import IMAGENET_MEAN, IMAGENET_STD, load_images

skdata = pytest.importorskip("skimage.data")


def _photo(name: str, size=(48, 64)) -> Image.Image:
    """A real photograph from scikit-image's wheel, shrunk to keep tests fast."""
    return Image.fromarray(getattr(skdata, name)()).resize((size[1], size[0]), Image.BILINEAR)


@pytest.fixture
def photo_dir(tmp_path):
    _photo("astronaut").save(tmp_path / "astronaut.png")
    _photo("coffee").save(tmp_path / "coffee.jpg", quality=95)
    _photo("chelsea").save(tmp_path / "chelsea.jpeg")
    return tmp_path


def test_folder_loads_sorted_and_normalised(photo_dir):
    s = load_images(photo_dir)
    assert s.names == ("astronaut.png", "chelsea.jpeg", "coffee.jpg")
    assert s.images.shape == (3, 3, 48, 64) and s.images.dtype == torch.float32
    # Hand-check one pixel of the PNG (lossless): (value / 255 - mean) / std.
    raw = np.asarray(Image.open(photo_dir / "astronaut.png"))
    want = (raw[5, 7] / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(s.images[0, :, 5, 7].numpy(), want, rtol=1e-5)
    assert s.size == (48, 64)


def test_list_of_files_keeps_given_order(photo_dir):
    files = [photo_dir / "coffee.jpg", photo_dir / "astronaut.png"]
    s = load_images(files, mean=(0, 0, 0), std=(1, 1, 1))
    assert s.names == tuple(str(f) for f in files)
    assert 0.0 <= s.images.min() and s.images.max() <= 1.0


def test_grayscale_and_rgba_are_converted_with_a_warning(tmp_path):
    _photo("rocket").convert("L").save(tmp_path / "gray.png")
    _photo("rocket").convert("RGBA").save(tmp_path / "rgba.png")
    with pytest.warns(UserWarning) as record:
        s = load_images(tmp_path)
    messages = " ".join(str(r.message) for r in record)
    assert "converted L image to RGB" in messages and "converted RGBA image to RGB (alpha channel dropped)" in messages
    assert s.images.shape == (2, 3, 48, 64)
    # Gray converted to RGB: the three channels carry the same pixel value.
    pixels = s.images[0] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    torch.testing.assert_close(pixels[0], pixels[1], atol=1e-5, rtol=0)


def test_different_sizes_refused_unless_resize(tmp_path):
    _photo("astronaut", (48, 64)).save(tmp_path / "a.png")
    _photo("coffee", (40, 40)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"different sizes \(a.png: 48x64, b.png: 40x40.*resize"):
        load_images(tmp_path)
    s = load_images(tmp_path, resize=(32, 30))
    assert s.images.shape == (2, 3, 32, 30)


def test_non_image_file_skipped_with_warning(photo_dir):
    (photo_dir / "notes.txt").write_text("not an image")
    (photo_dir / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.warns(UserWarning, match="skipping broken.png"):
        s = load_images(photo_dir)
    assert s.names == ("astronaut.png", "chelsea.jpeg", "coffee.jpg")


def test_non_image_file_refused_on_error(photo_dir):
    (photo_dir / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt is not a readable PNG/JPEG image.*on_bad='skip'"):
        load_images(photo_dir, on_bad="error")


def test_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="image folder .* is empty"):
        load_images(tmp_path)


def test_folder_with_only_bad_files(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no readable PNG/JPEG images"):
            load_images(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images(tmp_path / "nope")


def test_empty_list():
    with pytest.raises(ValueError, match="list of image files is empty"):
        load_images([])


def test_unknown_policy(photo_dir):
    with pytest.raises(ValueError, match=r"unknown on_bad policy 'skp' \(did you mean: skip\?\)"):
        load_images(photo_dir, on_bad="skp")


def test_bad_resize(photo_dir):
    with pytest.raises(ValueError, match=r"resize=\(0, 5\); expected \(H, W\)"):
        load_images(photo_dir, resize=(0, 5))


def test_bad_std(photo_dir):
    with pytest.raises(ValueError, match="std=.*positive"):
        load_images(photo_dir, std=(1, 0, 1))


class _Items:
    def __init__(self, shapes):
        self.items = [(torch.full((3, h, w), float(i)), torch.zeros(h, w)) for i, (h, w) in enumerate(shapes)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_images_from_dataset():
    from erf.images import images_from_dataset

    s = images_from_dataset(_Items([(6, 8)] * 5), limit=3, prefix="val")
    assert s.images.shape == (3, 3, 6, 8) and s.names == ("val_00000", "val_00001", "val_00002")
    assert s.images[2].unique().tolist() == [2.0]
    assert images_from_dataset(_Items([(6, 8), (4, 4)]), resize=(5, 5)).images.shape == (2, 3, 5, 5)


def test_images_from_dataset_different_sizes():
    from erf.images import images_from_dataset

    with pytest.raises(ValueError, match=r"different sizes \(4x4, 6x8\); expected one size, or pass resize"):
        images_from_dataset(_Items([(6, 8), (4, 4)]))


def test_images_from_empty_dataset():
    from erf.images import images_from_dataset

    with pytest.raises(ValueError, match="dataset is empty"):
        images_from_dataset(_Items([]))
