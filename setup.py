"""Build and install tfrec-kuai.

``pip install --no-build-isolation .`` (or ``-e .``) compiles ``cc/`` through CMake against the
TensorFlow installed in the *same* environment (no build isolation: the op must see the exact
TensorFlow it will be loaded into) and places the op library and the pybind11 module inside the
``tfrec_kuai`` package.
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, find_namespace_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def grpc_cpp_installed():
    """Whether gRPC C++ (Debian's libgrpc++-dev) is here, for the server's C++ gRPC transport (and
    the benchmarks' C++ load generator).

    Optional: without it the server runs on gRPC Python (``serving/native_grpc.py``).
    ``make install`` installs it where it can (``tools/install_system_packages.sh``).
    """
    return bool(shutil.which("pkg-config")) and subprocess.call(["pkg-config", "--exists", "grpc++"]) == 0


class CMakeExtension(Extension):
    """An extension whose file is produced by the CMake project, not by setuptools."""

    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Runs one CMake configure + build that produces every CMakeExtension of the package."""

    def run(self):
        outputs = {ext.name: os.path.abspath(self.get_ext_fullpath(ext.name)) for ext in self.extensions}
        build_dir = os.path.join(HERE, "build", "cmake")
        os.makedirs(build_dir, exist_ok=True)
        ops_output = outputs["tfrec_kuai._fwa_ops"]
        # The op library is loaded with tf.load_op_library, not imported: a plain .so name.
        ops_output = os.path.join(os.path.dirname(ops_output), "_fwa_ops.so")
        configure = [
            "cmake", "-S", HERE, "-B", build_dir,
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DTFREC_KUAI_OPS_OUTPUT={ops_output}",
            f"-DTFREC_KUAI_NATIVE_OUTPUT={outputs['tfrec_kuai._native']}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        # Always given, so a build directory configured with gRPC C++ forgets it once it is gone.
        configure.append(f"-DTFREC_KUAI_GRPC_TRANSPORT_OUTPUT={outputs.get('serving._grpc_transport', '')}")
        configure.append(f"-DTFREC_KUAI_GRPC_LOAD_OUTPUT={outputs.get('serving._grpc_load', '')}")
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", build_dir, "-j", str(os.cpu_count() or 2)])
        # setuptools expects a file at every extension path.
        if outputs["tfrec_kuai._fwa_ops"] != ops_output:
            self.copy_file(ops_output, outputs["tfrec_kuai._fwa_ops"])


setup(
    name="tfrec-kuai",
    version="0.1.0",
    description="Short-video recommender learning from implicit negative feedback (skips)",
    # Namespace packages too: the data folders (tfrec_kuai/configs, tfrec_kuai/data/kuairand_pure,
    # serving/configs) have no __init__.py, and a package list without them builds a wheel that
    # lacks the default configs and the KuaiRand-Pure tables (an editable install hides it).
    packages=find_namespace_packages(include=["tfrec_kuai", "tfrec_kuai.*", "beam_pipelines", "beam_pipelines.*",
                                              "serving", "serving.*"]),
    package_data={"tfrec_kuai.configs": ["*.json"], "tfrec_kuai.data.kuairand_pure": ["*.csv", "*.md"],
                  "serving.configs": ["*.config", "*.txt"]},
    include_package_data=True,
    ext_modules=[CMakeExtension("tfrec_kuai._fwa_ops"), CMakeExtension("tfrec_kuai._native")]
    + ([CMakeExtension("serving._grpc_transport"), CMakeExtension("serving._grpc_load")]
       if grpc_cpp_installed() else []),
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "tensorflow-recommenders",
        "tensorflow-serving-api==2.21.*",
        "apache-beam",
        "pybind11",
        "numpy",
        "matplotlib",
        "tqdm",
        "orjson",
    ],
    entry_points={"console_scripts": ["tfrec-kuai=tfrec_kuai.cli:main"]},
    zip_safe=False,
)
