"""Tomograms larger than memory: the pipelines' slab functions run on a Dask cluster.

``cluster`` opens the cluster (a LocalCluster of worker processes with a memory cap, or an
existing scheduler), ``stores`` the chunked volumes (HDF5 inputs, Zarr intermediates),
``tomo`` the stages (reconstruction, crack map and quantification, particles) slab by slab.
"""
