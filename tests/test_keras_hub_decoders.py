"""KerasHub's decoder LLMs (Llama, Mistral, Qwen) prune their key/value groups and query heads, never their head width;
the rebuilt model computes what the masked one does, saves and loads with its head counts, and costs what MacsModel
says.

Tiny configurations built offline from constructor arguments (vocabulary 64, 2 layers, hidden width 32, 4 query
heads of 8 slots), called on token inputs of a fixed length (counting needs fixed sizes)."""

import json
import os
import warnings

import keras
import keras_hub
import numpy as np
import pytest
from test_cli import run as run_command_line

import tfprune
from tests.test_keras_hub import random_weights
from tests.test_keras_hub_gemma import tokens  # the same LENGTH and VOCABULARY
from tfprune.deployment.verification import check_equivalence
from tfprune.graph.rules.keras_hub_attention import DecoderAttention
from tfprune.layers import LlamaAttentionWithHeadDim, QwenAttentionWithHeadDim
from tfprune.measurement.macs_model import MacsModel

# Relative difference between mask and rebuild: float32 rounding of the same sums in another order.
TOLERANCE = 1e-5
LENGTH, VOCABULARY, HIDDEN, QUERY_HEADS, HEAD_DIM = 8, 64, 32, 4, 8
BACKBONES = {"llama": keras_hub.models.LlamaBackbone, "mistral": keras_hub.models.MistralBackbone,
             "qwen": keras_hub.models.QwenBackbone}


def decoder(family, kv_heads):
    """`family`'s backbone, named (not llama_backbone_1 under xdist), called on fixed-length token inputs."""
    backbone = BACKBONES[family](vocabulary_size=VOCABULARY, num_layers=2, num_query_heads=QUERY_HEADS,
                                 num_key_value_heads=kv_heads, hidden_dim=HIDDEN, intermediate_dim=64,
                                 name=f"{family}_backbone")
    inputs = {t.name: keras.Input((LENGTH,), dtype=t.dtype, name=t.name) for t in backbone.inputs}
    # every weight random, so that no slice is trivially zero
    return random_weights(keras.Model(inputs, backbone(inputs), name=f"{family}_{kv_heads}"))


def attention_paths(family):
    return [f"{family}_backbone/transformer_layer_{i}/self_attention" for i in (0, 1)]


def attentions(model):
    """`{path: (query heads, key/value heads, head width, class name)}` of the decoder attention layers."""
    graph = tfprune.ChannelGraph(model)
    return {path: (int(layer._query_dense.kernel.shape[1]), int(layer._key_dense.kernel.shape[1]),
                   int(layer._query_dense.kernel.shape[2]), type(layer).__name__)
            for path, layer in graph.layers.items() if isinstance(graph.rules[path], DecoderAttention)}


CASES = {"llama_gqa": ("llama", 2), "llama_mha": ("llama", 4), "mistral_gqa": ("mistral", 2), "qwen_gqa": ("qwen", 2)}


@pytest.fixture(scope="module", params=sorted(CASES))
def pruned(request):
    """(family, kv heads, model, graph, plan, slim), pruned by half in every group."""
    family, kv_heads = CASES[request.param]
    model = decoder(family, kv_heads)
    graph = tfprune.ChannelGraph(model)
    plan = tfprune.plan(model, 0.5, graph=graph)
    return family, kv_heads, model, graph, plan, tfprune.rebuild(model, plan, graph=graph)


def test_key_value_groups_and_query_heads_open_and_the_head_width_stays_with_its_reason(pruned):
    family, kv_heads, _, graph, plan, _ = pruned
    for path in attention_paths(family):
        if kv_heads == QUERY_HEADS:  # plain multi-head attention: one group of heads
            assert graph[f"{path}:heads"].prunable and graph[f"{path}:heads"].width == QUERY_HEADS
            assert f"{path}:kv_heads" not in graph and f"{path}:query_heads" not in graph
            assert len(plan.keep[f"{path}:heads"]) == 2
        else:
            kv, query = graph[f"{path}:kv_heads"], graph[f"{path}:query_heads"]
            assert kv.prunable and query.prunable and (kv.width, query.width) == (kv_heads, QUERY_HEADS)
            assert query.blocks.tolist() == [0, 0, 1, 1]  # query heads 0, 1 read kv head 0; 2, 3 read kv head 1
            kept = plan.keep[f"{path}:query_heads"]
            assert len(plan.keep[f"{path}:kv_heads"]) == 1 and len(kept) == 2
            assert sorted(query.blocks[list(kept)]) == [0, 1]  # the same number of query heads in every group
        head_dim = graph[f"{path}:head_dim"]
        assert not head_dim.prunable and head_dim.width == HEAD_DIM
        assert "rotary position embedding" in head_dim.reasons[0] and "never pruned" in head_dim.reasons[0]
        assert f"{path}:head_dim" not in plan.keep


