"""bench/gpu.py, the full profile's GPU script, runs every code path on the CPU with --smoke
(issue 31: no GPU has been lent to this project yet, so only this path has run)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_smoke_runs_every_path_on_the_cpu(tmp_path):
    env = {**os.environ, "KDNB_CACHE": str(tmp_path / "cache"), "KDNB_PROGRESS": "0", "KDNB_DEVICE": "cpu"}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--out", str(tmp_path / "out")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["smoke"] and results["device"] == "cpu"
    assert {r["variant"] for r in results["throughput"]} == {"kdnb fit", "reference (fp32 DataLoader loop)"}
    assert all(r["images_per_s"] > 0 and r["peak_memory_bytes"] >= 0 for r in results["throughput"])
    # fit and the reference loop compute the same thing on the CPU (fp32 both)
    by = {(r["workload"], r["variant"]): r["final_loss"] for r in results["throughput"]}
    for w in {r["workload"] for r in results["throughput"]}:
        assert abs(by[(w, "kdnb fit")] - by[(w, "reference (fp32 DataLoader loop)")]) < 1e-3
    assert len(results["grid"]) == 2 and all(r["members"] == 9 for r in results["grid"])
    assert results["agreement"]["ok"] and results["resume"]["killed_mid_run"] and results["resume"]["bit_exact"]
    assert "### Correctness on the device" in (tmp_path / "out" / "results.md").read_text()
