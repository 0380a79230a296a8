"""Attention: heads, head widths and key/value groups of Keras's MultiHeadAttention and GroupQueryAttention, and
EinsumDense read from its equation; rebuild equals mask on every backend."""

import os

import keras
import numpy as np
import pytest

import tfprune
from tfprune import Plan
from tfprune.deployment.verification import check_equivalence
from tfprune.measurement import counting
from tfprune.measurement.macs_model import MacsModel

L = keras.layers
TOLERANCE = 1e-5


def transformer_block(form="self", seed=0, **call):
    """A Functional MHA block: attention, residual + LayerNorm, an MLP, a head."""
    keras.utils.set_random_seed(seed)
    inputs = [keras.Input((6, 16), name="tokens")]
    x = inputs[0]
    mha = L.MultiHeadAttention(4, 8, name="mha")
    if form == "self":
        a = mha(x, x, **call)
    elif form == "query_value":
        a = mha(x, L.Dense(12, name="memory")(x), **call)
    elif form == "query_value_key":
        a = mha(x, L.Dense(12, name="memory")(x), L.Dense(10, name="keys")(x), **call)
    elif form == "attention_mask":
        inputs.append(keras.Input((6, 6), name="mask", dtype="bool"))
        a = mha(x, x, attention_mask=inputs[1])
    scores = None
    if isinstance(a, (tuple, list)):
        a, scores = a
    x = L.LayerNormalization(name="ln")(L.Add()([x, a]))
    h = L.Dense(24, activation="gelu", name="up")(x)
    x = L.Add()([x, L.Dense(16, name="down")(h)])
    out = L.Dense(3, name="head")(L.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, [out, scores] if scores is not None else out, name=f"block_{form}")


def hybrid(seed=0):
    """MobileViT-style: a conv stem, its pixels as tokens, self-attention, a conv on the tokens put back."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((2, 3, 3))
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    tokens = L.Reshape((6, 16))(x)
    a = L.MultiHeadAttention(4, 8, name="mha")(tokens, tokens)
    x = L.Reshape((2, 3, 16))(L.Add()([tokens, a]))
    x = L.Conv2D(12, 3, padding="same", activation="relu", name="fuse")(x)
    return keras.Model(inputs, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x)), name="hybrid")


def gqa_block(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 16))
    x = L.Dense(16, name="embed")(inputs)
    a = L.GroupQueryAttention(head_dim=8, num_query_heads=8, num_key_value_heads=4, name="gqa")(x, x)
    x = L.Add()([x, a])
    return keras.Model(inputs, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(x)), name="gqa_block")


def random_weights(model, seed=0):
    """Every weight random (biases and LayerNorm's too), so that no slice is trivially zero."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()])
    return model


def round_trip(model, tmp_path):
    path = os.path.join(tmp_path, f"{model.name}.keras")
    model.save(path)
    return keras.saving.load_model(path)


def inputs_for(model, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(2, *t.shape[1:])).astype("float32") if t.dtype != "bool"
            else np.tril(np.ones((2, *t.shape[1:]), bool)) for t in model.inputs]


# ---- the graph ----------------------------------------------------------------------------------------------------


def test_self_attention_opens_heads_and_head_widths():
    graph = tfprune.ChannelGraph(transformer_block("self"))
    assert "mha" not in graph.closed
    widths = {g.name: g.width for g in graph.prunable_groups}
    assert widths == {"mha:heads": 4, "mha:head_dim": 8, "up": 24}
    sides = {m.side for m in graph["input:tokens"].members if m.layer == "mha"}
    assert sides == {"query", "key", "value", "out"}  # one tensor on every side; the output tied by the residual


@pytest.mark.parametrize("form, call", [("self", {}), ("query_value", {}), ("query_value_key", {}),
                                        ("attention_mask", {}), ("self", {"use_causal_mask": True})])
def test_rebuild_equals_mask_in_every_call_form(form, call):
    model = random_weights(transformer_block(form, **call))
    plan = tfprune.plan(model, 0.5)
    assert len(plan.keep["mha:heads"]) == 2 and len(plan.keep["mha:head_dim"]) == 4
    assert check_equivalence(model, plan, inputs=inputs_for(model)) < TOLERANCE
    slim = tfprune.rebuild(model, plan)
    mha = slim.get_layer("mha")
    assert (mha.num_heads, mha.key_dim, mha.value_dim) == (2, 4, 4)


