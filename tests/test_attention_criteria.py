"""Data-driven criteria on attention: heads, head widths and key/value heads scored by the tensors inside the layer
(the output projection's input, the query projection's output), MLP widths by the down projection's input; plans
with them rebuild to what mask computes, and the searches run on a transformer block."""

import keras
import numpy as np
import pytest
from test_attention import TOLERANCE, gqa_block, random_weights, transformer_block

import tfprune
from tfprune import backends, criteria
from tfprune.deployment.verification import check_equivalence

RNG = np.random.default_rng(0)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
DATA = (RNG.normal(size=(16, 6, 16)).astype("float32"), RNG.integers(0, 3, 16))


def scorer(name):
    return {"mean_activation": criteria.MeanActivation(verbose=0), "apoz": criteria.APoZ(verbose=0),
            "hrank": criteria.HRank(steps=None, verbose=0), "taylor": criteria.Taylor(loss=LOSS, verbose=0)}[name]


@pytest.mark.parametrize("name", ["mean_activation", "apoz", "hrank", "taylor"])
def test_every_data_driven_criterion_scores_heads_and_plans_what_rebuild_computes(name):
    model = random_weights(transformer_block("self"))
    graph = tfprune.ChannelGraph(model)
    criterion = scorer(name)
    for group, width in (("mha:heads", 4), ("mha:head_dim", 8), ("up", 24)):
        scores = criterion(graph, graph[group], model, DATA)
        assert scores.shape == (width,) and np.isfinite(scores).all(), (group, scores)
    plan = tfprune.plan(model, 0.5, criterion=criterion, data=DATA, graph=graph)
    assert len(plan.keep["mha:heads"]) == 2 and len(plan.keep["up"]) == 12
    assert check_equivalence(model, plan, inputs=[DATA[0][:2]]) < TOLERANCE
    assert criterion.measurements == 1  # one pass served every group


def test_a_silent_head_goes_first_and_a_loud_one_stays_by_mean_activation():
    model = random_weights(transformer_block("self"))
    value = model.get_layer("mha").value_dense
    kernel, bias = value.kernel.numpy(), value.bias.numpy()
    kernel[:, 1], bias[1] = 0.0, 0.0  # head 1 averages zero values: its output is 0
    kernel[:, 3] *= 10.0
    value.kernel.assign(kernel)
    value.bias.assign(bias)
    graph = tfprune.ChannelGraph(model)
    scores = criteria.MeanActivation(verbose=0)(graph, graph["mha:heads"], model, DATA)
    assert scores[1] == 0.0 and np.argmax(scores) == 3
    assert tfprune.plan(model, 0.25, criterion="mean_activation", data=DATA, graph=graph).keep["mha:heads"] == (
        0, 2, 3)


def head_taylor_by_hand(model, x, y):
    """Taylor scores of the heads from the MHA's own pieces: z = attention(q, k, v), the (batch, T, heads, value)
    input of the output projection, and the loss of the rest of the block as a function of z."""
    mha = model.get_layer("mha")
    layers = {name: model.get_layer(name) for name in ("ln", "up", "down", "head")}
    x = keras.ops.convert_to_tensor(x)

    def forward(hook):
        z, _ = mha._compute_attention(mha.query_dense(x), mha.key_dense(x), mha.value_dense(x))
        z = hook("z", z)
        h = layers["ln"](x + mha.output_dense(z))
        h = h + layers["down"](layers["up"](h))
        logits = layers["head"](keras.ops.mean(h, axis=1))
        return keras.ops.sum(LOSS.call(y, logits)), [z]

    (z,), (grad,) = backends.gradients_at(forward)
    product = keras.ops.convert_to_numpy(z * grad)  # (batch, T, heads, value)
    return np.abs(product.mean(axis=(1, 3))).mean(axis=0)


def test_taylor_of_heads_matches_the_gradient_at_the_output_projection_input():
    model = random_weights(transformer_block("self"))
    graph = tfprune.ChannelGraph(model)
    scores = criteria.Taylor(loss=LOSS, verbose=0)(graph, graph["mha:heads"], model, DATA)
    np.testing.assert_allclose(scores, head_taylor_by_hand(model, *DATA), rtol=1e-4, atol=1e-8)
    output = model.get_layer("mha").output_dense
    kernel = output.kernel.numpy()
    kernel[2] = 0.0  # head 2's output rows: the loss no longer sees it
    output.kernel.assign(kernel)
    scores = criteria.Taylor(loss=LOSS, verbose=0)(graph, graph["mha:heads"], model, DATA)
    assert scores[2] == 0.0 and (np.delete(scores, 2) > 0).all()


