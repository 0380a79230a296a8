"""tfprune.trace: custom layers and subclassed models opened into Functional graphs of the same layer objects."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprune
from tests.test_graph import randomize
from tfprune.deployment.verification import check_equivalence, outputs

L = keras.layers


class ConvBlock(L.Layer):
    """conv → BN → ReLU → dropout → conv, plus the input (a residual block)."""

    def __init__(self, filters, rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.rate = filters, rate
        self.conv = L.Conv2D(filters, 3, padding="same", name="conv")
        self.bn = L.BatchNormalization(name="bn")
        self.drop = L.Dropout(rate, name="drop")
        self.conv2 = L.Conv2D(filters, 3, padding="same", name="conv2")

    def call(self, x, training=None):
        y = self.drop(keras.ops.relu(self.bn(self.conv(x), training=training)), training=training)
        return x + self.conv2(y)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "rate": self.rate}


class Stage(L.Layer):
    """Two ConvBlocks: a custom layer made of custom layers."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.first = ConvBlock(filters, name="first")
        self.second = ConvBlock(filters, rate=0.5, name="second")

    def call(self, x, training=None):
        return self.second(self.first(x, training=training), training=training)


class SqueezeExcite(L.Layer):
    """Squeeze-excite written with keras.ops."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.reduce = L.Conv2D(max(1, channels // 4), 1, name="reduce")
        self.expand = L.Conv2D(channels, 1, name="expand")

    def call(self, x):
        s = keras.ops.mean(x, axis=(1, 2), keepdims=True)
        return x * keras.ops.sigmoid(self.expand(keras.ops.relu(self.reduce(s))))


class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stem = L.Conv2D(8, 3, name="stem")
        self.stage = Stage(8, name="stage")
        self.se = SqueezeExcite(8, name="se")
        self.head = L.Dense(3, name="head")

    def call(self, x, training=None):
        x = self.se(self.stage(self.stem(x), training=training))
        return self.head(keras.ops.mean(x, axis=(1, 2)))


def built_net():
    model = Net(name="net")
    model(np.zeros((1, 10, 10, 3), "float32"))
    return randomize(model)


def x_for(shape, seed=1):
    return np.random.default_rng(seed).normal(size=(2, *shape)).astype("float32")


def test_subclassed_model_is_traced_into_functional_graph_of_its_own_layers():
    model = built_net()
    weights = [w.copy() for w in model.get_weights()]

    traced = tfprune.trace(model)

    assert isinstance(traced, keras.Model) and type(traced).__name__ == "Functional" and traced.name == "net"
    graph = tfprune.ChannelGraph(model)
    for path in ("stem", "stage/first/conv", "stage/first/bn", "stage/second/conv2", "se/reduce", "se/expand", "head"):
        assert path in graph.layers, sorted(graph.layers)
    assert graph.layers["stage/first/conv"] is model.stage.first.conv  # the same objects: weights shared
    assert graph.layers["stage/first/conv"].kernel is model.stage.first.conv.kernel
    assert graph.closed == {}
    x = x_for((10, 10, 3))
    np.testing.assert_allclose(outputs(traced, x)[0], outputs(model, x)[0], rtol=1e-6, atol=1e-6)
    assert type(model) is Net  # the caller's model is untouched
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # checking in training mode restored moving statistics


def test_subclassed_model_masks_in_place_and_rebuilds_to_a_functional_model(tmp_path):
    model = built_net()
    plan = tfprune.plan(model, 0.5)
    assert {"stem", "stage/first/conv", "se/reduce"} <= set(plan.keep)

    slim = tfprune.rebuild(model, plan)
    assert tfprune.mask(model, plan) is model  # the subclassed model's own variables, zeroed in place
    assert np.abs(model.stage.first.conv.kernel.numpy()).sum(axis=(0, 1, 2)).tolist().count(0.0) == 4

    x = x_for((10, 10, 3))
    np.testing.assert_allclose(outputs(slim, x)[0], outputs(model, x)[0], rtol=1e-5, atol=1e-5)
    assert slim.get_layer("stage").get_layer("first").get_layer("conv").filters == 4
    assert tfprune.count_macs(slim) < tfprune.count_macs(model)
    slim.save(tmp_path / "slim.keras")
    loaded = keras.saving.load_model(tmp_path / "slim.keras")  # plain Functional: no custom objects needed
    np.testing.assert_allclose(outputs(loaded, x)[0], outputs(slim, x)[0], rtol=1e-6, atol=1e-6)


def test_functional_model_with_custom_layers_is_opened_and_counted_inside():
    inputs = keras.Input((8, 8, 4))
    x = ConvBlock(4, name="block1")(inputs)
    x = SqueezeExcite(4, name="se")(x)
    model = randomize(keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x))))

    counts = tfprune.measurement.counting.layer_counts(model)

    assert counts["block1/conv"].macs == 8 * 8 * 9 * 4 * 4
    assert tfprune.count_macs(model) == 2 * 8 * 8 * 9 * 4 * 4 + 4 * 1 + 1 * 4 + 4 * 2
    assert "block1/conv" in tfprune.summary(model, print_fn=lambda line: None)
    graph = tfprune.ChannelGraph(model)
    assert graph["block1/conv"].prunable and graph["se/reduce"].prunable


def test_training_flag_reaches_inner_layers_and_dropout_agrees_in_training_mode():
    inputs = keras.Input((6, 6, 4))
    model = keras.Model(inputs, ConvBlock(4, rate=0.5, name="block")(inputs))
    traced = tfprune.trace(model)  # checked in training mode too: same dropout masks from the same seed states
    assert isinstance(traced.get_layer("block"), keras.Model)
    x = x_for((6, 6, 4))
    state = [keras.ops.convert_to_numpy(v) for v in model.variables]
    a = np.asarray(model(x, training=True))
    for v, value in zip(model.variables, state, strict=True):
        v.assign(value)
    b = np.asarray(traced(x, training=True))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert not np.allclose(a, np.asarray(traced(x, training=False)))  # dropout is active in training mode


class BranchesOnTraining(L.Layer):
    """Python `if` on `training`: a trace made with training unset cannot keep it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(4, 1, name="conv")

    def call(self, x, training=None):
        y = self.conv(x)
        if training:
            y = y * 0.5
        return y