def test_returned_attention_scores_keep_the_heads():
    model = random_weights(transformer_block("self", return_attention_scores=True))
    graph = tfprune.ChannelGraph(model)
    assert "returns its attention scores" in graph["mha:heads"].reasons[0]
    plan = tfprune.plan(model, 0.5, graph=graph)
    assert "mha:heads" not in plan.keep and len(plan.keep["mha:head_dim"]) == 4
    assert check_equivalence(model, plan, inputs=inputs_for(model)) < TOLERANCE


def test_key_and_value_widths_apart_when_they_differ():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 16))
    a = L.MultiHeadAttention(4, 8, value_dim=6, dropout=0.1, name="mha")(inputs, inputs)  # dropout: no fused kernel
    model = random_weights(keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling1D()(L.Add()([inputs, a])))))
    graph = tfprune.ChannelGraph(model)
    assert {g.name: g.width for g in graph.prunable_groups} == {"mha:heads": 4, "mha:key_dim": 8, "mha:value_dim": 6}
    plan = tfprune.plan(model, 0.5, graph=graph)
    assert check_equivalence(model, plan) < TOLERANCE
    mha = tfprune.rebuild(model, plan).get_layer("mha")
    assert (mha.num_heads, mha.key_dim, mha.value_dim) == (2, 4, 3)


def test_head_width_keeps_the_attention_scale():
    """Fewer key_dim slots: the slim layer's 1/sqrt(key_dim) grows, so its query is scaled to give the same scores."""
    model = random_weights(transformer_block("self"))
    plan = Plan(keep={"mha:head_dim": [0, 3, 5]}, widths={"mha:head_dim": 8})
    assert check_equivalence(model, plan, inputs=inputs_for(model)) < TOLERANCE
    slim = tfprune.rebuild(model, plan)
    old, new = model.get_layer("mha").query_dense, slim.get_layer("mha").query_dense
    np.testing.assert_allclose(new.kernel.numpy(), old.kernel.numpy()[..., [0, 3, 5]] * np.sqrt(3 / 8), rtol=1e-6)
    np.testing.assert_allclose(slim.get_layer("mha").key_dense.kernel.numpy(),
                               model.get_layer("mha").key_dense.kernel.numpy()[..., [0, 3, 5]])


def test_mask_zeroes_what_rebuild_drops():
    model = random_weights(transformer_block("self"))
    plan = Plan(keep={"mha:heads": [1, 3]}, widths={"mha:heads": 4})
    tfprune.mask(model, plan)
    mha = model.get_layer("mha")
    for dense in (mha.query_dense, mha.key_dense, mha.value_dense):
        kernel = dense.kernel.numpy()
        assert not kernel[:, [0, 2]].any() and kernel[:, [1, 3]].all()
    assert not mha.output_dense.kernel.numpy()[[0, 2]].any()


def test_conv_attention_hybrid_prunes_convolutions_and_heads(tmp_path):
    model = random_weights(hybrid())
    plan = tfprune.plan(model, 0.5, scope="global")  # heads ranked with the convolutions' filters
    assert {"stem", "mha:heads", "mha:head_dim", "fuse"} <= set(plan.keep)
    assert check_equivalence(model, plan) < TOLERANCE
    slim = tfprune.rebuild(model, plan)
    assert slim.get_layer("stem").filters < 16 and slim.get_layer("mha").num_heads < 4
    loaded = round_trip(slim, tmp_path)
    assert loaded.get_layer("mha").num_heads == slim.get_layer("mha").num_heads
    x = inputs_for(model)[0]
    np.testing.assert_allclose(loaded(x), slim(x), rtol=1e-6, atol=1e-6)


def test_global_scope_ranks_heads_across_layers():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 16))
    x = inputs
    for name in ("strong", "weak"):
        x = L.Add()([x, L.MultiHeadAttention(4, 8, name=name)(x, x)])
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling1D()(x)))
    weak = model.get_layer("weak")
    for dense in (weak.query_dense, weak.key_dense, weak.value_dense):
        dense.kernel.assign(dense.kernel.numpy() * 1e-3)
    weak.output_dense.kernel.assign(weak.output_dense.kernel.numpy() * 1e-3)
    plan = tfprune.plan(model, 0.5, scope="global", normalize=None)
    assert len(plan.keep["weak:heads"]) < len(plan.keep.get("strong:heads", range(4)))


