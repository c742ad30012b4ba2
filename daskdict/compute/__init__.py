"""Where the work runs: Dask runtimes, local and HPC clusters."""

from daskdict.compute.clusters import cluster
from daskdict.compute.runtime import Runtime, local_cluster, n_cores, runtime

__all__ = ["Runtime", "cluster", "local_cluster", "n_cores", "runtime"]