class UsesTensorFlow(L.Layer):
    """A call that only runs on TensorFlow tensors (and mixes channels)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(4, 1, name="conv")

    def call(self, x):
        return tf.roll(self.conv(x), shift=1, axis=-1)


@pytest.mark.parametrize("layer, why", [
    (BranchesOnTraining, "in training mode output 0 differs"),
    # on JAX Keras cannot even build a model with this layer (tf.roll of a JAX tracer)
    pytest.param(UsesTensorFlow, "could not be traced (ValueError: A KerasTensor", marks=pytest.mark.tensorflow_only)])
def test_a_layer_that_cannot_be_traced_faithfully_stays_a_boundary_with_its_reason(layer, why):
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3, name="before")(inputs)
    x = layer(name="odd")(x)
    model = randomize(keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(L.Conv2D(5, 1, name="after")(x)))))

    graph = tfprune.ChannelGraph(model)

    assert "odd" in graph.layers and "odd/conv" not in graph.layers
    assert why in graph.closed["odd"], graph.closed
    reasons = graph["before"].reasons
    assert any(r.startswith(f"passes through 'odd' ({layer.__name__}): ") and why in r for r in reasons), reasons
    assert graph["after"].prunable
    slim = tfprune.prune(model, 0.5)
    x = x_for((6, 6, 3))
    np.testing.assert_allclose(outputs(slim, x)[0].shape, (2, 2))
    with pytest.raises(tfprune.UnknownMACsError, match="'odd' .*could not be traced") if layer is UsesTensorFlow \
            else _nothing():
        tfprune.count_macs(model)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class TwoInTwoOut(L.Layer):
    """Several inputs and outputs: (a, b) → (conv(a) + b, conv2(b))."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(6, 1, name="conv")
        self.conv2 = L.Conv2D(5, 1, name="conv2")

    def call(self, inputs):
        a, b = inputs
        return self.conv(a) + b, self.conv2(b)


