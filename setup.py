# cffi_modules cannot be declared in pyproject.toml; everything else lives there.
from setuptools import setup

setup(cffi_modules=["host/sip/_speedups_build.py:ffibuilder"])
