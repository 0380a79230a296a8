import keras
import numpy as np
import pytest

import tfprune
from tfprune.errors import PlanError
from tfprune.layers import MarkovChannelGate
from tfprune.pruning.planning import plan_removals
from tfprune.search.dmcp import build_supernet, repair_widths
from tfprune.search.dmcp_training import DMCPTrainer


def _resnet():
    return tfprune.models.small_resnet(input_shape=(12, 12, 1), widths=(8, 16), blocks_per_stage=1)


def _vgg():
    return tfprune.models.small_vgg(input_shape=(12, 12, 1), widths=(8, 16), convs_per_stage=1, dense=16)


def _data(n, seed=0, size=12):
    rng = np.random.default_rng(seed)
    return rng.random((n, size, size, 1), "float32"), rng.integers(0, 10, n)


def _plan(graph, gates, ranks, widths):
    scores = {name: -ranks[name].astype(float) for name in gates}
    return plan_removals(graph, scores, {name: graph[name].width - widths[name] for name in gates})


def _trainer(model, target, **kwargs):
    supernet, gated, gates, macs, ranks, _ = build_supernet(model, target, (0.1, 1.0, 0.1))
    trainer = DMCPTrainer(gated, gates, macs, target, keras.losses.get("sparse_categorical_crossentropy"), False,
                          keras.optimizers.Adam(0.05), seed=0, **kwargs)
    trainer.compile(optimizer="sgd")
    trainer.build(gated.inputs[0].shape)
    return supernet, trainer, gates, macs, ranks


def test_gated_sub_networks_compute_what_the_rebuilt_models_compute():
    """Gates sit where they emulate pruning exactly, residual groups included, and the expected MACs at saturated
    gates is count_macs of the rebuilt largest and smallest models."""
    model = _resnet()
    model.set_weights([w + np.random.default_rng(1).normal(0, 0.1, w.shape) for w in model.get_weights()])
    supernet, trainer, gates, macs, ranks = _trainer(model, 0.5)
    graph = macs.graph
    x, _ = _data(4)
    rng = np.random.default_rng(0)
    for choice in ("min", "random", "max"):
        widths = {name: {"min": gate.min_channels, "max": gate.channels}.get(choice, int(rng.choice(gate.steps)))
                  for name, gate in gates.items()}
        for name, gate in gates.items():
            gate.set_mask(widths[name])
        slim = tfprune.rebuild(supernet, _plan(graph, gates, ranks, widths))
        np.testing.assert_allclose(trainer.gated.predict_on_batch(x), slim.predict_on_batch(x), rtol=1e-4, atol=1e-6)
    full = tfprune.count_macs(model)
    for alpha, choice in ((50.0, "max"), (-50.0, "min")):
        for gate in gates.values():
            gate.alpha.assign(np.full(gate.n_groups, alpha, "float32"))
        widths = {name: gate.channels if choice == "max" else gate.min_channels for name, gate in gates.items()}
        rebuilt = tfprune.count_macs(tfprune.rebuild(supernet, _plan(graph, gates, ranks, widths)))
        np.testing.assert_allclose(float(trainer.expected_macs_ratio()) * full, rebuilt, rtol=1e-6)
    assert rebuilt < full


@pytest.mark.parametrize("target", [0.5, 0.3])
def test_architecture_steps_bring_the_expected_macs_to_the_budget(target):
    model = _vgg()
    supernet, trainer, gates, macs, ranks = _trainer(model, target)
    before = [w.numpy().copy() for w in supernet.trainable_weights]
    start = float(trainer.expected_macs_ratio())
    trainer.set_phase(train_weights=False, train_arch=True)
    x, y = _data(8)
    trainer.fit(np.repeat(x, 38, 0), np.repeat(y, 38, 0), batch_size=1, epochs=1, verbose=0)  # 304 steps
    ratio = float(trainer.expected_macs_ratio())
    assert 0.95 * target <= ratio <= 1.01 * target, (start, ratio)
    for old, new in zip(before, supernet.trainable_weights, strict=True):  # only BN statistics moved
        np.testing.assert_array_equal(old, new.numpy())


