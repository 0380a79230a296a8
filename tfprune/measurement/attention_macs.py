"""MACs of the linear maps of attention: einsums (`EinsumDense`, `keras.ops.einsum`), matrix and tensor products
(`matmul` and `@`, `tensordot`, `dot`, `inner`, `outer`, `vdot`), dot-product attention, and the closed
`MultiHeadAttention` and `GroupQueryAttention` layers.

The convention is `count_macs`'s: the multiply-accumulates of products, whether an operand is a weight (a
projection) or an activation (QKᵀ and AV); softmax, scaling and masking count 0, and causal attention counts as
full (the masked half is computed, then discarded). All counts are for one example: the batch axis (the first axis
of every activation) is left out.
"""

import inspect
import math

import keras

_ELLIPSIS = "..."


class UnknownSizeError(ValueError):
    """A size a MAC count needs is unknown (None) on an axis other than the batch."""


class UnknownCostError(ValueError):
    """The MACs of an operation cannot be known from its shapes alone."""


def einsum_macs(equation, operands, batched):
    """MACs of one einsum: the product of the sizes of all its distinct indices, the batch index left out.

    A product of two operands costs one multiply-accumulate per combination of its indices; one operand alone (a
    transposition, a sum) costs 0. An ellipsis stands for the axes it covers, aligned from the right as in
    broadcasting.

    Args:
        equation: the einsum equation, e.g. "abc,cde->abde".
        operands: the shape of every operand, in order.
        batched: for every operand, whether it is an activation whose first axis is the batch.

    Returns:
        The MAC count for one example.

    Raises:
        UnknownSizeError: when an index other than the batch has an unknown size.
        UnknownCostError: for operands whose shapes disagree on an index, and for an einsum of more than two
            operands, whose cost depends on the order of its products.

    Example:

    >>> einsum_macs("abc,cde->abde", [(None, 4, 16), (16, 2, 8)], [True, False])  # 4 * 16 * 2 * 8
    1024
    """
    sizes, batch = _index_sizes(equation, operands, batched)
    if len(operands) == 1:
        return 0
    if len(operands) > 2:
        raise UnknownCostError(f"an einsum of {len(operands)} operands ('{equation}') has a cost that depends on the "
                               "order of its products; write it as einsums of two operands")
    return _known_product(sizes, exclude=batch, what=f"einsum '{equation}'")


def einsum_output_shape(equation, operands, batched):
    """The output shape of an einsum from its operands' shapes (None where unknown), the batch axis included.

    `EinsumDense` declares its output shape with None on axes its configuration leaves open (the sequence axis of
    a `MultiHeadAttention` projection), although its input fixes them; this recovers them.

    Example:

    >>> einsum_output_shape("abc,cde->abde", [(None, 4, 16), (16, 2, 8)], [True, False])
    (None, 4, 2, 8)
    """
    sizes, _ = _index_sizes(equation, operands, batched)
    output = _expanded(equation.replace(" ", "").partition("->")[2], _ellipsis_rank(equation, operands))
    return tuple(sizes.get(index) for index in output)


def matmul_macs(out_shape, left_shape):
    """MACs of `keras.ops.matmul(a, b)`: every output element but the batch's, times the contracted size.

    Example:

    >>> matmul_macs((None, 2, 4, 6), (None, 2, 4, 8))  # (2·4·6 outputs) · 8
    384
    """
    inner = left_shape[-1]
    if inner is None or any(d is None for d in out_shape[1:]):
        raise UnknownSizeError(f"a matmul of shapes {tuple(left_shape)} -> {tuple(out_shape)} has an unknown size")
    return math.prod(out_shape[1:]) * inner


def tensordot_macs(left, right, axes, batched):
    """MACs of `keras.ops.tensordot(a, b, axes)` for one example: every output element times the contracted size.

    The first axis of an operand that is an activation is its batch, counted as 1 (when both operands are
    activations, their batch axes are both in the output, and one example is one element of each).

    Args:
        left, right: the operands' shapes.
        axes: as `tensordot` takes it: a number n (the last n axes of `a` with the first n of `b`) or a pair of
            axis lists (or of single axes).
        batched: for each operand, whether it is an activation whose first axis is the batch.

    Returns:
        The MAC count for one example.

    Raises:
        UnknownSizeError: when a size other than a batch is unknown.

    Example:

    >>> tensordot_macs((None, 4, 8), (8, 3), 1, [True, False])  # 4·3 outputs, 8 each
    96
    """
    left, right = (_one_example(shape, b) for shape, b in zip((left, right), batched, strict=True))
    if isinstance(axes, int):
        pairs = (list(range(len(left) - axes, len(left))), list(range(axes)))
    else:
        pairs = tuple([a] if isinstance(a, int) else list(a) for a in axes)
    contracted_left = {a % len(left) for a in pairs[0]}
    contracted_right = {a % len(right) for a in pairs[1]}
    contracted = [left[a] for a in sorted(contracted_left)]
    free = ([d for i, d in enumerate(left) if i not in contracted_left]
            + [d for i, d in enumerate(right) if i not in contracted_right])
    if None in contracted or None in free:
        raise UnknownSizeError(f"a tensor product of shapes {tuple(left)} and {tuple(right)} has an unknown size")
    return math.prod(free) * math.prod(contracted)


