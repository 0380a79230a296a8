"""count_macs on attention: EinsumDense, MultiHeadAttention, GroupQueryAttention, attention written with keras.ops,
and KerasHub's ViT, BERT, Gemma and Llama, each checked against a formula by hand."""

import math
import warnings

import keras
import keras_hub
import numpy as np
import pytest

import tfprune
from tfprune.measurement.attention_macs import attention_layer_macs
from tfprune.measurement.counting import layer_macs

L = keras.layers
ops = keras.ops


def attention_macs(tq, tk, eq, ek, ev, heads, dk, dv, e_out, kv_heads=None):
    """Multi-head attention by hand, per example: the four projections, QKᵀ and AV."""
    kv_heads = kv_heads or heads
    projections = tq * eq * heads * dk + tk * ek * kv_heads * dk + tk * ev * kv_heads * dv + tq * heads * dv * e_out
    return projections + heads * tq * tk * dk + heads * tq * tk * dv


# ---- EinsumDense -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("equation", "input_shape", "output_shape", "expected"), [
    ("ab,bc->ac", (6,), 4, 6 * 4),
    ("abc,cd->abd", (5, 6), (None, 4), 5 * 6 * 4),
    ("abc,cde->abde", (5, 6), (None, 2, 3), 5 * 6 * 2 * 3),  # a MultiHeadAttention query projection
    ("abcd,cde->abe", (5, 2, 3), (None, 7), 5 * 2 * 3 * 7),  # its output projection
    ("...b,bc->...c", (3, 5, 6), 4, 3 * 5 * 6 * 4),
    ("abc,cb->ab", (5, 6), 5, 5 * 6),  # one weight per position: no sum over the output
])
def test_einsum_dense_counts_the_product_of_its_index_sizes(equation, input_shape, output_shape, expected):
    inputs = keras.Input(input_shape)
    layer = L.EinsumDense(equation, output_shape, name="proj")
    model = keras.Model(inputs, layer(inputs))
    assert tfprune.count_macs(model) == expected
    # The same from the layer's kernel and real output: every output element sums over the kernel axes it lacks.
    output = layer(np.zeros((1, *input_shape), "float32"))
    kernel_letters = equation.split(",")[1].split("-")[0]
    contracted = math.prod(d for c, d in zip(kernel_letters, layer.kernel.shape, strict=True)
                           if c not in equation.split("->")[1])
    assert expected == math.prod(output.shape[1:]) * contracted


# ---- MultiHeadAttention and GroupQueryAttention ------------------------------------------------------------


@pytest.mark.parametrize("value_dim", [
    8,
    # Keras's JAX backend cannot run MultiHeadAttention with value_dim != key_dim (a reshape fails).
    pytest.param(5, marks=pytest.mark.tensorflow_only),
])
def test_cross_attention_counts_projections_and_both_products(value_dim):
    query, key, value = keras.Input((4, 16)), keras.Input((6, 10)), keras.Input((6, 12))
    mha = L.MultiHeadAttention(num_heads=2, key_dim=8, value_dim=value_dim, output_shape=7, name="mha")
    model = keras.Model([query, key, value], mha(query, value, key=key))
    expected = attention_macs(tq=4, tk=6, eq=16, ek=10, ev=12, heads=2, dk=8, dv=value_dim, e_out=7)
    assert tfprune.count_macs(model) == expected
    assert attention_layer_macs(mha, {"query": (None, 4, 16), "value": (None, 6, 12), "key": (None, 6, 10)}) \
        == expected


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_counts_as_full_even_when_causal(causal):
    inputs = keras.Input((5, 16))
    mha = L.MultiHeadAttention(num_heads=4, key_dim=6, name="mha")
    model = keras.Model(inputs, mha(inputs, inputs, use_causal_mask=causal))
    expected = attention_macs(tq=5, tk=5, eq=16, ek=16, ev=16, heads=4, dk=6, dv=6, e_out=16)
    assert tfprune.count_macs(model) == expected
    assert attention_layer_macs(mha, {"query": (None, 5, 16), "value": (None, 5, 16)}) == expected


def test_attention_over_some_axes_counts_the_others_as_positions():
    query, value = keras.Input((3, 4, 8)), keras.Input((3, 6, 8))
    mha = L.MultiHeadAttention(num_heads=2, key_dim=5, attention_axes=(2,), name="mha")
    model = keras.Model([query, value], mha(query, value))
    # 3 independent rows: attention of 4 query positions on 6 key positions in each.
    assert tfprune.count_macs(model) == 3 * attention_macs(tq=4, tk=6, eq=8, ek=8, ev=8, heads=2, dk=5, dv=5, e_out=8)


@pytest.mark.parametrize("cross", [False, True])
def test_grouped_query_attention_counts_key_value_heads_once_and_products_per_query_head(cross):
    query = keras.Input((4, 16))
    value = keras.Input((6, 16)) if cross else query
    gqa = L.GroupQueryAttention(head_dim=8, num_query_heads=4, num_key_value_heads=2, name="gqa")
    model = keras.Model([query, value] if cross else query, gqa(query, value))
    tk = 6 if cross else 4
    assert tfprune.count_macs(model) == attention_macs(tq=4, tk=tk, eq=16, ek=16, ev=16, heads=4, dk=8, dv=8,
                                                       e_out=16, kv_heads=2)


