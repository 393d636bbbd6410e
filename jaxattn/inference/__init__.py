"""Stateful decoding: KV caches with chunked prefill (dense, SSMax, local, LSG), landmark
attention's retrieval decoder, Titans streams, one ``make_decoder`` for all, and sampling."""

from jaxattn.inference.factory import Decoder, decoder_kind, make_decoder
from jaxattn.inference.kv_decoder import KVCacheDecoder
from jaxattn.inference.landmark import LandmarkDecoder
from jaxattn.inference.landmark import RetrievalConfig
from jaxattn.inference.sampling import Sampler, check_sampling, sample_logits
from jaxattn.inference.titans import TitansStream

__all__ = ["Decoder", "KVCacheDecoder", "LandmarkDecoder", "RetrievalConfig", "Sampler",
           "TitansStream", "check_sampling", "decoder_kind", "make_decoder", "sample_logits"]
