"""Deep Compression (Han, Mao and Dally, ICLR 2016) and sub-byte storage.

- :mod:`~npquant.compression.prune`: magnitude pruning, sparsity schedules, relative
  (gap) indexing of the surviving positions;
- :mod:`~npquant.compression.kmeans`: k-means weight sharing and centroid fine-tuning;
- :mod:`~npquant.compression.huffman`: canonical Huffman codes;
- :mod:`~npquant.compression.packing`: sub-byte integer packing;
- :mod:`~npquant.compression.pipeline`: the three-stage pipeline and its file format.
"""
