"""``ntkit.scale``: kernel matrices past one machine's memory, as resumable tiles in a Zarr store
computed on a Dask cluster (issue 12, core).

    from ntkit.scale import compute_kernel, open_kernel
    compute_kernel(arch, x_train, store="K.zarr")          # a LocalCluster sized to the machine
    compute_kernel(arch, x_train, store="K.zarr", client="tcp://host:8786")   # resumes
    k = open_kernel("K.zarr")                              # k.nngp, k.ntk: dask arrays (n, n)

The tiles are those of the kernel engine (``ntkit.engine.plan_tiles``, one triangle for a
kernel of x1 against itself), each computed by ``ntkit.layers.kernel_tile.kernel_tile`` on a
Dask worker that reads its rows and columns of the inputs from the store, writes its chunk and
then records the chunk's SHA-256 (see ``ntkit.scale.store`` for the layout).

Solvers that stream the kernel (never held whole):

    from ntkit.scale import solve_kernel, predict_recomputed
    res = solve_kernel("K.zarr", Y, diag_reg=1e-3)        # PCG, Nyström preconditioner
    f = predict_recomputed(arch, x_test, x_train, res.alpha)   # K(test, train) α, streamed
"""
from .compute import RunReport, compute_kernel
from .operator import KernelOperator, RecomputedBands, StoreBands
from .precondition import NystromPreconditioner
from .predict import predict_recomputed, predict_stored
from .solve import CGResult, conjugate_gradient, solve_kernel
from .view import StoredKernel, open_kernel

__all__ = ["compute_kernel", "open_kernel", "StoredKernel", "RunReport", "KernelOperator",
           "StoreBands", "RecomputedBands", "NystromPreconditioner", "conjugate_gradient",
           "solve_kernel", "CGResult", "predict_stored", "predict_recomputed"]
