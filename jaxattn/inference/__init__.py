"""Inference beyond a single forward pass: landmark attention's retrieval decoder."""

from jaxattn.inference.landmark import LandmarkDecoder
from jaxattn.inference.landmark import RetrievalConfig

__all__ = ["LandmarkDecoder", "RetrievalConfig"]
