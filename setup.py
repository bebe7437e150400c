"""Builds the Cython extensions; everything else is in pyproject.toml.

``mediaserver._fastpath`` is the routed media fast path; ``loadtest._wire`` is the load
client's packet engine. Both call libsrtp through pylibsrtp's function pointers, so
nothing beyond what pip installs is needed.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension("mediaserver._fastpath", ["mediaserver/_fastpath.pyx"], extra_compile_args=["-O2"]),
            Extension("loadtest._wire", ["loadtest/_wire.pyx"], extra_compile_args=["-O2"]),
        ],
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
    )
)