def test_search_end_to_end(tmp_path):
    model = _vgg()
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    weights = [w.copy() for w in model.get_weights()]
    n_layers, config = len(model.layers), model.get_config()
    logged = []

    class Logs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logged.append(dict(logs))

    result = tfprune.search.dmcp(model, _data(192), 0.4, epochs=2, batch_size=8, seed=0, verbose=0,
                                 arch_learning_rate=0.1,
                                 callbacks=[Logs(), keras.callbacks.TensorBoard(tmp_path / "tb", write_graph=False)])
    assert isinstance(result, tfprune.search.SearchResult) and result.method == "dmcp"
    slim = result.slim_model()
    assert tfprune.count_macs(slim) / tfprune.count_macs(model) == pytest.approx(result.macs_ratio)
    assert abs(result.macs_ratio - 0.4) <= 0.05
    assert len(set(np.round(list(result.keep_ratios().values()), 2))) > 1  # the widths differ between groups
    assert set(result.marginals) == set(result.widths) == set(result.expected_widths)
    for q in result.marginals.values():
        assert np.all(np.diff(q) <= 0)
    assert result.history and result.history[-1]["macs_ratio"] == pytest.approx(result.expected_macs)
    assert 0 < result.warmup_steps < result.history[-1]["step"]
    assert result.history[0]["macs_ratio"] == pytest.approx(0.4 * (1 - 0.03 / 2), abs=1e-3)  # alpha_init="budget"
    assert {"dmcp_expected_macs", "budget_loss", "task_loss_max", "task_loss_min"} <= set(logged[0])
    assert "arch_task_loss" in logged[1] and "arch_task_loss" not in logged[0]
    result.figure().savefig(tmp_path / "dmcp.png")
    assert list((tmp_path / "tb" / "train").glob("events.out.tfevents.*"))
    # the caller's model is unchanged
    assert len(model.layers) == n_layers and model.get_config() == config
    for old, new in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert not any(isinstance(layer, MarkovChannelGate) for layer in model.layers)


def test_gated_model_saves_and_loads(tmp_path):
    supernet, trainer, gates, macs, ranks = _trainer(_resnet(), 0.5)
    for i, gate in enumerate(gates.values()):
        gate.alpha.assign(np.linspace(1, -1, gate.n_groups).astype("float32") * (i + 1))
    x, _ = _data(3)
    markov = trainer.gated.predict_on_batch(x)
    trainer.gated.save(tmp_path / "gated.keras")
    loaded = keras.models.load_model(tmp_path / "gated.keras")
    np.testing.assert_allclose(loaded.predict_on_batch(x), markov, rtol=1e-5, atol=1e-6)
    assert sum(isinstance(layer, MarkovChannelGate) for layer in loaded.layers) == len(gates)


