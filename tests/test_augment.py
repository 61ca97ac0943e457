"""resnetlab.data.augment: every op against PIL or a per-pixel reference, the policies' outputs
against their sub-policies, cutout squares, mixup/CutMix targets, determinism under a seed.

Images are a few of the bundled CIFAR-10 sample JPEGs plus synthetic edge cases (constant,
two-level, narrow range), so histogram ops see realistic and degenerate channels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from resnetlab.data import augment as A
from resnetlab.data.resolve import SAMPLE_DIR


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second OpenMP thread only waits on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sample_images(count: int) -> torch.Tensor:
    """``count`` real CIFAR images (uint8 N x 3 x 32 x 32), spread over the classes."""
    files = sorted(SAMPLE_DIR.glob("test/*/*.jpg"))
    files = files[:: len(files) // count][:count]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def edge_images() -> torch.Tensor:
    """Constant, two-level, narrow-range and noise channels (3 x 32 x 32 each)."""
    rng = np.random.default_rng(0)
    constant = np.full((3, 32, 32), 77, np.uint8)
    two_level = np.where(rng.random((3, 32, 32)) < 0.3, 40, 200).astype(np.uint8)
    ramp = np.linspace(90, 130, 32 * 32).reshape(1, 32, 32).repeat(3, 0)
    narrow = (ramp + rng.integers(0, 5, (3, 32, 32))).astype(np.uint8)
    noise = rng.integers(0, 255, (3, 32, 32)).astype(np.uint8)
    noise[:, 0, 0] = 255  # a single brightest pixel: equalize's lut exceeds 255 there
    return torch.from_numpy(np.stack([constant, two_level, narrow, noise]))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.cat([sample_images(8), edge_images()])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def per_image(images: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full((images.shape[0],), float(value), dtype=torch.float64)


# ------------------------------------------------------------------------------ colour ops vs PIL

PIL_OPS = {
    "Brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
    "Color": lambda im, v: ImageEnhance.Color(im).enhance(v),
    "Contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
    "Sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
    "AutoContrast": lambda im, v: ImageOps.autocontrast(im),
    "Equalize": lambda im, v: ImageOps.equalize(im),
    "Invert": lambda im, v: ImageOps.invert(im),
    "Solarize": lambda im, v: ImageOps.solarize(im, int(v)),
    "Posterize": lambda im, v: ImageOps.posterize(im, int(v)),
}
ENHANCE = [0.01, 0.1, 0.7, 1.0, 1.3, 1.9, 2.0]
COLOUR_CASES = (
    [(name, v) for name in ("Brightness", "Color", "Contrast", "Sharpness") for v in ENHANCE]
    + [("AutoContrast", 0), ("Equalize", 0), ("Invert", 0)]
    + [("Solarize", t) for t in (0, 1, 128, 200, 255, 256)]
    + [("Posterize", b) for b in (1, 2, 4, 5, 7, 8)]
)


@pytest.mark.parametrize("name,value", COLOUR_CASES)
def test_colour_op_matches_pil(images, name, value):
    ours = A.OPS[name](images, per_image(images, value))
    assert ours.dtype == torch.uint8 and ours.shape == images.shape
    theirs = np.stack([np.asarray(PIL_OPS[name](Image.fromarray(a), value))
                       for a in images.permute(0, 2, 3, 1).numpy()])
    diff = np.abs(ours.permute(0, 2, 3, 1).numpy().astype(int) - theirs.astype(int))
    assert diff.max() <= 1
    # Off-by-one only where PIL's float arithmetic lands just below an exact level (AutoContrast,
    # ~0.1% of pixels); a rounding-rule mistake would move far more pixels than this.
    assert (diff > 0).mean() <= 0.01


def test_colour_ops_change_images(images):
    """Guards against the PIL comparison passing on a no-op (e.g. a factor ignored)."""
    for name, value in [("Brightness", 0.5), ("Color", 0.1), ("Contrast", 0.3), ("Sharpness", 2.0),
                        ("Equalize", 0), ("Solarize", 128), ("Posterize", 2)]:
        assert not torch.equal(A.OPS[name](images, per_image(images, value)), images), name


def test_ops_take_one_value_per_image(images):
    values = torch.linspace(0.2, 1.8, len(images), dtype=torch.float64)
    batched = A.OPS["Contrast"](images, values)
    for i in range(len(images)):
        assert torch.equal(batched[i:i + 1], A.OPS["Contrast"](images[i:i + 1], values[i:i + 1]))


# ------------------------------------------------------------------------------ geometric ops vs a reference

def reference_map(name: str, v: float, h: int, w: int):
    """Output pixel-centre point (x, y) -> source point, straight from each op's definition."""
    cx, cy = w / 2, h / 2
    t = math.radians(v)
    return {
        "ShearX": lambda x, y: (x + v * y, y),
        "ShearY": lambda x, y: (x, y + v * x),
        "TranslateX": lambda x, y: (x + v, y),
        "TranslateY": lambda x, y: (x, y + v),
        "Rotate": lambda x, y: (cx + math.cos(t) * (x - cx) - math.sin(t) * (y - cy),
                                cy + math.sin(t) * (x - cx) + math.cos(t) * (y - cy)),
    }[name]


