"""A sweep on remote storage copies its result files beside its trials in the bucket."""

import json

from cmkd.sweep import RESULT_FILES, upload_results


def _results(tmp_path):
    local = tmp_path / "runs" / "sk"
    local.mkdir(parents=True)
    (local / "results.json").write_text(json.dumps({"name": "sk", "final": {}}))
    (local / "best.yaml").write_text("distill:\n  w_fa: 0.5\n")
    return local


def test_results_land_in_the_storage_uri(tmp_path, capsys):
    local = _results(tmp_path)
    bucket = tmp_path / "bucket" / "sweeps"
    upload_results(local, f"file://{bucket}/sk")
    for f in RESULT_FILES:
        assert (bucket / "sk" / f).read_bytes() == (local / f).read_bytes()
    assert f"results copied to file://{bucket}/sk" in capsys.readouterr().out


def test_a_failed_upload_warns_and_keeps_the_local_copy(tmp_path, capsys):
    local = _results(tmp_path)
    upload_results(local, "nosuchfs://bucket/sk", attempts=2)
    out = capsys.readouterr().out
    assert "warning: could not copy the results to nosuchfs://bucket/sk" in out
    assert f"they are in {local}" in out
    assert (local / "results.json").is_file()
