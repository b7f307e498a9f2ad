"""Unpacking sub-byte values, ``npquant.unpack_bits``: bytes -> uint8 values of 1, 2, 4 bits.

``numba`` is the public call, as a user makes it: ``unpack_bits(data, bits, n)``. Its
validation (``strict=True``: the byte count and the padding bits of the last byte) is
O(1), so it is timed with the call; ``numba.kernel`` is the raw kernel writing into an
output allocated once outside the timed region (so it also leaves out the first-touch
page faults every other implementation pays). ``numpy`` is the NumPy twin through the
same public call (``backend="numpy"``: ``numpy.unpackbits``, then values reassembled).
For 1 bit the peer is ``numpy.unpackbits(data, count=n, bitorder=...)`` itself (order
``lsb`` is ``bitorder="little"``), whose output is compared with npquant's.

The data is ``pack_bits`` of uniform random values. Sizes are value counts, optionally
with an order: ``1e7`` (lsb, the default order) or ``1e7:msb``.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import Case, Impl, compare, parse_count

NAME = "unpack"
DEFAULT_SIZES = ["1e6", "1e7"]
BITS = (1, 2, 4)
ORDERS = ("lsb", "msb")


def parse_size(label: str) -> tuple[int, str]:
    n, order = parse_count(label, NAME, "1e7 or 1e7:msb", ORDERS)
    return n, order or "lsb"


def cases(ctx):
    from npquant._kernels import packing as kernels
    from npquant.compression.packing import pack_bits, unpack_bits

    rng = np.random.default_rng(ctx.seed)
    for label in ctx.sizes:
        n, order = parse_size(label)
        for bits in BITS:
            values = rng.integers(0, 1 << bits, n, dtype=np.uint8)
            data = pack_bits(values, bits, order=order)
            msb = order == "msb"
            out = np.empty(n, np.uint8)

            def public(data=data, bits=bits):
                return unpack_bits(data, bits, n, order=order)

            def kernel(data=data, bits=bits):
                kernels.unpack(data, bits, n, msb, out)
                return out

            def twin(data=data, bits=bits):
                return unpack_bits(data, bits, n, order=order, backend="numpy")

            impls = [
                Impl("numba", public, check=compare(public(), values)),
                Impl("numba.kernel", kernel, check=compare(kernel(), values)),
                Impl("numpy", twin, check=compare(twin(), values)),
            ]
            targets = {"numpy": 3.0}
            if bits == 1:
                bitorder = "big" if msb else "little"

                def peer(data=data):
                    return np.unpackbits(data, count=n, bitorder=bitorder)

                impls.append(Impl("numpy.unpackbits", peer, check=compare(peer(), values)))
                targets = {"numpy.unpackbits": 0.5}
            yield Case(
                NAME,
                f"{bits}-bit {order} n={n:,}",
                float(n),
                "Mvalues/s",
                impls,
                targets=targets,
                info={"bits": bits, "order": order, "packed_bytes": int(data.size)},
            )