def reference_warp(img: np.ndarray, point) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbour (floor of the mapped centre), fill 0; also marks exact pixel-edge ties."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    tie = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            sx, sy = point(x + 0.5, y + 0.5)
            tie[y, x] = min(abs(sx - round(sx)), abs(sy - round(sy))) < 1e-9
            ix, iy = math.floor(sx), math.floor(sy)
            if 0 <= ix < w and 0 <= iy < h:
                out[:, y, x] = img[:, iy, ix]
    return out, tie


GEOMETRIC_CASES = (
    [("ShearX", v) for v in (0.0, 0.1, -0.3, 0.99)] + [("ShearY", v) for v in (0.2, -0.66)]
    + [("TranslateX", v) for v in (3, -10, 32)] + [("TranslateY", v) for v in (-7, 20)]
    + [("Rotate", v) for v in (0, 6, -30, 45, 90, -135, 180)]
)


@pytest.mark.parametrize("name,value", GEOMETRIC_CASES)
@pytest.mark.parametrize("crop", [(slice(None), slice(None)), (slice(3, 23), slice(1, 29))],
                         ids=["32x32", "20x28"])
def test_geometric_op_matches_reference(images, name, value, crop):
    batch = images[:3, :, crop[0], crop[1]].contiguous()  # non-square catches swapped axes
    ours = A.OPS[name](batch, per_image(batch, value)).numpy()
    h, w = batch.shape[-2:]
    for got, img in zip(ours, batch.numpy()):
        want, tie = reference_warp(img, reference_map(name, value, h, w))
        wrong = (got != want).any(0)
        # Only centres mapped exactly onto a pixel edge (e.g. the diagonal at 45 deg) may go either way.
        assert not (wrong & ~tie).any()
        assert wrong.mean() <= 0.02


@pytest.mark.parametrize("name,value", [("ShearX", 0.3), ("ShearY", -0.2), ("TranslateX", 5), ("Rotate", 30)])
def test_geometric_conventions_match_pil(images, name, value):
    """Same origin, direction and sampling as PIL's transform/rotate in the papers' reference code."""
    data = {"ShearX": (1, value, 0, 0, 1, 0), "ShearY": (1, 0, 0, value, 1, 0),
            "TranslateX": (1, 0, value, 0, 1, 0)}

    def pil(im: Image.Image) -> Image.Image:
        if name == "Rotate":
            return im.rotate(value, resample=Image.NEAREST, fillcolor=(0, 0, 0))
        return im.transform(im.size, Image.AFFINE, data[name], resample=Image.NEAREST, fillcolor=(0, 0, 0))

    ours = A.OPS[name](images, per_image(images, value)).permute(0, 2, 3, 1).numpy()
    theirs = np.stack([np.asarray(pil(Image.fromarray(a))) for a in images.permute(0, 2, 3, 1).numpy()])
    assert (ours != theirs).any(-1).mean() <= 0.005  # PIL uses fixed point for some maps