def test_global_scope_ranks_heads_across_layers_by_their_outputs():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 16))
    x = inputs
    for name in ("strong", "weak"):
        x = keras.layers.Add()([x, keras.layers.MultiHeadAttention(4, 8, name=name)(x, x)])
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))
    value = model.get_layer("weak").value_dense
    value.kernel.assign(value.kernel.numpy() * 1e-3)
    plan = tfprune.plan(model, 0.25, criterion="mean_activation", data=DATA[0], scope="global", normalize=None)
    assert len(plan.keep["weak:heads"]) == 1 < len(plan.keep["strong:heads"])


def test_grouped_query_attention_key_value_and_query_heads():
    model = random_weights(gqa_block())
    graph = tfprune.ChannelGraph(model)
    value = model.get_layer("gqa")._value_dense
    kernel, bias = value.kernel.numpy(), value.bias.numpy()
    kernel[:, 2], bias[2] = 0.0, 0.0  # key/value head 2: query heads 4 and 5 read zeros
    value.kernel.assign(kernel)
    value.bias.assign(bias)
    criterion = criteria.MeanActivation(verbose=0)
    kv = criterion(graph, graph["gqa:kv_heads"], model, DATA)
    query = criterion(graph, graph["gqa:query_heads"], model, DATA)
    assert kv[2] == 0.0 and (np.delete(kv, 2) > 0).all()
    assert (query[[4, 5]] == 0.0).all() and (np.delete(query, [4, 5]) > 0).all()
    np.testing.assert_allclose(kv, query.reshape(4, 2).mean(axis=1), rtol=1e-6)
    plan = tfprune.plan(model, 0.5, criterion=criterion, data=DATA, graph=graph)
    assert 2 not in plan.keep["gqa:kv_heads"]
    assert check_equivalence(model, plan, inputs=DATA[0][:2]) < TOLERANCE
    taylor = criteria.Taylor(loss=LOSS, verbose=0)(graph, graph["gqa:kv_heads"], model, DATA)
    assert taylor.shape == (4,) and np.isfinite(taylor).all()


def test_prune_with_taylor_gives_the_slim_block():
    model = random_weights(transformer_block("query_value_key"))
    slim = tfprune.prune(model, 0.5, criterion=criteria.Taylor(loss=LOSS, verbose=0), data=DATA)
    mha = slim.get_layer("mha")
    assert (mha.num_heads, mha.key_dim) == (2, 4) and slim.get_layer("up").units == 12


def test_refusal_names_the_group_and_what_works_instead():
    inputs = keras.Input((6, 16))
    model = keras.Model(inputs, keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs))
    graph = tfprune.ChannelGraph(model, prune_outputs=True)  # the output width reaches the model output
    with pytest.raises(ValueError, match=r"Group 'mha' has channels that no convolution, Dense or attention layer "
                                         r"reads .*weight criterion such as 'l1'"):
        criteria.MeanActivation(verbose=0)(graph, graph["mha"], model, DATA[0])
    assert criteria.MeanActivation(verbose=0)(graph, graph["mha:heads"], model, DATA[0]).shape == (2,)


def test_plan_for_macs_with_a_data_driven_criterion_on_heads():
    model = random_weights(transformer_block("self"))
    criterion = criteria.MeanActivation(verbose=0)
    plan, ratio = tfprune.plan_for_macs(
        model, 0.6, lambda r: tfprune.plan(model, r, criterion=criterion, data=DATA[0], scope="global"))
    assert 0.4 < ratio <= 0.6 and criterion.measurements == 1
    assert tfprune.count_macs(tfprune.rebuild(model, plan)) == round(ratio * tfprune.count_macs(model))


@pytest.mark.parametrize("search", ["random_search", "abc"])
def test_searches_choose_head_counts(search):
    model = random_weights(transformer_block("self"))
    options = {"evaluations": 4} if search == "random_search" else {"food_sources": 2, "cycles": 1, "limit": 1}
    result = getattr(tfprune.search, search)(model, target_macs=0.5, fitness=lambda slim: -slim.count_params(),
                                             criterion="mean_activation", criterion_data=DATA[0], seed=0, verbose=0,
                                             **options)
    assert "mha:heads" in result.plan.keep and result.macs_ratio <= 0.5
    assert check_equivalence(model, result.plan, inputs=[DATA[0][:2]]) < TOLERANCE


def test_keras_hub_transformer_encoder_heads_by_mean_activation():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 16))
    x = keras_hub.layers.TransformerEncoder(intermediate_dim=24, num_heads=4, name="enc")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))
    plan = tfprune.plan(model, 0.5, criterion=criteria.MeanActivation(verbose=0), data=DATA[0])
    assert {name: len(kept) for name, kept in plan.keep.items()} == {
        "enc/self_attention_layer:heads": 2, "enc/self_attention_layer:head_dim": 2,
        "enc/feedforward_intermediate_dense": 12}
    assert check_equivalence(model, plan, inputs=DATA[0][:2]) < TOLERANCE
