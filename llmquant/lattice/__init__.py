"""Lattices and nested-lattice (Voronoi) codes: closest points, codecs, multi-β quantizer,
deployable box codes and the codec protocol, β-set search, bit packing and rate accounting.
Importing defines names only."""

from .beta_sets import load_beta_set
from .box import BoxCodec, E8BoxCodec, load_box_setting
from .closest_point import closest_point, coarse_closest_int, generator_matrix
from .codec import LatticeCodec, VoronoiNibbleCodec, codec_from_dict
from .nested import NestedLatticeQuantizer, NestedQuantResult, load_shift, search_shift, voronoi_dither
from .packing import (
    mixed_radix_bits,
    pack_bits,
    pack_codes,
    pack_mixed_radix,
    pack_nested_stream,
    unpack_bits,
    unpack_codes,
    unpack_mixed_radix,
    unpack_nested_stream,
)
from .rate import nested_rate, stream_bits, stream_rate
from .voronoi import VoronoiCodec

__all__ = [
    "BoxCodec",
    "E8BoxCodec",
    "LatticeCodec",
    "NestedLatticeQuantizer",
    "NestedQuantResult",
    "VoronoiCodec",
    "VoronoiNibbleCodec",
    "closest_point",
    "coarse_closest_int",
    "codec_from_dict",
    "generator_matrix",
    "load_beta_set",
    "load_box_setting",
    "load_shift",
    "mixed_radix_bits",
    "nested_rate",
    "pack_bits",
    "pack_codes",
    "pack_mixed_radix",
    "pack_nested_stream",
    "search_shift",
    "stream_bits",
    "stream_rate",
    "unpack_bits",
    "unpack_codes",
    "unpack_mixed_radix",
    "unpack_nested_stream",
    "voronoi_dither",
]