def test_the_gated_mlp_prunes_gate_and_up_together(pruned):
    family, _, _, graph, plan, slim = pruned
    prefix = f"{family}_backbone/transformer_layer_0/"
    group = graph[prefix + "feedforward_gate_dense"]
    assert {m.layer for m in group.members} == {prefix + n for n in ("feedforward_gate_dense",
                                                                     "feedforward_intermediate_dense",
                                                                     "feedforward_output_dense")}
    assert len(plan.keep[group.name]) == 32
    slim_layers = tfprune.ChannelGraph(slim).layers
    assert slim_layers[prefix + "feedforward_gate_dense"].units == 32
    assert slim_layers[prefix + "feedforward_intermediate_dense"].units == 32


def test_rebuild_equals_mask_and_the_plan_changes_the_model(pruned):
    _, _, model, _, plan, slim = pruned
    x = tokens()
    assert check_equivalence(model, plan, inputs=x) < TOLERANCE
    assert not np.allclose(np.asarray(slim(x)), np.asarray(model(x)), atol=1e-3)


def test_slim_attention_has_fewer_heads_of_the_same_width(pruned):
    family, kv_heads, model, _, plan, slim = pruned
    before, after = attentions(model), attentions(slim)
    kind, slim_kind = {"llama": ("LlamaAttention", "LlamaAttentionWithHeadDim"),
                       "mistral": ("CachedMistralAttention", "CachedMistralAttention"),
                       "qwen": ("QwenAttention", "QwenAttentionWithHeadDim")}[family]
    # half the heads (MHA: 4 -> 2), or half the groups (2 -> 1) keeping half their query heads (2 -> 1 each)
    heads = (2, 2) if kv_heads == QUERY_HEADS else (1, 1)
    for path in attention_paths(family):
        assert before[path] == (QUERY_HEADS, kv_heads, HEAD_DIM, kind)
        assert after[path] == (*heads, HEAD_DIM, slim_kind)
    assert tfprune.count_params(slim) < tfprune.count_params(model)


def test_slim_model_saves_and_loads_with_its_head_counts(pruned, tmp_path):
    _, _, _, _, _, slim = pruned
    path = os.path.join(tmp_path, "slim.keras")
    slim.save(path)
    loaded = keras.saving.load_model(path)
    assert attentions(loaded) == attentions(slim)
    x = tokens()
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(slim(x)), rtol=1e-6, atol=1e-6)


def attention_macs(query_heads, kv_heads, t=LENGTH, e=HIDDEN, d=HEAD_DIM):
    """Projections (query, key, value, output), QKᵀ and AV of one decoder attention on t positions."""
    return t * e * query_heads * d + 2 * t * e * kv_heads * d + t * query_heads * d * e + 2 * query_heads * t * t * d


def test_macs_model_prices_the_slim_decoder_exactly(pruned):
    family, kv_heads, model, graph, plan, slim = pruned
    counts = tfprune.measurement.counting.layer_counts(model)
    for path in attention_paths(family):
        assert counts[path].macs == attention_macs(QUERY_HEADS, kv_heads)
    macs = MacsModel(model, graph=graph)
    assert macs.full == tfprune.count_macs(model)
    assert macs.macs(plan) == tfprune.count_macs(slim) < macs.full
    slim_counts = tfprune.measurement.counting.layer_counts(slim)
    for path, (query_heads, kept_kv, _, _) in attentions(slim).items():
        assert slim_counts[path].macs == attention_macs(query_heads, kept_kv)


# ---- criteria ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    model = decoder("llama", 2)
    return model, tfprune.ChannelGraph(model)


