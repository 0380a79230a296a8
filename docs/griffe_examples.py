"""Griffe extension: read Keras-style examples as Google-style "Examples" sections.

tfprune's docstrings follow Keras's house style, where the doctest lines after "Example:" are not indented:

    Example:

    >>> import tfprune

A Google-style parser reads that as plain text, which Markdown then renders as a quote (and `x["a"]["b"]` in it as
a link). This extension indents such a block under its title before the docstring is parsed, so it renders as a
code example. Nothing else in a docstring changes.
"""

import re

import griffe

TITLE = re.compile(r"^Examples?:\s*$")
SECTION = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")  # the next section title at column 0 ends the example block


def indent_examples(text):
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        out.append(lines[i])
        if TITLE.match(lines[i]):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and lines[j].startswith(">>>"):
                i += 1
                while i < len(lines) and not SECTION.match(lines[i]):
                    out.append(f"    {lines[i]}" if lines[i].strip() else "")
                    i += 1
                continue
        i += 1
    return "\n".join(out)


class KerasStyleExamples(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = indent_examples(obj.docstring.value)