def test_l1_scores_a_head_by_all_its_weights():
    model = random_weights(transformer_block("self"))
    mha = model.get_layer("mha")
    for dense in (mha.query_dense, mha.key_dense, mha.value_dense):  # head 2 reads almost nothing ...
        kernel = dense.kernel.numpy()
        kernel[:, 2] *= 1e-3
        dense.kernel.assign(kernel)
    graph = tfprune.ChannelGraph(model)
    scores = tfprune.criteria.magnitude.l1(graph, graph["mha:heads"])
    assert np.argmin(scores) == 2
    kernel = mha.output_dense.kernel.numpy()
    kernel[2] *= 1e6  # ... but writes a lot: the output rows count too
    mha.output_dense.kernel.assign(kernel)
    assert np.argmax(tfprune.criteria.magnitude.l1(graph, graph["mha:heads"])) == 2


def test_grouped_query_attention(tmp_path):
    model = random_weights(gqa_block())
    graph = tfprune.ChannelGraph(model)
    assert {g.name: g.width for g in graph.prunable_groups} == {
        "embed": 16, "gqa:kv_heads": 4, "gqa:query_heads": 8, "gqa:head_dim": 8}
    assert graph["gqa:query_heads"].n_blocks == 4
    # Whole key/value groups with their query heads: key/value heads 1 and 3 go, and query heads 2, 3, 6, 7 with them.
    plan = Plan(keep={"gqa:kv_heads": [0, 2]}, widths={"gqa:kv_heads": 4})
    assert check_equivalence(model, plan) < TOLERANCE
    slim = tfprune.rebuild(model, plan)
    gqa = slim.get_layer("gqa")
    assert (gqa.num_query_heads, gqa.num_key_value_heads, gqa.head_dim) == (4, 2, 8)
    np.testing.assert_array_equal(gqa._query_dense.kernel.numpy(),
                                  model.get_layer("gqa")._query_dense.kernel.numpy()[:, [0, 1, 4, 5]])
    # The same number of query heads in every group, head_dim and the hidden width.
    plan = tfprune.plan(model, 0.5)
    assert check_equivalence(model, plan) < TOLERANCE
    slim = tfprune.rebuild(model, plan)
    gqa = slim.get_layer("gqa")
    assert (gqa.num_query_heads, gqa.num_key_value_heads, gqa.head_dim) == (2, 2, 4)
    assert round_trip(slim, tmp_path).get_layer("gqa").num_query_heads == 2


def test_einsum_dense_used_as_dense_prunes_like_dense():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 12))
    x = L.EinsumDense("abc,cd->abd", output_shape=(None, 20), bias_axes="d", activation="relu", name="e1")(inputs)
    x = L.EinsumDense("...b,bc->...c", output_shape=10, name="e2")(x)
    x = L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 4), name="heads")(x)  # two channel axes
    model = random_weights(keras.Model(inputs, L.Flatten()(x)))
    graph = tfprune.ChannelGraph(model)
    assert {g.name: g.width for g in graph.prunable_groups} == {"e1": 20}
    assert "equation 'abc,cde->abde' is not a Dense" in graph["e2"].reasons[0]
    plan = tfprune.plan(model, 0.5)
    assert check_equivalence(model, plan) < TOLERANCE
    slim = tfprune.rebuild(model, plan)
    assert slim.get_layer("e1").kernel.shape == (12, 10) and slim.get_layer("e2").kernel.shape == (10, 10)


def test_gated_mlp_ties_gate_and_up():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 16))
    gate = L.Dense(32, activation="silu", name="gate")(inputs)
    up = L.Dense(32, name="up")(inputs)
    x = L.Dense(16, name="down")(L.Multiply()([gate, up]))
    model = random_weights(keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling1D()(x))))
    graph = tfprune.ChannelGraph(model)
    assert {m.layer for m in graph["gate"].members} == {"gate", "up", "down"}
    plan = tfprune.plan(model, 0.5)
    assert check_equivalence(model, plan) < TOLERANCE
    slim = tfprune.rebuild(model, plan)
    assert slim.get_layer("gate").units == slim.get_layer("up").units == 16


