"""Helpers more than one stage needs, owned by none: owner-only files, devices and dtypes, quantization."""
