"""Flax NNX modules: attention of any registered kind and the Transformer LM."""

from jaxattn.nn.attention import Attention, AttentionSpec
from jaxattn.nn.classifier import TransformerClassifier
from jaxattn.nn.layers import RMSNorm, SwiGLU
from jaxattn.nn.transformer import Block, TransformerConfig, TransformerLM

__all__ = ["Attention", "AttentionSpec", "Block", "RMSNorm", "SwiGLU", "TransformerClassifier",
           "TransformerConfig", "TransformerLM"]
