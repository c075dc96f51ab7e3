"""The stack kernels touch no reference count inside their loops.

numba increments and decrements an array's reference count where an inlined helper takes it,
and its pruning pass removes the pair only for some shapes of control flow: a helper with a
branch or a loop, called inside a branch, can leave two atomic calls per request in the hot
loop (LFU's classes paid 7-25 % and FSF's idle kernel 4-20 % for this until stop 30). Only the
first block of each compiled function (the call's own arguments) may hold them.
"""

import json
import os
import subprocess
import sys

_PROGRAM = """
import json, re
import numpy as np
from expertcache.locality import _stack
from expertcache.locality import _lfu_classes

ids = np.array([0, 1, 2, 1, 3, 0, 2, 4, 1, 0, 5, 2], np.int32)
tok = np.array([0, 2, 4, 6, 8, 10, 12], np.int64)
n = 6
runs = {
    "lru_hist": lambda h: _stack.lru_hist(ids, tok, n, h, False),
    "lru_front_hist": lambda h: _stack.lru_front_hist(ids, tok, n, h),
    "priority_hist": lambda h: [_stack.priority_hist(ids, tok, n, 3, 2, h, n, s) for s in (0, 1, 2)],
    "segment_hist": lambda h: _stack.segment_hist(ids, tok, n, 2, h, n),
    "lfu_class_hist": lambda h: _lfu_classes.lfu_class_hist(ids, tok, n, h, n),
    "fsf_hist": lambda h: _stack.fsf_hist(ids, tok, n, 2, h, 4),
}
found = {}
for name, run in runs.items():
    run(np.zeros(n + 2, np.int64))
    kernels = [_lfu_classes.lfu_class_hist, _lfu_classes._class_pass] if name == "lfu_class_hist" \
        else [getattr(_stack, name)]
    for ir in (ir for kernel in kernels for ir in kernel.inspect_llvm().values()):
        for body in re.split(r"\\ndefine ", ir)[1:]:
            blocks = re.split(r"\\n(?=[A-Za-z0-9_.\\-]+:)", body.split("\\n}")[0])
            first = 1 if blocks[0].split("{", 1)[-1].strip() else 2  # the entry block may be unlabelled
            late = [b.split(":")[0] for b in blocks[first:] if "call void @NRT_incref" in b]
            if late:
                found.setdefault(name, []).extend(late)
print(json.dumps(found))
"""


def test_no_reference_counting_past_a_kernels_first_block(tmp_path):
    # A fresh numba cache: compiled code loaded from a cache cannot be inspected.
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {}, f"reference counts inside kernels' loops: {found}"


def test_the_check_sees_a_reference_count_in_a_loop(tmp_path):
    """The same inspection on a helper known to leave its counts in the loop (the form that LFU's
    classes had): the check above is not blind."""
    program = _PROGRAM.split("runs = {")[0] + '''
import numba
from expertcache.locality._bits import _popcount

@numba.njit(inline="always")
def _tail(bits, i):
    shift = np.uint64((i & 63) + 1)
    total = 0
    if shift < 64:
        total += np.int64(_popcount(bits[i >> 6] >> shift))
    return total

@numba.njit
def loop(bits, where):
    s = 0
    for i in range(where.shape[0]):
        s += _tail(bits, where[i])
    return s

loop(np.ones(2, np.uint64), np.arange(5))
ir = list(loop.inspect_llvm().values())[0]
body = re.split(r"\\ndefine ", ir)[1]
blocks = re.split(r"\\n(?=[A-Za-z0-9_.\\-]+:)", body.split("\\n}")[0])
first = 1 if blocks[0].split("{", 1)[-1].strip() else 2
print(json.dumps(sum("call void @NRT_incref" in b for b in blocks[first:])))
'''
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) > 0
