"""Triton lattice kernels (``llmquant.kernels``) and their dispatch; see kernels/README.md.

Modules: :mod:`.availability` (flags), :mod:`.dispatch` (``try_forward`` for ``LatticeLinear``),
:mod:`.bench` (``llmquant bench kernels``), and the Triton modules :mod:`.e8_triton` (device functions),
:mod:`.e8_dequant`, :mod:`.e8_decode_gemm` (W4A16), :mod:`.e8_encode` (activation encode),
:mod:`.e8_w4a4_gemm` (W4A4), :mod:`.hadamard` (online Hadamard); on the deployable box code :mod:`.box_w4a16`
(W4A16 GEMV + dequant), :mod:`.box_w4a16_rows` (W4A16 for 2..16 rows), :mod:`.box_encode` (activation encode)
and :mod:`.box_w4a4` (W4A4 int8 GEMM).  Importing this package imports
nothing else; the Triton modules are imported only by dispatch/bench/tests once Triton can run.
"""
