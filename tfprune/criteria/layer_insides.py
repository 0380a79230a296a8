"""Tensors inside one layer call, tapped for the activation statistics: the heads of an attention layer.

A `MultiHeadAttention` is one layer, so the tensors the walk sees (its inputs and its output) hold no per-head
slice: the heads mix in the output projection. Its rule names the tensors that do (`inner_taps`, e.g. the input of
the output projection, (batch, positions, heads, head width)); while the layer is called, `tapping` makes each named
sub-layer pass that tensor through the walk's hook (so that "taylor" gets its gradient) and hands it out.

How: the sub-layer's `call` is shadowed by an instance attribute for the duration of the layer's call only, then
removed, so the layer's own `call` runs unchanged — masks, causal masking and fused kernels included — and the
model is left exactly as it was. This happens while the measuring function is traced; the compiled function
holds the taps.
"""

import contextlib


@contextlib.contextmanager
def tapping(inner_taps, recorded, hook, key, found):
    """Within the block, the sub-layers of `inner_taps` report their tensors.

    Args:
        inner_taps: the layer rule's `InnerTap`s for this layer (`()` taps nothing).
        recorded: `{side: element ids}` of the layer (`ChannelGraph.recorded`); taps of sides it lacks are skipped.
        hook: the walk's `hook(key, value)`; every tapped tensor passes through it and what it returns is used.
        key: a prefix unique to this layer call, for the hook's keys.
        found: a list; `(tensor, element ids, view)` is appended for every tapped tensor and side.

    Example:

    >>> import keras, numpy as np
    >>> from tfprune.graph.rules.attention import InnerTap
    >>> dense = keras.layers.Dense(2)
    >>> found = []
    >>> with tapping([InnerTap(dense, "output", "units")], {"units": np.arange(2)}, lambda k, v: v, "0", found):
    ...     y = dense(np.ones((1, 3), "float32"))
    >>> found[0][0] is y, "call" in vars(dense)
    (True, False)
    """
    by_sublayer = {}
    for i, tap in enumerate(inner_taps):
        if tap.side in recorded:
            by_sublayer.setdefault(id(tap.sublayer), (tap.sublayer, []))[1].append((i, tap))
    shadowed = []
    try:
        for sublayer, taps in by_sublayer.values():
            object.__setattr__(sublayer, "call", _tapped_call(sublayer.call, taps, recorded, hook, key, found))
            shadowed.append(sublayer)
        yield
    finally:
        for sublayer in shadowed:
            object.__delattr__(sublayer, "call")


def _tapped_call(call, taps, recorded, hook, key, found):
    def report(where, value):
        mine = [(i, tap) for i, tap in taps if tap.where == where]
        if mine:
            value = hook(f"{key}:{where}:{mine[0][0]}", value)
            found.extend((value, recorded[tap.side], tap.view) for _, tap in mine)
        return value

    def tapped(*args, **kwargs):
        return report("output", call(report("input", args[0]), *args[1:], **kwargs))

    return tapped
