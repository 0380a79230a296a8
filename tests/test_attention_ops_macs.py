"""count_macs on attention written with keras.ops: `dot_product_attention` (multi-head, grouped-query, cross,
causal) in a Functional model and inside a hand-written custom layer with EinsumDense and Dense projections, and the
other products of two activations (`@`, tensordot, dot, outer, vdot), each checked against a formula by
hand."""

import keras
import numpy as np
import pytest

import tfprune
from tfprune.measurement.counting import layer_macs

L = keras.layers
ops = keras.ops


def dot_product_attention_by_hand(t, s, heads, dk, dv):
    """QKᵀ and AV of `heads` query heads: every query position against every key position, per head slot."""
    return heads * t * s * dk + heads * t * s * dv


@pytest.mark.parametrize(("t", "s", "heads", "kv_heads"), [(5, 5, 4, 4), (3, 7, 4, 4), (5, 5, 4, 2), (5, 5, 4, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_dot_product_attention_of_a_functional_model_counts_qk_and_av(t, s, heads, kv_heads, causal):
    """Multi-head, cross (t != s) and grouped-query (kv_heads < heads) attention; a causal mask changes nothing."""
    q, k, v = keras.Input((t, heads, 8)), keras.Input((s, kv_heads, 8)), keras.Input((s, kv_heads, 8))
    model = keras.Model([q, k, v], ops.dot_product_attention(q, k, v, is_causal=causal and t == s))
    assert tfprune.count_macs(model) == dot_product_attention_by_hand(t, s, heads, 8, 8)


class HandWrittenAttention(keras.layers.Layer):
    """Multi-head attention by hand: EinsumDense projections to (positions, heads, head width), the fused product,
    a Dense output projection of the heads flattened."""

    def __init__(self, heads, head_width, kv_heads=None, causal=False, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.head_width, self.causal = heads, head_width, causal
        kv_heads = kv_heads or heads
        self.query = L.EinsumDense("btd,dhk->bthk", (None, heads, head_width), name="query")
        self.key = L.EinsumDense("bsd,dhk->bshk", (None, kv_heads, head_width), name="key")
        self.value = L.EinsumDense("bsd,dhk->bshk", (None, kv_heads, head_width), name="value")
        self.output_dense = L.Dense(16, name="output")

    def call(self, x, context):
        attended = ops.dot_product_attention(self.query(x), self.key(context), self.value(context),
                                             is_causal=self.causal)
        return self.output_dense(ops.reshape(attended, (-1, x.shape[1], self.heads * self.head_width)))


@pytest.mark.parametrize(("kv_heads", "causal", "cross"), [(None, False, False), (None, True, False),
                                                           (2, False, False), (None, False, True)])
def test_dot_product_attention_inside_a_traced_custom_layer_counts_projections_and_products(kv_heads, causal, cross):
    t, s, width, heads, head_width = 6, (9 if cross else 6), 16, 4, 8
    x = keras.Input((t, width), name="x")
    context = keras.Input((s, width), name="context") if cross else x
    layer = HandWrittenAttention(heads, head_width, kv_heads=kv_heads, causal=causal, name="attention")
    model = keras.Model([x, context] if cross else x, layer(x, context))
    kv = kv_heads or heads
    projections = t * width * heads * head_width + 2 * s * width * kv * head_width + t * heads * head_width * 16
    assert tfprune.count_macs(model) == projections + dot_product_attention_by_hand(t, s, heads, head_width,
                                                                                     head_width)
    per_layer = layer_macs(model)
    assert per_layer["attention/query"] == t * width * heads * head_width  # counted inside the trace
    assert sum(macs for path, macs in per_layer.items() if "dot_product_attention" in path) == \
        dot_product_attention_by_hand(t, s, heads, head_width, head_width)


def test_a_traced_hand_written_attention_still_prunes_around_it():
    """The count does not change what prunes: the layer opens, its projections to heads stay closed (two channel
    axes), and the Dense before it prunes."""
    inputs = keras.Input((6, 12))
    x = L.Dense(32, activation="relu", name="hidden")(inputs)
    x = L.Dense(16, name="embed")(x)
    model = keras.Model(inputs, HandWrittenAttention(2, 8, name="attention")(x, x))
    slim = tfprune.prune(model, 0.5)
    assert slim.get_layer("hidden").units == 16
    x = np.random.default_rng(0).normal(size=(2, 6, 12)).astype("float32")
    assert slim(x).shape == (2, 6, 16) and np.isfinite(np.asarray(slim(x))).all()


class Product(keras.layers.Layer):
    """Scores of 5 positions against 5, computed with one of the keras.ops products of two activations."""

    def __init__(self, kind, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind
        self.q, self.k = L.Dense(6, use_bias=False, name="q"), L.Dense(6, use_bias=False, name="k")

    def call(self, x):
        q, k = self.q(x), self.k(x)  # (batch, 5, 6) each
        if self.kind == "@":
            return q @ ops.transpose(k, (0, 2, 1))
        if self.kind == "tensordot":  # every position of every example against every one of every example
            return ops.tensordot(q, k, axes=[[2], [2]])
        if self.kind == "dot":
            return ops.dot(q, ops.transpose(k, (0, 2, 1)))
        if self.kind == "inner":
            return ops.inner(q, k)
        if self.kind == "outer":
            return ops.outer(q, k)
        return ops.vdot(q, k)


@pytest.mark.parametrize(("kind", "expected"), [
    ("@", 5 * 5 * 6),
    ("tensordot", 5 * 5 * 6),  # with one example: (1, 5) x (1, 5) outputs, 6 each
    ("dot", 5 * 5 * 6),
    ("outer", 5 * 6 * 5 * 6),  # every element of q times every element of k, for one example
    ("vdot", 5 * 6),
])
def test_products_of_two_activations_count_by_their_shapes(kind, expected):
    inputs = keras.Input((5, 12))
    model = keras.Model(inputs, Product(kind, name="product")(inputs))
    assert tfprune.count_macs(model) == 2 * 5 * 12 * 6 + expected


def test_an_elementwise_product_and_sum_counts_nothing():
    """The convention: a contraction written as `ops.sum(a * b)` is elementwise work and counts 0 (the docstring
    of count_macs says to write it as a product)."""

    class MultiplySum(keras.layers.Layer):
        def call(self, x):
            return ops.sum(x[:, :, None, :] * x[:, None, :, :], axis=-1)

    inputs = keras.Input((5, 6))
    model = keras.Model(inputs, MultiplySum(name="pairwise")(L.Dense(6, name="proj")(inputs)))
    assert tfprune.count_macs(model) == 5 * 6 * 6
