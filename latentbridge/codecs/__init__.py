"""Codecs (paper 3.2, Fig. 2): adapters over compressai, the bitstream format, traditional anchors (A.2)."""
