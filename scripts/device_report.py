"""``RESULTS.md`` of ``scripts/device_check.py``: its ``device_check.json`` as tables, rewritten after every check."""

from __future__ import annotations


def render(record: dict) -> str:
    """The check's record as markdown: environment, one row per check, then the cases and figures."""
    env, checks = record["env"], record["checks"]
    lines = ["# Device check", "",
             f"`{record['command']}`, {record.get('wall_time_s', 0):.0f} s of a {record['budget_s']:.0f} s budget.  ",
             "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".", "",
             "| check | status | seconds | note |", "|---|---|---|---|"]
    for name, r in checks.items():
        note = r.get("reason") or r.get("error") or _headline(name, r)
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', 0):.0f} | {note} |")
    if "train_steps" in checks and "cases" in checks["train_steps"]:
        lines += ["", "## Training steps against float64", "",
                  "| case | loss rel. error | gradient cosine | worst tensor's cosine (tensor) | ok |",
                  "|---|---|---|---|---|"]
        for case, r in checks["train_steps"]["cases"].items():
            lines.append(f"| {case} | {r['loss_rel_error']:.2e} | {r['grad_cosine']:.5f} | "
                         f"{r['min_tensor_cosine']:.4f} ({r['min_tensor']}) | {'yes' if r['ok'] else 'NO'} |")
    for name, mode in (("speed_train", "train"), ("speed_infer", "infer")):
        if "results" in checks.get(name, {}):
            lines += ["", f"## {name}", "", _speed_table(checks[name], mode)]
            for label, d in checks[name].get("defaults", {}).items():
                lines.append(f"- {label}: default {d['default']}, fastest {d['fastest']} "
                             f"({d['default_slower_by']:.3f}x the default's speed)")
    if "results" in checks.get("loader", {}):
        lines += ["", "## Loader against the model", "",
                  "| resolution | decode | loader img/s per worker | finish img/s | model img/s | verdict |",
                  "|---|---|---|---|---|---|"]
        for r in checks["loader"]["results"]:
            lines.append(f"| {r['resolution']} | {r['decode']} | {r['loader_img_per_s_per_worker']:.0f} | "
                         f"{r['finish_img_per_s']:.0f} | {r['model_img_per_s']:.0f} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def _headline(name: str, r: dict) -> str:
    """One figure per check for the summary table."""
    if name == "fold":
        return ", ".join(f"{k}: {v:.1e}" for k, v in r.items() if k.endswith("max_rel_diff"))
    if name == "sync_free" and "counts" in r:
        return ", ".join(f"{amp}: {c['syncs']} syncs in {c['steps']} steps" for amp, c in r["counts"].items())
    if name == "export" and "onnx_max_abs_diff" in r:
        return f"ONNX max abs diff {r['onnx_max_abs_diff']:.1e}"
    if name == "loader" and r.get("results"):
        return ", ".join(f"{x['resolution']} px {x['decode']}: {x['verdict']}" for x in r["results"])
    if name == "compile" and "loss_rel_diff" in r:
        return f"{r['backend']}: loss rel diff {r['loss_rel_diff']:.1e}"
    if name.startswith("speed") and r.get("above_peak"):
        return "above the measured peak: " + ", ".join(r["above_peak"])
    if name.startswith("speed") and r.get("defaults_not_fastest"):
        return "default layout/form not the fastest: " + ", ".join(r["defaults_not_fastest"])
    return ""


def _speed_table(check: dict, mode: str) -> str:
    peaks = check["peaks"]
    rows = [f"Peak {peaks['macs_per_s'] / 1e12:.3f} TMAC/s ({peaks['dtype']}), {peaks['bytes_per_s'] / 1e9:.0f} GB/s.",
            "",
            "| model | resolution | img/s | ratio | memory (MiB) | MAC utilization | latency (ms) |",
            "|---|---|---|---|---|---|---|"]
    for r in check["results"]:
        m, lat = r.get(mode, {}), r.get("latency", {})
        rows.append(f"| {r['label']} | {r['resolution']} | {m.get('img_per_s', 0):.0f} | {m.get('ratio', 0):.2f} | "
                    f"{m.get('peak_memory_bytes', 0) / 2**20:.0f} | {100 * m.get('mac_utilization', 0):.1f} % | "
                    f"{lat.get('median_ms', float('nan')):.2f} |")
    return "\n".join(rows)