def test_multiple_inputs_and_outputs_and_a_custom_layer_called_twice():
    a_in, b_in = keras.Input((6, 6, 3), name="a"), keras.Input((6, 6, 6), name="b")
    b = L.Conv2D(6, 1, name="b_conv")(b_in)
    shared = TwoInTwoOut(name="shared")
    s1, t1 = shared([a_in, b])
    s2, t2 = shared([a_in, s1])  # the same layer (and weights) called twice
    y = L.Concatenate()([t1, t2])
    model = randomize(keras.Model({"a": a_in, "b": b_in}, {"sum": L.Conv2D(2, 1, name="out1")(s2),
                                                            "cat": L.Conv2D(2, 1, name="out2")(y)}))

    graph = tfprune.ChannelGraph(model)

    assert graph.layers["shared/conv"] is shared.conv and not graph.closed
    assert graph["shared/conv2"].prunable  # read by out2 only
    plan = tfprune.plan(model, 0.5)
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    slim = tfprune.rebuild(model, plan)
    tfprune.mask(masked, plan)
    x = {"a": x_for((6, 6, 3)), "b": x_for((6, 6, 6), seed=2)}
    for e, s in zip(outputs(masked, x), outputs(slim, x), strict=True):
        np.testing.assert_allclose(s, e, rtol=1e-5, atol=1e-5)


class Affine(L.Layer):
    """A learnable scalar affine with weights of its own, like HGNetV2's LearnableAffineBlock."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(1,), initializer="ones", name="scale")
        self.bias = self.add_weight(shape=(1,), initializer="zeros", name="bias")

    def call(self, x):
        return self.scale * x + self.bias


def test_closed_layer_that_acts_per_channel_passes_channels():
    inputs = keras.Input((6, 6, 3))
    x = Affine(name="affine")(L.Conv2D(8, 3, name="conv")(inputs))
    model = randomize(keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="c2")(x)))))

    graph = tfprune.ChannelGraph(model)

    assert "holds weights of its own" in graph.closed["affine"]
    assert graph["conv"].prunable
    assert tfprune.count_macs(model) == 4 * 4 * 9 * 3 * 8 + 4 * 4 * 8 * 4 + 4 * 2

    assert check_equivalence(model, tfprune.plan(model, 0.5)) < 1e-5


class OwnKernel(L.Layer):
    """Weights of its own, used by a keras.ops matmul: not opened, but counted through its trace."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 7), name="kernel")

    def call(self, x):
        return keras.ops.matmul(x, self.kernel)


class OwnKernelTensorFlow(OwnKernel):
    def call(self, x):
        return tf.matmul(x, self.kernel)


def test_a_layer_with_weights_is_counted_through_its_trace():
    inputs = keras.Input((5,))
    model = keras.Model(inputs, OwnKernel(name="mine")(inputs))
    assert tfprune.count_macs(model) == 5 * 7


@pytest.mark.tensorflow_only  # on JAX Keras cannot build a model with this layer (tf.matmul of a JAX tracer)
def test_counting_never_leaves_out_a_layer_with_weights():
    inputs = keras.Input((5,))
    model = keras.Model(inputs, OwnKernelTensorFlow(name="opaque")(inputs))
    with pytest.raises(tfprune.UnknownMACsError, match="layer 'opaque' \\(OwnKernelTensorFlow\\).*lower_bound"):
        tfprune.count_macs(model)
    with pytest.warns(UserWarning, match="lower bound.*'opaque'"):
        assert tfprune.count_macs(model, unknown_macs="lower_bound") == 0


@pytest.mark.tensorflow_only  # as above
def test_unknown_macs_give_one_warning_that_names_every_unknown_layer_at_the_callers_line():
    inputs = keras.Input((5,))
    x = OwnKernelTensorFlow(name="opaque1")(inputs)
    model = keras.Model(inputs, OwnKernelTensorFlow(name="opaque2")(L.Dense(5, name="fc")(x)))
    with pytest.warns(UserWarning) as record:
        assert tfprune.count_macs(model, unknown_macs="lower_bound") == 7 * 5  # fc alone
    assert len(record) == 1, [str(w.message) for w in record]
    message = str(record[0].message)
    assert "2 layer(s)" in message and "'opaque1' (OwnKernelTensorFlow" in message and "'opaque2'" in message
    assert record[0].filename == __file__  # the caller's line, not one inside tfprune


