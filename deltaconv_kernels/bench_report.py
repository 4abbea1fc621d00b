"""Old path of `python -m deltaconv_kernels.bench.report` (RESULTS.md's regeneration command), kept for one
release."""

from deltaconv_kernels.bench.report import main

if __name__ == "__main__":
    raise SystemExit(main())
