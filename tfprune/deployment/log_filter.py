"""quiet_log(): hide TensorFlow's, LiteRT's and the converters' routine log; let real warnings through.

TensorFlow and LiteRT log from C++ straight to file descriptor 2 ("I0000 ... port.cc] oneDNN custom operations are
on", "Created TensorFlow Lite XNNPACK delegate for CPU", converter notes), some of it before any Python setting can
take effect; TensorFlow's and absl's Python loggers add INFO lines ("Assets written to ...", "Sharding callback
duration"). Inside `quiet_log()` file descriptor 2 goes to a temporary file, Python's `sys.stderr` keeps writing to
the terminal, INFO records of Python loggers are dropped, and at the end every captured C++ line that is a warning or
an error and not on the list of known-harmless messages below is printed, so nothing real is hidden.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings

# C++ log lines that are routine on a CPU-only machine: absl's INFO lines and this list of W/E lines.
HARMLESS_NATIVE = (
    r"^I\d{4} ",                                                      # absl INFO lines
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"^INFO: ",                                                       # LiteRT: "Created ... XNNPACK delegate"
    r"failed call to cuInit",                                         # no GPU here
    r"Could not find cuda drivers",
    r"TF-TRT Warning",
    r"Ignored output_format|Ignored drop_control_dependency",        # TFLite converter's notes on its defaults
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"oneDNN custom operations are on",
    r"^To enable the following instructions: .* rebuild TensorFlow",
    r"^\s*$",
)
# Python warnings that are known to be harmless in tfprune's export and training paths.
HARMLESS_WARNINGS = (
    (r".*np\.object.*", FutureWarning),                               # Keras's NumPy-2 patch of tf2onnx
    (r".*`build\(\)` was called on layer.*", UserWarning),
    (r".*Skipping variable loading for optimizer.*", UserWarning),    # a .keras file reloaded without its optimizer
)


@contextlib.contextmanager
def quiet_log(verbose=False, stream=None):
    """Hide routine log output of TensorFlow and friends while the block runs (nothing is changed if `verbose`).

    Args:
        verbose: True to change nothing (every log line shows).
        stream: where the lines that were not harmless are reported at the end (default: the terminal's stderr).

    Example:

    >>> from tfprune.deployment.log_filter import quiet_log
    >>> with quiet_log():
    ...     import os
    ...     _ = os.write(2, b"I0000 00:00:1.0 1 port.cc:153] routine\\n")
    """
    if verbose:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fd = os.dup(2)
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    report = stream or terminal
    saved_stderr, saved_levels = sys.stderr, {}
    with tempfile.TemporaryFile() as captured, warnings.catch_warnings():
        for message, category in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        os.dup2(captured.fileno(), 2)
        sys.stderr = terminal
        for name in ("tensorflow", "absl", "tf2onnx", "h5py"):
            logger = logging.getLogger(name)
            saved_levels[name] = logger.level
            logger.setLevel(max(logger.level, logging.WARNING))
        try:
            yield
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sys.stderr = saved_stderr
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines()
            kept = [line for line in lines if not any(re.search(p, line) for p in HARMLESS_NATIVE)]
            if kept:
                report.write("\n".join(["(log lines from TensorFlow/LiteRT that are not known to be harmless:)",
                                        *kept[:40]] + ([f"({len(kept) - 40} more)"] if len(kept) > 40 else []))
                             + "\n")
            report.flush()
            terminal.close()
