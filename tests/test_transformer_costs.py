"""The cost interface on transformers: ParamsModel and MacsModel price a plan of heads, key/value groups, head width,
MLP width and (opt-in) hidden width exactly, on every transformer the suite builds; a params target plans a KerasHub
ViT; a latency target on a transformer is refused, saying what is missing and what works instead.

The models are the suite's tiny configurations, imported from the tests that build them."""

import re

import keras
import numpy as np
import pytest

import tfprune
from tests.test_attention import gqa_block, transformer_block
from tests.test_hidden_width import functional_vit, tied_language_model
from tests.test_keras_hub import TASKS, bert, vit
from tests.test_keras_hub_decoders import decoder
from tests.test_keras_hub_encoders import clip, dinov2
from tests.test_keras_hub_gemma import gemma, gemma3
from tfprune.measurement.latency_tables import LatencyModel, synthetic_tables
from tfprune.measurement.macs_model import MacsModel
from tfprune.measurement.params_model import ParamsModel

L = keras.layers

# name: (builder, prune_spanning). The KerasHub backbones' hidden width reaches their output, so it is never
# pruned there; the classifiers, the Functional ViT and the tied language model prune it on request.
MODELS = {
    "mha_self": (lambda: transformer_block("self"), False),
    "mha_query_value": (lambda: transformer_block("query_value"), False),
    "mha_query_value_key": (lambda: transformer_block("query_value_key"), False),
    "gqa": (gqa_block, False),
    "vit": (vit, False),
    "bert": (bert, False),
    "llama": (lambda: decoder("llama", 2), False),
    "llama_mha": (lambda: decoder("llama", 4), False),
    "mistral": (lambda: decoder("mistral", 2), False),
    "qwen": (lambda: decoder("qwen", 2), False),  # biased query, key and value projections
    "gemma": (gemma, False),
    "gemma3": (gemma3, False),
    "dinov2": (dinov2, False),
    "clip": (clip, False),
    "functional_vit_hidden": (functional_vit, True),
    "functional_vit_rms_norm_hidden": (lambda: functional_vit(L.RMSNormalization), True),
    "vit_classifier_hidden": (TASKS["vit_image_classifier"], True),
    "bert_classifier_hidden": (TASKS["bert_text_classifier"], True),
    "tied_embedding_hidden": (lambda: tied_language_model(L.LayerNormalization), True),
    "tied_embedding_rms_norm_hidden": (lambda: tied_language_model(L.RMSNormalization), True),
}
HEADS = (":heads", ":kv_heads", ":query_heads")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_params_and_macs_of_a_plan_equal_the_counts_of_the_rebuilt_model(name):
    build, spanning = MODELS[name]
    model = build()
    graph = tfprune.ChannelGraph(model)
    costs = {tfprune.count_params: ParamsModel(model, graph=graph), tfprune.count_macs: MacsModel(model, graph=graph)}
    for count, cost in costs.items():
        assert cost.full == count(model)
    for seed, ratio in ((0, 0.5), (1, 0.75)):
        plan = tfprune.plan(model, ratio, criterion="random", seed=seed, graph=graph, prune_spanning=spanning)
        if spanning:  # the hidden width is pruned
            assert graph.spanning_groups and all(g.name in plan.keep for g in graph.spanning_groups)
        else:  # heads (or key/value groups) are pruned
            assert any(g.endswith(HEADS) and len(kept) < graph[g].width for g, kept in plan.keep.items())
        slim = tfprune.rebuild(model, plan, graph=graph)
        widths = {g: len(kept) for g, kept in plan.keep.items()}
        ranks = {g: np.argsort(np.argsort([i not in set(kept) for i in range(graph[g].width)], kind="stable"))
                 for g, kept in plan.keep.items()}
        for count, cost in costs.items():
            # exact: integer counts, and each cost a sum of integer-valued terms in float64
            assert cost.cost(plan) == count(slim) < cost.full, (count.__name__, seed)
            assert cost.cost_of_widths(widths, ranks) == count(slim)  # as the searches price a candidate


