"""Data-parallel training over MPI: several processes train one model.

    mpirun -n 4 minivit train ...          # or srun on a cluster

Every process (rank) builds the same global batch from the same seeds (seed, epoch,
batch), runs forward and backward on its rows of it, and the gradients are summed across
ranks with one Allreduce on the model's flat gradient buffer per step. Each rank's
loss gradient is weighted by its share of the batch (rows / batch), so the sum is the
gradient of the whole batch, exactly as one process would compute it (to rounding), also
when the batch does not split evenly. Every rank then takes the same optimizer step, so
the weights stay identical without being sent anywhere.

Without MPI (a plain `minivit train`), `world()` is a world of one process whose
collectives do nothing, so the training loop is the same code either way. mpi4py is only
imported when the process was started by an MPI launcher.
"""

import os
import sys

import numpy as np

from .backend import array_module, to_device, to_host

# set by MPI launchers (MPICH/Intel MPI, Open MPI, PMIx, MVAPICH) in every process they start
LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE",
                   "SLURM_NTASKS_PER_NODE")
INSTALL_HINT = "pip install -e .[mpi] (mpi4py and MPICH from the package index)"


class World:
    """The processes training one model: this one's rank, their number, and the few
    collectives training needs. World() alone is a world of one process."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        local = next((os.environ[v] for v in LOCAL_SIZE_VARS if os.environ.get(v, "").isdigit()), "1")
        self.local_size = max(1, min(int(local), self.size))

    @property
    def main(self):
        """Rank 0: the process that writes files, logs and shows progress."""
        return self.rank == 0

    def part(self, n):
        """This rank's rows of a batch of n: nearly equal, in rank order."""
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    def sum_gradients(self, flat):
        """Sum a flat gradient buffer over every rank, in place (one Allreduce). A GPU
        buffer goes through a host copy (CUDA-aware MPI or NCCL would avoid it)."""
        if self.size == 1:
            return
        from mpi4py import MPI
        host = flat if isinstance(flat, np.ndarray) else to_host(flat)
        self.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        if host is not flat:
            flat[...] = to_device(host, array_module(flat))

    def sum(self, values):
        """Sum a list of numbers over every rank."""
        if self.size == 1:
            return list(values)
        return list(self.comm.allreduce(np.asarray(values, dtype=np.float64)))

    def share(self, obj):
        """Rank 0's obj, on every rank (e.g. a run folder named from the clock)."""
        return obj if self.size == 1 else self.comm.bcast(obj, root=0)

    def any(self, flag):
        """True on every rank when the flag is true on any."""
        return bool(flag) if self.size == 1 else bool(self.comm.allreduce(bool(flag)))

    def gather(self, array):
        """Every rank's array, concatenated in rank order, on every rank."""
        if self.size == 1:
            return array
        return np.concatenate(self.comm.allgather(array))

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    def abort(self, message, code=1):
        """Stop every rank of the job: name this rank and the cause on stderr."""
        print(f"{message} (rank {self.rank} of {self.size}; stopping every rank)", file=sys.stderr,
              flush=True)
        if self.size > 1:
            self.comm.Abort(code)


_world = None


def launched_by_mpi():
    return any(os.environ.get(v) for v in LAUNCHER_VARS)


def world():
    """The World of this process: every rank of an MPI job when started by an MPI
    launcher, else a world of one."""
    global _world
    if _world is None:
        if launched_by_mpi():
            try:
                from mpi4py import MPI
            except ImportError as e:
                raise RuntimeError(f"started by an MPI launcher, but mpi4py cannot be imported "
                                   f"({e}): {INSTALL_HINT}") from None
            _world = World(MPI.COMM_WORLD)
        else:
            _world = World()
    return _world
