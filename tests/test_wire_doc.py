"""doc/wire.md is generated from the header, schemas and samples: keep it current."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_wire_doc_is_current():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_wire_doc.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
