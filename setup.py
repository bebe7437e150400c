"""Builds the Cython fast path; everything else is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("mediaserver._fastpath", ["mediaserver/_fastpath.pyx"], extra_compile_args=["-O2"])],
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
    )
)
