"""summary(): a per-layer table of channels, parameters and MACs, of one model or of a model and its slim copy."""

import keras

from tfprune.graph.keras_nodes import call_nodes, is_graph_model
from tfprune.graph.rules import rule_for
from tfprune.graph.rules.keras_hub_attention import DecoderAttention
from tfprune.graph.tracing import open_model
from tfprune.measurement.counting import count_macs, count_params, layer_counts

ARROW = " → "
_HEADERS = ("Layer (path)", "Type", "Channels", "Params", "MACs")
_HEADS = "Heads"


def summary(model, slim=None, print_fn=None):
    """Print, in the manner of `model.summary()`, what each layer holds and computes, before and after pruning.

    One row per layer with weights or MACs (weightless layers such as activations and pooling are left out):
    its path ("submodel/layer" inside nested models), type, output channels, parameters and MACs for one input
    example (see `tfprune.count_macs`). Models with attention layers get a "Heads" column: "12 → 6 heads" for a
    `MultiHeadAttention`, "8/4 → 4/2 heads" (query/key-value heads) for a `GroupQueryAttention` or KerasHub's
    Llama and Mistral attention (inside custom layers too, read from the model's trace). With `slim`, every column
    reads "before → after"; layers are matched by path, which `tfprune.rebuild` keeps, and the last lines give the
    totals and their ratio after/before.

    Args:
        model: a built Functional or Sequential `keras.Model` with a fixed input size.
        slim: optionally, the pruned copy of `model` (from `tfprune.prune` or `tfprune.rebuild`).
        print_fn: called with each line of the table; defaults to `print`. Pass `lambda line: None` to only
            get the text back.

    Returns:
        The whole table as one string (the lines passed to `print_fn`, joined by newlines), so it can be logged,
        saved or checked.

    Raises:
        UnsupportedModelError: for a subclassed model or a Sequential model without an input shape.
        ValueError: when a convolution or Dense layer's input size is not fixed.

    Example:

    >>> import keras, tfprune
    >>> inputs = keras.Input((16, 16, 3))
    >>> x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    >>> x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_2")(x)
    >>> model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    >>> slim = tfprune.prune(model, 0.5)
    >>> text = tfprune.summary(model, slim, print_fn=lambda line: None)
    >>> text.splitlines()[-2]
    'Total params: 808 → 408 (after/before = 0.505)'
    """
    print_fn = print if print_fn is None else print_fn
    lines = _table(model, slim)
    for line in lines:
        print_fn(line)
    return "\n".join(lines)


def _table(model, slim):
    before = layer_counts(model)
    after = layer_counts(slim) if slim is not None else None
    # Heads are read from the graph models (custom layers opened, as counting does): KerasHub's blocks hold theirs.
    heads_before = attention_heads(open_model(model).model)
    heads_after = attention_heads(open_model(slim).model) if slim is not None else {}
    headers = _HEADERS + ((_HEADS,) if heads_before or heads_after else ())
    paths = list(before) + [p for p in (after or {}) if p not in before]
    rows = []
    for path in paths:
        b, a = before.get(path), (after or {}).get(path)
        if not any(c is not None and (c.params or c.macs) for c in (b, a)):
            continue
        kind = _kind(b or a)
        if after is None:
            row = (path, kind, _text(b.channels), f"{b.params:,}", _compact(b.macs))
            heads = heads_before.get(path, "")
        else:
            row = (path, kind,
                   _pair(b, a, lambda c: _text(c.channels)),
                   _pair(b, a, lambda c: f"{c.params:,}"),
                   _pair(b, a, lambda c: _compact(c.macs)))
            heads = (f"{heads_before.get(path, '—')}{ARROW}{heads_after.get(path, '—')}"
                     if path in heads_before or path in heads_after else "")
        rows.append(row + ((heads + " heads" if heads else "",) if len(headers) > len(_HEADERS) else ()))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def format_row(cells):
        left = [c.ljust(w) for c, w in zip(cells[:2], widths[:2], strict=True)]
        right = [c.rjust(w) for c, w in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(left + right).rstrip()

    rule = "─" * (sum(widths) + 2 * (len(widths) - 1))
    title = f'Model: "{model.name}"' + (f'{ARROW}"{slim.name}"' if slim is not None else "")
    lines = [title, rule, format_row(headers), rule.replace("─", "═")]
    lines += [format_row(r) for r in rows]
    lines.append(rule)
    lines += _totals(model, slim)
    return lines


def _totals(model, slim):
    params, macs = count_params(model), count_macs(model)
    if slim is None:
        return [f"Total params: {params:,}", f"Total MACs: {macs:,} ({_compact(macs)}, one input example)"]
    slim_params, slim_macs = count_params(slim), count_macs(slim)
    return [f"Total params: {params:,}{ARROW}{slim_params:,} (after/before = {_ratio(slim_params, params)})",
            f"Total MACs: {macs:,}{ARROW}{slim_macs:,} (after/before = {_ratio(slim_macs, macs)})"]


def attention_heads(model, prefix=""):
    """`{path: heads}` of the attention layers of a graph model (nested models included): "12" for a
    `MultiHeadAttention`, "8/4" (query/key-value heads) for a `GroupQueryAttention` and KerasHub's Gemma, Llama
    and Mistral attention. Custom layers are read through (`tfprune.trace`), as `count_macs` reads them: a KerasHub
    backbone's decoder blocks hold its attention layers.

    Args:
        model: a Functional or Sequential `keras.Model` (anything else has none: `{}`).
        prefix: put before every path (the paths inside a nested model start with its own path and "/"); given,
            `model` is taken as already read through.

    Example:

    >>> import keras
    >>> inputs = keras.Input((6, 16))
    >>> x = keras.layers.MultiHeadAttention(4, 8, name="mha")(inputs, inputs)
    >>> attention_heads(keras.Model(inputs, x))
    {'mha': '4'}
    """
    found = {}
    if not is_graph_model(model):
        return found
    if not prefix:
        model = open_model(model).model
    for node in call_nodes(model):
        op, path = node.operation, prefix + node.operation.name
        if is_graph_model(op):
            found.update(attention_heads(op, path + "/"))
        elif isinstance(op, keras.layers.MultiHeadAttention):
            found[path] = str(op.num_heads)
        elif isinstance(op, keras.layers.GroupQueryAttention):
            found[path] = f"{op.num_query_heads}/{op.num_key_value_heads}"
        elif isinstance(rule := rule_for(op), DecoderAttention):  # KerasHub's decoder attention
            found[path] = "/".join(str(n) for n in rule.head_counts(op))
    return found


def _kind(count):
    return count.kind if count.calls <= 1 else f"{count.kind} ({count.calls} calls)"


def _pair(before, after, show):
    """ "x → y" for a layer in both models, with "—" for the side that lacks it."""
    return (show(before) if before else "—") + ARROW + (show(after) if after else "—")


def _text(value):
    return "" if value is None else str(value)


def _ratio(after, before):
    return f"{after / before:.3f}" if before else "n/a"


def _compact(n):
    """A MAC count in a few characters: 0, 950, 12.35K, 4.09M, 3.86G."""
    for unit, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
