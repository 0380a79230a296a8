"""Every keras.applications CNN: analysed, planned at 30% per layer, rebuilt, smaller, equivalent, saved."""

import keras
import numpy as np
import pytest

import tfprune
from tests.user_models import USER_MODELS
from tests.zoo import APPLICATIONS, BACKBONES, NOTHING_PRUNABLE, RELOAD_FAILS, application, randomize_channel_parameters
from tfprune.deployment.verification import check_equivalence, outputs, random_inputs


def check_zoo_model(model, tmp_path, nothing_prunable_because=None, reload_fails_because=None):
    randomize_channel_parameters(model)
    graph = tfprune.ChannelGraph(model)  # opens custom layers and subclassed models by tracing
    traced = graph.model  # the Functional model read (the model itself when there was nothing to open)
    if nothing_prunable_because:
        assert not graph.prunable_groups
        assert any(nothing_prunable_because in why for g in graph.groups for why in g.reasons), str(graph)
    else:
        assert graph.prunable_groups, str(graph)
    plan = tfprune.plan(model, 0.3, graph=graph)
    slim = tfprune.rebuild(model, plan, graph=graph)

    x = random_inputs(traced)
    y = outputs(slim, x)
    assert [a.shape for a in y] == [a.shape for a in outputs(model, x)]
    assert all(np.isfinite(a).all() for a in y)
    if graph.prunable_groups:
        assert tfprune.count_macs(slim) < tfprune.count_macs(traced)  # the trace, so as not to trace again
        assert slim.count_params() < model.count_params()

    exact = tfprune.plan(model, {g.name: 0.3 for g in graph.prunable_groups if not g.spanning}, graph=graph)
    assert check_equivalence(traced, exact, inputs=x) < 1e-5

    path = tmp_path / "slim.keras"
    slim.save(path)
    if reload_fails_because:  # a keras_cv layer that cannot be reloaded outside its backbone class
        with pytest.raises((NotImplementedError, TypeError), match=reload_fails_because):
            keras.models.load_model(path, safe_mode=False)
        return
    loaded = keras.models.load_model(path)
    for a, b in zip(y, outputs(loaded, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_covers_all_forty_applications():
    assert len(APPLICATIONS) == 40, APPLICATIONS


@pytest.mark.parametrize("name", APPLICATIONS)
def test_application(name, tmp_path):
    check_zoo_model(application(name), tmp_path)
    keras.backend.clear_session()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone(name, tmp_path):
    check_zoo_model(BACKBONES[name](), tmp_path, nothing_prunable_because=NOTHING_PRUNABLE.get(name),
                    reload_fails_because=RELOAD_FAILS.get(name))
    keras.backend.clear_session()


@pytest.mark.parametrize("name", sorted(USER_MODELS))
def test_subclassed_user_model(name, tmp_path):
    model = USER_MODELS[name]()
    check_zoo_model(model, tmp_path)
    assert type(model).__name__.startswith("User")  # the caller's model keeps its class
    keras.backend.clear_session()