def test_bad_input():
    model = _vgg()
    data = _data(16)
    with pytest.raises(ValueError, match="no loss was given"):
        tfprune.search.dmcp(model, data, 0.5)
    model.compile("adam", "sparse_categorical_crossentropy")
    for target in (0, 1.0, 1.5, "half"):
        with pytest.raises(ValueError, match=r"target_macs must be a MACs ratio in \(0, 1\)"):
            tfprune.search.dmcp(model, data, target)
    with pytest.raises(ValueError, match="below the smallest reachable MACs ratio"):
        tfprune.search.dmcp(model, data, 0.005)
    with pytest.raises(ValueError, match="increasing"):
        tfprune.search.dmcp(model, data, 0.5, width_range=(0.5, 0.25, 0.1))
    with pytest.raises(ValueError, match="end at 1.0"):
        tfprune.search.dmcp(model, data, 0.5, width_range=(0.2, 0.8, 0.2))
    with pytest.raises(ValueError, match="leaves no search epoch"):
        tfprune.search.dmcp(model, data, 0.5, epochs=1, warmup_fraction=0.6)
    with pytest.raises(ValueError, match="subnets must be an integer >= 2"):
        tfprune.search.dmcp(model, data, 0.5, subnets=1)
    with pytest.raises(ValueError, match="channel_order"):
        tfprune.search.dmcp(model, data, 0.5, channel_order="taylor")
    with pytest.raises(ValueError, match="alpha_init must be 'budget' or a number"):
        tfprune.search.dmcp(model, data, 0.5, alpha_init="high")
    with pytest.raises(ValueError, match=r"data must be \(x, y\)"):
        tfprune.search.dmcp(model, data + data, 0.5)
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="softmax")(inputs))
    fixed = keras.Model(inputs, outputs)
    fixed.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(PlanError, match="no prunable channel group"):
        tfprune.search.dmcp(fixed, _data(8, size=8), 0.5)


@pytest.mark.parametrize("target", [0.5, 0.25])
def test_repaired_widths_land_on_the_target_and_keep_their_proportions(target):
    model = tfprune.models.small_vgg()
    graph = tfprune.ChannelGraph(model)
    macs = tfprune.macs_model.MacsModel(model, graph)
    expected = {g.name: 0.3 * g.width * (1.5 if g.name == "fc" else 1.0) for g in graph.prunable_groups}
    ranks = {g.name: np.arange(g.width) for g in graph.prunable_groups}
    widths = repair_widths(expected, macs, ranks, target, dict.fromkeys(expected, 1))
    ratio = macs.macs_of_widths(widths, ranks) / macs.full
    assert 0.98 * target <= ratio <= target
    scale = widths["stage2_1_conv"] / expected["stage2_1_conv"]
    for name, width in widths.items():  # one common scale, up to rounding: no cheap group filled to the brim
        wanted = min(scale * expected[name], graph[name].width)
        assert abs(width - wanted) <= 2, (name, width, wanted)


@keras.saving.register_keras_serializable(package="test_dmcp")
class _RecordingL1(keras.regularizers.L1):
    """An L1 activity regularizer that records the sum of |activations| of each call."""

    seen, recording = [], True

    def __call__(self, x):
        if self.recording:
            self.seen.append(float(keras.ops.sum(keras.ops.abs(x))))
        return super().__call__(x)


def test_every_sub_network_pays_its_activity_regularizer_and_the_weights_pay_theirs_once():
    seen = _RecordingL1.seen  # Keras divides each activity loss by the batch size
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(8, 3, kernel_regularizer=keras.regularizers.L2(0.1), name="conv1")(inputs)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    h = keras.layers.Conv2D(16, 3, name="conv2")(h)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    h = keras.layers.Dense(10, activity_regularizer=_RecordingL1(0.01))(keras.layers.GlobalAveragePooling2D()(h))
    _, trainer, *_ = _trainer(keras.Model(inputs, h), 0.5, subnets=2, distill=False)
    x, y = _data(4)
    seen.clear()
    record = {}
    loss = float(trainer._weight_loss(x, y, record))
    assert len(seen) == 2 and abs(seen[0] - seen[1]) > 1e-3  # the largest and the smallest sub-network, different
    kernel = keras.ops.convert_to_numpy(trainer.gated.get_layer("conv1").kernel)
    expected = float(record["task_loss_max"]) + float(record["task_loss_min"]) + 0.01 * sum(seen) / len(x) \
        + 0.1 * float(np.square(kernel).sum())
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # the compiled step (traced on TensorFlow, stateless and jitted on JAX) computes the same loss
    _RecordingL1.recording = False
    try:
        logs = trainer.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    finally:
        _RecordingL1.recording = True
    np.testing.assert_allclose(logs["loss"][0], loss, rtol=1e-5)
