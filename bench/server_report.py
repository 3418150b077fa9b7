"""The report of bench/server.py: the machine, the markdown tables of every part, the RSS plot."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import psutil

TARGETS = {"efficiency": 0.95, "cached_p99_ms": 5.0, "same_ratio": 1.2, "rss_growth": 0.05}


def machine_info() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    for package in ("onnxruntime", "tornado", "numpy"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def ms(value) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def report(results: dict) -> str:
    lines: list[str] = []
    m = results["machine"]
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; Python "
                 f"{m['python']}, onnxruntime {m.get('onnxruntime')}, tornado {m.get('tornado')}.")
    lines.append(f"Load average (1 min) before/after the run: {results['loadavg_before'][0]:.2f}"
                 f" / {results['loadavg_after'][0]:.2f}; run took "
                 f"{results['elapsed_s'] / 60:.1f} min{' (--quick)' if results['quick'] else ''}"
                 f"; parts: {', '.join(results['args']['part_list'])}.")
    exits = []
    if "saturation" in results:
        report_saturation(results, lines.append)
        exits += [e["server_exit_code"] for e in results["saturation"]]
    if "scenarios" in results:
        report_scenarios(results, lines.append)
        exits.append(results["scenario_server_exit_code"])
    if "rss" in results:
        report_rss(results, lines.append)
        exits.append(results["rss"]["server_exit_code"])
    lines.append("")
    lines.append(f"Server exit codes after SIGTERM: {exits}.")
    return "\n".join(lines)


def report_saturation(results: dict, add) -> None:
    add("")
    sat = results["saturation"]
    add("Saturation: server req/s (multirequest `different`, uncached, upload) vs raw engine "
        "images/s (same images, same order, same threads per process), rounds alternating.")
    add("")
    add("| workers x threads | clients | round | engine images/s | server req/s | efficiency "
        "| CPU s per image: engine / server (workers + server process) | CPU efficiency "
        "| other processes, cores | load avg |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for entry in sat:
        for i, r in enumerate(entry["rounds"], 1):
            srv = r["server"]
            count = srv["requests"]
            add(f"| {entry['workers']} x {entry['threads']} | {entry['concurrency']} | {i} | "
                f"{r['engine_images_per_s']:.3f} | {srv['throughput_rps']:.3f} | "
                f"{r['efficiency']:.3f} | {r['engine_cpu_s'] / count:.3f} / "
                f"{(srv['cpu_s']['workers'] + srv['cpu_s']['server']) / count:.3f} "
                f"({srv['cpu_s']['server'] / count * 1000:.1f} ms server process) | "
                f"{r['cpu_efficiency']:.3f} | {r['other_cores']:.2f}"
                f"{'' if r['clean'] else ' (crowded)'} | {r['loadavg'][0]:.1f} |")
    add("")
    add("| workers x threads | clean rounds | efficiency (median) | pooled (sum engine s / sum "
        "server s) | CPU efficiency (median) | target >= 0.95 |")
    add("|---|---|---|---|---|---|")
    for entry in sat:
        add(f"| {entry['workers']} x {entry['threads']} | {entry['clean_rounds']} of "
            f"{len(entry['rounds'])} | {entry['efficiency_median']:.3f} | "
            f"{entry['efficiency_pooled']:.3f} | {entry['cpu_efficiency_median']:.3f} | "
            f"{verdict(entry['efficiency_median'] >= TARGETS['efficiency'])} |")


def report_scenarios(results: dict, add) -> None:
    add("")
    sc = results["scenarios"]
    clients = results["args"]["clients"]
    add(f"The original's scenarios, {clients} clients, one request each (2 workers x "
        f"{results['scenario_threads']} thread), latency in ms:")
    add("")
    add("| scenario | original (4 workers, Ryzen 5 3600) | mean | p50 | p95 | max | engine runs |")
    add("|---|---|---|---|---|---|---|")
    original = {"different": "mean 4800, max 9000", "same": "mean 1140",
                "cached": "mean 10, max 30"}
    names = {"different": "different uncached images", "same": "same uncached image",
             "cached": "same cached image"}
    for key in ("different", "same", "cached"):
        s = sc[key]
        lat = s["latency_ms"]
        add(f"| {names[key]} | {original[key]} | {ms(lat['mean'])} | {ms(lat['p50'])} | "
            f"{ms(lat['p95'])} | {ms(lat['max'])} | {s['engine_runs']}"
            f"{' (the warm-up request)' if key == 'cached' and s['engine_runs'] else ''} |")
    add("")
    single, same = sc["single"], sc["same"]
    add(f"Same uncached image: {same['engine_runs']} engine run(s) for {same['requests']} "
        f"requests (target 1: {verdict(same['engine_runs'] == 1)}); mean "
        f"{same['latency_ms']['mean']:.0f} ms vs a lone request's {single['median_ms']:.0f} ms "
        f"(median of {', '.join(f'{v:.0f}' for v in single['latency_ms'])}) = "
        f"{same['ratio_to_single']:.2f}x (target <= 1.2x: "
        f"{verdict(same['ratio_to_single'] <= TARGETS['same_ratio'])}).")
    add("")
    add("Cache hits (same image, upload), latency in ms:")
    add("")
    add("| clients | requests | mean | p50 | p95 | p99 | max | req/s | CPU s: server / client | "
        "target p99 <= 5 ms |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for key in ("cached_load", "cached_serial"):
        s = sc[key]
        lat = s["latency_ms"]
        add(f"| {s['concurrency']} | {s['requests']} | {ms(lat['mean'])} | {ms(lat['p50'])} | "
            f"{ms(lat['p95'])} | {ms(lat['p99'])} | {ms(lat['max'])} | "
            f"{s['throughput_rps']:.0f} | {s['cpu_s']['server']:.1f} / {s['cpu_s']['client']:.1f}"
            f" of {s['wall_s']:.1f} s wall | "
            f"{verdict(lat['p99'] <= TARGETS['cached_p99_ms']) if key == 'cached_load' else '-'} |")
    prof = sc.get("profile")
    if prof and "groups" in prof:
        add("")
        add(f"Where the server process's time goes under {clients} clients of cache hits "
            f"(py-spy, {prof['samples']} samples):")
        add("")
        add("| share | part |")
        add("|---|---|")
        for name, share in prof["groups"].items():
            add(f"| {share:.1f}% | {name} |")


def report_rss(results: dict, add) -> None:
    rss = results["rss"]
    add("")
    s = rss["summary"]
    w = rss["warm_up"]
    add(f"RSS on a fresh 2-worker server: warm-up = {w['requests']} uncached requests "
        f"({results['args']['warm_passes']} passes over the images, 4 clients, "
        f"{w['wall_s']:.0f} s),"
        f" then {s['requests']} mixed requests (`--mix different=1,cached=4`, 8 clients): "
        f"{s['ok']} ok, {s['cached']} cache hits, {s['engine_runs']} engine runs, "
        f"{s['wall_s']:.0f} s. Sampled every {rss['sample_interval_s']} s.")
    add("")
    add(f"| process | pid | after boot MiB | after warm-up MiB | after {s['requests']} mixed MiB "
        "| peak during mixed MiB | growth after warm-up | target <= 5% |")
    add("|---|---|---|---|---|---|---|---|")
    for row in rss["table"]:
        growth = row["growth_after_warm"]
        add(f"| {row['process']} | {row['pid']} | {row['start_mib']:.0f} | {row['warm_mib']:.0f}"
            f" | {row['end_mib']:.0f} | {row['peak_mib']:.0f} | "
            f"{100 * growth:+.1f}% | {verdict(growth <= TARGETS['rss_growth'])} |")


def plot_rss(rss: dict, path: Path, title: str) -> bool:
    """Draws the RSS plot to `path`; False (and no plot) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    pids = {}
    for s in rss["samples"]:
        for pid, (role, _) in s["rss"].items():
            pids.setdefault(pid, role)
    workers = 0
    for pid, role in pids.items():
        if role == "other":
            continue  # multiprocessing's resource tracker: a few MiB, flat
        points = [(s["done"], s["rss"][pid][1] / 2**20) for s in rss["samples"] if pid in s["rss"]]
        if role == "worker":
            workers += 1
            label = f"worker {workers} (pid {pid})"
        else:
            label = f"server process (pid {pid})"
        ax.plot([p[0] for p in points], [p[1] for p in points], label=label,
                marker=".", markersize=3, linewidth=1)
    ax.axvline(rss["warm_up_requests"], color="grey", linestyle="--", linewidth=1,
               label=f"warm-up ({rss['warm_up_requests']} uncached) | mixed requests")
    ax.set_xlabel(f"requests completed since boot: warm-up, then {rss['summary']['requests']} "
                  "mixed (20% uncached, 80% cache hits)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
