"""Context scenes: generated images whose object labels can only be read from a far-away cue.

Each image has a thin sky band at the top whose colour is the *scene* (dawn,
noon, dusk, ...), a neutral textured ground, and 1-3 shapes (disc, square,
triangle, ...) standing on the ground well below the sky. An object's class is
the pair (scene, shape): the same shape is ``dawn_disc`` under an orange sky
and ``noon_disc`` under a blue one. By construction:

* **the cue is far away**: every object's top edge is at least
  ``cue_distance`` x image height below the sky band, so a network whose
  effective receptive field is smaller than that cannot see the scene;
* **locally nothing differs**: object colours, sizes, positions, ground
  texture, brightness and noise are drawn from the same distributions in
  every scene (the scene only changes the sky's colour);
* **no positional prior**: objects are placed uniformly in the lower zone,
  independently of scene and shape;
* **noise everywhere**: smooth texture plus Gaussian pixel noise on the whole image.

A plain FCN thus gets the shape right and the scene wrong (at best 1 in
``num_scenes``), while a model with global context (ParseNet) can get both.
Images are rendered on the fly from ``(seed, split, index)``: nothing is stored,
and the same arguments always give the same pixels. :func:`parsenet.data.formats.export_folder`
writes them out as PNG files that the ``folder:`` loader reads back identically.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from erf.util import unknown_name
from parsenet.data.base import DatasetInfo, SegmentationDataset, voc_palette

__all__ = ["SceneConfig", "ContextScenes", "render_scene", "scene_classes", "SCENES", "SHAPES", "SCENE_SPLITS"]

# Sky colour of each scene: far apart in RGB so that pixel noise never confuses two of them.
SCENES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("dawn", (235, 140, 60)),
    ("noon", (80, 150, 235)),
    ("dusk", (125, 65, 165)),
    ("aurora", (60, 190, 120)),
    ("night", (25, 30, 70)),
    ("smog", (200, 190, 90)),
)
SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond")
SCENE_SPLITS = {"train": 0, "val": 1, "test": 2}  # split -> stream id in the seed
_DEFAULT_NUM_IMAGES = {"train": 2000, "val": 200, "test": 200}
_GROUND_RGB = np.array([118.0, 112.0, 100.0])  # neutral grey-brown, the same in every scene


@dataclass(frozen=True)
class SceneConfig:
    """How the context scenes are drawn.

    Args:
        size: image side in pixels, or ``(height, width)``.
        num_scenes: number of sky colours (scenes), 1..6.
        num_shapes: number of object shapes, 1..6.
        objects: ``(min, max)`` objects per image.
        cue_distance: smallest gap between the sky band's lower edge and any object's top,
            as a fraction of the image height. Larger means a plain FCN needs a larger ERF.
        sky_fraction: height of the sky band (the cue) as a fraction of the image height.
        object_size: ``(min, max)`` object diameter as a fraction of the image height.
        noise: standard deviation of the Gaussian pixel noise, in 0..255 intensity units.

    With the defaults at 96 px: sky rows 0-11, objects between rows 60 and 95, 10-19 px wide,
    11 classes (ground, sky, 3 scenes x 3 shapes).
    """

    size: int | tuple[int, int] = 96
    num_scenes: int = 3
    num_shapes: int = 3
    objects: tuple[int, int] = (1, 3)
    cue_distance: float = 0.5
    sky_fraction: float = 0.125
    object_size: tuple[float, float] = (0.10, 0.20)
    noise: float = 12.0

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, (int, np.integer)) else tuple(self.size)
        if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 16 for s in size):
            raise ValueError(f"size {self.size!r} must be an int >= 16 or (height, width) of such ints")
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "objects", tuple(int(v) for v in self.objects))
        object.__setattr__(self, "object_size", tuple(float(v) for v in self.object_size))
        if not 1 <= self.num_scenes <= len(SCENES):
            raise ValueError(f"num_scenes {self.num_scenes} must be in 1..{len(SCENES)}")
        if not 1 <= self.num_shapes <= len(SHAPES):
            raise ValueError(f"num_shapes {self.num_shapes} must be in 1..{len(SHAPES)}")
        if len(self.objects) != 2 or not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"objects {self.objects!r} must be (min, max) with 1 <= min <= max")
        if not 0 < self.sky_fraction < 1:
            raise ValueError(f"sky_fraction {self.sky_fraction} must be in (0, 1)")
        if not 0 <= self.cue_distance < 1:
            raise ValueError(f"cue_distance {self.cue_distance} must be in [0, 1)")
        lo, hi = self.object_size
        if len(self.object_size) != 2 or not 0 < lo <= hi:
            raise ValueError(f"object_size {self.object_size!r} must be (min, max) with 0 < min <= max")
        room = 1 - self.sky_fraction - self.cue_distance
        if hi > room:
            raise ValueError(f"objects up to {hi} of the height do not fit below sky_fraction {self.sky_fraction} "
                             f"+ cue_distance {self.cue_distance}: expected object_size max <= {room:.3f}")
        if hi * self.size[0] < 4:
            raise ValueError(f"objects of {hi * self.size[0]:.1f} px at size {self.size} are too small to "
                             "draw a recognisable shape; expected at least 4 px (raise size or object_size)")
        if self.noise < 0:
            raise ValueError(f"noise {self.noise} must be >= 0")


def scene_classes(num_scenes: int, num_shapes: int) -> tuple[str, ...]:
    """Class names: ``ground``, ``sky``, then ``<scene>_<shape>`` scene by scene.

    Example:
        >>> scene_classes(2, 2)
        ('ground', 'sky', 'dawn_disc', 'dawn_square', 'noon_disc', 'noon_square')
    """
    return ("ground", "sky") + tuple(f"{SCENES[s][0]}_{SHAPES[k]}" for s in range(num_scenes)
                                     for k in range(num_shapes))


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Pixels inside ``shape`` of radius ``r`` given offsets (dy, dx) from its centre; all fit in the circle."""
    ay, ax = np.abs(dy), np.abs(dx)
    if shape == "disc":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return np.maximum(ay, ax) <= 0.75 * r
    if shape == "triangle":  # apex up, base 0.6 r below the centre
        return (dy <= 0.6 * r) & (ax <= (dy + r) * (0.9 / 1.6))
    if shape == "cross":
        return ((ay <= 0.3 * r) & (ax <= r)) | ((ax <= 0.3 * r) & (ay <= r))
    if shape == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "diamond":
        return ay + ax <= r
    raise AssertionError(shape)


