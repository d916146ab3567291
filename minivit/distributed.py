"""Data-parallel training over MPI: several processes train one model.

    mpirun -n 4 minivit train ...          # or srun on a cluster

Every process (rank) builds the same global batch from the same seeds (seed, epoch,
batch), runs forward and backward on its rows of it, and the gradients are summed across
ranks with one Allreduce on the model's flat gradient buffer per step. Each rank's
loss gradient is weighted by its share of the batch (rows / batch), so the sum is the
gradient of the whole batch, exactly as one process would compute it (to rounding), also
when the batch does not split evenly. Every rank then takes the same optimizer step, so
the weights stay identical without being sent anywhere.

On GPUs each rank uses its machine's GPU number (local rank mod GPUs): the local rank is
its place among the ranks that share its machine. The gradient's Allreduce takes the
device buffer itself when the MPI library is CUDA-aware (MPIX_Query_cuda_support, in Open
MPI and MPICH; MINIVIT_CUDA_AWARE_MPI=1 or 0 overrides), else it goes through a pinned
host buffer made once (the fastest host copy CUDA has). Either way the step waits for the
device once, before MPI reads the buffer: MPI works on the host's schedule.

Without MPI (a plain `minivit train`), `world()` is a world of one process whose
collectives do nothing, so the training loop is the same code either way. mpi4py is only
imported when the process was started by an MPI launcher.
"""

import os
import sys
import time

import numpy as np

from .engine.backend import array_module
from .errors import BadValue, MissingPackage

# set by MPI launchers (MPICH/Intel MPI, Open MPI, PMIx, MVAPICH) in every process they start
LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
INSTALL_HINT = "pip install -e .[mpi] (mpi4py and MPICH from the package index)"


class World:
    """The processes training one model: this one's rank, their number, and the few
    collectives training needs. World() alone is a world of one process."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.local_rank, self.local_size = 0, 1     # among the ranks on this machine
        if comm is not None and self.size > 1:
            from mpi4py import MPI
            machine = comm.Split_type(MPI.COMM_TYPE_SHARED)    # a collective: every rank
            self.local_rank, self.local_size = machine.Get_rank(), machine.Get_size()
            machine.Free()
        self._host = None                           # the pinned host copy of the gradient
        self._cuda_aware = None

    @property
    def main(self):
        """Rank 0: the process that writes files, logs and shows progress."""
        return self.rank == 0

    def part(self, n):
        """This rank's rows of a batch of n: nearly equal, in rank order."""
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    def use_local_gpu(self, xp):
        """On CuPy, make this rank's GPU current: local rank mod the machine's GPUs, so
        the ranks on one machine spread over its GPUs. Call before any device array."""
        if xp is np or self.size == 1:
            return
        count = xp.cuda.runtime.getDeviceCount()
        xp.cuda.Device(self.local_rank % count).use()

    @property
    def cuda_aware(self):
        """True when MPI takes device buffers (asked once)."""
        if self._cuda_aware is None:
            self._cuda_aware = cuda_aware_mpi()
        return self._cuda_aware

    def sum_gradients(self, flat):
        """Sum a flat gradient buffer over every rank, in place (one Allreduce): a GPU
        buffer itself with CUDA-aware MPI, else through a pinned host buffer."""
        if self.size == 1:
            return
        from mpi4py import MPI
        if isinstance(flat, np.ndarray):
            self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            return
        xp = array_module(flat)
        if self.cuda_aware:
            xp.cuda.get_current_stream().synchronize()    # MPI reads what the kernels wrote
            self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            return
        if self._host is None or self._host.shape != flat.shape or self._host.dtype != flat.dtype:
            memory = xp.cuda.alloc_pinned_memory(flat.nbytes)
            self._host = np.frombuffer(memory, flat.dtype, flat.size).reshape(flat.shape)
        flat.get(out=self._host)                          # device -> pinned host (waits)
        self.comm.Allreduce(MPI.IN_PLACE, self._host, op=MPI.SUM)
        flat.set(self._host)                              # pinned host -> device

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

    def abort(self, message, code=1, details=""):
        """Stop every rank of the job: name this rank and the cause on stderr (first, then
        the details, e.g. a traceback), and give the launcher a moment to pass them on: an
        MPI abort can cut off the output it has not forwarded yet."""
        print(f"{message} (rank {self.rank} of {self.size}; stopping every rank)", file=sys.stderr,
              flush=True)
        if details:
            print(details, file=sys.stderr, end="", flush=True)
        if self.size > 1:
            time.sleep(0.5)
            self.comm.Abort(code)


_world = None


def cuda_aware_mpi():
    """Whether the MPI library mpi4py runs on takes CUDA device buffers:
    MINIVIT_CUDA_AWARE_MPI=1 / 0 when set, else the library's MPIX_Query_cuda_support()
    (Open MPI and MPICH have it; a library without it counts as not CUDA-aware)."""
    setting = os.environ.get("MINIVIT_CUDA_AWARE_MPI", "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    if setting:
        raise BadValue(f"MINIVIT_CUDA_AWARE_MPI={setting!r}: set it to 1 (the MPI library "
                         f"takes GPU buffers) or 0 (it does not), or unset it to ask the library")
    import ctypes
    from mpi4py import MPI
    try:
        query = ctypes.CDLL(MPI.__file__).MPIX_Query_cuda_support
    except (OSError, AttributeError):
        return False
    query.restype = ctypes.c_int
    return query() == 1


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
                raise MissingPackage(f"started by an MPI launcher, but mpi4py cannot be imported "
                                   f"({e}): {INSTALL_HINT}") from None
            _world = World(MPI.COMM_WORLD)
        else:
            _world = World()
    return _world
