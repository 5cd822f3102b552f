"""Classic BPF: the opcodes babelsip's two filters use, and handing a
program to the kernel (seccomp in host/privileges/seccomp.py, SO_REUSEPORT
steering in host/fleet/steering.py).

A program is a list of (code, jt, jf, k) tuples, as in <linux/filter.h>;
building one is pure, so each is tested by an interpreter without a kernel.
"""

from __future__ import annotations

import ctypes

# code = class | size | mode, or class | op | source (<linux/bpf_common.h>)
LD_W_ABS = 0x20      # A = 32-bit word at k (network byte order)
LD_B_ABS = 0x30      # A = byte at k
RSH_K = 0x74         # A >>= k
MUL_K = 0x24         # A *= k (32 bits)
MOD_K = 0x94         # A %= k
XOR_X = 0xAC         # A ^= X
TAX = 0x07           # X = A
JA = 0x05            # pc += k
JEQ_K = 0x15         # pc += (A == k) ? jt : jf
JSET_K = 0x45        # pc += (A & k) ? jt : jf
RET_K = 0x06         # return k
RET_A = 0x16         # return A
SKF_NET_OFF = -0x100000   # k for loads relative to the network (IP) header


class _Instruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):   # struct sock_fprog
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Instruction))]


class Program:
    """A program in C memory: `pointer()` for prctl, `option()` for
    setsockopt. It stays valid as long as this object lives."""

    def __init__(self, instructions: list[tuple[int, int, int, int]]):
        self._code = (_Instruction * len(instructions))(
            *[_Instruction(code, jt, jf, k & 0xFFFFFFFF) for code, jt, jf, k in instructions])
        self._program = _Program(len(instructions), self._code)

    def pointer(self):
        return ctypes.byref(self._program)

    def option(self) -> bytes:
        """The struct sock_fprog as setsockopt takes it (it points at our memory)."""
        return bytes(self._program)
