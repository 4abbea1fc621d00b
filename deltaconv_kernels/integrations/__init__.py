"""Integrations with model libraries. `deltaconv_kernels.integrations.diffusers` (a package) needs `diffusers` only
when a model is used; it is not imported here so that the package imports without it."""
