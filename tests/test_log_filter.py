"""tfprune.deployment.log_filter.quiet_log: routine native log lines are hidden, anything else is still reported."""

import io
import logging
import os
import sys
import warnings

from tfprune.deployment.log_filter import quiet_log


def test_routine_lines_hidden_real_warnings_reported(capfd):
    report = io.StringIO()
    with quiet_log(stream=report):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1795996985.644405 4789 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"W0000 00:00:1.0 1 some_kernel.cc:12] Out of memory for a buffer\n")
        logging.getLogger("tensorflow").info("Assets written to: /tmp/x/assets")
        warnings.warn("np.object is deprecated", FutureWarning, stacklevel=1)  # Keras's tf2onnx patch: known harmless
        print("progress", file=sys.stderr)  # Python's stderr still reaches the terminal
    captured = capfd.readouterr()
    assert "progress" in captured.err
    assert "port.cc" not in captured.err + report.getvalue()
    assert "XNNPACK" not in captured.err + report.getvalue()
    assert "Assets written" not in captured.err + report.getvalue()
    assert "np.object" not in captured.err
    assert report.getvalue().splitlines() == [
        "(log lines from TensorFlow/LiteRT that are not known to be harmless:)",
        "W0000 00:00:1.0 1 some_kernel.cc:12] Out of memory for a buffer"]
    assert logging.getLogger("tensorflow").level == logging.NOTSET  # restored


def test_verbose_changes_nothing(capfd):
    with quiet_log(verbose=True):
        os.write(2, b"I0000 port.cc:153] shown\n")
    assert "shown" in capfd.readouterr().err
