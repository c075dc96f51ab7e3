"""LLVM vector operations emitted through numba intrinsics: Mattson's update eight keys at a
time, and which of 64 entries lie below a value (one compare).

The update of a stack of keys is a running minimum: each entry above the request keeps the
larger of its key and the minimum of the keys above it. The minimum is a loop-carried chain
one entry long in scalar code; here a block of 8 keys takes its own prefix minimum in three
shuffle-and-min steps, and only the block's minimum joins the chain (one scalar min per
block). numba does not vectorise a running minimum by itself, hence the intrinsic. On CPUs
without 512-bit vectors LLVM splits the same operations into narrower ones.

`below_mask` answers "the first entry below c from here" for LFU's use-count classes
(_lfu_classes): 64 small integers compared in one vector instruction (two or four 512-bit
registers), the answer a 64-bit mask.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I32 = ir.IntType(32)
_LANES = 8
_VECTOR = ir.VectorType(ir.IntType(64), _LANES)
_LARGEST = (1 << 63) - 1


def _lanes_of(builder, scalar, vector=_VECTOR):
    """The scalar in every lane."""
    one = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined), ir.Constant(ir.VectorType(_I32, vector.count), [0] * vector.count))


def _shuffle(builder, a, b, lanes):
    """Lane i takes lanes[i] of a ++ b (0-7: a, 8-15: b)."""
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, _LANES), lanes))


def _smaller(builder, a, b):
    return builder.select(builder.icmp_signed("<", a, b), a, b)


def _block_pointer(context, builder, array_type, array, start, vector=_VECTOR):
    """Pointer to the `vector` of entries from `start`, after checking they lie inside the array
    (IndexError otherwise: a mis-sized array must not be read or written past its end)."""
    view = context.make_array(array_type)(context, builder, value=array)
    length = builder.extract_value(view.shape, 0)
    outside = builder.or_(builder.icmp_signed("<", start, ir.Constant(start.type, 0)),
                          builder.icmp_signed(">", builder.add(start, ir.Constant(start.type, vector.count)), length))
    with cgutils.if_unlikely(builder, outside):
        context.call_conv.return_user_exc(builder, IndexError, (f"{vector.count} entries from start do not fit the array",))
    return builder.bitcast(builder.gep(view.data, [start]), vector.as_pointer())


@intrinsic
def mattson_block(typingctx, key, start, carry, n):
    """Update key[start:start + n] (n <= 8) by Mattson's rule: key[j] = max(key[j], min(carry,
    key[start:j])). Returns min(carry, key[start:start + n]), the running minimum after the
    block. Lanes from n on are read and written back unchanged, so key must hold start + 8
    entries (IndexError otherwise).
    """
    if not (isinstance(key, types.Array) and key.dtype == types.int64 and key.ndim == 1 and key.layout == "C"):
        return None
    signature = types.int64(key, types.int64, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        array, j0, chain, live_lanes = args
        pointer = _block_pointer(context, builder, sig.args[0], array, j0)
        keys = builder.load(pointer, align=8)
        largest = ir.Constant(_VECTOR, [_LARGEST] * _LANES)
        live = builder.icmp_signed("<", ir.Constant(_VECTOR, list(range(_LANES))), _lanes_of(builder, live_lanes))
        running = builder.select(live, keys, largest)  # dead lanes take no part in the minimum
        for step in (1, 2, 4):  # inclusive prefix minimum: lane i takes lane i - step's minimum
            shifted = _shuffle(builder, running, largest, [_LANES + i if i < step else i - step for i in range(_LANES)])
            running = _smaller(builder, running, shifted)
        block_min = builder.extract_element(running, ir.Constant(_I32, _LANES - 1))  # off the chain
        chain_lanes = _lanes_of(builder, chain)
        running = _smaller(builder, running, chain_lanes)
        above = _shuffle(builder, running, chain_lanes, [_LANES] + list(range(_LANES - 1)))  # exclusive
        kept = builder.select(builder.icmp_signed(">", keys, above), keys, above)
        builder.store(builder.select(live, kept, keys), pointer, align=8)
        return _smaller(builder, chain, block_min)

    return signature, codegen


@intrinsic
def below_mask(typingctx, values, start, c):
    """uint64 whose bit i says values[start + i] < c, for the 64 entries from start (a 1-D
    C-contiguous array of int16 or int32; c is taken as that type). values must hold start + 64
    entries (IndexError otherwise)."""
    if not (isinstance(values, types.Array) and values.dtype in (types.int16, types.int32)
            and values.ndim == 1 and values.layout == "C"):
        return None
    signature = types.uint64(values, types.int64, values.dtype)

    def codegen(context, builder, sig, args):
        array, j0, value = args
        vector = ir.VectorType(context.get_value_type(sig.args[0].dtype), 64)
        entries = builder.load(_block_pointer(context, builder, sig.args[0], array, j0, vector), align=2)
        return builder.bitcast(builder.icmp_signed("<", entries, _lanes_of(builder, value, vector)), ir.IntType(64))

    return signature, codegen