# ------------------------------------------------------------------------------ policies

def aa_value(name: str, b: int) -> float:
    """AutoAugment appendix ranges over 10 bins (both ends included); CIFAR translate 10 px."""
    return {"ShearX": 0.3 * b / 9, "ShearY": 0.3 * b / 9, "TranslateX": int(10 * b / 9),
            "TranslateY": int(10 * b / 9), "Rotate": int(30 * b / 9), "Posterize": 8 - int(4 * b / 9),
            "Solarize": 256 - int(256 * b / 9)}.get(name, 0.1 + 1.8 * b / 9)


def ta_value(name: str, b: int) -> float:
    """TrivialAugment's wide ranges over 31 bins."""
    return {"ShearX": 0.99 * b / 30, "ShearY": 0.99 * b / 30, "TranslateX": int(32 * b / 30),
            "TranslateY": int(32 * b / 30), "Rotate": int(135 * b / 30), "Posterize": 8 - int(6 * b / 30),
            "Solarize": 256 - int(256 * b / 30)}.get(name, 0.01 + 1.99 * b / 30)


SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}
NO_VALUE = {"Identity", "AutoContrast", "Equalize", "Invert"}


def op_outputs(batch: torch.Tensor, name: str, values: list[float]) -> torch.Tensor:
    """N x len(values) x C x H x W: every image under every value, in one batched call."""
    if name in NO_VALUE:
        values = [0.0]
    if name in SIGNED:
        values = sorted({s * v for v in values for s in (1, -1)})
    n, k = batch.shape[0], len(values)
    repeated = batch.repeat_interleave(k, 0)
    out = A.OPS[name](repeated, torch.tensor(values * n, dtype=torch.float64))
    return out.view(n, k, *batch.shape[1:])