def test_unknown_sequence_length_names_the_attention_layer():
    inputs = keras.Input((None, 16))
    model = keras.Model(inputs, L.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")(inputs, inputs))
    with pytest.raises(ValueError, match="'mha.*unknown size.*fixed input size"):
        tfprune.count_macs(model)


# ---- attention written with keras.ops ----------------------------------------------------------------------


class OpsAttention(keras.layers.Layer):
    """Single-head attention by hand: QKᵀ and AV with einsum, matmul or dot_product_attention."""

    def __init__(self, width, product, **kwargs):
        super().__init__(**kwargs)
        self.product = product
        self.q, self.k, self.v = (L.Dense(width, use_bias=False, name=n) for n in "qkv")

    def call(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.product == "dot_product_attention":
            return ops.squeeze(ops.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None]), 2)
        if self.product == "einsum":
            weights = ops.softmax(ops.einsum("btd,bsd->bts", q, k) / 2.0)
            return ops.einsum("bts,bsd->btd", weights, v)
        weights = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 2, 1))) / 2.0)
        return ops.matmul(weights, v)


@pytest.mark.parametrize("product", ["einsum", "matmul", "dot_product_attention"])
def test_products_of_two_activations_count(product):
    inputs = keras.Input((5, 12))
    model = keras.Model(inputs, OpsAttention(6, product, name="attention")(inputs))
    assert tfprune.count_macs(model) == 3 * 5 * 12 * 6 + 5 * 5 * 6 + 5 * 5 * 6


def test_einsum_broadcasts_over_an_ellipsis():
    class Pairwise(keras.layers.Layer):
        def call(self, x):
            return ops.einsum("...ij,...kj->...ik", x, x * 2.0)

    inputs = keras.Input((3, 4, 5))
    model = keras.Model(inputs, Pairwise(name="pairwise")(inputs))
    assert tfprune.count_macs(model) == 3 * 4 * 4 * 5


class Trilinear(keras.layers.Layer):
    """An einsum of three operands, whose cost depends on the order of its products."""

    def build(self, input_shape):
        self.a = self.add_weight(shape=(input_shape[-1], 4), name="a")
        self.b = self.add_weight(shape=(4, 3), name="b")

    def call(self, x):
        return ops.einsum("bi,ij,jk->bk", x, self.a, self.b)


def test_an_unknown_layer_blocks_counting_but_not_pruning():
    inputs = keras.Input((6,))
    x = L.Dense(8, activation="relu", name="hidden")(inputs)
    x = L.Dense(5, name="fc")(x)
    model = keras.Model(inputs, Trilinear(name="tri")(x))
    with pytest.raises(tfprune.UnknownMACsError, match="layer 'tri/.*3 operands.*lower_bound"):
        tfprune.count_macs(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tfprune.count_macs(model, unknown_macs="lower_bound") == 6 * 8 + 8 * 5
    assert len(caught) == 1 and "'tri/" in str(caught[0].message)
    slim = tfprune.prune(model, 0.5)
    assert slim.get_layer("hidden").units == 4


# ---- KerasHub ----------------------------------------------------------------------------------------------


def transformer_block_macs(tokens, hidden, heads, mlp, kv_heads=None, mlp_layers=2):
    """One transformer block by hand: attention (head size hidden/heads) and an MLP of `mlp_layers` matrices."""
    size = hidden // heads
    attention = attention_macs(tokens, tokens, hidden, hidden, hidden, heads, size, size, hidden, kv_heads)
    return attention + mlp_layers * tokens * hidden * mlp


def test_keras_hub_vit_counts_its_patch_convolution_class_token_and_blocks():
    model = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2,
                                         hidden_dim=16, mlp_dim=32)
    patches = (32 // 8) ** 2
    assert tfprune.count_macs(model) == patches * 8 * 8 * 3 * 16 + 2 * transformer_block_macs(patches + 1, 16, 2, 32)
    # The class token (a weight concatenated) and the position embedding (added) count 0: the layer is its conv.
    assert layer_macs(model)["vit_patching_and_embedding"] == patches * 8 * 8 * 3 * 16


def sequence_model(model, length):
    """`model` called on token inputs of a fixed length (KerasHub's backbones take any length)."""
    inputs = {t.name: keras.Input((length,), dtype=t.dtype, name=t.name) for t in model.inputs}
    return keras.Model(inputs, model(inputs))


def test_keras_hub_bert_counts_its_blocks_and_pooler():
    backbone = keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32,
                                             intermediate_dim=64, max_sequence_length=16)
    # Token, position and segment embeddings are lookups (0); the pooler is a Dense on the first token.
    assert tfprune.count_macs(sequence_model(backbone, 16)) == 2 * transformer_block_macs(16, 32, 2, 64) + 32 * 32


@pytest.mark.parametrize("family", ["gemma", "llama"])
def test_keras_hub_decoders_count_grouped_query_attention_and_the_tied_output_projection(family):
    if family == "gemma":  # Gemma's gated MLP is intermediate_dim // 2 wide
        backbone = keras_hub.models.GemmaBackbone(vocabulary_size=100, num_layers=2, num_query_heads=4,
                                                  num_key_value_heads=2, hidden_dim=32, intermediate_dim=64,
                                                  head_dim=8)
        causal_lm, mlp = keras_hub.models.GemmaCausalLM, 32
    else:
        backbone = keras_hub.models.LlamaBackbone(vocabulary_size=100, num_layers=2, num_query_heads=4,
                                                  num_key_value_heads=2, hidden_dim=32, intermediate_dim=64)
        causal_lm, mlp = keras_hub.models.LlamaCausalLM, 64
    blocks = 2 * transformer_block_macs(16, 32, 4, mlp, kv_heads=2, mlp_layers=3)
    assert tfprune.count_macs(sequence_model(backbone, 16)) == blocks
    # The language model's head is the token embedding used in reverse: a matmul of hidden_dim by vocabulary_size.
    language_model = causal_lm(backbone=backbone, preprocessor=None)
    assert tfprune.count_macs(sequence_model(language_model, 16)) == blocks + 16 * 32 * 100
