"""Issue 17's battery of bad inputs: every one refused with the right error type and a message that
names the argument (or the file) and the rule, before any computation; no traceback from the CLI.

One table per area, one module per layer of the library, each row ``pytest.param(<the bad call>,
<exception type>, <regex>, id=...)``:

    OPS          test_bad_inputs_ops.py: fcnn.ops (conv2d, max/avg/global pools) and fcnn.shapes
    LAYERS       test_bad_inputs_layers.py: fcnn.layers / activations constructors, init with bad
                 shapes, apply with an input that differs from the one init saw, keys,
                 fcnn.combinators, fcnn.models, fcnn.summary
    TRAINING     test_bad_inputs_training.py: TrainConfig (every field), fcnn.step, fcnn.train.fit
                 (RUN_DIRS: its run directory), fcnn.optim, fcnn.losses
    DATA         test_bad_inputs_data.py: fcnn.data (load, batching) and damaged IDX / CIFAR-10 files
                 (the error names the file)
    CHECKPOINTS  test_bad_inputs_checkpoints.py: fcnn.checkpoint.save / restore / latest / load_latest
                 and fcnn.run.read_config
    CLI          test_bad_inputs_cli.py: every command of ``fcnn``: status 2 (1 for runtime failures),
                 ONE line on stderr that starts with "fcnn" and names the argument or file, no
                 "Traceback"

Regexes match with ``re.search`` (``pytest.raises(match=)``); ``_all(a, b, ...)`` means "a, b, ...
all appear, in any order". Rows the library does not answer as it should yet are
``xfail(strict=True)`` with the reason "issue 17: <what happens now>": when the library is fixed the
row XPASSes, fails, and its marker must be removed. The row builders and the objects several modules
use are in tests/_bad_inputs.py.

Nothing here trains: every error is raised before a step runs. The one model is built once
(``_tiny``), the file rows write a few bytes into ``tmp_path``. This module holds the test over all
the tables: the battery's size.
"""
from test_bad_inputs_checkpoints import CHECKPOINTS
from test_bad_inputs_cli import CLI
from test_bad_inputs_data import DATA
from test_bad_inputs_layers import LAYERS
from test_bad_inputs_ops import OPS
from test_bad_inputs_training import RUN_DIRS, TRAINING


def test_the_battery_has_at_least_150_cases():
    sizes = {"ops": len(OPS), "layers": len(LAYERS), "training": len(TRAINING) + len(RUN_DIRS), "data": len(DATA),
             "checkpoints": len(CHECKPOINTS), "cli": len(CLI) + 1}
    assert sum(sizes.values()) >= 150, sizes
    assert min(sizes.values()) >= 10, sizes
