"""MkDocs hook: publish the committed benchmark figures (`benchmarks/results/*.png`) in the site.

Each figure appears at `benchmarks/<name>.png`, beside the benchmark pages (`docs/benchmarks/*.md`) that include the
results files: a figure link inside a results file (`![...](criteria.png)`) then resolves as it does in the
repository, and no figure is copied into `docs/`.
"""

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = "benchmarks/results"


def on_files(files, config):
    root = Path(config.config_file_path).parent
    for figure in sorted((root / RESULTS).glob("*.png")):
        files.append(File.generated(config, f"benchmarks/{figure.name}", abs_src_path=str(figure)))
    return files