class Patches(L.Layer):
    """Image patches as Keras's ViT example cuts them: the batch size is read from the tensor at run time."""

    def __init__(self, size, infer_count=False, **kwargs):
        super().__init__(**kwargs)
        self.size, self.infer_count = size, infer_count

    def call(self, images):
        shape = keras.ops.shape(images)
        batch, count = shape[0], (shape[1] // self.size) * (shape[2] // self.size)
        patches = keras.ops.image.extract_patches(images, size=self.size)
        return keras.ops.reshape(patches, (batch, -1 if self.infer_count else count, self.size ** 2 * shape[3]))


@pytest.mark.parametrize("infer_count", [False, True])
def test_a_layer_that_reshapes_with_the_batch_size_is_traced(infer_count):
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = L.Dense(6, name="embed")(Patches(4, infer_count, name="patches")(x))  # 4 patches of 4·4·4 = 64 features
    model = randomize(keras.Model(inputs, L.Dense(3, name="out")(L.GlobalAveragePooling1D()(x))))

    graph = tfprune.ChannelGraph(model)

    assert any(path.startswith("patches/reshape") for path in graph.layers) and not graph.closed, graph.closed
    assert graph["embed"].prunable
    assert tfprune.count_macs(model) == 8 * 8 * 9 * 3 * 4 + 4 * 64 * 6 + 6 * 3
    plan = tfprune.plan(model, 0.5)
    assert check_equivalence(model, plan) < 1e-5
    assert tfprune.rebuild(model, plan).get_layer("embed").units == 3


class ReshapesToAnOpenSize(L.Layer):
    def call(self, x):
        shape = keras.ops.shape(x)
        return keras.ops.reshape(x, (shape[0], shape[1], -1, 2))  # the height is unknown on symbolic inputs


def test_a_reshape_to_a_size_known_only_at_run_time_closes_the_layer_with_its_reason():
    inputs = keras.Input((None, None, 3))
    x = ReshapesToAnOpenSize(name="rows")(L.Conv2D(4, 3, padding="same", name="conv")(inputs))
    model = keras.Model(inputs, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))

    graph = tfprune.ChannelGraph(model)

    assert "axis other than the batch axis" in graph.closed["rows"], graph.closed
    assert not graph["conv"].prunable  # its channels reach a closed layer