def test_l1_of_a_key_value_group_sums_its_key_value_slices_and_its_query_heads(llama):
    model, graph = llama
    path = attention_paths("llama")[0]
    layer = graph.layers[path]
    q, k, v, o = (np.abs(keras.ops.convert_to_numpy(d.kernel)) for d in (
        layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense))
    # kernels: query (hidden, query heads, width), key/value (hidden, kv heads, width), output (query heads, width,
    # hidden); kv head g is read by query heads 2g and 2g + 1
    expected_kv = [k[:, g].sum() + v[:, g].sum() + q[:, 2 * g:2 * g + 2].sum() + o[2 * g:2 * g + 2].sum()
                   for g in range(2)]
    expected_query = [q[:, h].sum() + o[h].sum() for h in range(QUERY_HEADS)]
    l1 = tfprune.criteria.get("l1")
    np.testing.assert_allclose(l1(graph, graph[f"{path}:kv_heads"], model), expected_kv, rtol=1e-5)
    np.testing.assert_allclose(l1(graph, graph[f"{path}:query_heads"], model), expected_query, rtol=1e-5)


def test_a_global_plan_by_ratio_ranks_heads_with_every_other_group(llama):
    model, graph = llama
    plan = tfprune.plan(model, 0.6, criterion="l1", scope="global", graph=graph)
    heads = {name: kept for name, kept in plan.keep.items() if name.endswith("heads")}
    assert len(heads) == 4 and any(len(kept) < graph[name].width for name, kept in heads.items()), heads
    assert check_equivalence(model, plan, inputs=tokens()) < TOLERANCE
    assert MacsModel(model, graph=graph).macs(plan) == tfprune.count_macs(tfprune.rebuild(model, plan, graph=graph))


def test_activations_score_the_heads_on_their_own_outputs(llama):
    model, graph = llama
    x = tokens()
    plan = tfprune.plan(model, 0.5, criterion="mean_activation", data=x, graph=graph)
    path = attention_paths("llama")[1]
    assert len(plan.keep[f"{path}:kv_heads"]) == 1 and len(plan.keep[f"{path}:query_heads"]) == 2
    assert check_equivalence(model, plan, inputs=x) < TOLERANCE