@pytest.fixture(scope="module")
def tiny_vit():
    return vit()


def test_plan_for_macs_meets_a_params_target_on_a_keras_hub_vit(tiny_vit):
    model = tiny_vit
    graph = tfprune.ChannelGraph(model)
    plan, ratio = tfprune.plan_for_macs(model, {"params": 0.5},
                                        lambda r: tfprune.plan(model, r, scope="global", graph=graph), graph=graph)
    slim = tfprune.rebuild(model, plan, graph=graph)
    assert ratio == tfprune.count_params(slim) / tfprune.count_params(model)
    # bisected onto the budget from below. How close it gets is bounded by the fixed params (the patch embedding,
    # the norms, the biases of the output projections) and by the coarsest step, one head of 2 in a block.
    assert 0.4 < ratio <= 0.5
    assert any(g.endswith(":heads") for g in plan.keep)


def test_random_search_meets_a_params_target_on_a_keras_hub_vit(tiny_vit):
    model = tiny_vit

    def fitness(slim):  # made up, no training: wider is fitter
        return float(slim.count_params())

    result = tfprune.search.random_search(model, target_macs={"params": 0.5}, fitness=fitness, evaluations=3,
                                          seed=0, verbose=0)
    slim = result.slim_model()
    assert result.cost == "params"
    assert result.cost_ratio == pytest.approx(tfprune.count_params(slim) / tfprune.count_params(model), abs=1e-12)
    assert result.cost_ratio <= 0.5
    assert result.macs_ratio == pytest.approx(tfprune.count_macs(slim) / tfprune.count_macs(model), abs=1e-12)


ATTENTION = {"mha_self": "'mha' (MultiHeadAttention)",
             "gqa": "'gqa' (GroupedQueryAttention)",
             "llama": "'llama_backbone/transformer_layer_0/self_attention' (LlamaAttention)",
             "gemma": "'gemma_backbone/decoder_block_0/attention' (CachedGemmaAttention)"}


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_a_latency_target_on_a_transformer_names_its_attention_layers_and_what_works_instead(name):
    model = MODELS[name][0]()
    what = re.escape("LatencyModel has no latency table for the attention layer(s) " + ATTENTION[name])
    instead = r'Use a MACs or params target for this model instead: \{"macs": r\} or \{"params": r\}'
    graph = tfprune.ChannelGraph(model)

    def make_plan(r):
        return tfprune.plan(model, r, graph=graph)

    # refused before anything is measured: from the tables a plan would be priced with, and from every entry
    with pytest.raises(NotImplementedError, match=what) as error:
        synthetic_tables(model, ms_per_mac=1e-6, graph=graph)
    assert "heads, head width and sequence length" in str(error.value)
    assert "ConvTranspose, Dense and EinsumDense layers only" in str(error.value)
    with pytest.raises(NotImplementedError, match=instead):
        LatencyModel(model, graph=graph, cache_dir=False)
    with pytest.raises(NotImplementedError, match=what):
        tfprune.plan_for_macs(model, {"latency": 0.5}, make_plan, graph=graph)
    with pytest.raises(NotImplementedError, match=what):
        tfprune.plan_for_latency(model, 0.5, graph=graph, verify=False)
    # what works instead does
    plan, ratio = tfprune.plan_for_macs(model, {"macs": 0.5}, make_plan, graph=graph)
    assert ratio <= 0.5


def test_every_layer_without_a_table_is_named_the_attention_layers_apart(tiny_vit):
    with pytest.raises(NotImplementedError) as error:
        synthetic_tables(tiny_vit, ms_per_mac=1e-6)
    assert str(error.value).startswith(
        "LatencyModel has no latency table for the attention layer(s) 'vit_encoder/transformer_block_1/mha' "
        "(MultiHeadAttention), 'vit_encoder/transformer_block_2/mha' (MultiHeadAttention): ")
    assert ("; and no latency table for layer(s) 'vit_patching_and_embedding' (ViTPatchingAndEmbedding), whose cost "
            "depends on the widths a plan chooses.") in str(error.value)
