import os

# before torch loads OpenMP: idle worker threads sleep instead of spinning (on a shared 2-core
# machine, busy-waiting threads made 2-thread tests of tiny models 10-25x slower)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest
import torch

#: The reference fixtures (outputs of the original implementations), vendored with the tests.
FIXTURES = Path(__file__).resolve().parent / "fixtures"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny tensors and models run fastest so on a shared 2-core CPU, where idle OpenMP workers
    spinning on the other core slow them several times."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: Small test inputs for the published-model presets (their ``*_ms_test`` TTA with one small scale).
SMALL_PRESET_OVERRIDES = ["model.input.min_size_test=64", "model.input.max_size_test=96", "model.tta.scales=[48]",
                          "model.tta.scale_ranges=[[0,10000]]"]


def check_preset_runs(name: str) -> None:
    """Build preset ``name`` at a 64-pixel test size and check its detections on a 60x80 uint8 image."""
    import assigndet

    torch.manual_seed(0)
    model = assigndet.build_detector(name, overrides=SMALL_PRESET_OVERRIDES).eval()
    image = torch.randint(0, 255, (3, 60, 80), dtype=torch.uint8)
    with torch.no_grad():
        out = model([image])
    assert len(out) == 1 and set(out[0]) == {"boxes", "scores", "labels"}
    d = out[0]
    assert d["boxes"].shape[1] == 4 and d["labels"].dtype == torch.int64
    if len(d["boxes"]):
        # inside the image (mmdetection clips in resized pixels, then divides by the scale: float slack)
        assert (d["boxes"][:, 2] <= 80 + 1e-3).all() and (d["boxes"][:, 3] <= 60 + 1e-3).all()
        assert (d["boxes"] >= 0).all()
        assert d["labels"].max() < 80


def load_fixture(name: str):
    """A reference fixture; a missing one fails the test (a fidelity test never skips)."""
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"reference fixture {path} is missing: the fidelity tests need tests/fixtures/ "
                    "(see tests/fixtures/README.md)", pytrace=False)
    return torch.load(path, weights_only=True)


TINY_OVERRIDES = [
    "model.num_classes=3",
    "model.backbone.depth=18",
    "model.backbone.base_width=8",
    "model.backbone.norm=gn",
    "model.backbone.freeze_at=0",
    "model.fpn_channels=16",
    "model.head_convs=1",
    "model.anchor_sizes=[16,32,64,128,256]",
    "model.input.min_size_train=[64]",
    "model.input.max_size_train=128",
    "model.input.min_size_test=64",
    "model.input.max_size_test=128",
]


@pytest.fixture
def tiny_overrides():
    return list(TINY_OVERRIDES)


def subprocess_env() -> dict:
    """The environment of a training subprocess: one thread, unbuffered, not inside torchrun."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def check_finite_backward(model, losses: dict) -> None:
    """The summed loss is finite and every trainable parameter gets a finite gradient."""
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
