"""Test-wide set-up: 8 virtual CPU devices, strict rank promotion, hardware markers."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def _platforms():
    try:
        return {d.platform for d in jax.devices()}
    except RuntimeError:
        return set()


def pytest_collection_modifyitems(config, items):
    del config
    platforms = _platforms()
    for item in items:
        for marker, platform in (("gpu", "gpu"), ("tpu", "tpu")):
            if marker in item.keywords and platform not in platforms:
                item.add_marker(pytest.mark.skip(reason=f"needs a {platform.upper()}"))
