"""Integrations with model libraries. `deltaconv_kernels.integrations.diffusers` needs `diffusers`; it is not
imported here so that the package imports without it."""