def test_prune_in_one_call_and_the_command_line_loads_the_slim_llama_in_a_new_process(llama, tmp_path):
    """Keras finds the classes of its own modules and keras-hub's; the command line imports the tfprune layers a
    file names, so that a slim Llama's LlamaAttentionWithHeadDim loads in a process that never made one."""
    model, _ = llama
    slim = tfprune.prune(model, 0.5)
    assert {v[:2] for v in attentions(slim).values()} == {(1, 1)}  # 4/2 heads -> 1/1: half the groups, half each
    rows = tfprune.summary(model, slim, print_fn=lambda line: None).splitlines()
    for path in attention_paths("llama"):
        row = next(r for r in rows if r.startswith(path + " "))
        assert row.endswith("4/2 → 1/1 heads"), row
    slim.save(os.path.join(tmp_path, "slim.keras"))
    done = run_command_line("summary", "slim.keras", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert {summary["heads"][path] for path in attention_paths("llama")} == {"1/1"}
    assert summary["macs"] == tfprune.count_macs(slim)


# ---- what is not understood stays closed -------------------------------------------------------------------------


def test_an_attention_called_with_a_cache_stays_closed_and_is_copied():
    """Cached generation (a cache and its update index given) is not pruned; the layer is copied whole, as a
    LlamaAttentionWithHeadDim (LlamaAttention's own config cannot recreate it)."""
    from keras_hub.src.models.llama.llama_attention import LlamaAttention

    hidden = keras.Input((1, HIDDEN), name="hidden")
    cache = keras.Input((2, LENGTH, 2, HEAD_DIM), name="cache")
    x = keras.layers.Dense(HIDDEN, name="embed")(hidden)
    y, new_cache = LlamaAttention(QUERY_HEADS, 2, name="attention")(x, cache=cache, cache_update_index=3)
    model = keras.Model([hidden, cache], [keras.layers.Dense(4, name="head")(y), new_cache], name="cached")
    graph = tfprune.ChannelGraph(model)
    assert "attention:kv_heads" not in graph
    assert any("called with a key/value cache" in why for g in graph.groups for why in g.reasons)
    slim = tfprune.prune(model, 0.5)
    assert type(slim.get_layer("attention")) is LlamaAttentionWithHeadDim
    rng = np.random.default_rng(0)
    values = [rng.normal(size=(2, 1, HIDDEN)).astype("float32"), rng.normal(size=(2, 2, LENGTH, 2, HEAD_DIM))
              .astype("float32")]
    for a, b in zip(slim(values), model(values), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change", ["lora", "int8"])
def test_lora_or_quantized_attention_stays_closed_and_is_copied(change):
    """KerasHub's enable_lora adds LoRA kernels to the query and value projections, quantize("int8") quantizes
    every projection and Dense: those are not pruned (the reason says why) and are copied as they are (the
    attention as a LlamaAttentionWithHeadDim with the same LoRA or quantization); the rest prunes."""
    backbone = keras_hub.models.LlamaBackbone(vocabulary_size=VOCABULARY, num_layers=1, num_query_heads=QUERY_HEADS,
                                              num_key_value_heads=2, hidden_dim=HIDDEN, intermediate_dim=64,
                                              name="llama_backbone")
    if change == "lora":
        backbone.enable_lora(2)
    else:
        with warnings.catch_warnings():  # "Layer LlamaRotaryEmbedding does not have a `quantize` method", ...
            warnings.simplefilter("ignore", UserWarning)
            backbone.quantize("int8")
    inputs = {t.name: keras.Input((LENGTH,), dtype=t.dtype, name=t.name) for t in backbone.inputs}
    model = keras.Model(inputs, backbone(inputs), name=change)
    if change == "lora":  # every weight random, the LoRA kernels too (b starts at zero)
        rng = np.random.default_rng(0)
        model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()])
    graph = tfprune.ChannelGraph(model)
    path = "llama_backbone/transformer_layer_0/self_attention"
    assert f"{path}:kv_heads" not in graph
    assert any("quantized or LoRA-enabled" in why and path in why for g in graph.groups for why in g.reasons)
    plan = tfprune.plan(model, 0.5, graph=graph)
    mlp = ["llama_backbone/transformer_layer_0/feedforward_gate_dense"]
    assert list(plan.keep) == (mlp if change == "lora" else [])  # quantized Dense layers are not pruned either
    slim, x = tfprune.rebuild(model, plan, graph=graph), tokens()
    if plan.keep:
        assert check_equivalence(model, plan, inputs=x) < TOLERANCE
    else:  # nothing to prune: the copy computes what the model computes
        np.testing.assert_allclose(np.asarray(slim(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    copy = tfprune.ChannelGraph(slim).layers[path]
    assert type(copy) is LlamaAttentionWithHeadDim
    original = graph.layers[path]
    for name in ("_query_dense", "_key_dense", "_value_dense", "_output_dense"):
        a, b = getattr(original, name), getattr(copy, name)
        assert (a.lora_enabled, a.quantization_mode) == (b.lora_enabled, b.quantization_mode)


# ---- the slim Llama attention layer -------------------------------------------------------------------------------


def _check_head_dim_subclass(original_class, subclass, random_weights=False):
    """`subclass` with hidden_dim // num_query_heads slots computes what `original_class` computes; with fewer
    heads of the same width it keeps that width, and its config round-trips."""
    x = np.random.default_rng(0).normal(size=(2, 5, HIDDEN)).astype("float32")
    original = original_class(QUERY_HEADS, 2, rope_max_wavelength=500, name="original")
    original(x)
    if random_weights:  # random biases too (they start at zero)
        rng = np.random.default_rng(1)
        original.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in original.get_weights()])
    same = subclass(QUERY_HEADS, 2, head_dim=HIDDEN // QUERY_HEADS, rope_max_wavelength=500)
    same(x)
    same.set_weights(original.get_weights())
    np.testing.assert_allclose(np.asarray(same(x)), np.asarray(original(x)), rtol=1e-6, atol=1e-6)
    narrow = subclass(2, 1, head_dim=HEAD_DIM, rope_max_wavelength=500, name="narrow")
    narrow(x)
    assert tuple(narrow._query_dense.kernel.shape) == (HIDDEN, 2, HEAD_DIM)  # not hidden // 2 = 16 slots
    copy = subclass.from_config(narrow.get_config())
    copy(x)
    copy.set_weights(narrow.get_weights())
    assert copy.get_config() == narrow.get_config() and copy.rope_max_wavelength == 500
    np.testing.assert_allclose(np.asarray(copy(x)), np.asarray(narrow(x)), rtol=1e-6, atol=1e-6)
    return narrow


def test_llama_attention_with_head_dim_computes_what_llama_attention_computes_and_round_trips():
    from keras_hub.src.models.llama.llama_attention import LlamaAttention

    _check_head_dim_subclass(LlamaAttention, LlamaAttentionWithHeadDim)


@pytest.mark.parametrize("arguments, message", [
    ((4, 3, 8), "multiple of num_key_value_heads"),
    ((4, 2, 7), "head_dim must be even"),
    ((4, 2, 0), "head_dim must be a positive integer"),
])
def test_llama_attention_with_head_dim_refuses_what_it_cannot_compute(arguments, message):
    with pytest.raises(ValueError, match=message):
        LlamaAttentionWithHeadDim(*arguments)


def test_qwen_attention_with_head_dim_computes_what_qwen_attention_computes_and_round_trips():
    """Qwen's query, key and value have biases: the subclass makes them, of `head_dim` slots per head."""
    from keras_hub.src.models.qwen.qwen_attention import QwenAttention

    narrow = _check_head_dim_subclass(QwenAttention, QwenAttentionWithHeadDim, random_weights=True)
    assert tuple(narrow._key_dense.bias.shape) == (1, HEAD_DIM)
    with pytest.raises(ValueError, match="head_dim must be even"):
        QwenAttentionWithHeadDim(4, 2, 7)


def causal_lm(family):
    """`family`'s CausalLM (no preprocessor) on a tiny backbone, bare and wrapped in a Functional model on
    fixed-length token inputs; the backbone's `token_embedding` is called inside the backbone and again, reversed,
    as the LM's output projection."""
    if family == "gemma":
        backbone = keras_hub.models.GemmaBackbone(vocabulary_size=VOCABULARY, num_layers=2, num_query_heads=QUERY_HEADS,
                                                  num_key_value_heads=2, hidden_dim=HIDDEN, intermediate_dim=64,
                                                  head_dim=HEAD_DIM, name="gemma_backbone")
        lm = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None, name="gemma_lm")
    else:
        backbone = BACKBONES[family](vocabulary_size=VOCABULARY, num_layers=2, num_query_heads=QUERY_HEADS,
                                     num_key_value_heads=2, hidden_dim=HIDDEN, intermediate_dim=64,
                                     name=f"{family}_backbone")
        lm = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None, name=f"{family}_lm")
    inputs = {t.name: keras.Input((LENGTH,), dtype=t.dtype, name=t.name) for t in backbone.inputs}
    model = keras.Model(inputs, lm(inputs), name=f"{family}_wrapped")
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()])
    return lm, model


