"""Band (row) parallelism: one image split across processes on torch.distributed (docs/DESIGN.md §9)."""
