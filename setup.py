"""The one C extension, gateway._splice (gateway/_splice.c says why it is C); everything else
is in pyproject.toml. Optional: where no C compiler or Python headers are found the install
goes on without it, and streams stay on the Python relay (gateway.http.splice.AVAILABLE)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway._splice",
            sources=["gateway/_splice.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
