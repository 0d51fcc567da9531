"""The `tvm` tier: the pinned TVM imports, builds a Relax function and serialises IR.

TVM's JSON serialisation segfaults with apache-tvm-ffi newer than 0.1.14.post0 (and tuning needs
it), so this runs in a subprocess: a broken pin fails the test instead of killing the suite.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.tvm

HAVE_TVM = importlib.util.find_spec("tvm") is not None

PROGRAM = textwrap.dedent(
    """
    import numpy as np
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(x))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    text = tvm.ir.save_json(mod)
    assert tvm.ir.load_json(text) is not None
    exe = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(exe, tvm.cpu())
    data = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    got = vm["main"](tvm.runtime.tensor(data)).numpy()
    np.testing.assert_array_equal(got, np.maximum(data, 0))
    print("ok")
    """
)


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm is not installed (make test installs the tvm extra)")
def test_pinned_tvm_builds_runs_and_serialises() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip().endswith("ok")