def found_among(result: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Is each result one of its image's candidates?  result: R x N x C x H x W (R repeats of N
    images), candidates: N x K x C x H x W; returns R x N."""
    return (candidates.unsqueeze(0) == result.unsqueeze(2)).flatten(3).all(3).any(2)


def test_policy_ranges():
    names = list(A.OP_NAMES)

    def values(ranges, max_bin, name, bins, sign):
        op = torch.full((len(bins),), names.index(name))
        return A.op_values(op, torch.tensor(bins), torch.full((len(bins),), sign), ranges, max_bin).tolist()

    aa = (A.AUTOAUGMENT_RANGES, A.AUTOAUGMENT_MAX_BIN)
    ta = (A.TRIVIALAUGMENT_RANGES, A.TRIVIALAUGMENT_MAX_BIN)
    assert values(*aa, "ShearX", [0, 9], -1) == pytest.approx([0, -0.3])
    assert values(*aa, "TranslateY", [4, 9], 1) == [4, 10]
    assert values(*aa, "Rotate", [2, 9], -1) == [-6, -30]
    assert values(*aa, "Posterize", [0, 7, 9], -1) == [8, 5, 4]
    assert values(*aa, "Solarize", [0, 2, 9], 1) == [256, 200, 0]
    assert values(*aa, "Color", [0, 3, 9], -1) == pytest.approx([0.1, 0.7, 1.9])
    assert values(*ta, "ShearY", [30], 1) == pytest.approx([0.99])
    assert values(*ta, "TranslateX", [15, 30], -1) == [-16, -32]
    assert values(*ta, "Rotate", [1, 30], 1) == [4, 135]
    assert values(*ta, "Posterize", [0, 5, 30], 1) == [8, 7, 2]
    assert values(*ta, "Solarize", [30], 1) == [0]
    assert values(*ta, "Sharpness", [0, 30], -1) == pytest.approx([0.01, 2.0])
    assert values(*ta, "Equalize", [17], 1) == [0]


# AutoAugment appendix, "Policy on CIFAR-10", one sub-policy a line as (op, probability, magnitude) x 2;
# typed in separately from the library's table so an edit to either shows.
PAPER_CIFAR10_POLICY = """
Invert 0.1 7  Contrast 0.2 6
Rotate 0.7 2  TranslateX 0.3 9
Sharpness 0.8 1  Sharpness 0.9 3
ShearY 0.5 8  TranslateY 0.7 9
AutoContrast 0.5 8  Equalize 0.9 2
ShearY 0.2 7  Posterize 0.3 7
Color 0.4 3  Brightness 0.6 7
Sharpness 0.3 9  Brightness 0.7 9
Equalize 0.6 5  Equalize 0.5 1
Contrast 0.6 7  Sharpness 0.6 5
Color 0.7 7  TranslateX 0.5 8
Equalize 0.3 7  AutoContrast 0.4 8
TranslateY 0.4 3  Sharpness 0.2 6
Brightness 0.9 6  Color 0.2 8
Solarize 0.5 2  Invert 0.0 3
Equalize 0.2 0  AutoContrast 0.6 0
Equalize 0.2 8  Equalize 0.6 4
Color 0.9 9  Equalize 0.6 6
AutoContrast 0.8 4  Solarize 0.2 8
Brightness 0.1 3  Color 0.7 0
Solarize 0.4 5  AutoContrast 0.9 3
TranslateY 0.9 9  TranslateY 0.7 9
AutoContrast 0.9 2  Solarize 0.8 3
Equalize 0.8 8  Invert 0.1 3
TranslateY 0.7 9  AutoContrast 0.9 1
"""


def test_autoaugment_table():
    table = A.AUTOAUGMENT_CIFAR10
    assert len(table) == 25
    for sub in table:
        assert len(sub) == 2
        for name, prob, b in sub:
            assert name in A.OPS and name != "Identity"
            assert 0.0 <= prob <= 1.0 and isinstance(b, int) and 0 <= b <= 9
    assert table == tuple(tuple((n, float(p), int(b)) for n, p, b in zip(*[iter(row.split())] * 3))
                          for row in PAPER_CIFAR10_POLICY.strip().splitlines())
    assert len(A.TRIVIALAUGMENT_OPS) == 14 and set(A.TRIVIALAUGMENT_OPS) <= set(A.OPS)
    assert "Invert" not in A.TRIVIALAUGMENT_OPS


def test_trivial_augment_applies_one_op_of_the_wide_space(images):
    repeats, n = 8, len(images)
    out = A.trivial_augment(images.repeat(repeats, 1, 1, 1), gen(3)).view(repeats, n, *images.shape[1:])
    found = torch.zeros(repeats, n, dtype=torch.bool)
    for name in A.TRIVIALAUGMENT_OPS:
        found |= found_among(out, op_outputs(images, name, [ta_value(name, b) for b in range(31)]))
    assert found.all()
    assert (out != images).flatten(2).any(2).float().mean() >= 0.5


def test_autoaugment_applies_a_cifar10_subpolicy(images):
    repeats, n = 16, len(images)  # ~8 images per sub-policy, so a wrong table entry shows
    out = A.autoaugment_cifar10(images.repeat(repeats, 1, 1, 1), gen(4)).view(repeats, n, *images.shape[1:])
    found = torch.zeros(repeats, n, dtype=torch.bool)
    for (name1, p1, b1), (name2, p2, b2) in A.AUTOAUGMENT_CIFAR10:
        first = images.unsqueeze(1)  # N x K x C x H x W: the image after each way stage 1 can go
        if p1 > 0:
            first = torch.cat([first, op_outputs(images, name1, [aa_value(name1, b1)])], 1)
        both = first
        if p2 > 0:
            after = op_outputs(first.flatten(0, 1), name2, [aa_value(name2, b2)])
            both = torch.cat([first, after.view(n, -1, *images.shape[1:])], 1)
        found |= found_among(out, both)
    assert found.all()
    assert (out != images).flatten(2).any(2).float().mean() >= 0.3


@pytest.mark.parametrize("policy", A.POLICIES)
def test_policies_keep_shape_dtype_device(images, policy):
    batch = images[:, :, 2:30, :].contiguous()  # non-square too
    out = A.apply_policy(batch, policy, gen(0))
    assert out.shape == batch.shape and out.dtype == torch.uint8 and out.device == batch.device


def test_apply_policy_dispatch(images):
    assert torch.equal(A.apply_policy(images, "none", gen(0)), images)
    assert torch.equal(A.apply_policy(images, "autoaugment", gen(5)), A.autoaugment_cifar10(images, gen(5)))
    assert torch.equal(A.apply_policy(images, "trivialaugment", gen(5)), A.trivial_augment(images, gen(5)))
    with pytest.raises(ValueError, match="none, autoaugment, trivialaugment"):
        A.apply_policy(images, "randaugment", gen(0))


@pytest.mark.parametrize("augment", [
    A.autoaugment_cifar10, A.trivial_augment, lambda x, g: A.cutout(x, 16, g),
], ids=["autoaugment", "trivialaugment", "cutout"])
def test_seeded_augmentation_is_deterministic(images, augment):
    batch = images.repeat(4, 1, 1, 1)
    first = augment(batch, gen(11))
    assert torch.equal(first, augment(batch, gen(11)))
    assert not torch.equal(first, augment(batch, gen(12)))
    assert torch.equal(batch, images.repeat(4, 1, 1, 1))  # the input is never written


# ------------------------------------------------------------------------------ cutout

def test_cutout_at_known_centres():
    images = torch.full((3, 3, 32, 32), 9, dtype=torch.uint8)
    out = A.cutout_at(images, torch.tensor([[10, 5], [0, 31], [20, 20]]), 8)
    expected = torch.ones(3, 32, 32, dtype=torch.bool)
    expected[0, 6:14, 1:9] = False  # rows 10-4 .. 10+3, cols 5-4 .. 5+3
    expected[1, 0:4, 27:32] = False  # clipped at the top and the right
    expected[2, 16:24, 16:24] = False
    assert torch.equal(out != 0, expected.unsqueeze(1).expand(3, 3, 32, 32))
    odd = A.cutout_at(images[:1], torch.tensor([[16, 16]]), 5)
    assert torch.equal((odd[0, 0] == 0).nonzero().amin(0), torch.tensor([14, 14]))
    assert int((odd[0, 0] == 0).sum()) == 25  # an odd side is still `size`


def test_cutout_zeroes_one_clipped_square_per_image():
    n, size = 2000, 16
    images = torch.full((n, 1, 32, 32), 200, dtype=torch.uint8)
    zero = A.cutout(images, size, gen(2))[:, 0] == 0
    rows, cols = zero.any(2), zero.any(1)
    # One axis-aligned rectangle per image, with both sides <= size.
    assert torch.equal(zero, rows[:, :, None] & cols[:, None, :])
    assert int(rows.sum(1).max()) == size and int(cols.sum(1).max()) == size
    # Expected zeroed fraction for a uniform centre: E[clipped side]^2 / 32^2.
    side = np.mean([min(c - size // 2 + size, 32) - max(c - size // 2, 0) for c in range(32)])
    assert float(zero.float().mean()) == pytest.approx(side**2 / 32**2, rel=0.03)
    # Each row (column) is covered by the centres within size/2 of it, each with probability 1/32.
    covered = torch.tensor([sum(c - size // 2 <= r < c - size // 2 + size for c in range(32)) / 32
                            for r in range(32)])
    assert torch.allclose(rows.float().mean(0), covered, atol=0.05)
    assert torch.allclose(cols.float().mean(0), covered, atol=0.05)


# ------------------------------------------------------------------------------ mixup / CutMix

def distinct_batch(b: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking float images and labels 0..b-1 (one class per image)."""
    return torch.randn(b, 3, 32, 32, generator=gen(99)), torch.arange(b)


