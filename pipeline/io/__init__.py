"""The I/O modules: each library behind one module (rasterio, fsspec, zarr, vector files)."""
