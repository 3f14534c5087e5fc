"""Fetch transformers' common model tests from the pinned source distribution (`make test-hf-common`).

    python tests/hf_common/prepare.py CACHE_DIR

Downloads the sdist of the installed (pinned) transformers version with pip, unpacks its `tests/*.py` into
CACHE_DIR/transformers_tests/ (a package, so their relative imports resolve) and prints that folder's parent.
The sdist omits three helper modules the common tests import: `exporters/test_export.py` (the export mixin,
whose tests then do not run; tests/hf_common/test_dbeta_common.py has its own torch.export and ONNX tests),
`generation/test_utils.py` (the generate mixin; no D-BETA class generates) and `utils/test_configuration_utils.py`
(common config kwargs, unused for a config with sub-configs). They are supplied as empty stand-ins. Nothing is copied into the project.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

STUBS = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    # Read only by ConfigTester.check_config_arguments_init, which returns early for configs with sub-configs.
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}


def prepare(cache: Path) -> Path:
    version = transformers.__version__
    root = cache / f"transformers-{version}"
    package = root / "transformers_tests"
    if (package / "test_modeling_common.py").is_file():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"transformers=={version}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("transformers-*.tar.gz"))
        prefix = f"transformers-{version}/tests/"
        package.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = member.name
                if member.isfile() and name.startswith(prefix) and name.endswith(".py") and "/" not in name[len(prefix):]:
                    (package / name[len(prefix):]).write_bytes(tar.extractfile(member).read())
    (package / "__init__.py").touch()
    for rel, text in STUBS.items():
        path = package / rel
        path.parent.mkdir(exist_ok=True)
        (path.parent / "__init__.py").touch()
        if not path.exists():
            path.write_text(text)
    return root


if __name__ == "__main__":
    print(prepare(Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/hf-common").resolve()))
