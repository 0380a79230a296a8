"""KerasHub's Gemma and Gemma3 backbones prune by key/value groups, query heads and gated MLP width; the head width
never prunes (rotary embedding). The rebuilt model computes what the masked one does, saves and loads with its head
counts, and costs what MacsModel says.

Tiny configurations built offline from constructor arguments (vocabulary 64, 2 layers, hidden 32, 4 query heads, 2
key/value heads, head width 8), called on fixed-length Inputs (counting needs fixed sizes)."""

import os

import keras
import keras_hub
import numpy as np
import pytest
from keras_hub.src.models.gemma.gemma_attention import CachedGemmaAttention
from keras_hub.src.models.gemma3.gemma3_attention import CachedGemma3Attention

import tfprune
from tests.test_keras_hub import random_weights
from tfprune.deployment.verification import check_equivalence
from tfprune.graph.layer_configs import layer_config
from tfprune.measurement.macs_model import MacsModel

# Rebuild against mask, relative to the outputs' scale: float32 sums of the same products in another order (JAX's
# einsums reorder them) differ by a few ulps, about 1e-7 here.
TOLERANCE = 1e-5
LENGTH, VOCABULARY, HIDDEN, QUERY_HEADS, KV_HEADS, HEAD_DIM = 8, 64, 32, 4, 2, 8
TINY = dict(vocabulary_size=VOCABULARY, num_layers=2, num_query_heads=QUERY_HEADS, num_key_value_heads=KV_HEADS,
            hidden_dim=HIDDEN, intermediate_dim=64, head_dim=HEAD_DIM)


def sequence_model(backbone):
    """`backbone` called on token inputs of a fixed length."""
    inputs = {t.name: keras.Input((LENGTH,), dtype=t.dtype, name=t.name) for t in backbone.inputs}
    return keras.Model(inputs, backbone(inputs), name=f"{backbone.name}_model")


def gemma():
    return sequence_model(keras_hub.models.GemmaBackbone(**TINY, name="gemma_backbone"))


def gemma3():
    """Text only (no vision encoder), with query/key norms; both layers are sliding-window ones (window 4 < 8)."""
    return sequence_model(keras_hub.models.Gemma3Backbone(**TINY, image_size=16, use_query_key_norm=True,
                                                          use_sliding_window_attention=True, sliding_window_size=4,
                                                          name="gemma3_backbone"))


MODELS = {"gemma": gemma, "gemma3": gemma3}
MLP_WIDTH = {"gemma": 32, "gemma3": 64}  # Gemma halves intermediate_dim for each of its two gating projections


def tokens(seed=1):
    """Two sequences of token ids, the second padded at its end."""
    rng = np.random.default_rng(seed)
    padding = np.ones((2, LENGTH), "int32")
    padding[1, -3:] = 0
    return {"token_ids": rng.integers(0, VOCABULARY, (2, LENGTH)).astype("int32"), "padding_mask": padding}


def blocks(family):
    return [f"{family}_backbone/decoder_block_{i}" for i in (0, 1)]


def head_counts(model):
    """`{path: (query heads, key/value heads, head width)}` of the Gemma attention layers inside `model`."""
    graph = tfprune.ChannelGraph(model)
    return {path: (layer.num_query_heads, layer.num_key_value_heads, layer.head_dim)
            for path, layer in graph.layers.items() if isinstance(layer, CachedGemmaAttention | CachedGemma3Attention)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def pruned(request):
    """(family, model, graph, plan, slim): every group pruned by half."""
    model = random_weights(MODELS[request.param]())
    graph = tfprune.ChannelGraph(model)
    plan = tfprune.plan(model, 0.5, graph=graph)
    return request.param, model, graph, plan, tfprune.rebuild(model, plan, graph=graph)


def test_blocks_open_into_groups_of_heads_and_mlp_width(pruned):
    family, model, graph, plan, _ = pruned
    assert not [path for path in graph.closed if path.startswith(tuple(b + "/" for b in blocks(family))) and
                "norm" not in path], graph.closed  # the norms are closed layers with their own scale: boundaries
    for block in blocks(family):
        assert block not in graph.closed
        attention = f"{block}/attention"
        assert graph[f"{attention}:kv_heads"].width == KV_HEADS and graph[f"{attention}:kv_heads"].prunable
        assert graph[f"{attention}:query_heads"].width == QUERY_HEADS and graph[f"{attention}:query_heads"].prunable
        head_dim = graph[f"{attention}:head_dim"]
        assert not head_dim.prunable and "rotary position embedding" in head_dim.reasons[0]
        mlp = graph[f"{block}/ffw_gating"]
        assert mlp.width == MLP_WIDTH[family]
        assert {m.layer for m in mlp.members} == {f"{block}/{n}" for n in ("ffw_gating", "ffw_gating_2", "ffw_linear")}
    assert sorted(plan.keep) == sorted(f"{b}/{g}" for b in blocks(family)
                                       for g in ("attention:kv_heads", "attention:query_heads", "ffw_gating"))


def test_rebuild_equals_mask_with_fewer_heads_of_the_same_width(pruned):
    family, model, _, plan, slim = pruned
    x = tokens()
    assert check_equivalence(model, plan, inputs=x) < TOLERANCE
    assert not np.allclose(np.asarray(slim(x)), np.asarray(model(x)), atol=1e-3)  # the plan changes the outputs
    # Half the key/value heads, half the query heads of each group: query heads of a removed group go with it.
    assert set(head_counts(slim).values()) == {(1, 1, HEAD_DIM)}
    assert tfprune.count_params(slim) < tfprune.count_params(model)


def test_slim_model_saves_and_loads_with_its_head_counts(pruned, tmp_path):
    _, _, _, _, slim = pruned
    path = os.path.join(tmp_path, "slim.keras")
    slim.save(path)
    loaded = keras.saving.load_model(path)
    assert head_counts(loaded) == head_counts(slim)
    x = tokens()
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(slim(x)), rtol=1e-6, atol=1e-6)


