# setuptools needs this shim to build the cffi module; metadata is in setup.cfg.
from setuptools import setup

setup(cffi_modules=["csrc/build_wire.py:ffibuilder"])
