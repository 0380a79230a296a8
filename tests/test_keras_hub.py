"""KerasHub's transformers prune: ViT and BERT by heads and MLP width (Llama and Mistral:
test_keras_hub_decoders.py; Gemma and Gemma3: test_keras_hub_gemma.py); the rebuilt model computes what the masked
one does, saves and loads, and costs what
MacsModel says.

Tiny configurations, built offline from constructor arguments. KerasHub's backbones take any sequence length, so
the text models are called on fixed-length Inputs (counting needs fixed sizes)."""

import os

import keras
import keras_hub
import numpy as np
import pytest

import tfprune
from tfprune.deployment.verification import check_equivalence
from tfprune.errors import UnsupportedModelError
from tfprune.measurement.macs_model import MacsModel

TOLERANCE = 1e-5
LENGTH = 16


def sequence_model(backbone, length=LENGTH):
    """`backbone` called on token inputs of a fixed length."""
    inputs = {t.name: keras.Input((length,), dtype=t.dtype, name=t.name) for t in backbone.inputs}
    return keras.Model(inputs, backbone(inputs))


def vit():
    return keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2,
                                        hidden_dim=16, mlp_dim=32)


def bert_backbone():
    return keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=16,
                                         intermediate_dim=32, max_sequence_length=LENGTH)


def bert():
    return sequence_model(bert_backbone())


MODELS = {"vit": vit, "bert": bert}


