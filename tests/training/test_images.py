"""`vxmtf.training.images`: grid rendering (NumPy oracles) and the TensorBoard image summary."""

import numpy as np
import pytest
import tensorflow as tf

from vxmtf.networks import VxmDense
from vxmtf.training.images import (
    RegistrationImages,
    deformed_grid,
    grid_image,
    render_panels,
)

TINY = {"enc_features": (4, 8, 8, 8), "dec_features": (8, 8, 8, 8, 8, 4, 4), "int_steps": 0}


def _image_events(log_dir):
    """`{tag: [(step, decoded image array)]}` of every image summary under `log_dir`."""
    events = {}
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "images":
                    continue
                # Image summaries are a string tensor [width, height, png, ...].
                strings = tf.make_ndarray(value.tensor)
                width, height = int(strings[0]), int(strings[1])
                image = tf.io.decode_png(strings[2]).numpy()
                assert image.shape[:2] == (height, width)
                events.setdefault(value.tag, []).append((event.step, image))
    return events


def test_grid_image_lines():
    grid = grid_image((9, 6), spacing=4)
    expected = np.zeros((9, 6), np.float32)
    expected[[0, 4, 8], :] = 1
    expected[:, [0, 4]] = 1
    np.testing.assert_array_equal(grid, expected)


def test_zero_field_draws_the_straight_grid():
    field = np.zeros((12, 10, 2), np.float32)
    np.testing.assert_array_equal(deformed_grid(field, spacing=3), grid_image((12, 10), 3))


@pytest.mark.parametrize("shift", [(2, 0), (0, -3), (1, 2)])
def test_integer_shift_moves_the_grid(shift):
    """`out(x) = grid(x + s)`: the grid rolled by `-s`, away from the clamped borders."""
    shape = (16, 20)
    field = np.broadcast_to(np.asarray(shift, np.float32), (*shape, 2))
    out = deformed_grid(field, spacing=4)
    expected = np.roll(grid_image(shape, 4), shift=(-shift[0], -shift[1]), axis=(0, 1))
    inner = (slice(3, -3), slice(3, -3))
    np.testing.assert_array_equal(out[inner], expected[inner])
    assert not np.array_equal(out, grid_image(shape, 4))


def test_half_voxel_shift_blurs_lines_linearly():
    field = np.zeros((8, 8, 2), np.float32)
    field[..., 1] = 0.5  # along columns only
    out = deformed_grid(field, spacing=4)
    # Rows 1-3 have no horizontal line: a vertical line at column 4 is sampled at 3.5 and 4.
    np.testing.assert_allclose(out[2, 3:5], [0.5, 0.5])
    np.testing.assert_allclose(out[2, 1:3], [0.0, 0.0])


def test_render_panels_3d_uses_in_plane_components():
    rng = np.random.default_rng(0)
    shape = (6, 8, 10)
    moving, fixed, moved = (rng.uniform(size=(*shape, 1)).astype(np.float32) for _ in range(3))
    field = np.zeros((*shape, 3), np.float32)
    field[..., 0] = 2.0  # through-plane for axis 0: the axis-0 grid stays straight
    picture = render_panels(moving, fixed, moved, field, axis=0, spacing=4)
    assert picture.shape == (8, 40, 1) and picture.dtype == np.float32
    np.testing.assert_array_equal(picture[:, :10, 0], moving[3, :, :, 0])
    np.testing.assert_array_equal(picture[:, 10:20, 0], fixed[3, :, :, 0])
    np.testing.assert_array_equal(picture[:, 20:30, 0], moved[3, :, :, 0])
    np.testing.assert_array_equal(picture[:, 30:, 0], grid_image((8, 10), 4))
    # Along axis 1 the same field is in plane (first slice axis): the grid moves by 2 rows.
    picture = render_panels(moving, fixed, moved, field, axis=1, spacing=4)
    assert picture.shape == (6, 40, 1)
    expected = np.roll(grid_image((6, 10), 4), -2, axis=0)
    np.testing.assert_array_equal(picture[1:3, 30:, 0], expected[1:3])


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_callback_writes_one_picture_per_axis_and_epoch(tmp_path, shape):
    model = VxmDense(shape, **TINY)
    rng = np.random.default_rng(1)
    moving, fixed = (rng.uniform(size=(1, *shape, 1)).astype(np.float32) for _ in range(2))
    callback = RegistrationImages(model, moving, fixed[0, ..., 0], tmp_path / "images")
    for epoch in range(2):
        callback.on_epoch_end(epoch)
    callback.on_train_end()
    events = _image_events(tmp_path / "images")
    axes = len(shape) if len(shape) == 3 else 1
    assert sorted(events) == [f"registration/axis{k}" for k in range(axes)]
    tag = "registration/axis0"
    assert [step for step, _ in events[tag]] == [0, 1]
    _, image = events[tag][0]
    height, width = shape[-2:]
    assert image.shape == (height, 4 * width, 1) and image.dtype == np.uint8
    # The fixed panel is the fixed image's middle slice (PNG: 8 bits).
    middle = fixed[0, shape[0] // 2, ..., 0] if len(shape) == 3 else fixed[0, ..., 0]
    np.testing.assert_allclose(image[:, width : 2 * width, 0] / 255.0, middle, atol=1 / 255 + 1e-6)


def test_errors():
    model = VxmDense((16, 16), **TINY)
    image = np.zeros((16, 16), np.float32)
    with pytest.raises(ValueError, match=r"same shape.*moving.shape=\(1, 16, 16, 1\)"):
        RegistrationImages(model, image, np.zeros((16, 8), np.float32), "logs")
    with pytest.raises(ValueError, match="Expected one 2D image"):
        RegistrationImages(model, np.zeros((2, 16, 16, 1), np.float32), image, "logs")
    with pytest.raises(ValueError, match="spacing=0"):
        RegistrationImages(model, image, image, "logs", spacing=0)
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        deformed_grid(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="spacing=0"):
        grid_image((4, 4), spacing=0)


def test_train_writes_the_pictures_of_a_validation_pair(tmp_path):
    from vxmtf.training import DataConfig, ModelConfig, RunConfig, TrainConfig, train

    config = RunConfig(
        data=DataConfig(synthetic_shape=(32, 32), val_pairs=1),
        model=ModelConfig(**TINY),
        train=TrainConfig(
            model_dir=str(tmp_path / "run"), epochs=2, steps_per_epoch=2, export=False
        ),
    )
    train(config)
    events = _image_events(tmp_path / "run" / "logs" / "images")
    assert list(events) == ["registration/axis0"]
    assert [step for step, _ in events["registration/axis0"]] == [0, 1]
    assert events["registration/axis0"][0][1].shape == (32, 128, 1)
