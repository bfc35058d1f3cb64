"""``import rnnkit`` (the library) loads torch and numpy only: none of the application's dependencies.

torch itself imports tqdm when it is installed (``torch.hub`` draws its progress bars with it), so what the library
loads is measured in a fresh interpreter that has imported torch first.
"""

import subprocess
import sys

import pytest

APPLICATION_MODULES = {"pandas", "sklearn", "matplotlib", "transformers", "tqdm", "safetensors"}


def _loaded_by(statement: str) -> set[str]:
    """The modules a fresh interpreter that has imported torch loads when it runs ``statement``."""
    code = (f"import sys, torch\nbefore = set(sys.modules)\n{statement}\n"
            "print(' '.join(sorted(set(sys.modules) - before)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(done.stdout.split())


@pytest.mark.parametrize("statement", ["import rnnkit", "import rnnkit.layers", "import rnnkit.batching",
                                       "import rnnkit.vocab"])
def test_the_library_loads_no_application_dependency(statement):
    loaded = _loaded_by(statement)
    assert "rnnkit" in loaded
    assert not {name.partition(".")[0] for name in loaded} & APPLICATION_MODULES
    assert not [name for name in loaded if name.startswith(("rnnkit.erc", "rnnkit.trainer", "rnnkit.cli"))]


def test_the_command_line_names_the_extra_when_it_is_missing():
    # A None entry in sys.modules makes "import sklearn" fail as if it were not installed.
    code = ("import sys\nsys.modules['sklearn'] = None\n"
            "from rnnkit.cli import main\nsys.exit(main(['train', '--out', 'x']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        'rnnkit: error: the command line needs the erc extra (sklearn is not installed): pip install "rnnkit[erc]"']