def dot_macs(left, right, batched):
    """MACs of `keras.ops.dot(a, b)`: a sum over the last axis of `a` and the last (1-D `b`) or second-to-last
    axis of `b`; a product with a scalar is a scaling and counts 0.

    Example:

    >>> dot_macs((None, 4, 8), (8, 3), [True, False])
    96
    """
    if not left or not right:
        return 0
    return tensordot_macs(left, right, ([-1], [-1 if len(right) == 1 else -2]), batched)


def inner_macs(left, right, batched):
    """MACs of `keras.ops.inner(a, b)`: a sum over the last axes of both (0 with a scalar).

    Example:

    >>> inner_macs((None, 4, 8), (3, 8), [True, False])
    96
    """
    if not left or not right:
        return 0
    return tensordot_macs(left, right, ([-1], [-1]), batched)


def flat_product_macs(left, right, batched, outer):
    """MACs of `keras.ops.outer(a, b)` (every element of `a` times every element of `b`) or, with `outer=False`,
    of `keras.ops.vdot(a, b)` (a sum of the elementwise products of the flattened operands), for one example.

    Example:

    >>> flat_product_macs((None, 4), (None, 3), [True, True], outer=True), flat_product_macs(
    ...     (None, 4), (None, 4), [True, True], outer=False)
    (12, 4)
    """
    left, right = (_one_example(shape, b) for shape, b in zip((left, right), batched, strict=True))
    if None in left or None in right:
        raise UnknownSizeError(f"a product of shapes {tuple(left)} and {tuple(right)} has an unknown size")
    return math.prod(left) * math.prod(right) if outer else max(math.prod(left), math.prod(right))


def _one_example(shape, batched):
    shape = tuple(shape)
    return (1, *shape[1:]) if batched and shape else shape


def dot_product_attention_macs(query, key, value):
    """MACs of `keras.ops.dot_product_attention` on query (B, T, N, H), key (B, S, K, H), value (B, S, K, Hv):
    QKᵀ (N·T·S·H) plus AV (N·T·S·Hv), for the N query heads (K may divide N: grouped-query attention).

    A causal mask (`is_causal=True`), a `mask` or a `bias` changes nothing: causal attention counts as full
    attention, since the masked half of the scores is computed, then discarded (flash kernels that skip it save at
    most half of QKᵀ and AV); the scaling, softmax and masking count 0. KerasHub's decoder attention layers call
    this op, and are counted through it.

    Example:

    >>> dot_product_attention_macs((None, 4, 2, 8), (None, 6, 2, 8), (None, 6, 2, 8))  # 2·4·6·(8+8)
    768
    """
    positions, sources = (query[1:-1], key[1:2])
    if any(d is None for d in (*positions, *sources, query[-1], value[-1])):
        raise UnknownSizeError(f"dot-product attention of query {tuple(query)} on key {tuple(key)} has an unknown "
                               "size")
    return math.prod(positions) * sources[0] * (query[-1] + value[-1])