class ConvThenFlatten(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(6, 3, padding="same", name="conv")

    def call(self, x):
        y = self.conv(x)
        return keras.ops.reshape(y, (-1, 6 * 6, 6))


def test_a_keras_ops_reshape_inside_a_custom_layer_rebuilds():
    inputs = keras.Input((6, 6, 3))
    x = ConvThenFlatten(name="block")(L.Conv2D(4, 3, padding="same", name="stem")(inputs))
    x = L.Dense(4, name="mix")(x)
    model = randomize(keras.Model(inputs, L.Dense(3, name="out")(L.GlobalAveragePooling1D()(x))))
    plan = tfprune.plan(model, 0.5)
    assert {"stem", "block/conv", "mix"} <= set(plan.keep)

    slim = tfprune.rebuild(model, plan)

    assert slim.get_layer("block").get_layer("conv").filters == 3
    assert slim.get_layer("block").output.shape == (None, 36, 3)
    assert check_equivalence(model, plan) < 1e-5


class DrawsWithoutSeed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(4, 3, padding="same")
        self.head = L.Dense(2)

    def call(self, x, training=False):
        y = self.conv(x)
        if training:
            y = keras.random.dropout(y, 0.5)
        return self.head(keras.ops.mean(y, axis=(1, 2)))


class NoisyBlock(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(4, 3, padding="same", name="conv")

    def call(self, x):
        return self.conv(x) + keras.random.normal((4,))


class HoldsNoisyBlock(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = NoisyBlock(name="noisy")
        self.head = L.Dense(2)

    def call(self, x):
        return self.head(keras.ops.mean(self.block(x), axis=(1, 2)))


@pytest.mark.parametrize("model_class, named", [(DrawsWithoutSeed, "subclassed model 'random' (DrawsWithoutSeed)"),
                                                (HoldsNoisyBlock, "layer 'noisy'")])
def test_unseeded_random_numbers_are_refused_naming_the_layer_and_what_to_do(model_class, named):
    model = model_class(name="random")
    model(np.zeros((1, 6, 6, 3), "float32"))
    messages = set()
    for _ in range(2):
        with pytest.raises(tfprune.UnsupportedModelError) as error:
            tfprune.trace(model, input_shape=(6, 6, 3))  # on JAX an eager call leaves HoldsNoisyBlock unbuilt
        messages.add(str(error.value))
    assert len(messages) == 1, messages  # no figure that changes between calls
    message = messages.pop()
    assert named in message and "without a seed" in message and "keras.layers.Dropout" in message, message


def test_never_built_subclassed_model_needs_input_shape():
    model = Net(name="fresh")
    with pytest.raises(tfprune.UnsupportedModelError, match="never built.*input_shape=") as error:
        tfprune.ChannelGraph(model)
    assert "'fresh' (Net)" in str(error.value)
    traced = tfprune.trace(model, input_shape=(10, 10, 3))
    assert traced.inputs[0].shape == (None, 10, 10, 3)
    assert "stage/first/conv" in tfprune.ChannelGraph(traced).layers


class NeedsMore(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(2)

    def call(self, x, temperature):
        return self.dense(x) / temperature


class Disagrees(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(2)

    def call(self, x, training=None):
        return self.dense(x) * (2.0 if training else 1.0)


def test_subclassed_models_tfprune_cannot_read_are_refused_with_the_reason():
    with pytest.raises(tfprune.UnsupportedModelError, match="needs argument\\(s\\) 'temperature'.*cannot invent"):
        tfprune.trace(NeedsMore(), input_shape=(4,))
    model = Disagrees(name="odd")
    model(np.ones((1, 4), "float32"))
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(tfprune.UnsupportedModelError, match="'odd' \\(Disagrees\\) does not compute.*training mode"):
        tfprune.ChannelGraph(model)
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # the caller's model is never modified
    with pytest.raises(ValueError, match="input_shape must be"):
        tfprune.trace(NeedsMore(), input_shape="big")


def test_data_criteria_and_a_training_callback_work_on_a_subclassed_model():
    model = built_net()
    x = x_for((10, 10, 3))
    plan = tfprune.plan(model, 0.5, criterion="apoz", data=x)  # feature maps measured on the trace's graph
    assert "stage/first/conv" in plan.keep

    from tfprune.callbacks import DropNet

    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dropnet = DropNet(x, fraction=0.25, rewind=None)
    model.fit(x, np.array([0, 1]), epochs=2, verbose=0, callbacks=[dropnet])
    slim = dropnet.slim_model()
    assert type(slim).__name__ == "Functional" and tfprune.count_macs(slim) < tfprune.count_macs(model)


def test_model_with_open_input_size_is_checked_on_a_size_it_accepts():
    inputs = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, strides=2, name="stem")(inputs)
    x = ConvBlock(4, name="block")(x)
    model = keras.Model(inputs, L.GlobalAveragePooling2D()(L.Conv2D(3, 1, name="out")(x)))

    graph = tfprune.ChannelGraph(model)

    assert graph["block/conv"].prunable and graph.model.inputs[0].shape == (None, None, None, 3)
    assert tfprune.trace(model, input_shape=(12, 12, 3)).inputs[0].shape == (None, None, None, 3)
    with pytest.raises(ValueError, match="does not fit"):
        tfprune.trace(model, input_shape=(12, 12))


def test_a_shared_custom_layer_whose_trace_disagrees_is_closed_at_every_call():
    inputs = keras.Input((6, 6, 4))
    odd = BranchesOnTraining(name="odd")
    x = odd(L.Conv2D(4, 1, name="a")(inputs))
    y = odd(ConvBlock(4, name="block")(x))  # called twice; its trace disagrees in training mode
    model = randomize(keras.Model(inputs, L.GlobalAveragePooling2D()(L.Conv2D(2, 1, name="out")(y))))

    graph = tfprune.ChannelGraph(model)

    assert "odd" in graph.layers and "odd/conv" not in graph.layers and "block/conv" in graph.layers
    assert "training mode" in graph.closed["odd"]
