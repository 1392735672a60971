"""Compile every fused kernel for an H100/H200 (sm_90) without a GPU: Triton's compiler runs on
the CPU, so type and lowering errors that Triton's interpreter lets pass show up here.
Run by tests/test_optim_fused.py in a process without TRITON_INTERPRET."""

from __future__ import annotations

import itertools
import re

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import amm.optim._triton as fused
from amm.optim import am_adamw_kernels as adamw_k
from amm.optim import am_sgd_kernels as sgd_k

TABLE = "*i64"  # pointer tables: int64 addresses
BLOCKS = dict(numels="*i64", block_tensor="*i32", block_start="*i64", hyper="*fp32")


def compile_kernel(
    fn, signature: dict[str, str], constexprs: dict[str, object], vectorised: bool = False
) -> str:
    """The kernel's PTX. `vectorised`: assert that its full blocks load 16 bytes at a time."""
    signature = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    consts = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    kernel = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=consts), target=GPUTarget("cuda", 90, 32)
    )
    ptx = kernel.asm["ptx"]
    if vectorised:
        assert re.search(r"ld\.global(\.\w+)*\.v4\.b32", ptx), f"{fn.__name__}: no 16-byte loads"
    return ptx


def main() -> None:
    adamw = dict(g_tab=TABLE, d_tab=TABLE, v_tab=TABLE, x_tab=TABLE, c_tab=TABLE, **BLOCKS)
    sgd = dict(g_tab=TABLE, d_tab=TABLE, x_tab=TABLE, **BLOCKS)
    sums, update = dict(partials="*fp32"), dict(weights="*fp32")
    for dtype, aligned in itertools.product((tl.float32, tl.bfloat16, tl.float16), (True, False)):
        block = dict(DTYPE=dtype, BLOCK=fused.BLOCK, ALIGNED=aligned)
        for decay in (0, 1):
            reduce = dict(**block, FLAGS=decay, NCOL=fused.NCOL)
            compile_kernel(sgd_k._am_sgd_sums_kernel, {**sgd, **sums}, reduce, aligned)
            compile_kernel(
                sgd_k._am_sgd_update_kernel, {**sgd, **update}, dict(**block, FLAGS=decay), aligned
            )
            # AM-AdamW's formulations: bit 1 the preconditioned lam metric, bit 2 the exact
            # correction per element (only with bit 1)
            for form in (0, 2, 6):
                flags = decay | form
                reduce = dict(**block, FLAGS=flags, NCOL=fused.NCOL)
                compile_kernel(adamw_k._am_adamw_sums_kernel, {**adamw, **sums}, reduce, aligned)
                compile_kernel(
                    adamw_k._am_adamw_update_kernel,
                    {**adamw, **update},
                    dict(**block, FLAGS=flags),
                    aligned,
                )
    compile_kernel(
        fused._segment_sum_kernel,
        dict(partials="*fp32", block_offsets="*i64", out="*fp32"),
        dict(NCOL=fused.NCOL, RBLOCK=fused.RBLOCK),
    )
    print("compiled all fused kernels for sm_90")


if __name__ == "__main__":
    main()
