"""jaxattn: long-context attention variants in JAX/Flax NNX."""

import pathlib
import re

import setuptools


def _version() -> str:
    """``__version__`` from jaxattn/version.py, read as text (setup must not import jax)."""
    text = (pathlib.Path(__file__).parent / "jaxattn" / "version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("jaxattn/version.py has no line __version__ = \"...\"")
    return match.group(1)


CORE = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "ml_collections>=1.1.0",
    "absl-py>=2.1",
    "numpy>=1.26",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
]

EXTRAS = {
    "dev": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "hypothesis>=6.100",
        "nbmake>=1.5",
        "nbclient>=0.10",
        "ipykernel>=6.29",
        "matplotlib>=3.8",
    ],
    "tfds": ["tensorflow-datasets>=4.9.7", "array_record>=0.5"],
    "gpu": ["jax[cuda12]>=0.10.2"],
}

setuptools.setup(
    name="jaxattn",
    version=_version(),
    description="Long-context attention variants (landmark, routing, LSG, SSMax, Titans) in JAX/Flax NNX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["jaxattn", "jaxattn.*", "pallas_kernels", "pallas_kernels.*"]),
    package_data={"jaxattn.data": ["corpora/*.xz", "corpora/SOURCE.md"]},
    install_requires=CORE,
    extras_require=EXTRAS,
)
