"""DropNet: masks hold exactly under any optimizer, the lowest mean activations go first, targets, rewinding."""

import keras
import numpy as np
import pytest

import tfprune
from tests.training_problems import classes as data
from tests.training_problems import classifier
from tfprune.callbacks import DropNet
from tfprune.pruning.masking import weight_masks


def cnn(optimizer="adam", jit_compile="auto"):
    model = classifier()
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit_compile)
    return model


def assert_masked_exactly(model, plan):
    variables = {v.path: v for v in model.weights}
    masks = weight_masks(model, plan)
    assert masks
    for path, keep in masks.items():
        assert np.all(variables[path].numpy()[~keep] == 0), path


class MasksHoldAtEveryStep(keras.callbacks.Callback):
    """Checks, before every batch, that every weight DropNet has masked so far is exactly zero."""

    def __init__(self, dropnet):
        super().__init__()
        self.dropnet, self.checked = dropnet, 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.dropnet.history:
            assert_masked_exactly(self.model, self.dropnet.plan())
            self.checked += 1


@pytest.mark.parametrize("optimizer, jit_compile", [("adam", True), (keras.optimizers.SGD(0.1, momentum=0.9),
                                                                      False)])
def test_masks_hold_exactly_at_every_step_with_momentum_and_adam(optimizer, jit_compile):
    model = cnn(optimizer, jit_compile)
    x, y = data()
    dropnet = DropNet(x[:16], fraction=0.3, rewind=None, seed=0)
    check = MasksHoldAtEveryStep(dropnet)
    model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[dropnet, check])
    assert check.checked >= 3 * 6
    plan = dropnet.plan()
    assert len(plan.keep["conv1"]) == 10 - 3 - 2 - 1 - 1  # 30% of the remaining, floored, at least one
    assert_masked_exactly(model, plan)
    slim = dropnet.slim_model()
    np.testing.assert_allclose(slim(x[:8]), model(x[:8]), rtol=1e-5, atol=1e-6)
    assert all(v.constraint is None for v in model.weights)
    assert len(model.variables) == len(model.weights) and "train_step" not in vars(model)  # left as it was