def test_an_attention_layer_it_cannot_read_stays_closed_and_the_rest_is_pruned():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 8))
    x = L.Dense(16, activation="relu", name="fc")(inputs)
    a = L.MultiHeadAttention(2, 4, output_shape=(4, 4), name="mha")(x, x)  # a 2-D output projection
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(a)))
    graph = tfprune.ChannelGraph(model)
    assert "output_shape=(4, 4) has more than one axis" in graph["fc"].reasons[0]
    assert not any(g.name.startswith("mha:") for g in graph.groups)


# ---- costs and the summary ------------------------------------------------------------------------------------


def attention_macs(layer, t_q, t_k, e_q, e_k, e_v):
    """The MACs of one call, as count_macs counts them: projections, QKᵀ and AV."""
    if isinstance(layer, L.GroupQueryAttention):
        h, h_kv, d_k = layer.num_query_heads, layer.num_key_value_heads, layer.head_dim
        d_v, e_out = d_k, e_q
    else:
        h, h_kv, d_k, d_v = layer.num_heads, layer.num_heads, layer.key_dim, layer.value_dim
        e_out = layer.output_dense.kernel.shape[-1]
    return (t_q * e_q * h * d_k + t_k * e_k * h_kv * d_k + t_k * e_v * h_kv * d_v + t_q * h * d_v * e_out
            + h * t_q * t_k * d_k + h * t_q * t_k * d_v)


def _formula_counts(model):
    """layer_counts with every attention layer's MACs replaced by the hand formula above."""
    counts = counting.layer_counts(model)
    graph = tfprune.ChannelGraph(model)
    for path, layer in graph.layers.items():
        if isinstance(layer, (L.MultiHeadAttention, L.GroupQueryAttention)):
            total = 0
            for shapes in graph.argument_shapes[path]:
                q, v = shapes["query"], shapes["value"]
                k = shapes.get("key", v)
                total += attention_macs(layer, np.prod(q[1:-1]), np.prod(k[1:-1]), q[-1], k[-1], v[-1])
            counts[path].macs = int(total)
    return counts


@pytest.fixture
def attention_counted():
    """`count_macs`, first checked against the hand formula on a block with a cross-attention call."""
    model = transformer_block("query_value")
    assert counting.count_macs(model) == sum(c.macs for c in _formula_counts(model).values())
    return counting.count_macs


@pytest.mark.parametrize("make", [lambda: transformer_block("self"), lambda: transformer_block("query_value_key"),
                                  hybrid, gqa_block])
def test_macs_model_prices_heads_and_head_widths(make, attention_counted):
    model = make()
    macs = MacsModel(model)
    assert macs.full == attention_counted(model)
    for plan in (tfprune.plan(model, 0.5), tfprune.plan(model, 0.3, scope="global")):
        assert macs.macs(plan) == attention_counted(tfprune.rebuild(model, plan))
    group = "gqa:kv_heads" if "gqa:kv_heads" in macs.graph else "mha:heads"
    probabilities = {group: keras.ops.convert_to_tensor(np.r_[1.0, np.zeros(macs.graph[group].width - 1)])}
    one = Plan(keep={group: [0]}, widths={group: macs.graph[group].width})
    assert float(macs.expected_macs(probabilities)) == pytest.approx(macs.macs(one), rel=1e-6)


def test_plan_for_macs_reaches_its_target_with_heads(attention_counted):
    model = transformer_block("self")
    plan, ratio = tfprune.plan_for_macs(model, 0.6, lambda r: tfprune.plan(model, r, scope="global"))
    assert attention_counted(tfprune.rebuild(model, plan)) == round(ratio * attention_counted(model))
    assert 0.4 < ratio <= 0.6
    assert "mha:heads" in plan.keep or "mha:head_dim" in plan.keep


def test_summary_shows_heads():
    model = transformer_block("query_value")
    slim = tfprune.rebuild(model, Plan(keep={"mha:heads": [0, 2]}, widths={"mha:heads": 4}))
    lines = tfprune.summary(model, slim, print_fn=lambda line: None).splitlines()
    assert lines[2].split()[-1] == "Heads"
    row = next(line for line in lines if line.startswith("mha "))
    assert row.endswith("4 → 2 heads")