def _smooth_noise(rng: np.random.Generator, H: int, W: int, cell: int) -> np.ndarray:
    """Low-frequency texture: a coarse grid of N(0, 1) values resized bilinearly to (H, W)."""
    grid = rng.standard_normal((H // cell + 2, W // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((W, H), Image.BILINEAR))  # (H, W)


def render_scene(config: SceneConfig, rng: np.random.Generator, *,
                 scene: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw one scene.

    Rows ``[0, sky)`` are the sky, coloured by a scene drawn uniformly; objects are
    placed uniformly, without overlap, with their top at row ``sky + cue_distance * H``
    or lower. Everything but the sky colour is drawn independently of the scene.

    Args:
        config: image size, counts and distances.
        rng: the only source of randomness.
        scene: force this scene instead of the drawn one. The draw still happens, so the
            same ``rng`` state gives the same pixels below the sky in every scene.

    Returns:
        image (H, W, 3) uint8, labels (H, W) uint8 (0 ground, 1 sky, 2 + scene * num_shapes + shape),
        and the scene index.

    Example:
        >>> img, lab, scene = render_scene(SceneConfig(size=64), np.random.default_rng(0))
        >>> img.shape, lab.shape, int(lab[0, 0])
        ((64, 64, 3), (64, 64), 1)
    """
    H, W = config.size
    cell = max(2, H // 12)
    sky = max(1, round(config.sky_fraction * H))
    drawn = int(rng.integers(config.num_scenes))
    if scene is None:
        scene = drawn
    elif not 0 <= scene < config.num_scenes:
        raise ValueError(f"scene {scene} must be in 0..{config.num_scenes - 1}")

    # Ground and sky: per-image colour jitter and smooth texture, the same law in every scene.
    image = np.empty((H, W, 3), dtype=np.float32)
    ground = _GROUND_RGB + rng.uniform(-15, 15, size=3)
    image[:] = ground + 18 * _smooth_noise(rng, H, W, cell)[..., None]  # (H, W, 3)
    sky_rgb = np.array(SCENES[scene][1], dtype=np.float32) + rng.uniform(-12, 12, size=3)
    glow = np.linspace(0, 15, sky, dtype=np.float32)[:, None, None]  # brighter towards the horizon
    image[:sky] = sky_rgb + glow + 8 * _smooth_noise(rng, sky, W, cell)[..., None]
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[:sky] = 1

    # Objects: uniform positions in the zone far below the sky; rejection keeps them apart.
    top = sky + int(np.ceil(config.cue_distance * H))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(config.objects[0], config.objects[1] + 1))):
        for _attempt in range(20):
            r = rng.uniform(*config.object_size) * H / 2
            cy = rng.uniform(top + r, max(top + r, H - r))  # rounding never moves it nearer the cue
            cx = rng.uniform(r, W - r)
            if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + 2) ** 2 for y, x, q in placed):
                break
        else:
            continue  # no room left: fewer objects in this image
        placed.append((cy, cx, r))
        shape = int(rng.integers(config.num_shapes))
        inside = _shape_mask(SHAPES[shape], yy - cy, xx - cx, r)  # (H, W) bool
        image[inside] = _object_colour(rng, ground)
        labels[inside] = 2 + scene * config.num_shapes + shape

    image += config.noise * rng.standard_normal(image.shape, dtype=np.float32)  # (H, W, 3)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), labels, scene


def _object_colour(rng: np.random.Generator, ground: np.ndarray) -> np.ndarray:
    """A random colour that stands out from the ground (drawn the same way in every scene)."""
    for _ in range(50):
        rgb = rng.uniform(20, 235, size=3)
        if np.abs(rgb - ground).max() > 60:
            return rgb
    return 255 - ground


class ContextScenes(SegmentationDataset):
    """The built-in context-scenes dataset, rendered on the fly.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each split is its own random stream.
        config: how scenes are drawn (:class:`SceneConfig`).
        num_images: items in the split, or a ``{split: count}`` mapping (one option for all splits);
            default 2000 for train, 200 for val and test.
        seed: with ``split`` and the index, fixes every pixel.
        transform: joint transform (see :func:`parsenet.data.transforms.build_transform`).
        cache: keep rendered arrays in memory.

    Example:
        >>> ds = ContextScenes("val", config=SceneConfig(size=64), num_images=4)
        >>> image, labels = ds.raw(0); len(ds), image.shape, ds.info.num_classes
        (4, (64, 64, 3), 11)
    """

    def __init__(self, split: str = "train", *, config: SceneConfig = SceneConfig(),
                 num_images: int | Mapping[str, int] | None = None,
                 seed: int = 0, transform: Callable | None = None, cache: bool = False) -> None:
        if split not in SCENE_SPLITS:
            raise unknown_name("scenes split", split, SCENE_SPLITS, show_all=True)
        if isinstance(num_images, Mapping):
            for key in num_images:
                if key not in SCENE_SPLITS:
                    raise unknown_name("scenes split in num_images", key, SCENE_SPLITS, show_all=True)
            num_images = num_images.get(split)
        num_images = _DEFAULT_NUM_IMAGES[split] if num_images is None else num_images
        if not isinstance(num_images, (int, np.integer)) or num_images < 1:
            raise ValueError(f"num_images {num_images!r} must be a positive int (an empty split cannot train)")
        classes = scene_classes(config.num_scenes, config.num_shapes)
        super().__init__(DatasetInfo("scenes", classes, voc_palette(len(classes))), transform=transform, cache=cache)
        self.split, self.config, self.num_images, self.seed = split, config, int(num_images), int(seed)

    def __len__(self) -> int:
        return self.num_images

    def name(self, i: int) -> str:
        return f"scene_{self._index(i):06d}"

    def rng(self, i: int) -> np.random.Generator:
        """The generator that draws item ``i``: a function of (seed, split, i) only."""
        return np.random.default_rng([self.seed, SCENE_SPLITS[self.split], self._index(i)])

    def scene(self, i: int) -> str:
        """The scene (sky) name of item ``i``."""
        return SCENES[render_scene(self.config, self.rng(i))[2]][0]

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        image, labels, _ = render_scene(self.config, self.rng(i))
        return image, labels, f"{self.name(i)} (generated, {self.split} split, seed {self.seed})"

    def describe(self) -> dict:
        """The arguments that regenerate this split, for logs and checkpoints."""
        return {"split": self.split, "num_images": self.num_images, "seed": self.seed, **asdict(self.config)}