def attention_layer_macs(layer, arguments):
    """MACs of one call of a `MultiHeadAttention` or `GroupQueryAttention` layer, from its shapes alone.

    Per example, with query positions T_q, key/value positions T_k (the product of the attention axes for
    `MultiHeadAttention` with `attention_axes`), H query heads of key size Dk and value size Dv:
    each projection costs its positions times its kernel size (query T_q·E_q·H·Dk, key T_k·E_k·H_kv·Dk,
    value T_k·E_v·H_kv·Dv, output T_q·H·Dv·E_out, and `GroupQueryAttention`'s gate T_q·E_q·H·Dk), plus
    QKᵀ H·T_q·T_k·Dk and AV H·T_q·T_k·Dv. Masks (causal or given) change nothing.

    Args:
        layer: a built `keras.layers.MultiHeadAttention` (or subclass computing the same) or
            `keras.layers.GroupQueryAttention`.
        arguments: `{argument name: shape}` of the call's tensors ("query", "value", optionally "key").

    Returns:
        The MAC count of the call for one example.

    Example:

    >>> import keras
    >>> mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)
    >>> _ = mha(keras.ops.zeros((1, 4, 16)), keras.ops.zeros((1, 6, 16)))
    >>> attention_layer_macs(mha, {"query": (None, 4, 16), "value": (None, 6, 16)})  # 1024+1536+1536+1024+384+384
    5888
    """
    query, value = arguments["query"], arguments["value"]
    key = arguments.get("key") or value
    if isinstance(layer, keras.layers.GroupQueryAttention):
        heads, key_size, value_size, axes = layer.num_query_heads, layer.head_dim, layer.head_dim, (1,)
        projections = [(layer._query_dense, query), (layer._key_dense, key), (layer._value_dense, value)]
        if layer.use_gate:
            projections.append((layer._gate_dense, query))
    else:
        heads, key_size = layer._num_heads, layer._key_dim
        value_size = layer._value_dim or layer._key_dim
        axes = layer._attention_axes
        projections = [(layer._query_dense, query), (layer._key_dense, key), (layer._value_dense, value)]
    queried = einsum_output_shape(layer._query_dense.equation, [query, layer._query_dense.kernel.shape],
                                  [True, False])
    projections.append((layer._output_dense, (*queried[:-2], heads, value_size)))
    macs = sum(einsum_dense_macs(dense, shape) for dense, shape in projections)
    positions = query[1:-1]
    sources = [value[axis] for axis in axes]
    if any(d is None for d in (*positions, *sources)):
        raise UnknownSizeError(f"attention of query {tuple(query)} on value {tuple(value)} has an unknown size")
    return macs + math.prod(positions) * heads * math.prod(sources) * (key_size + value_size)


def einsum_dense_macs(layer, input_shape):
    """MACs of one call of an `EinsumDense` layer: `einsum_macs` of its equation on its input and kernel."""
    return einsum_macs(layer.equation, [input_shape, tuple(layer.kernel.shape)], [True, False])


def call_arguments(layer, args, kwargs):
    """`{argument name: value}` of one call of `layer.call`, defaults left out."""
    return inspect.signature(layer.call).bind_partial(*args, **kwargs).arguments


# ---- indices -----------------------------------------------------------------------------------------------


def _index_sizes(equation, operands, batched):
    """`({index: size or None}, {batch indices})` of an einsum, its ellipses expanded into indices of their own."""
    inputs = equation.replace(" ", "").partition("->")[0].split(",")
    if len(inputs) != len(operands):
        raise ValueError(f"einsum '{equation}' has {len(inputs)} operands, got {len(operands)} shapes")
    sizes, batch = {}, set()
    for letters, shape, is_batched in zip(inputs, operands, batched, strict=True):
        indices = _expanded(letters, len(shape) - len(letters.replace(_ELLIPSIS, "")))
        if is_batched and indices:
            batch.add(indices[0])
        for index, size in zip(indices, shape, strict=True):
            known = sizes.get(index)
            if known is None or known == 1:  # a size of 1 broadcasts against a larger one
                sizes[index] = known if size is None else size
            elif size not in (None, 1, known):
                raise UnknownCostError(f"einsum '{equation}' has operands of shapes "
                                       f"{', '.join(str(tuple(s)) for s in operands)}, which disagree on the size "
                                       f"of index {index}")
    return sizes, batch


def _ellipsis_rank(equation, operands):
    """How many axes the widest ellipsis of the inputs covers (the output's ellipsis covers as many)."""
    inputs = equation.replace(" ", "").partition("->")[0].split(",")
    return max((len(shape) - len(letters.replace(_ELLIPSIS, "")) for letters, shape in
                zip(inputs, operands, strict=True) if _ELLIPSIS in letters), default=0)


def _expanded(letters, ellipsis_rank):
    """The indices of one operand's subscripts, its ellipsis replaced by indices named by their distance from the
    right (so that broadcast axes of different operands share an index)."""
    before, found, after = letters.partition(_ELLIPSIS)
    if not found:
        return list(letters)
    return [*before, *(f"...{i}" for i in range(ellipsis_rank - 1, -1, -1)), *after]


def _known_product(sizes, exclude, what):
    unknown = sorted(i for i, s in sizes.items() if s is None and i not in exclude)
    if unknown:
        raise UnknownSizeError(f"{what} has an unknown size on index {', '.join(unknown)} (not the batch)")
    return int(math.prod(s for i, s in sizes.items() if i not in exclude))
