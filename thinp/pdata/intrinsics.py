"""LLVM intrinsics for numba kernels, shared by pdata/ and thin/.

prefetch(arr, i)            hint the CPU to fetch ``arr``'s flat element ``i``
                            (C order) into cache (``llvm.prefetch``); it never
                            faults and returns nothing
memmove(arr, dst, src, n)   move ``n`` flat elements of C-contiguous ``arr``
                            from index ``src`` to ``dst``, overlap-safe
                            (``llvm.memmove``: the libc routine, vectorised),
                            with no bounds check: callers keep both ranges
                            inside the array
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, arr, idx):
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
        # read, high locality, data cache
        builder.call(fn, [builder.bitcast(builder.gep(a.data, [args[1]]), i8p), ir.Constant(i32, 0),
                          ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@intrinsic
def memmove(typingctx, arr, dst, src, n):
    if not isinstance(arr, types.Array) or arr.layout != "C" or not all(
            isinstance(t, types.Integer) for t in (dst, src, n)):
        return None

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        i64 = ir.IntType(64)
        d, s, cnt = (context.cast(builder, v, t, types.int64) for v, t in zip(args[1:], sig.args[1:]))
        itemsize = context.get_abi_sizeof(context.get_data_type(sig.args[0].dtype))
        cgutils.raw_memmove(builder, builder.gep(a.data, [d]), builder.gep(a.data, [s]), cnt,
                            ir.Constant(i64, itemsize), align=1)
        return context.get_dummy_value()

    return types.void(arr, dst, src, n), codegen
