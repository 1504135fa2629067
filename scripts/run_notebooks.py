"""Executes notebooks headless against the committed results (`cargo xtask notebooks`).

Each notebook runs top to bottom in a fresh kernel whose working directory is the notebook's
folder; any cell error fails the run. With --update the executed notebook, outputs included, is
written back, so a code host shows its tables and plots.
"""

import argparse
import pathlib
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path)
    parser.add_argument("--update", action="store_true", help="write the outputs back")
    args = parser.parse_args()
    failed = []
    for path in args.notebooks:
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": str(path.parent)}},
        )
        try:
            client.execute()
        except CellExecutionError as error:
            print(f"{path}: a cell failed:\n{error}", file=sys.stderr)
            failed.append(path)
            continue
        code = sum(1 for c in notebook.cells if c.cell_type == "code")
        if args.update:
            nbformat.write(notebook, path)
        print(f"{path}: {code} code cells ran" + (" (outputs stored)" if args.update else ""))
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(map(str, failed))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
