"""round_to="auto": the channel tile of a runtime's convolution kernels on this CPU.

Kept channel counts that are a multiple of the tile leave no partly used tile. XNNPack (LiteRT's CPU delegate) packs
output channels in tiles of 8 on ARM64 and 16 on x86 with FMA3 (AVX2) or AVX-512: measured on an AVX-512 CPU (AMD
EPYC, LiteRT 2.3.0), a 1×1 convolution's time is flat over each 16 output channels and steps at 17, 33, 49 and 65.
ONNX Runtime's NCHWc layout (x86) blocks channels by 8 with AVX2 and by 16 with AVX-512.
`benchmarks/results/channel_alignment.md` measured what rounding buys on LiteRT: latency ÷ MACs from 1.11–1.25 (no
rounding) to 1.04–1.05 (multiples of 16) on an AVX2 CPU.
"""

import numbers
import platform

RUNTIMES = ("litert", "onnxruntime")
_ARM = ("aarch64", "arm64", "armv8l", "armv8b")
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def channel_tile(runtime="litert", machine=None, flags=None) -> int:
    """The channel tile of `runtime` on a CPU of this architecture and these feature flags.

    Args:
        runtime: "litert" (XNNPack) or "onnxruntime".
        machine: the architecture as `platform.machine()` gives it (default: this machine's).
        flags: the CPU's feature flags, as in /proc/cpuinfo (default: this CPU's).

    Returns:
        8 or 16 as the module docstring says; 4 (one 128-bit vector of float32) where neither runtime tiles by
        more (ONNX Runtime off x86, or an x86 CPU without AVX2, or an unknown architecture).

    Example:

    >>> from tfprune.deployment.channel_tiles import channel_tile
    >>> channel_tile("litert", "aarch64", ""), channel_tile("litert", "x86_64", "sse4_2 avx2 fma")
    (8, 16)
    >>> channel_tile("litert", "x86_64", "avx2 fma avx512f"), channel_tile("onnxruntime", "x86_64", "avx2 fma")
    (16, 8)
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}; got {runtime!r}.")
    machine = (platform.machine() if machine is None else machine).lower()
    flags = set((cpu_flags() if flags is None else flags).lower().split())
    if machine in _ARM:
        return 8 if runtime == "litert" else 4
    if machine not in _X86:
        return 4
    if "avx512f" in flags:
        return 16
    if "fma" in flags or "avx2" in flags:
        return 16 if runtime == "litert" else 8
    return 8 if runtime == "litert" else 4


def cpu_flags() -> str:
    """This CPU's feature flags ("flags" on x86, "Features" on ARM in /proc/cpuinfo), or "" where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def resolve_round_to(round_to, runtime="litert") -> int:
    """`round_to` as an integer: itself (>= 1), or for "auto" the runtime's channel tile on this CPU.

    Example:

    >>> from tfprune.deployment.channel_tiles import channel_tile, resolve_round_to
    >>> resolve_round_to(4), resolve_round_to("auto") == channel_tile("litert")
    (4, True)
    """
    if round_to == "auto":
        return channel_tile(runtime)
    if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1 or 'auto' (the runtime's channel tile on this CPU); got "
                         f"{round_to!r}.")
    return int(round_to)