class CountsTraces(keras.Model):
    """A functional model that counts how often Keras traces its train step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.traces = 0

    def train_step(self, *args):
        self.traces += 1
        return super().train_step(*args)


def test_mask_changes_need_no_new_train_step():
    def counting_model():
        plain = classifier()
        model = CountsTraces(plain.inputs, plain.outputs)
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
        return model

    x, y = data()
    baseline = counting_model()
    baseline.fit(x, y, epochs=1, batch_size=16, verbose=0)
    model = counting_model()
    dropnet = DropNet(x[:16], fraction=0.3, rewind=None, seed=0)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[dropnet])
    assert len(dropnet.history) == 3
    assert_masked_exactly(model, dropnet.plan())
    # two mask changes during the fit, no more traces than a plain fit: the masks are variables, not step constants
    assert model.traces == baseline.traces >= 1


def test_a_fit_stopped_by_an_exception_can_be_run_again():
    model = cnn()
    x, y = data()
    dropnet = DropNet(x[:16], fraction=0.3, rewind=None, seed=0)

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[dropnet, Stop()])
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[dropnet])
    assert len(dropnet.history) == 3
    assert_masked_exactly(model, dropnet.plan())
    assert all(v.constraint is None for v in model.weights)
    assert len(model.variables) == len(model.weights) and "train_step" not in vars(model)


def test_lowest_mean_activation_goes_first_per_layer_and_globally():
    model = cnn()
    x, _ = data()
    bn = model.get_layer("bn1")
    beta, gamma = bn.beta.numpy(), bn.gamma.numpy()
    gamma[[2, 7]], beta[[2, 7]] = 0.0, [-1.0, 0.5]  # channel 2 always 0 after ReLU, channel 7 a constant 0.5
    gamma[[4]] = 0.05  # channel 4 nearly constant around 0: small
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    layer = DropNet(x, fraction=0.2, rewind=None)
    layer.set_model(model)
    layer.on_train_begin()
    layer.on_epoch_end(0, {})
    assert sorted(set(range(10)) - set(layer.plan().keep["conv1"])) == [2, 4]

    scores = tfprune.criteria.activations.channel_statistics(model, x, ("mean_abs",))
    glob = DropNet(x, fraction=0.2, scope="global", rewind=None)
    glob.set_model(model)
    glob.on_train_begin()
    glob.on_epoch_end(0, {})
    removed = {name: sorted(set(range(w)) - set(glob.plan().keep[name]))
               for name, w in (("conv1", 10), ("conv2", 12))}
    assert sum(len(r) for r in removed.values()) == 4  # 20% of 22 channels
    pooled = sorted((scores[n]["mean_abs"][c], n, c) for n in ("conv1", "conv2") for c in range(len(
        scores[n]["mean_abs"])))
    assert {(n, c) for _, n, c in pooled[:4]} == {(n, c) for n, r in removed.items() for c in r}


def test_ties_are_broken_at_random_with_the_seed_and_min_channels_holds():
    x, _ = data()

    def removed(seed, fraction=0.2, min_channels=1, steps=1):
        model = cnn()
        bn = model.get_layer("bn1")
        bn.gamma.assign(np.zeros(10, "float32"))  # every channel of conv1 is the same constant: all tie
        dropnet = DropNet(x, fraction=fraction, rewind=None, seed=seed, min_channels=min_channels)
        dropnet.set_model(model)
        dropnet.on_train_begin()
        for epoch in range(steps):
            dropnet.on_epoch_end(epoch, {})
        return tuple(sorted(set(range(10)) - set(dropnet.plan().keep["conv1"])))

    draws = {removed(seed) for seed in range(6)}
    assert len(draws) > 1 and all(len(d) == 2 for d in draws)
    assert removed(3) == removed(3)
    assert len(removed(0, fraction=0.5, min_channels=4, steps=5)) == 6


def test_rewind_to_theta_zero_is_bit_for_bit_for_kept_weights():
    model = cnn()
    x, y = data()
    initial = {v.path: v.numpy().copy() for v in model.weights}
    dropnet = DropNet(x[:16], fraction=0.3, every=2, rewind="initial")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[dropnet])  # one step, at the end of epoch 2
    masks = weight_masks(model, dropnet.plan())
    for v in model.weights:
        keep = masks.get(v.path, np.ones(v.shape, bool))
        np.testing.assert_array_equal(v.numpy()[keep], initial[v.path][keep])
        np.testing.assert_array_equal(dropnet.snapshot[v.path], initial[v.path])
    lottery = dropnet.slim_model(reinit="lottery", initial_weights=dropnet.snapshot)
    np.testing.assert_allclose(lottery(x[:4]), model(x[:4]), rtol=1e-5, atol=1e-6)


def test_rewind_to_epoch_k():
    model = cnn()
    x, y = data()
    snapshot = tfprune.callbacks.WeightSnapshot(epoch=1)
    dropnet = DropNet(x[:16], fraction=0.3, every=2, rewind=1)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[snapshot, dropnet])
    for path, value in snapshot.weights.items():
        np.testing.assert_array_equal(dropnet.snapshot[path], value)


def test_targets_channels_macs_and_metric_floor():
    x, y = data()
    by_channels = DropNet(x[:16], fraction=0.3, target=0.6, rewind=None)
    history = cnn().fit(x, y, epochs=6, batch_size=16, verbose=0, callbacks=[by_channels])
    channels = history.history["dropnet_channels"]
    first = next(i for i, c in enumerate(channels) if c <= 0.6)  # stops at the first step at or below the target
    assert all(c == channels[first] for c in channels[first:]) and len(by_channels.history) == first + 1
    assert channels[first] == pytest.approx(13 / 22)  # the last step only as large as needed: 7+9 → 6+7, not 5+7

    by_macs = DropNet(x[:16], fraction=0.3, target={"macs": 0.5}, rewind=None)
    history = cnn().fit(x, y, epochs=6, batch_size=16, verbose=0, callbacks=[by_macs])
    macs = history.history["dropnet_macs"]
    first = next(i for i, m in enumerate(macs) if m <= 0.5)
    assert all(m == macs[first] for m in macs[first:]) and len(by_macs.history) == first + 1 and first > 0
    assert macs[first] > 0.4

    model = cnn()
    floor = DropNet(x[:16], fraction=0.3, target={"score": 0.5}, rewind=None)
    before_second_step = {}

    class Record(keras.callbacks.Callback):
        """Puts a metric in the logs that falls below the floor after the second step, and keeps the weights."""

        def on_epoch_end(self, epoch, logs=None):
            logs["score"] = [1.0, 1.0, 0.0][epoch]
            if epoch == 1:
                before_second_step.update({v.path: v.numpy().copy() for v in self.model.weights})

    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[Record(), floor])
    assert len(floor.history) == 1 and floor._done
    assert len(floor.plan().keep["conv1"]) == 7  # the second step was undone: one step of 30% stands
    for v in model.weights:  # and the weights are those from just before the second step
        np.testing.assert_array_equal(v.numpy(), before_second_step[v.path])


def test_verbose_prints_one_line_per_step(capsys):
    x, y = data()
    cnn().fit(x, y, epochs=2, verbose=0, callbacks=[DropNet(x[:8], fraction=0.5, verbose=1, rewind=None)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("DropNet")]
    assert len(lines) == 2 and "masked" in lines[0] and "MACs ratio" in lines[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": 1.0}, "fraction must be a number in"),
    ({"fraction": 0}, "fraction must be a number in"),
    ({"scope": "minimum"}, "scope must be one of"),
    ({"every": 0}, "every"),
    ({"every": "often"}, "every"),
    ({"target": 0.0}, "target"),
    ({"target": {"macs": 2}}, "in \\(0, 1\\]"),
    ({"target": {"macs": 0.5, "channels": 0.5}}, "target must be"),
    ({"rewind": "final"}, "rewind"),
    ({"normalize": "max"}, "normalize"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DropNet(np.zeros((1, 6, 6, 2)), **kwargs)
    with pytest.raises(ValueError, match="needs data"):
        DropNet(None)


def test_plateau_needs_the_monitored_metric():
    x, y = data()
    with pytest.raises(ValueError, match="'val_loss', which is not in the epoch logs"):
        cnn().fit(x, y, epochs=1, verbose=0, callbacks=[DropNet(x, every="plateau")])


def test_plateau_steps_when_the_metric_stalls():
    x, y = data()
    dropnet = DropNet(x[:16], every="plateau", monitor="loss", patience=1, rewind=None)
    model = cnn(keras.optimizers.SGD(0.0))  # nothing improves: a step every other epoch (first sets the best)
    model.fit(x, y, epochs=5, verbose=0, callbacks=[dropnet])
    assert [h["epoch"] for h in dropnet.history] == [2, 4]


def test_config():
    config = DropNet(np.zeros(1), fraction=0.3, scope="global", target={"macs": 0.5}, rewind=3).get_config()
    assert config["target"] == {"macs": 0.5} and config["rewind"] == 3 and config["scope"] == "global"