def random_weights(model, seed=0):
    """Every weight random (biases and LayerNorm's too), so that no slice is trivially zero."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()])
    return model


def inputs_for(model, seed=1, vocabulary=100, padded=5):
    """Images, or token ids below `vocabulary`, segment ids 0/1 and a padding mask whose second example ends in
    `padded` padding positions."""
    rng = np.random.default_rng(seed)
    values = {}
    for t in model.inputs:
        shape = (2, *t.shape[1:])
        if "float" in str(t.dtype):
            values[t.name] = rng.normal(size=shape).astype("float32")
        elif t.name == "padding_mask":
            values[t.name] = np.ones(shape, "int32")
            values[t.name][1, -padded:] = 0
        else:
            values[t.name] = rng.integers(0, 2 if t.name == "segment_ids" else vocabulary, shape).astype("int32")
    return values if len(values) > 1 else next(iter(values.values()))  # DeiT's one Input has no name of its own


def attention_layers(model):
    """`{path: (num_heads, key_dim)}` of the MultiHeadAttention layers inside `model` (traced if need be)."""
    graph = tfprune.ChannelGraph(model)
    return {path: (layer.num_heads, layer.key_dim) for path, layer in graph.layers.items()
            if isinstance(layer, keras.layers.MultiHeadAttention)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def pruned(request):
    """(model, graph, plan, slim) for one family, pruned by half."""
    model = random_weights(MODELS[request.param]())
    graph = tfprune.ChannelGraph(model)
    plan = tfprune.plan(model, 0.5, graph=graph)
    return model, graph, plan, tfprune.rebuild(model, plan, graph=graph)


def test_every_block_prunes_heads_head_width_and_mlp_width(pruned):
    model, graph, plan, slim = pruned
    heads = [g for g in plan.keep if g.endswith(":heads")]
    assert len(heads) == 2 and all(len(plan.keep[g]) == 1 for g in heads)  # 2 heads -> 1 in each block
    assert all(len(plan.keep[g.replace(":heads", ":head_dim")]) == 4 for g in heads)  # head width 8 -> 4
    mlp = [g for g in plan.keep if ":" not in g]
    assert len(mlp) == 2 and all(graph[g].width == 32 and len(plan.keep[g]) == 16 for g in mlp)
    assert set(attention_layers(slim).values()) == {(1, 4)}
    assert tfprune.count_params(slim) < tfprune.count_params(model)


def test_rebuild_equals_mask(pruned):
    model, _, plan, _ = pruned
    assert check_equivalence(model, plan, inputs=inputs_for(model)) < TOLERANCE


def test_slim_model_saves_and_loads_with_its_head_counts(pruned, tmp_path):
    _, _, _, slim = pruned
    path = os.path.join(tmp_path, "slim.keras")
    slim.save(path)
    loaded = keras.saving.load_model(path)
    assert attention_layers(loaded) == attention_layers(slim)
    x = inputs_for(slim)
    for a, b in zip(keras.tree.flatten(loaded(x)), keras.tree.flatten(slim(x)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_macs_model_prices_the_slim_model(pruned):
    model, graph, plan, slim = pruned
    macs = MacsModel(model, graph=graph)
    assert macs.full == tfprune.count_macs(model)
    assert macs.macs(plan) == tfprune.count_macs(slim) < macs.full


def test_prune_in_one_call():
    slim = tfprune.prune(bert(), 0.5)
    assert set(attention_layers(slim).values()) == {(1, 4)}


TASKS = {"vit_image_classifier": lambda: keras_hub.models.ViTImageClassifier(backbone=vit(), num_classes=3),
         "bert_text_classifier": lambda: sequence_model(keras_hub.models.BertTextClassifier(
             backbone=bert_backbone(), num_classes=3, preprocessor=None))}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_models_on_the_backbones_prune_their_heads(task):
    """KerasHub's classifiers hold the backbone as a nested model: its blocks' heads prune as they do alone."""
    model = random_weights(TASKS[task]())
    plan = tfprune.plan(model, 0.5)
    heads = [g for g in plan.keep if g.endswith(":heads")]
    assert len(heads) == 2 and all(len(plan.keep[g]) == 1 for g in heads), sorted(plan.keep)
    assert check_equivalence(model, plan, inputs=inputs_for(model)) < TOLERANCE
    slim = tfprune.rebuild(model, plan)
    assert set(attention_layers(slim).values()) == {(1, 4)}
    assert tfprune.count_macs(slim) == MacsModel(model).macs(plan) < tfprune.count_macs(model)


# ---- layers whose config does not recreate them ----------------------------------------------------------------


class Derived(keras.layers.Layer):
    """Saves `area`, which its constructor derives from `size` and refuses (as ViTPatchingAndEmbedding saves
    `num_patches`); `lie` makes the saved value one the constructor would not derive."""

    def __init__(self, size, lie=False, **kwargs):
        super().__init__(**kwargs)
        self.size, self.area, self.lie = size, size * size, lie
        self.dense = keras.layers.Dense(size, name="dense")

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.size,), name="scale")  # own weight: the layer stays closed

    def call(self, x):
        return self.dense(x) * self.scale

    def get_config(self):
        return {**super().get_config(), "size": self.size, "area": self.area + int(self.lie)}


def derived_model(lie):
    inputs = keras.Input((5,))
    x = keras.layers.Dense(8, activation="relu", name="fc")(inputs)
    return keras.Model(inputs, Derived(4, lie=lie, name="derived")(x))


def test_a_layer_saving_derived_values_is_copied_and_saves_what_loads(tmp_path):
    model = random_weights(derived_model(lie=False))
    plan = tfprune.plan(model, 0.5)
    assert check_equivalence(model, plan) < TOLERANCE
    slim = tfprune.rebuild(model, plan)
    assert "area" not in slim.get_layer("derived").get_config()
    path = os.path.join(tmp_path, "derived.keras")
    slim.save(path)
    loaded = keras.saving.load_model(path, custom_objects={"Derived": Derived})
    x = np.ones((2, 5), "float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(slim(x)), rtol=1e-6, atol=1e-6)


def test_a_refused_value_that_is_not_derived_is_refused():
    model = derived_model(lie=True)
    with pytest.raises(UnsupportedModelError, match="'derived' .*recreating it from get_config\\(\\) failed.*area"):
        tfprune.rebuild(model, tfprune.plan(model, 0.5))


