"""Build step: generate untaken's gRPC stubs from the repository's proto/ with grpcio-tools.

Nothing generated is checked in. The contract is compiled into
``untaken_litellm/_pb/untaken/v1/`` inside the build tree, so the stubs ship in
the wheel under the package's own namespace and never clash with another copy
of ``untaken.v1``. The proto directory is ``../../proto`` (this package lives at
``integrations/litellm/`` in the untaken repository), or ``$UNTAKEN_PROTO_DIR``.
"""
import os
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = ["untaken/v1/mirror.proto"]
STUB_PACKAGE = "untaken_litellm/_pb"


def proto_dir():
    path = os.environ.get("UNTAKEN_PROTO_DIR") or os.path.join(HERE, "..", "..", "proto")
    if not os.path.isfile(os.path.join(path, PROTOS[0])):
        raise SystemExit(
            f"untaken-litellm: {PROTOS[0]} not found under {os.path.abspath(path)}; build from the untaken "
            "repository checkout or set UNTAKEN_PROTO_DIR to its proto/ directory"
        )
    return path


def generate(out_root):
    """Compiles PROTOS into out_root/STUB_PACKAGE with imports rooted at the package."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as staging:
        # Staging the files under the package path makes protoc emit imports like
        # `from untaken_litellm._pb.untaken.v1 import mirror_pb2`.
        for rel in PROTOS:
            dest = os.path.join(staging, STUB_PACKAGE, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(os.path.join(proto_dir(), rel), dest)
        args = ["grpc_tools.protoc", f"-I{staging}", f"--python_out={out_root}", f"--grpc_python_out={out_root}"]
        args += [os.path.join(STUB_PACKAGE, rel) for rel in PROTOS]
        if protoc.main(args) != 0:
            raise SystemExit(f"untaken-litellm: protoc failed on {PROTOS}")
    pkg = os.path.join(out_root, STUB_PACKAGE)
    for dirpath, _, files in os.walk(pkg):
        if "__init__.py" not in files:
            open(os.path.join(dirpath, "__init__.py"), "w").close()


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        generate(self.build_lib)


setup(cmdclass={"build_py": BuildWithStubs})