# Params of the tiny CausalLMs: one token table (Gemma's tied output projection; Llama's table and its untied
# reverse_embeddings), counted once however many times the table is called.
CAUSAL_LM_PARAMS = {"gemma": 14_496, "llama": 22_688}


@pytest.mark.parametrize("family", sorted(CAUSAL_LM_PARAMS))
def test_a_causal_lm_keeps_one_token_table_shared_by_its_backbone_and_its_output_projection(family):
    lm, model = causal_lm(family)
    x = tokens()
    assert tfprune.count_params(model) == CAUSAL_LM_PARAMS[family]

    copy = tfprune.rebuild(model, tfprune.Plan({}, {}))
    table = copy.get_layer(f"{family}_lm").get_layer("token_embedding")
    assert table is copy.get_layer(f"{family}_lm").get_layer(f"{family}_backbone").get_layer("token_embedding")
    assert tfprune.count_params(copy) == CAUSAL_LM_PARAMS[family]
    np.testing.assert_allclose(np.asarray(copy(x)), np.asarray(model(x)), atol=1e-5)  # the same sums

    bare = tfprune.rebuild(lm, tfprune.Plan({}, {}))  # open sequence length: rebuilt as is
    assert tfprune.count_params(bare) == CAUSAL_LM_PARAMS[family]
    np.testing.assert_allclose(np.asarray(bare(x)), np.asarray(lm(x)), atol=1e-5)

    graph = tfprune.ChannelGraph(model)
    plan = tfprune.plan(model, 0.5, graph=graph)
    slim = tfprune.rebuild(model, plan, graph=graph)
    assert tfprune.count_params(slim) < CAUSAL_LM_PARAMS[family]
    slim_lm = slim.get_layer(f"{family}_lm")
    assert slim_lm.get_layer("token_embedding") is slim_lm.get_layer(f"{family}_backbone").get_layer("token_embedding")
    assert check_equivalence(model, plan, x) < TOLERANCE
