"""Server benchmark: ppocr-server on loopback under multirequest.py, beside the raw engine.

One run measures, side by side:

1. the original server's three scenarios at 50 clients (different uncached images, one uncached
   image sent by all, one cached image), with the engine runs each cost (GET /ready's
   engine_runs before and after) and the same-image latency against one lone request's;
2. saturation throughput with 1 and 2 workers against the raw engine's throughput measured in the
   same run with the same threads per process (N engine processes for N workers, pulling the
   same image sequence from one queue): server efficiency = server req/s / engine images/s, and
   CPU efficiency = engine CPU s / (workers + server process) CPU s for the same images, which
   does not depend on how much CPU other processes on the machine left to each side;
3. the cache-hit latency distribution at 50 clients (and at 1, the service time), with a py-spy
   profile of the server process under that load;
4. RSS of the server process and of every worker, sampled over 2,000 mixed requests (20% uncached,
   80% cache hits, multirequest's `--mix different=1,cached=4`) on a fresh server after a
   warm-up of --warm-passes uncached passes over the images: a PNG plot and a table, with the
   growth from the end of the warm-up to the end of the mixed requests.

The server is started as users start it, `python setup.py --config <temp config>`, on a free
loopback port; every client is a separate `multirequest.py --json` process. Saturation rounds
alternate engine and server (ABBA) so that a drift in other processes' load favours neither, and
each round records how many cores other processes kept busy (a round above --max-other-cores is
"crowded"; the headline uses the clean rounds when there are any); the load average is recorded
too. Images: every full-pipeline image of ../shared/eval (paddleocr/doc/imgs, imgs_en,
rapidocr/test_files), copied into one folder; for the saturation rounds they are ordered most
expensive first (measured in the engine's warm-up pass) so that the last, lone requests of a
round are short and the tail does not skew a rate.

    make bench-server                          # = .venv/bin/python bench/server.py (~10-20 min)
    .venv/bin/python bench/server.py --quick   # smoke run, ~2-3 min on a quiet machine

Results: bench/results/server-<timestamp>.json, .md (the tables) and rss-<timestamp>.png; a full
run also copies the plot to docs/rss.png.

This file is the runner (options, the order of the parts, the results files); the parts are in
server_phases.py, the tables and the plot in server_report.py, the raw engine in raw_engine.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The repository first: this file's own name would otherwise shadow the server package.
sys.path.insert(0, str(ROOT))

from server_phases import (  # noqa: E402
    prepare_images,
    rss_run,
    run_client,
    saturation,
    scenarios,
    start_server,
)
from server_report import TARGETS, machine_info, plot_rss, report  # noqa: E402

EVAL_DIR = ROOT.parent / "shared" / "eval"
RESULTS_DIR = HERE / "results"
DOCS_PLOT = ROOT / "docs" / "rss.png"
# The one image of the same/cached scenarios: a 500x500 page of 16 lines, ~0.5 s on one core.
SAME_IMAGE = "paddleocr_doc_imgs__11.jpg"
PARTS = ("saturation", "scenarios", "rss")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer images, "
                        "one round, fewer requests; docs/rss.png is left alone")
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR)
    parser.add_argument("--parts", default=",".join(PARTS), help="which parts to run, "
                        "comma-separated (default: %(default)s)")
    parser.add_argument("--workers", default="1,2", help="worker counts of the saturation test")
    parser.add_argument("--rounds", type=int, help="engine/server rounds per worker count "
                        "(default 2, quick 1)")
    parser.add_argument("--passes", type=int, default=1, help="passes over the images per round")
    parser.add_argument("--max-other-cores", type=float, default=0.25, help="a saturation "
                        "round counts as clean when other processes kept at most this many "
                        "cores busy; the headline efficiency uses clean rounds when there are")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each half of a saturation round, wait up to SECONDS for "
                        "other processes to stay under --max-other-cores (default: no wait)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--cached-requests", type=int, help="cache hits at --clients clients "
                        "(default 2000, quick 500)")
    parser.add_argument("--mixed-requests", type=int, help="requests of the RSS run "
                        "(default 2000, quick 200)")
    parser.add_argument("--warm-passes", type=int, default=2, help="uncached passes over the "
                        "images before the mixed requests of the RSS run (default 2)")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="RSS sampling, s")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the py-spy profile of cache hits")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--docs-plot", type=Path, help="where to copy the RSS plot "
                        "(default docs/rss.png, none with --quick)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 2)
    args.cached_requests = args.cached_requests or (500 if quick else 2000)
    args.mixed_requests = args.mixed_requests or (200 if quick else 2000)
    if args.docs_plot is None and not quick:
        args.docs_plot = DOCS_PLOT
    args.worker_counts = [int(n) for n in args.workers.split(",")]
    args.part_list = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = set(args.part_list) - set(PARTS)
    if unknown or not args.part_list:
        parser.error(f"--parts: choose from {', '.join(PARTS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM exits through sys.exit, so the finally blocks stop the servers and runners.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    args.stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {message}", flush=True)

    results: dict = {"machine": machine_info(), "quick": args.quick,
                     "loadavg_before": [round(v, 2) for v in os.getloadavg()],
                     "args": {k: (str(v) if isinstance(v, Path) else v)
                              for k, v in vars(args).items()},
                     "targets": TARGETS}
    log(f"load average before: {results['loadavg_before']}")
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    try:
        images = prepare_images(args.eval_dir, work / "images")
        same_image = work / "images" / SAME_IMAGE
        if not same_image.exists():
            same_image = images[0]
        if args.quick:
            images = sorted(set(images[::8]) | {same_image})
            for path in set((work / "images").iterdir()) - set(images):
                path.unlink()
        log(f"{len(images)} images in {work / 'images'}")

        if "saturation" in args.part_list:
            log("saturation: raw engine vs server")
            results["saturation"] = []
            ordered = None
            for workers in args.worker_counts:
                entry, ordered = saturation(workers, max(1, cores // workers), images, ordered,
                                            args, work, log)
                results["saturation"].append(entry)

        threads = max(1, cores // 2)
        results["scenario_threads"] = threads
        if "scenarios" in args.part_list:
            log(f"scenarios at {args.clients} clients: 2 workers x {threads} thread(s)")
            server = start_server(work, "scenarios", 2, threads, [work / "images"])
            try:
                # Warm the workers on every image first, as the saturation servers were.
                run_client(server, work / "images", "different", 6, len(images))
                results["scenarios"] = scenarios(server, work / "images", same_image, args, log)
            finally:
                results["scenario_server_exit_code"] = server.stop()

        if "rss" in args.part_list:
            log(f"RSS over {args.mixed_requests} mixed requests")
            results["rss"] = rss_run(work, images, args, log)
    except BaseException:
        print(f"benchmark failed; server and runner logs kept in {work}", file=sys.stderr)
        raise
    results["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    plot = None
    if "rss" in results:
        plot = args.out_dir / f"rss-{args.stamp}.png"
        if not plot_rss(results["rss"], plot, f"ppocr-server RSS, 2 workers x {threads} "
                        f"thread(s), {results['machine']['cpu']}, {cores} cores"):
            log("matplotlib not installed: no RSS plot (pip install -r requirements-bench.txt)")
            plot = None
        elif args.docs_plot:
            shutil.copyfile(plot, args.docs_plot)
    text = report(results)
    (args.out_dir / f"server-{args.stamp}.json").write_text(json.dumps(results, indent=1))
    (args.out_dir / f"server-{args.stamp}.md").write_text(text + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(text)
    print(f"\nresults: {args.out_dir}/server-{args.stamp}.json, .md"
          + (f"; plot {plot}" if plot else "")
          + (f" (copied to {args.docs_plot})" if plot and args.docs_plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