def attention_formula(t, e, heads, kv_heads, d):
    """Projections (query, key, value, output), QKᵀ and AV of one self-attention over t positions of width e."""
    return t * e * heads * d + 2 * t * e * kv_heads * d + t * heads * d * e + 2 * heads * t * t * d


def test_macs_are_the_hand_formula_and_macs_model_prices_the_slim_model(pruned):
    family, model, graph, plan, slim = pruned
    mlp = 3 * LENGTH * HIDDEN * MLP_WIDTH[family]
    attention = attention_formula(LENGTH, HIDDEN, QUERY_HEADS, KV_HEADS, HEAD_DIM)
    assert tfprune.count_macs(model) == 2 * (attention + mlp)  # causal attention counts as full
    macs = MacsModel(model, graph=graph)
    slim_attention = attention_formula(LENGTH, HIDDEN, 1, 1, HEAD_DIM)
    assert macs.macs(plan) == tfprune.count_macs(slim) == 2 * (slim_attention + mlp // 2)


def test_a_plan_of_query_heads_keeps_every_group_and_as_many_heads_in_each():
    model = random_weights(gemma())
    groups = {f"{b}/attention:query_heads": 0.5 for b in blocks("gemma")}
    plan = tfprune.plan(model, groups)
    assert all(len(kept) == 2 and {k // 2 for k in kept} == {0, 1} for kept in plan.keep.values())
    slim = tfprune.rebuild(model, plan)
    assert set(head_counts(slim).values()) == {(2, 2, HEAD_DIM)}
    assert check_equivalence(model, plan, inputs=tokens()) < TOLERANCE
    assert MacsModel(model).macs(plan) == tfprune.count_macs(slim)


def test_as_many_key_value_heads_as_query_heads_is_one_group_of_whole_heads():
    model = random_weights(sequence_model(keras_hub.models.GemmaBackbone(
        **{**TINY, "num_layers": 1, "num_key_value_heads": QUERY_HEADS}, name="gemma_mha")))
    graph = tfprune.ChannelGraph(model)
    attention = "gemma_mha/decoder_block_0/attention"
    assert graph[f"{attention}:heads"].width == QUERY_HEADS and f"{attention}:query_heads" not in graph
    plan = tfprune.plan(model, {f"{attention}:heads": 0.5}, graph=graph)
    assert check_equivalence(model, plan, inputs=tokens()) < TOLERANCE
    slim = tfprune.rebuild(model, plan, graph=graph)
    assert set(head_counts(slim).values()) == {(2, 2, HEAD_DIM)}
    assert MacsModel(model, graph=graph).macs(plan) == tfprune.count_macs(slim)


def test_l1_scores_a_key_value_group_by_all_its_weights_and_ranks_heads_globally():
    model = random_weights(gemma3(), seed=3)
    graph = tfprune.ChannelGraph(model)
    attention = graph.layers["gemma3_backbone/decoder_block_0/attention"]
    q, k, v, out = (np.abs(keras.ops.convert_to_numpy(d.kernel)) for d in
                    (attention.query_dense, attention.key_dense, attention.value_dense, attention.output_dense))
    repeats = QUERY_HEADS // KV_HEADS  # query head i reads key/value head i // repeats
    reading = [slice(g * repeats, (g + 1) * repeats) for g in range(KV_HEADS)]
    expected = [k[g].sum() + v[g].sum() + q[heads].sum() + out[heads].sum() for g, heads in enumerate(reading)]
    scores = tfprune.criteria.l1(graph, graph["gemma3_backbone/decoder_block_0/attention:kv_heads"])
    np.testing.assert_allclose(scores, expected, rtol=1e-5)  # float32 weights summed in float64 in another order
    plan = tfprune.plan(model, 0.4, criterion="l1", scope="global", graph=graph)
    assert [name for name in plan.keep if name.endswith("heads")]
    assert check_equivalence(model, plan, inputs=tokens()) < TOLERANCE
    assert MacsModel(model, graph=graph).macs(plan) == tfprune.count_macs(tfprune.rebuild(model, plan, graph=graph))


@pytest.mark.parametrize("attention_class", [CachedGemmaAttention, CachedGemma3Attention])
def test_a_scale_that_depends_on_the_head_count_is_kept(attention_class):
    """With `query_head_dim_normalize=False` the scale is 1/sqrt(hidden_dim // num_query_heads), which fewer heads
    change: the slim layer's queries (projection, or Gemma3's query norm) are scaled to keep the original's."""
    extra = {"use_query_key_norm": True} if attention_class is CachedGemma3Attention else {}
    attention = attention_class(head_dim=HEAD_DIM, num_query_heads=QUERY_HEADS, num_key_value_heads=KV_HEADS,
                                query_head_dim_normalize=False, name="attention", **extra)
    model = attention_model(attention)
    plan = tfprune.plan(model, {"attention:kv_heads": 0.5})
    assert check_equivalence(model, plan, inputs=attention_inputs()) < TOLERANCE
    slim = tfprune.rebuild(model, plan).get_layer("attention")
    assert (slim.num_query_heads, slim.num_key_value_heads, slim.head_dim) == (2, 1, HEAD_DIM)


class ShiftedGemmaAttention(CachedGemmaAttention):
    """A subclass: it may compute something else, so the rule (for the exact KerasHub class) does not read it."""


def attention_model(attention, **call):
    x, mask = keras.Input((LENGTH, HIDDEN), name="x"), keras.Input((LENGTH, LENGTH), dtype="int32", name="mask")
    y = keras.layers.Dense(16, name="up")(attention(x, attention_mask=mask, **call))
    return random_weights(keras.Model([x, mask], keras.layers.Dense(3, name="down")(y), name="attention_model"))


def attention_inputs(seed=2):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(2, LENGTH, HIDDEN)).astype("float32"), np.tril(np.ones((2, LENGTH, LENGTH), "int32"))]


@pytest.mark.parametrize("case", ["rotary offset", "subclass"])
def test_an_attention_it_does_not_read_stays_closed_with_its_reason_and_the_rest_prunes(case):
    """A call with a rotary offset (`cache_update_index=1`, a generation step), or a subclass of the KerasHub
    class, is not read as heads: no head group, a reason, and `prune` still prunes the Dense after it."""
    kind = ShiftedGemmaAttention if case == "subclass" else CachedGemmaAttention
    attention = kind(head_dim=HEAD_DIM, num_query_heads=QUERY_HEADS, num_key_value_heads=KV_HEADS, name="attention")
    model = attention_model(attention, **({"cache_update_index": 1} if case == "rotary offset" else {}))
    graph = tfprune.ChannelGraph(model)
    assert "attention:kv_heads" not in graph and "attention:query_heads" not in graph
    if case == "rotary offset":
        assert "cache_update_index" in graph["attention"].reasons[0]
    else:
        assert any(path.startswith("attention/") for path in graph.layers)  # opened by tracing, its einsums closed
    plan = tfprune.plan(model, 0.5, graph=graph)
    assert list(plan.keep) == ["up"]
    assert check_equivalence(model, plan, inputs=attention_inputs()) < TOLERANCE
    slim = tfprune.prune(model, 0.5)
    assert slim.get_layer("up").units == 8


# ---- the config of a layer made with a dtype policy object ---------------------------------------------------


class Scaled(keras.layers.Layer):
    """No get_config of its own (Keras records its arguments); `double` stores twice its argument, which reading
    the attribute back cannot recover."""

    def __init__(self, factor=1.0, double=False, **kwargs):
        super().__init__(**kwargs)
        self.double = double
        self.factor = factor * 2 if double else factor

    def call(self, x):
        return x * self.factor


def test_a_config_keras_dropped_for_a_dtype_policy_is_recovered_or_refused():
    policy = keras.DTypePolicy("float32")
    layer = Scaled(3.0, dtype=policy, name="scaled")
    with pytest.raises(NotImplementedError):
        layer.get_config()
    config = layer_config(layer)
    assert (config["factor"], config["name"], keras.dtype_policies.deserialize(config["dtype"]).name) == (
        3.0, "scaled", "float32")
    assert Scaled.from_config(config).get_config() == config  # the copy has a config of its own
    with pytest.raises(NotImplementedError, match="non-serializable"):
        layer_config(Scaled(3.0, double=True, dtype=policy))  # read back, 6.0 would make a layer of 12.0