def partners(targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Recover perm and lam from the soft targets of a batch whose labels are 0..B-1."""
    b = targets.shape[0]
    own = targets[torch.arange(b), torch.arange(b)]
    other = targets.clone()
    other[torch.arange(b), torch.arange(b)] = 0
    perm = torch.where(other.amax(1) > 0, other.argmax(1), torch.arange(b))
    moved = perm != torch.arange(b)
    assert moved.any()
    return perm, float(own[moved][0])


def test_mixup_is_a_convex_combination_with_the_permuted_batch():
    x, y = distinct_batch()
    mixed, targets = A.mix_batch(x, y, 8, "mixup", 1.0, gen(7))
    assert targets.shape == (8, 8) and torch.allclose(targets.sum(1), torch.ones(8))
    perm, lam = partners(targets)
    assert 0 < lam < 1
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm], atol=1e-6)
    assert torch.allclose(targets, lam * F.one_hot(y, 8) + (1 - lam) * F.one_hot(y[perm], 8))


def test_cutmix_target_weights_are_the_pasted_area():
    x, y = distinct_batch()
    mixed, targets = A.mix_batch(x, y, 8, "cutmix", 1.0, gen(8))
    assert torch.allclose(targets.sum(1), torch.ones(8))
    perm, lam = partners(targets)
    pasted = (mixed != x).any(1)  # B x H x W
    moved = perm != torch.arange(8)
    box = pasted[moved][0]
    assert 0 < box.float().mean() < 1  # this seed pastes a proper box
    # One box for the whole batch, filled from the partner image, area fraction 1 - lam.
    assert torch.equal(pasted[moved], box.expand_as(pasted[moved]))
    assert torch.equal(box, box.any(1)[:, None] & box.any(0)[None, :])
    assert float(box.float().mean()) == pytest.approx(1 - lam, abs=1e-6)
    assert torch.equal(mixed[:, :, box], x[perm][:, :, box])
    assert torch.equal(mixed[:, :, ~box], x[:, :, ~box])


def test_cutmix_box_position_and_size_vary():
    x, y = distinct_batch()
    boxes = set()
    for seed in range(12):
        mixed, _ = A.mix_batch(x, y, 8, "cutmix", 1.0, gen(seed))
        pasted = (mixed != x).any(1).any(0)
        rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
        if len(rows):
            boxes.add((int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())))
    assert len(boxes) >= 8
    inside = [b for b in boxes if b[0] > 0 and b[2] > 0 and b[1] < 31 and b[3] < 31]
    assert inside and all(b[1] - b[0] == b[3] - b[2] for b in inside)  # unclipped boxes are square
    # Not pinned to an edge or a corner: the centre is uniform over the image.
    assert {b[0] for b in boxes} != {0} and {b[2] for b in boxes} != {0}
    assert {b[1] for b in boxes} != {31} and {b[3] for b in boxes} != {31}


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mix_batch_is_deterministic(mode):
    x, y = distinct_batch()
    a = A.mix_batch(x, y, 8, mode, 1.0, gen(1))
    b = A.mix_batch(x, y, 8, mode, 1.0, gen(1))
    c = A.mix_batch(x, y, 8, mode, 1.0, gen(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mix_batch_rejects_bad_arguments():
    x, y = distinct_batch()
    with pytest.raises(ValueError, match="mixup, cutmix"):
        A.mix_batch(x, y, 8, "mosaic", 1.0, gen(0))
    with pytest.raises(ValueError, match="alpha"):
        A.mix_batch(x, y, 8, "mixup", 0.0, gen(0))


def test_soft_target_cross_entropy():
    logits = torch.randn(6, 5, generator=gen(0))
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    ours = A.soft_target_cross_entropy(logits, F.one_hot(labels, 5).float())
    assert torch.allclose(ours, F.cross_entropy(logits, labels), atol=1e-6)
    soft = torch.softmax(torch.randn(6, 5, generator=gen(1)), 1)
    half = A.soft_target_cross_entropy(logits.bfloat16(), soft)
    assert half.dtype == torch.float32
    assert torch.allclose(half, F.cross_entropy(logits.bfloat16().float(), soft), atol=1e-6)
