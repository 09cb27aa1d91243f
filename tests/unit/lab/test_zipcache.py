"""tests/lab/zipcache.py: modules imported from a zip compile once, keep their own path, follow their source."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
import zipimport
from pathlib import Path

ZIPCACHE = Path(__file__).resolve().parents[2] / "lab" / "zipcache.py"

# Imports `payload` from the zip named on the command line with the cache active, and prints what
# the module returns and the file its failing function's traceback names.
RUN = f"""
import runpy, sys, traceback
runpy.run_path({str(ZIPCACHE)!r})
sys.path.insert(0, sys.argv[1])
import payload
print(payload.VALUE)
try:
    payload.fail()
except ValueError:
    print(traceback.extract_tb(sys.exc_info()[2])[-1].filename)
"""


def make_zip(path: Path, value: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("payload.py", f"VALUE = {value!r}\n\ndef fail():\n    raise ValueError(VALUE)\n")
    return path


def run(zip_path: Path, cache: Path) -> list[str]:
    env = {"KUBEIPVS_LAB_ZIPCACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", RUN, str(zip_path)], env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.split()


def test_a_module_compiles_once_and_keeps_the_path_of_the_zip_it_is_loaded_from(tmp_path):
    cache = tmp_path / "cache"
    first = make_zip(tmp_path / "first.zip", "one")
    assert run(first, cache) == ["one", f"{first}/payload.py"]
    entries = sorted(cache.iterdir())
    assert len(entries) == 1, "one source, one cached code object"
    written = entries[0].stat().st_mtime_ns

    second = make_zip(tmp_path / "second.zip", "one")  # the same source in another zip, as each task's is
    assert run(second, cache) == ["one", f"{second}/payload.py"], "the traceback names the zip the code came from"
    assert sorted(cache.iterdir()) == entries and entries[0].stat().st_mtime_ns == written, "read, not compiled again"


def test_a_changed_source_is_compiled_again(tmp_path):
    cache = tmp_path / "cache"
    assert run(make_zip(tmp_path / "old.zip", "old"), cache)[0] == "old"
    assert run(make_zip(tmp_path / "new.zip", "new"), cache)[0] == "new"
    assert len(list(cache.iterdir())) == 2


def test_an_unwritable_cache_only_costs_the_compile(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    zip_path = make_zip(tmp_path / "payload.zip", "works")
    assert run(zip_path, blocked / "cache") == ["works", f"{zip_path}/payload.py"]


def test_zipimports_two_questions_about_a_module_read_the_cache_once(tmp_path, monkeypatch):
    """zipimport compiles a module's source for its file name and again to run it: one read does both."""
    monkeypatch.setenv("KUBEIPVS_LAB_ZIPCACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(zipimport, "_compile_source", zipimport._compile_source)  # given back after the test
    spec = importlib.util.spec_from_file_location("kubeipvs_lab_zipcache_under_test", ZIPCACHE)
    zipcache = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zipcache)
    asked = []
    cached_or_compiled = zipcache._cached_or_compiled

    def counted(path, source):
        asked.append(path)
        return cached_or_compiled(path, source)

    monkeypatch.setattr(zipcache, "_cached_or_compiled", counted)

    zip_path = make_zip(tmp_path / "payload.zip", "once")
    importer = zipimport.zipimporter(str(zip_path))
    assert importer.get_filename("payload") == f"{zip_path}/payload.py"
    namespace = {}
    exec(importer.get_code("payload"), namespace)
    assert namespace["VALUE"] == "once"
    assert asked == [f"{zip_path}/payload.py"], "the second question is answered from memory"
