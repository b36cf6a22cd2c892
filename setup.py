"""The compiled kernel (``xdrop._kernel``); everything else is configured in ``pyproject.toml``.

The extension is optional: where no C compiler is found, or compiling fails, xdrop installs
without it and runs mask stream v1 on the frameworks' own operations (``xdrop.kernel``).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -O3: vectorise the element loops. -ffp-contract=off: no fused multiply-add may change a rounding.
# Never -ffast-math, which flushes subnormals to zero for the whole process.
# No -pthread or -ldl: the kernel's POSIX threads and dlopen (to find PyTorch's OpenMP runtime)
# come from the C library or from the interpreter, which links them (it loads extensions with
# dlopen); a compiler without threads builds a kernel that runs on one thread.
UNIX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-strict-aliasing"]
MSVC_FLAGS = ["/O2", "/fp:precise"]


class BuildExt(build_ext):
    def build_extensions(self) -> None:
        flags = MSVC_FLAGS if self.compiler.compiler_type == "msvc" else UNIX_FLAGS
        for extension in self.extensions:
            extension.extra_compile_args = [*flags, *extension.extra_compile_args]
        super().build_extensions()


setup(
    ext_modules=[Extension("xdrop._kernel", ["xdrop/_kernel.c"], optional=True)],
    cmdclass={"build_ext": BuildExt},
)
