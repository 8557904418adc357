"""zoo.gan.models: shapes, parameter counts equal to the PyTorch peer's, spectral norm's
persistent statistics, and configuration errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.gan.configs import dcgan, mlp_gan
from zoo.gan.models import DCGANDiscriminator, DCGANGenerator, make_models
from zoo.gan.task import build


def count(tree):
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def test_dcgan_28_shapes_and_parameter_counts_match_the_pytorch_dcgan():
    g, d = DCGANGenerator(28, 1, 64), DCGANDiscriminator(64, "none")
    g_vars = jax.eval_shape(lambda k: g.init(k, jnp.zeros((2, 100)), train=False), jax.random.key(0))
    d_vars = jax.eval_shape(lambda k: d.init(k, jnp.zeros((2, 28, 28, 1)), train=False), jax.random.key(0))
    # Dense 100→7·7·128 (no bias) + BN 128 + ConvT 128→64 4×4 (no bias) + BN 64 + ConvT 64→1 4×4 + bias
    assert count(g_vars["params"]) == 100 * 6272 + 256 + 16 * 128 * 64 + 128 + 16 * 64 + 1 == 759_681
    # Conv 1→64 4×4 + bias, Conv 64→128 4×4 + bias, Dense 6272→1 + bias
    assert count(d_vars["params"]) == 16 * 64 + 64 + 16 * 64 * 128 + 128 + 6272 + 1 == 138_561
    images = jax.eval_shape(lambda v: g.apply(v, jnp.zeros((3, 100)), train=False), g_vars)
    assert images.shape == (3, 28, 28, 1)


def test_dcgan_64_and_mlp_shapes():
    def shapes(model_config, z_dim):
        g, d = make_models(model_config)

        def run(key):
            z = jax.random.uniform(key, (2, z_dim), minval=-1, maxval=1)
            x = g.apply(g.init(key, z, train=False), z, train=False)
            return x, d.apply(d.init(key, x, train=False), x, train=False)

        return jax.eval_shape(run, jax.random.key(0))

    config = dcgan.get_config("size64_smoke")
    config.model.channels = 3
    x, out = shapes(config.model, 100)
    assert x.shape == (2, 64, 64, 3) and out.shape == (2,)
    x, out = shapes(mlp_gan.get_config("smoke").model, 10)
    assert x.shape == (2, 28, 28, 1) and out.shape == (2,)


def test_spectral_norm_discriminator_updates_its_statistics_only_in_train_mode(rng):
    d = DCGANDiscriminator(4, "spectral")
    x = jnp.asarray(rng.normal(size=(2, 28, 28, 1)), jnp.float32)
    variables = jax.jit(lambda k: d.init(k, x, train=False))(jax.random.key(0))
    assert "batch_stats" in variables  # the persistent u (and sigma) of every kernel

    @jax.jit
    def both(variables):
        return d.apply(variables, x, train=False), d.apply(variables, x, train=True, mutable=["batch_stats"])

    out_eval, (out_train, updated) = both(variables)
    assert out_eval.shape == out_train.shape == (2,)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"], updated["batch_stats"])
    assert any(jax.tree.leaves(changed))


def test_configuration_errors_name_the_field():
    config = dcgan.get_config("smoke")
    config.model.d_norm = "layer"
    with pytest.raises(ValueError, match="model.d_norm must be one of .*got 'layer'"):
        make_models(config.model)
    config = dcgan.get_config("smoke")
    config.model.image_size = 32
    with pytest.raises(ValueError, match="`image_size` must be 28 or 64; got 32"):
        make_models(config.model)
    config = dcgan.get_config("smoke")
    config.model.update(d_norm="batch")
    config.gan.penalty = "wgan_gp"
    with pytest.raises(ValueError, match="gradient penalties need per-example discriminator outputs"):
        build(config)
    config = mlp_gan.get_config("smoke")
    config.model.d_norm = "batch"
    with pytest.raises(ValueError, match="the MLP discriminator supports d_norm 'none' or 'spectral'"):
        make_models(config.model)


def test_pixel_ranges():
    from zoo.gan.task import to_model_range, to_symmetric

    pixels = np.array([0, 255], np.uint8)
    np.testing.assert_allclose(to_model_range(pixels), [-1.0, 1.0])
    np.testing.assert_allclose(to_model_range(pixels, "unit"), [0.0, 1.0])
    np.testing.assert_allclose(to_symmetric(np.array([0.0, 0.5, 1.0]), "unit"), [-1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="model.pixel_range must be one of .*got 'bytes'"):
        to_model_range(pixels, "bytes")
    config = dcgan.get_config("smoke")
    config.model.pixel_range = "unit"
    with pytest.raises(ValueError, match="tanh output needs 'symmetric'"):
        make_models(config.model)


def test_resize_uint8_to_the_64_pixel_model_and_back():
    from zoo.gan.task import resize_uint8

    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28, 1), dtype=np.uint8)
    big = resize_uint8(images, 64, chunk=2)
    assert big.shape == (3, 64, 64, 1) and big.dtype == np.uint8
    assert resize_uint8(images, 28) is images
    flat = np.full((1, 28, 28, 1), 77, np.uint8)
    np.testing.assert_array_equal(resize_uint8(resize_uint8(flat, 64), 28), flat)  # a constant image stays constant
